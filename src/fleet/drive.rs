//! The gate's side of the rollout, the I/O around [`super::rollout`]:
//! publish the live release, ask every host's `/readyz`, decide under the
//! state lock, journal, persist `rollout.json`, and make each ring's signed
//! pointer say what the state says. The CLI's `rollout` commands go
//! through the same [`commit`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::config::PublishConfig;
use super::fetch::Client;
use super::rollout::{Effect, Phase, Report, Rollout};
use super::sign::{SignError, Signer};
use super::tree::{RingPointer, Tree, TreeError, now_rfc3339};
use crate::journal::Event;
use crate::metrics::Metrics;
use crate::status::Status;
use crate::store::{StateLock, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum DriveError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("rollout state {}: {why}", path.display())]
    State { path: PathBuf, why: String },
}

/// Releases kept in the publish tree besides those a ring names or ran
/// before (its `history`): the newest ones, as the store's `keep_releases`
/// default.
pub(crate) const KEEP_PUBLISHED: usize = 5;

pub(crate) fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("rollout.json")
}

/// The persisted rollout, the rings synced with the config.
pub(crate) fn load(state_dir: &Path, cfg: &PublishConfig) -> Result<Rollout, DriveError> {
    let path = state_file(state_dir);
    let mut state: Rollout = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| DriveError::State { path: path.clone(), why: e.to_string() })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Rollout::default(),
        Err(e) => return Err(DriveError::State { path, why: e.to_string() }),
    };
    state.sync(&cfg.rings);
    Ok(state)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Saves the state, brings every ring pointer in line with it, then
/// journals the effects. The state is saved before any pointer moves, and
/// each pointer is compared with the state every time, so a crash between
/// the two is finished at the next tick (a crash before the journal loses
/// only the lines, not the step).
pub(crate) fn commit(_lock: &StateLock, store: &Store, tree: &Tree, signer: &Signer, state: &mut Rollout, fx: &[Effect]) -> Result<(), DriveError> {
    // A pointer already at or past the state's generation (a state file
    // lost or restored) is passed, never repeated: hosts refuse a lower one.
    let mut stale = Vec::new();
    let halted_on = state.halted.as_ref().map(|h| (h.ring.clone(), h.release.clone()));
    for ring in &mut state.rings {
        let Some(release) = &ring.release else { continue };
        // Halted on its own release: the first one ever, nothing to go back to.
        let halted = ring.phase == Phase::Halted && halted_on.as_ref().is_some_and(|(r, rel)| *r == ring.name && rel == release);
        let on_disk = tree.ring(&ring.name)?;
        if on_disk.as_ref().is_some_and(|p| p.generation == ring.generation && &p.release == release && p.halted == halted) {
            continue;
        }
        if let Some(p) = &on_disk
            && p.generation >= ring.generation
        {
            ring.generation = p.generation + 1;
        }
        stale.push((ring.name.clone(), release.clone(), ring.generation, halted));
    }
    let path = state_file(store.root());
    let bytes = serde_json::to_vec_pretty(&*state).expect("rollout serializes");
    super::tree::replace(&path, &bytes)?;
    for (ring, release, generation, halted) in stale {
        let ptr = RingPointer { manifest_sha256: tree.manifest_sha256(&release)?, ring, release, generation, at: now_rfc3339(), halted };
        let release = &ptr.release;
        tree.write_ring(signer, &ptr)?;
        tracing::info!(ring = %ptr.ring, release = %release, generation = ptr.generation, "ring {} now points at {release}", ptr.ring);
    }
    // Last, so a journaled step is one the tree already shows.
    for e in fx {
        if let Effect::Journal(ev) = e {
            store.journal().append(ev.clone())?;
        }
    }
    Ok(())
}

pub(crate) struct Driver {
    cfg: PublishConfig,
    tree: Tree,
    signer: Signer,
    store: Store,
    client: Client,
    metrics: Arc<Metrics>,
}

impl Driver {
    pub(crate) fn new(cfg: PublishConfig, store: Store, metrics: Arc<Metrics>) -> Result<Driver, DriveError> {
        let tree = Tree::open(&cfg.dir)?;
        let signer = Signer::load(&cfg.key)?;
        let timeout = cfg.host_poll_interval.clamp(Duration::from_secs(2), Duration::from_secs(10));
        Ok(Driver { cfg, tree, signer, store, client: Client::new(None, timeout), metrics })
    }

    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Ticks every `host_poll_interval` until `stop` flips.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.host_poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = stop.changed() => break,
                r = self.tick() => r,
            };
            match result {
                Ok(()) => last_error = None,
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::error!("rollout: {text}; the rings keep their releases");
                    }
                    last_error = Some(text);
                }
            }
        }
    }

    async fn tick(&self) -> Result<(), DriveError> {
        let live = self.store.current()?;
        if let Some(id) = &live
            && !self.tree.is_published(id)
        {
            let manifest = self.store.manifest(id)?;
            let vetted = vetted(&self.store, id)?;
            if !vetted {
                tracing::warn!(release = %id, "{id} was forced past the gate: published as not vetted, so every host canaries it");
            }
            let digest = self.tree.publish(&self.signer, &self.store.release_dir(id), &manifest, vetted)?;
            self.store.journal().append(Event::ReleasePublished { id: id.clone(), manifest_sha256: digest })?;
            tracing::info!(release = %id, "published {id} to {}", self.tree.root().display());
        }
        let reports = self.ask_hosts().await;
        let store = self.store.clone();
        let lock = tokio::task::spawn_blocking(move || store.lock(Duration::from_secs(30))).await.expect("lock task does not panic")?;
        let mut state = load(self.store.root(), &self.cfg)?;
        let now = now_ms();
        let mut fx = live.as_deref().map(|l| state.on_live(l, now)).unwrap_or_default();
        fx.extend(state.observe(&reports, &self.cfg.rings, self.cfg.take_timeout.as_millis() as u64, now));
        commit(&lock, &self.store, &self.tree, &self.signer, &mut state, &fx)?;
        // Under the lock, so no `rollout revert` points a ring at what goes.
        let named = state.rings.iter().flat_map(|r| r.release.iter().chain(&r.history)).chain(&state.target).cloned().collect();
        for id in self.tree.prune(&named, KEEP_PUBLISHED)? {
            tracing::info!(release = %id, "pruned {id} from the publish tree: no ring names it");
        }
        drop(lock);
        for e in &fx {
            if let Effect::Journal(Event::RolloutHalted { release, ring, detail, .. }) = e {
                tracing::error!(release = %release, ring = %ring, "rollout halted: {detail}; ring {ring} reverted");
            }
        }
        self.metrics.rollout.set(&state);
        Ok(())
    }

    /// Every host's `/readyz`, concurrently.
    async fn ask_hosts(&self) -> BTreeMap<String, Result<Report, String>> {
        let mut set = tokio::task::JoinSet::new();
        for host in self.cfg.rings.iter().flat_map(|r| r.hosts.iter()) {
            let (client, host) = (self.client.clone(), host.clone());
            set.spawn(async move {
                let url = format!("{}/readyz", host.trim_end_matches('/'));
                let r = match client.get_any(&url, None, 1 << 20).await {
                    Ok(got) => parse_readyz(&got.body).ok_or_else(|| format!("GET {url}: not a clamgate /readyz answer (HTTP {})", got.status)),
                    Err(e) => Err(e.to_string()),
                };
                (host, r)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(Ok((host, r))) = set.join_next().await {
            out.insert(host, r);
        }
        out
    }
}

/// Whether the gate's own gate vetted `id`: not if an operator forced it
/// live past a rejection (`release.forced` in the journal).
pub(crate) fn vetted(store: &Store, id: &str) -> Result<bool, DriveError> {
    let (entries, _) = store.journal().read_from(0)?;
    Ok(!entries.iter().any(|e| matches!(&e.event, Event::ReleaseForced { id: f, .. } if f == id)))
}

/// The fields of a host's `/readyz` the rollout reads.
pub(crate) fn parse_readyz(body: &[u8]) -> Option<Report> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let status = match v.get("status")?.as_str()? {
        "pass" => Status::Pass,
        "warn" => Status::Warn,
        _ => Status::Fail,
    };
    let s = |v: Option<&serde_json::Value>| v.and_then(|x| x.as_str()).map(str::to_string);
    Some(Report { status, live: s(v.get("releaseId")), wanted: s(v.pointer("/fleet/release")), state: s(v.pointer("/fleet/state")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file restored from a backup must not re-issue generations
    /// hosts have passed (they would refuse them as replays), nor bump the
    /// pointer at every tick.
    #[test]
    fn commit_passes_a_pointer_ahead_of_the_state_once() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let store = Store::open(&state_dir).unwrap();
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        let (key, _) = super::super::sign::keygen(&dir.path().join("keys")).unwrap();
        let signer = Signer::load(&key).unwrap();
        let tree = Tree::open(&dir.path().join("publish")).unwrap();
        for id in ["aaa", "bbb"] {
            std::fs::create_dir_all(tree.release_dir(id)).unwrap();
            std::fs::write(tree.release_dir(id).join("manifest.json"), id).unwrap();
        }
        let ahead = RingPointer { ring: "canary".into(), release: "bbb".into(), manifest_sha256: "x".into(), generation: 5, at: now_rfc3339(), halted: false };
        tree.write_ring(&signer, &ahead).unwrap();
        let cfg = [super::super::config::RingConfig { name: "canary".into(), hosts: vec![], soak: Duration::ZERO }];
        let mut state = Rollout::default();
        state.sync(&cfg);
        state.rings[0].release = Some("aaa".into());
        state.rings[0].generation = 1;
        commit(&lock, &store, &tree, &signer, &mut state, &[]).unwrap();
        let ptr = tree.ring("canary").unwrap().unwrap();
        assert_eq!((ptr.release.as_str(), ptr.generation, state.rings[0].generation), ("aaa", 6, 6));
        let mut again = load(&state_dir, &PublishConfig { rings: cfg.to_vec(), ..publish(dir.path()) }).unwrap();
        commit(&lock, &store, &tree, &signer, &mut again, &[]).unwrap();
        assert_eq!(tree.ring("canary").unwrap().unwrap().generation, 6, "written once");
        // Halted on its first release: the pointer stays on it, marked.
        again.rings[0].phase = Phase::Halted;
        again.rings[0].generation = 7;
        let halt = super::super::rollout::Halt {
            release: "aaa".into(),
            ring: "canary".into(),
            host: None,
            reason: super::super::rollout::HaltReason::Timeout,
            detail: String::new(),
        };
        again.halted = Some(halt);
        commit(&lock, &store, &tree, &signer, &mut again, &[]).unwrap();
        let ptr = tree.ring("canary").unwrap().unwrap();
        assert_eq!((ptr.release.as_str(), ptr.generation, ptr.halted), ("aaa", 7, true));
    }

    fn publish(dir: &Path) -> PublishConfig {
        let c = crate::config::Config::parse(Path::new("c.toml"), &format!("[publish]\ndir = \"{}\"\n", dir.join("publish").display())).unwrap();
        c.publish.unwrap()
    }

    /// A release forced past the gate is published with `vetted = false`,
    /// so a host under `trust_gate_verdict` still canaries it.
    #[test]
    fn a_forced_release_is_published_not_vetted() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let store = Store::open(&state_dir).unwrap();
        store.journal().append(Event::ReleaseForced { id: "bad".into(), by: "ops".into(), reasons: vec![] }).unwrap();
        assert!(!vetted(&store, "bad").unwrap());
        assert!(vetted(&store, "good").unwrap());
        let (key, _) = super::super::sign::keygen(&dir.path().join("keys")).unwrap();
        let signer = Signer::load(&key).unwrap();
        let tree = Tree::open(&dir.path().join("publish")).unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::write(files.join("a.hdb"), b"x:1:A\n").unwrap();
        let db = crate::candidate::DbFile { name: "a.hdb".into(), size: 6, sha256: super::super::tree::sha256_hex(b"x:1:A\n"), signatures: 1, header: None };
        let m = crate::candidate::Manifest::new(vec![db]);
        tree.publish(&signer, &files, &m, vetted(&store, "bad").unwrap()).unwrap();
        let published: super::super::tree::Published = serde_json::from_slice(&std::fs::read(tree.release_dir(&m.id).join("manifest.json")).unwrap()).unwrap();
        assert!(!published.vetted);
        assert!(!super::super::source::skips_canary(true, &published, false), "a trusting host canaries it");
        assert!(super::super::source::skips_canary(true, &super::super::tree::Published { vetted: true, ..published.clone() }, false));
        assert!(!super::super::source::skips_canary(false, &super::super::tree::Published { vetted: true, ..published }, false));
    }

    #[test]
    fn reads_a_hosts_readyz() {
        let body = br#"{"status":"warn","releaseId":"abc","fleet":{"ring":"canary","release":"def","state":"rejected"}}"#;
        let r = parse_readyz(body).unwrap();
        assert_eq!((r.status, r.live.as_deref(), r.wanted.as_deref(), r.state.as_deref()), (Status::Warn, Some("abc"), Some("def"), Some("rejected")));
        let r = parse_readyz(br#"{"status":"fail","output":"no probe has run yet"}"#).unwrap();
        assert_eq!((r.status, r.live), (Status::Fail, None));
        assert!(parse_readyz(b"<html>").is_none());
    }
}
