//! A gate and three fleet hosts on one machine, each with its own state
//! dir, production clamd and ports, in two rings: `canary` (h1, h2; soak
//! 2 s) and `all` (h3, which fetches through a server that corrupts each
//! file's first download). The story: bootstrap, a good update through both
//! rings after the soak, an update h1's own corpus rejects (halt, revert
//! of ring 1, ring 2 never sees it), an operator's fleet rollback past what
//! freshclam allows, then the gate killed mid-rollout and resuming while
//! the hosts keep scanning. Then the security refusals.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::daemon::{DaemonProc, Env, free_port, set_id};
use support::fleet::{StaticServer, corpus_without_letter, keygen, readyz, use_corpus};

/// The journal as written, one JSON object a line.
fn lines(env: &Env) -> Vec<Value> {
    fs::read_to_string(env.state().join("journal.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn ms(v: &Value) -> u128 {
    humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// Waits (bounded) for a journal line matching `pred`; returns it.
async fn wait_line(env: &Env, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = lines(env).into_iter().find(|v| pred(v)) {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("gave up waiting for {what}\njournal: {:#?}\nlog:\n{}", lines(env), env.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is(v: &Value, event: &str, field: &str, value: &str) -> bool {
    v["event"] == event && v[field] == value
}

async fn wait_live(env: &Env, id: &str, who: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while env.live().as_deref() != Some(id) {
        if tokio::time::Instant::now() > deadline {
            panic!("{who} never ran {id} (live {:?})\njournal: {:#?}\nlog:\n{}", env.live(), lines(env), env.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Files of a release composed from fixture sets, with its id.
fn release(files: &[(&str, &str)]) -> (Vec<(String, String)>, String) {
    let dir = tempfile::tempdir().unwrap();
    for (set, f) in files {
        fs::copy(support::set(set).join(f), dir.path().join(f)).unwrap();
    }
    let mut db = Vec::new();
    for (_, f) in files {
        let bytes = fs::read(dir.path().join(f)).unwrap();
        db.push(clamgate::candidate::DbFile {
            name: f.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            signatures: 0,
            header: None,
        });
    }
    (files.iter().map(|(s, f)| (s.to_string(), f.to_string())).collect(), clamgate::candidate::Manifest::new(db).id)
}

fn put(env: &Env, files: &[(String, String)]) {
    let v: Vec<(&str, &str)> = files.iter().map(|(s, f)| (s.as_str(), f.as_str())).collect();
    env.put_files(&v);
}

/// A fleet host; `extra` goes into its `[source]`.
fn host(public: &Path, url: &str, extra: &str) -> Env {
    Env::new(&format!("[source]\nurl = \"{url}\"\npublic_key = \"{}\"\npoll_interval = \"300ms\"\nwarn_after = \"2s\"\n{extra}", public.display()), "")
}

fn gate_config(keys: &support::fleet::Keys, dir: &Path, listen: &str, token: &Path, canary: &[&Env], all: &[&Env]) -> String {
    let hosts = |hs: &[&Env]| hs.iter().map(|h| format!("\"http://{}\"", h.health)).collect::<Vec<_>>().join(", ");
    format!(
        "[publish]\ndir = \"{}\"\nlisten = \"{listen}\"\nkey = \"{}\"\ntoken = \"{}\"\nhost_poll_interval = \"200ms\"\ntake_timeout = \"300s\"\n\
         [[publish.ring]]\nname = \"canary\"\nhosts = [{}]\nsoak = \"2s\"\n[[publish.ring]]\nname = \"all\"\nhosts = [{}]\nsoak = \"0s\"\n",
        dir.display(),
        keys.key.display(),
        token.display(),
        hosts(canary),
        hosts(all),
    )
}

fn rollout(gate: &Env, args: &[&str]) -> (i32, String, String) {
    clamgate(gate, &[&["rollout"], args].concat())
}

/// `clamgate ARGS --config` for `env`, as operator `ops`.
fn clamgate(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USER", "ops")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rolls_out_in_rings_halts_on_a_rejection_and_rolls_back() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let publish_addr = free_port();
    let publish_dir = keys_dir.path().join("publish");
    fs::create_dir_all(&publish_dir).unwrap();
    // h3 fetches through a server that corrupts every file's first download.
    let mirror = StaticServer::start(&publish_dir, true);
    // The gate's server wants a bearer token; h2 trusts the gate's verdict
    // (no canary of its own for a vetted release).
    let token = keys_dir.path().join("token");
    fs::write(&token, "s3cret-fleet\n").unwrap();
    let with_token = format!("token = \"{}\"\n", token.display());
    let canary_url = format!("http://{publish_addr}/rings/canary.json");
    let h1 = host(&keys.public, &canary_url, &with_token);
    let h2 = host(&keys.public, &canary_url, &format!("{with_token}trust_gate_verdict = true\n"));
    let h3 = host(&keys.public, &format!("http://{}/rings/all.json", mirror.addr), "");
    let gate = Env::new(&gate_config(&keys, &publish_dir, &publish_addr.to_string(), &token, &[&h1, &h2], &[&h3]), "");
    // The gate and h2 do not have the sample the bad update detects; h1 and h3 do.
    let reduced = corpus_without_letter(keys_dir.path());
    use_corpus(&gate, &reduced);
    use_corpus(&h2, &reduced);

    let (a_files, a) = release(&[("daily-v1", "daily.cud")]);
    let (b_files, b) = release(&[("daily-v2", "daily.cud")]);
    let (c_files, c) = release(&[("daily-v2", "daily.cud"), ("fp", "fp.hdb")]);
    let (d_files, d) = release(&[("daily-v2", "daily.cud"), ("fp-fixed", "fp.hdb")]);
    assert_eq!(a, set_id("daily-v1"));

    // Bootstrap: A through both rings; each host's production clamd starts
    // once its first release is live (clamd needs a database to start).
    put(&gate, &a_files);
    let mut g = gate.spawn();
    let hosts: Vec<DaemonProc> = [&h1, &h2, &h3].iter().map(|h| h.spawn()).collect();
    gate.wait_event("promotion.done", Some(&a)).await;
    let _gate_prod = gate.start_production(&[]).await;
    let mut prods = Vec::new();
    for (h, name) in [(&h1, "h1"), (&h2, "h2"), (&h3, "h3")] {
        wait_live(h, &a, name).await;
        prods.push(h.start_production(&[]).await);
    }
    wait_line(&gate, "rollout of A completed", |v| is(v, "rollout.completed", "release", &a)).await;
    // The corrupted download was refused, named, and fetched again.
    let refused = wait_line(&h3, "h3 refused a corrupted file", |v| v["event"] == "source.refused").await;
    assert_eq!(refused["reason"], "fleet.sha256_mismatch", "{refused}");
    assert_eq!(refused["file"], format!("releases/{a}/daily.cud"));
    assert!(h3.log().contains(&format!("refused releases/{a}/daily.cud")) && h3.log().contains("[fleet.sha256_mismatch]"), "{}", h3.log());

    // (1) A good update: ring 1, then ring 2 only after the soak.
    put(&gate, &b_files);
    wait_line(&gate, "B to canary", |v| is(v, "rollout.advanced", "release", &b) && v["ring"] == "canary").await;
    wait_live(&h1, &b, "h1").await;
    wait_live(&h2, &b, "h2").await;
    let to_all = wait_line(&gate, "B to all", |v| is(v, "rollout.advanced", "release", &b) && v["ring"] == "all").await;
    let took = [&h1, &h2].map(|h| ms(&lines(h).into_iter().find(|v| is(v, "promotion.done", "id", &b)).unwrap()));
    let soaked = ms(&to_all) - took.into_iter().max().unwrap();
    assert!(soaked >= 2000, "ring all got B {soaked} ms after ring canary ran it, before the 2 s soak");
    wait_live(&h3, &b, "h3").await;
    wait_line(&gate, "rollout of B completed", |v| is(v, "rollout.completed", "release", &b)).await;
    // h2 trusted the gate: no canary of its own; h1 ran its own gate.
    assert!(!lines(&h2).iter().any(|v| is(v, "candidate.checked", "id", &b)), "h2 checked B itself: {:#?}", lines(&h2));
    assert!(lines(&h1).iter().any(|v| is(v, "candidate.checked", "id", &b)));
    // Without the token the gate's server answers nothing.
    let client = std::net::TcpStream::connect(publish_addr).and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /rings/canary.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    assert!(client.unwrap().starts_with("HTTP/1.1 401"), "the tree was served without the token");
    let (code, out, err) = rollout(&gate, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((st["target"].as_str(), st["completed"].as_bool()), (Some(b.as_str()), Some(true)), "{st:#}");
    for ring in st["rings"].as_array().unwrap() {
        assert_eq!(ring["release"], b.as_str(), "{st:#}");
        for h in ring["hosts"].as_array().unwrap() {
            assert_eq!((h["live"].as_str(), h["status"].as_str()), (Some(b.as_str()), Some("pass")), "{st:#}");
        }
    }
    let (_, text, _) = rollout(&gate, &["status"]);
    assert!(text.contains(&format!("rollout of {b}: complete")) && text.contains("ring all:"), "{text}");

    // (2) An update h1's corpus rejects: the rollout halts, ring 1 goes back
    // to B, ring 2 never gets it.
    put(&gate, &c_files);
    gate.wait_event("promotion.done", Some(&c)).await;
    let halted = wait_line(&gate, "the rollout of C halted", |v| is(v, "rollout.halted", "release", &c)).await;
    assert_eq!((halted["ring"].as_str(), halted["reason"].as_str(), halted["to"].as_str()), (Some("canary"), Some("rejected"), Some(b.as_str())), "{halted}");
    assert_eq!(halted["host"], format!("http://{}", h1.health));
    // h1's own gate turned it down (under the shipped per-file isolation:
    // fp.hdb held back, nothing left to promote).
    wait_line(&h1, "h1 turned C down", |v| is(v, "candidate.quarantined", "id", &c) || is(v, "candidate.reduced", "from", &c)).await;
    wait_live(&h1, &b, "h1").await;
    wait_live(&h2, &b, "h2").await;
    let (_, text, _) = rollout(&gate, &["status"]);
    assert!(text.contains("halted on ring canary (rejected)"), "{text}");
    let m = support::metrics::scrape(gate.health).unwrap();
    assert_eq!(m.value("clamgate_rollout_halted", &[("ring", "canary")]), Some(1.0));
    assert_eq!(m.value("clamgate_rollout_halted", &[("ring", "all")]), Some(0.0));

    // (3) Fleet rollback: every host back to A (daily 2 -> 1, which freshclam
    // never does), h3 even after pruning A: fetched again, and made live
    // without its gate (whose downgrade check would refuse it).
    // h2's operator pinned it meanwhile: it holds B until unpinned.
    fs::remove_dir_all(h3.state().join("releases").join(&a)).unwrap();
    let h3_before = lines(&h3).len();
    let (code, out, err) = clamgate(&h2, &["pin"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = rollout(&gate, &["revert", "canary", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let rev: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rev["pointers"].as_array().unwrap().len(), 2, "{rev}");
    for (h, name) in [(&h1, "h1"), (&h3, "h3")] {
        wait_live(h, &a, name).await;
    }
    let held = wait_line(&h2, "h2 holds A under its pin", |v| is(v, "candidate.held", "id", &a)).await;
    assert_eq!(held["pinned_by"], "ops", "{held}");
    let (_, body) = readyz(h2.health).expect("h2 answers");
    assert_eq!((body["releaseId"].as_str(), body["fleet"]["state"].as_str()), (Some(b.as_str()), Some("pinned")), "{body}");
    assert!(!lines(&h2).iter().any(|v| is(v, "promotion.begin", "id", &a) && ms(v) > ms(&held)), "h2 took A while pinned");
    let (code, out, err) = clamgate(&h2, &["unpin"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_live(&h2, &a, "h2").await;
    assert!(!lines(&h3).iter().skip(h3_before).any(|v| v["event"] == "candidate.checked"), "h3 ran A through its gate again");
    assert!(lines(&h3).iter().skip(h3_before).any(|v| is(v, "release.created", "id", &a) || is(v, "promotion.begin", "id", &a)));
    // Production itself runs daily version 1 again on every host, verified
    // (A's first promotion on each host found production not yet started).
    for h in [&h1, &h2, &h3] {
        wait_line(h, "A verified in production again", |v| is(v, "promotion.done", "id", &a) && v["production"] == "scanning").await;
    }
    wait_line(&gate, "the revert journaled", |v| v["event"] == "rollout.reverted" && v["by"] == "ops" && v["ring"] == "all").await;
    // Ring 2 never ran C.
    assert!(!lines(&h3).iter().any(|v| v["id"] == c.as_str()), "h3 saw C: {:#?}", lines(&h3));
    assert!(!lines(&gate).iter().any(|v| is(v, "rollout.advanced", "release", &c) && v["ring"] == "all"));

    // (4) The gate killed mid-rollout: the hosts keep scanning (h1 warns
    // once the gate is quiet too long), and the restarted gate resumes,
    // ring 2 held by an operator's pause that survives the restart too.
    let (code, out, err) = rollout(&gate, &["pause", "all", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["action"], "paused");
    put(&gate, &d_files);
    wait_line(&gate, "D to canary", |v| is(v, "rollout.advanced", "release", &d) && v["ring"] == "canary").await;
    g.signal(rustix::process::Signal::KILL);
    g.wait_exit();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (code, body) = readyz(h1.health).expect("h1 answers");
        if body["status"] == "warn" && body["output"].as_str().is_some_and(|o| o.contains("gate unreachable")) {
            assert_eq!(code, 200, "a warning is still ready: {body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "h1 never warned: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in [&h2, &h3] {
        assert_eq!(readyz(h.health).map(|r| r.0), Some(200), "{}", h.log());
    }
    assert_eq!(h3.live().as_deref(), Some(a.as_str()), "ring 2 waits for ring 1");
    let before = lines(&gate).len();
    let _g2 = gate.spawn();
    // Ring 1 soaks on D after the restart; the paused ring 2 stays on A until resumed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let st = loop {
        let (_, out, _) = rollout(&gate, &["status", "--json"]);
        let st: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if st["rings"][0]["phase"] == "soaked" && st["rings"][0]["release"] == d.as_str() {
            break st;
        }
        assert!(tokio::time::Instant::now() < deadline, "ring canary never soaked on D: {st:#}\n{}", gate.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((st["rings"][1]["release"].as_str(), st["rings"][1]["paused"].as_bool()), (Some(a.as_str()), Some(true)), "{st:#}");
    assert_eq!(h3.live().as_deref(), Some(a.as_str()));
    let (code, out, err) = rollout(&gate, &["resume", "all"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_line(&gate, "D to all after the restart", |v| is(v, "rollout.advanced", "release", &d) && v["ring"] == "all").await;
    assert!(lines(&gate).iter().skip(before).any(|v| is(v, "rollout.advanced", "release", &d) && v["ring"] == "all"));
    wait_live(&h3, &d, "h3").await;
    wait_line(&gate, "rollout of D completed", |v| is(v, "rollout.completed", "release", &d)).await;
    drop(hosts);
}

fn minisign_verifies(public: &Path, file: &Path) -> (bool, String) {
    let out = std::process::Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(public)
        .arg("-m")
        .arg(file)
        .output()
        .expect("minisign is installed (scripts/install-deps)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn refused(env: &Env, file: &str, code: &str) {
    let v = wait_line(env, &format!("{code} on {file}"), |v| v["event"] == "source.refused" && v["reason"] == code && v["file"] == file).await;
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let log = env.log();
    assert!(log.lines().any(|l| l.contains(&format!("refused {file}:")) && l.contains(&format!("[{code}]"))), "one line naming {file} and {code}:\n{log}");
}

/// Whatever serves the tree is not trusted: a tampered manifest, a tampered
/// file, a replayed older ring pointer, an unsigned one and a wrong key are
/// all refused by name and code; Debian's `minisign` checks the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_proves_itself_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("k1")).unwrap();
    fs::create_dir_all(dir.path().join("k2")).unwrap();
    let keys = keygen(&dir.path().join("k1"));
    let other = keygen(&dir.path().join("k2"));
    let publish = dir.path().join("publish");
    let gate = Env::new(
        &format!(
            "[publish]\ndir = \"{}\"\nlisten = \"\"\nkey = \"{}\"\nhost_poll_interval = \"200ms\"\n[[publish.ring]]\nname = \"canary\"\nhosts = []\nsoak = \"0s\"\n",
            publish.display(),
            keys.key.display()
        ),
        "",
    );
    let (a, b) = (set_id("daily-v1"), set_id("daily-v2"));
    gate.put("daily-v1");
    let g = gate.spawn();
    wait_line(&gate, "A published and out", |v| is(v, "rollout.completed", "release", &a)).await;
    let ring = publish.join("rings/canary.json");
    let (ok, out) = minisign_verifies(&keys.public, &ring);
    assert!(ok, "minisign -V refused our ring pointer: {out}");
    assert!(minisign_verifies(&keys.public, &publish.join(format!("releases/{a}/manifest.json"))).0);
    assert!(!minisign_verifies(&other.public, &ring).0, "minisign accepted another key");
    let old = dir.path().join("old");
    fs::create_dir_all(&old).unwrap();
    fs::copy(&ring, old.join("canary.json")).unwrap();
    fs::copy(publish.join("rings/canary.json.minisig"), old.join("canary.json.minisig")).unwrap();
    gate.put("daily-v2");
    wait_line(&gate, "B published and out", |v| is(v, "rollout.completed", "release", &b)).await;
    g.stop();
    let tampered = dir.path().join("tampered.json");
    fs::write(&tampered, fs::read_to_string(&ring).unwrap().replace(&b, &a)).unwrap();
    fs::copy(publish.join("rings/canary.json.minisig"), dir.path().join("tampered.json.minisig")).unwrap();
    assert!(!minisign_verifies(&keys.public, &tampered).0, "minisign accepted a tampered pointer");

    // Served by a plain static server from a copy the test tampers with.
    let served = dir.path().join("served");
    assert!(std::process::Command::new("cp").arg("-a").arg(&publish).arg(&served).status().unwrap().success());
    let server = StaticServer::start(&served, false);
    let url = format!("http://{}/rings/canary.json", server.addr);

    let wrong = host(&other.public, &url, "");
    let w = wrong.spawn();
    refused(&wrong, "rings/canary.json", "fleet.wrong_key").await;
    drop(w);

    let manifest = format!("releases/{b}/manifest.json");
    let text = fs::read_to_string(served.join(&manifest)).unwrap();
    fs::write(served.join(&manifest), text.replace("\"vetted\": true", "\"vetted\": false")).unwrap();
    let h = host(&keys.public, &url, "");
    let _h = h.spawn();
    refused(&h, &manifest, "fleet.bad_signature").await;
    fs::copy(publish.join(&manifest), served.join(&manifest)).unwrap();
    let file = format!("releases/{b}/daily.cud");
    let mut bytes = fs::read(served.join(&file)).unwrap();
    bytes[100] ^= 1;
    fs::write(served.join(&file), &bytes).unwrap();
    refused(&h, &file, "fleet.sha256_mismatch").await;
    assert!(
        !lines(&h).iter().any(|v| v["event"] != "source.followed" && v["id"] == b.as_str()),
        "a file that does not match its manifest never reaches the gate"
    );
    assert!(fs::read_dir(h.state().join("source/incoming")).unwrap().next().is_none(), "nothing handed to the gate");
    fs::copy(publish.join(&file), served.join(&file)).unwrap();
    h.wait_event("promotion.done", Some(&b)).await;

    // An older pointer, validly signed: a replay.
    fs::copy(old.join("canary.json"), served.join("rings/canary.json")).unwrap();
    fs::copy(old.join("canary.json.minisig"), served.join("rings/canary.json.minisig")).unwrap();
    refused(&h, "rings/canary.json", "fleet.generation_backwards").await;
    // A pointer edited to name the older release, beside the real signature.
    fs::copy(&tampered, served.join("rings/canary.json")).unwrap();
    fs::copy(publish.join("rings/canary.json.minisig"), served.join("rings/canary.json.minisig")).unwrap();
    refused(&h, "rings/canary.json", "fleet.bad_signature").await;
    fs::remove_file(served.join("rings/canary.json.minisig")).unwrap();
    refused(&h, "rings/canary.json", "fleet.unsigned").await;
    assert_eq!(h.live().as_deref(), Some(b.as_str()), "nothing refused changed the live release");
    assert!(!lines(&h).iter().any(|v| is(v, "promotion.begin", "id", &a)));
}
