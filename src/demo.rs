//! `clamgate demo`: the whole story on embedded defaults, with its own
//! temporary state, incoming and corpus directories, its own production
//! clamd, and the daemon and health endpoint in-process. Each step prints a
//! line; the summary says whether every step behaved.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::clamd::process::{ClamdProcess, Options};
use crate::config::Config;
use crate::daemon::Daemon;
use crate::journal::{Entry, Event, Journal};
use crate::reason::Code;

const TESTFILES: &str = "/usr/share/clamav-testfiles";
const CLAM_EXE_HDB: &str = "aa15bcf478d165efd2065190eb473bcb:544:Demo.Test.ClamExe\n";
const CLEAN: &[(&str, &[u8])] = &[
    ("clean/letter.txt", include_bytes!("../testdata/corpus/clean/letter.txt")),
    ("clean/newsletter.html", include_bytes!("../testdata/corpus/clean/newsletter.html")),
    ("clean/mail/order-confirmation.eml", include_bytes!("../testdata/corpus/clean/mail/order-confirmation.eml")),
];
const INFECTED: &[&str] = &["clam.exe", "clam.zip", "clam.pdf", "clam.ole.doc", "clam.mail", "clam.exe.mbox.base64"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    #[error("demo needs Debian's clamav-testfiles in {TESTFILES} (run scripts/install-deps)")]
    NoTestfiles,
    #[error("demo: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("demo: {0}")]
    Setup(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

struct Step {
    name: &'static str,
    expected: &'static str,
    ok: bool,
}

/// The story, in order: the summary holds the demo to every one of them.
const STORY: &[&str] = &[
    "first database",
    "good update",
    "corrupt update",
    "update that crashes clamd on load",
    "false-positive update",
    "manual rollback",
    "production clamd killed",
    "production clamd back",
];

struct Demo {
    root: PathBuf,
    config: Config,
    config_file: PathBuf,
    steps: Vec<Step>,
}

/// Runs the demo; `Ok(true)` when every step behaved.
pub(crate) async fn run(keep: bool, shutdown: impl std::future::Future<Output = ()>) -> Result<bool, DemoError> {
    if !Path::new(TESTFILES).join("clam.exe").exists() {
        return Err(DemoError::NoTestfiles);
    }
    let tmp = tempfile::Builder::new().prefix("clamgate-demo-").tempdir_in("/tmp").map_err(io("temp dir"))?;
    let root = tmp.path().to_path_buf();
    println!("clamgate demo in {}", root.display());
    let mut demo = Demo::setup(&root)?;
    let result = tokio::select! {
        r = demo.play() => r,
        _ = shutdown => {
            println!("interrupted; cleaning up");
            Ok(())
        }
    };
    let all_ok = demo.summary();
    if keep {
        let kept = tmp.keep();
        print!("{}", inspect_commands(&kept));
    }
    result.map(|_| all_ok)
}

/// What `--keep` prints: the commands, with this run's paths, that show
/// what the demo left (its daemon and production clamd have stopped).
fn inspect_commands(kept: &Path) -> String {
    let (dir, config) = (kept.display(), kept.join("clamgate.toml"));
    let config = config.display();
    format!(
        "kept {dir} for inspection (the demo's daemon and production clamd have stopped,\n\
         so status reports the daemon UNKNOWN and exits 3):\n\
         \x20 clamgate status   --config {config}\n\
         \x20 clamgate releases --config {config}\n\
         \x20 clamgate history  --config {config}\n\
         \x20 ls {dir}/state/quarantine/*/    # the rejected candidates: reasons.json, canary.log, files\n\
         \x20 rm -r {dir}                      # when done\n"
    )
}

impl Demo {
    fn setup(root: &Path) -> Result<Demo, DemoError> {
        for d in ["state", "incoming", "corpus/infected", "corpus/clean/mail", "prod"] {
            fs::create_dir_all(root.join(d)).map_err(io(format!("create {d}")))?;
        }
        for name in INFECTED {
            fs::copy(Path::new(TESTFILES).join(name), root.join("corpus/infected").join(name)).map_err(io(format!("copy {name}")))?;
        }
        for (name, bytes) in CLEAN {
            fs::write(root.join("corpus").join(name), bytes).map_err(io(format!("write {name}")))?;
        }
        // The built-in policy, named so no /etc/clamgate file changes the story.
        fs::write(root.join("policy.toml"), crate::policy::DEFAULT_TOML).map_err(io("write policy"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(io("pick a port"))?.port();
        let text = format!(
            "state_dir = \"{r}/state\"\nincoming_dir = \"{r}/incoming\"\ncorpus_dir = \"{r}/corpus\"\npolicy = \"{r}/policy.toml\"\n\
             settle = \"300ms\"\nrescan_interval = \"2s\"\nsmoke_samples = [\"infected/clam.exe\", \"clean/letter.txt\"]\n\
             [clamd]\nsocket = \"{r}/prod/clamd.sock\"\nreload_timeout = \"30s\"\n[health]\nlisten = \"127.0.0.1:{port}\"\nprobe_interval = \"250ms\"\n",
            r = root.display()
        );
        // The demo's story is whole rejections (quarantine): per-file
        // isolation would promote the good remainder of each bad set instead.
        fs::write(root.join("policy.toml"), "isolation = \"set\"\n").map_err(io("write policy"))?;
        let config_file = root.join("clamgate.toml");
        fs::write(&config_file, &text).map_err(io("write config"))?;
        let config = Config::parse(&config_file, &text).map_err(|e| DemoError::Setup(e.to_string()))?;
        Ok(Demo { root: root.to_path_buf(), config, config_file, steps: Vec::new() })
    }

    fn journal(&self) -> Vec<Entry> {
        Journal::new(self.root.join("state/journal.jsonl")).read().unwrap_or_default()
    }

    /// Replaces incoming's files, each written under a temporary name and renamed.
    fn put(&self, files: &[(&str, String)]) -> Result<(), DemoError> {
        let incoming = self.root.join("incoming");
        for e in fs::read_dir(&incoming).map_err(io("read incoming"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        for (name, text) in files {
            let tmp = incoming.join(format!("{name}.tmp"));
            fs::write(&tmp, text).map_err(io(format!("write {name}")))?;
            fs::rename(&tmp, incoming.join(name)).map_err(io(format!("rename {name}")))?;
        }
        Ok(())
    }

    /// Waits for the first journal entry after `from` that `pred` accepts.
    async fn wait(&self, from: usize, pred: impl Fn(&Entry) -> bool) -> Option<Entry> {
        for _ in 0..1200 {
            if let Some(e) = self.journal().into_iter().skip(from).find(|e| pred(e)) {
                return Some(e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn readyz(&self) -> Option<String> {
        let url = format!("http://{}/readyz", self.config.health.listen);
        let cache = crate::milter::readiness::ReadinessCache::new(&url, Duration::ZERO, Duration::from_secs(2)).ok()?;
        let r = cache.get().await;
        Some(if r.healthy() { r.detail } else { "fail".into() })
    }

    async fn wait_health(&self, want_pass: bool) -> String {
        let mut last = String::new();
        for _ in 0..400 {
            last = self.readyz().await.unwrap_or_default();
            if (last == "pass" || last == "warn") == want_pass {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    fn record(&mut self, name: &'static str, expected: &'static str, observed: String, ok: bool) {
        println!("[{}] {name}: {observed}", if ok { " ok " } else { "FAIL" });
        self.steps.push(Step { name, expected, ok });
    }

    fn live(&self) -> Option<String> {
        fs::read_link(self.root.join("state/current")).ok().map(|t| t.file_name().unwrap_or_default().to_string_lossy().into_owned())
    }

    async fn production(&self) -> Result<ClamdProcess, DemoError> {
        let opts = Options::new(self.root.join("state/current"), self.root.join("prod"));
        ClamdProcess::start(opts, Duration::from_secs(60)).await.map_err(|e| DemoError::Setup(format!("production clamd: {e}")))
    }

    async fn candidate(&mut self, name: &'static str, expected: &'static str, files: &[(&str, String)], want: Option<Code>) -> Result<(), DemoError> {
        let from = self.journal().len();
        let before = self.live();
        self.put(files)?;
        let entry = self
            .wait(from, |e| {
                matches!(e.event, Event::PromotionDone(_) | Event::CandidateQuarantined { .. } | Event::RollbackDone(_) | Event::PromotionFailed(_))
            })
            .await;
        let codes: Vec<Code> = self
            .journal()
            .into_iter()
            .skip(from)
            .find_map(|e| match e.event {
                Event::CandidateChecked(c) => Some(c.reasons.into_iter().map(|r| r.reason).collect()),
                _ => None,
            })
            .unwrap_or_default();
        let listed = codes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
        let health = self.wait_health(true).await;
        let (ok, observed) = match (want, entry.map(|e| e.event)) {
            (None, Some(Event::PromotionDone(d))) => (self.live().as_deref() == Some(d.id.as_str()), format!("promoted {}; health {health}", d.id)),
            (Some(code), Some(Event::CandidateQuarantined { .. })) => (
                codes.contains(&code) && self.live() == before && health == "pass",
                format!("held back ({listed}); production stays on {}; health {health}", before.unwrap_or_default()),
            ),
            (_, other) => (false, format!("unexpected outcome {:?} ({listed})", other.as_ref().map(Event::name))),
        };
        self.record(name, expected, observed, ok);
        Ok(())
    }

    async fn play(&mut self) -> Result<(), DemoError> {
        let daemon = Daemon::new(self.config.clone()).map_err(|e| DemoError::Setup(e.to_string()))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon_task = tokio::spawn(daemon.run(async move {
            let _ = stop_rx.await;
        }));

        let letter = CLEAN[0].1;
        let fp = format!("{}:{}:Demo.FalsePositive.Letter\n", hex::encode(Md5::digest(letter)), letter.len());
        let v1 = vec![("demo.hdb", CLAM_EXE_HDB.to_string())];
        let v2 = vec![("demo.hdb", CLAM_EXE_HDB.to_string()), ("demo.ndb", "Demo.Test.ClamExe.Body:0:*:434c414d657373616765426f7841\n".to_string())];
        let with = |extra: (&'static str, String)| {
            let mut s = v2.clone();
            s.push(extra);
            s
        };

        let mut prod = self.first_release(&v1).await?;
        self.candidate("good update", "promoted", &v2, None).await?;
        self.candidate(
            "corrupt update",
            "held back, production keeps scanning",
            &with(("broken.ndb", "Demo.Broken:0:*:zz41zz4243\n".into())),
            Some(Code::DbMalformedLine),
        )
        .await?;
        self.candidate(
            "update that crashes clamd on load",
            "held back",
            &with(("offset.ndb", "Demo.Bad.Offset:1:EP+abc:434c414d657373616765\n".into())),
            Some(Code::CanaryLoadFailed),
        )
        .await?;
        self.candidate("false-positive update", "held back", &with(("fp.hdb", fp)), Some(Code::CorpusFalsePositive)).await?;
        self.manual_rollback(&prod).await?;
        self.production_outage(&mut prod).await?;

        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), daemon_task).await;
        Ok(())
    }

    /// The first release, promoted while production is not running yet;
    /// production clamd then starts on it.
    async fn first_release(&mut self, v1: &[(&str, String)]) -> Result<ClamdProcess, DemoError> {
        let from = self.journal().len();
        self.put(v1)?;
        let first = self.wait(from, |e| matches!(e.event, Event::PromotionDone(_))).await;
        let prod = self.production().await?;
        let health = self.wait_health(true).await;
        let ok = first.is_some() && health == "pass";
        let observed =
            format!("promoted {}; production clamd started on it; health {health}", first.and_then(|e| e.id().map(str::to_string)).unwrap_or_default());
        self.record("first database", "promoted", observed, ok);
        Ok(prod)
    }

    /// Manual rollback through the real CLI, as an operator would at 3 a.m.
    async fn manual_rollback(&mut self, prod: &ClamdProcess) -> Result<(), DemoError> {
        let before = self.live();
        let exe = std::env::current_exe().map_err(io("find own binary"))?;
        let out =
            tokio::process::Command::new(exe).args(["rollback", "--config"]).arg(&self.config_file).output().await.map_err(io("run clamgate rollback"))?;
        let after = self.live();
        let text = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
        let ok = out.status.success()
            && after != before
            && prod.client(Duration::from_secs(5)).scan_file(&self.root.join("corpus/infected/clam.exe")).await.is_ok_and(|v| v.is_infected());
        self.record("manual rollback", "previous release live, scanning", format!("`clamgate rollback`: {text}"), ok);
        Ok(())
    }

    /// With production clamd killed, health fails; restarted, it passes again.
    async fn production_outage(&mut self, prod: &mut ClamdProcess) -> Result<(), DemoError> {
        prod.kill();
        let down = self.wait_health(false).await;
        self.record("production clamd killed", "health fail", format!("/readyz says {down}"), down == "fail");
        let prod2 = self.production().await?;
        let up = self.wait_health(true).await;
        self.record("production clamd back", "health pass", format!("/readyz says {up}"), up == "pass");
        drop(prod2);
        Ok(())
    }

    fn summary(&self) -> bool {
        println!();
        println!("{:<36} {:<38} RESULT", "STEP", "EXPECTED");
        for s in &self.steps {
            println!("{:<36} {:<38} {}", s.name, s.expected, if s.ok { "ok" } else { "FAILED" });
        }
        let ok = self.steps.iter().map(|s| s.name).eq(STORY.iter().copied()) && self.steps.iter().all(|s| s.ok);
        println!("{}", if ok { "demo: every step behaved" } else { "demo: some steps did not behave (see above)" });
        ok
    }
}
