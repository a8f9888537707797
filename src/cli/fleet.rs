//! `clamgate keygen` and `clamgate rollout …`: the fleet's operator side.
//! The rollout commands change `rollout.json` and the ring pointers under
//! the state lock, as the gate's driver does, so they serialise with it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::change::{lock, operator};
use super::{CliError, ConfigArg, Exit};
use crate::fleet::drive;
use crate::fleet::rollout::{CommandError, Effect, Rollout};
use crate::fleet::sign::{self, SignError, Signer};
use crate::fleet::tree::Tree;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory for publish.key (mode 0600, the gate's [publish] key) and publish.pub (the hosts' [source] public_key).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Each ring: its release and generation, the rollout's phase, every host's live release and health.
    Status(RolloutArgs),
    /// Hold a ring: it is given no new release and hands none on.
    Pause(RingArgs),
    /// Let a paused ring take and hand on the rollout's release again.
    Resume(RingArgs),
    /// Send RING, and every ring after it, back to the release each ran before; the rollout stays halted.
    Revert(RingArgs),
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub struct RingArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// A ring named in [[publish.ring]].
    pub(crate) ring: String,
    /// Print one JSON object: what happened.
    #[arg(long)]
    pub(crate) json: bool,
}

impl RolloutCommand {
    pub(crate) fn json(&self) -> bool {
        match self {
            RolloutCommand::Status(a) => a.json,
            RolloutCommand::Pause(a) | RolloutCommand::Resume(a) | RolloutCommand::Revert(a) => a.json,
        }
    }

    pub(crate) fn config(&self) -> &ConfigArg {
        match self {
            RolloutCommand::Status(a) => &a.config,
            RolloutCommand::Pause(a) | RolloutCommand::Resume(a) | RolloutCommand::Revert(a) => &a.config,
        }
    }
}

pub(crate) fn keygen(args: KeygenArgs) -> Result<Exit, CliError> {
    let (key, public) = sign::keygen(&args.out).map_err(|e| match &e {
        SignError::Write { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => CliError::refused("keygen.exists", e),
        _ => CliError::environment("keygen.write", e),
    })?;
    println!("secret key: {} (set [publish] key; keep it on the gate)", key.display());
    println!("public key: {} (set [source] public_key on every host)", public.display());
    Ok(Exit::Ok)
}

pub(crate) async fn rollout(cmd: RolloutCommand) -> Result<Exit, CliError> {
    let (config, store) = cmd.config().store()?;
    let Some(publish) = config.publish.clone() else {
        return Err(CliError::usage("config.no_publish", format!("{}: no [publish] section: this is not a gate", config.display_file().display())));
    };
    let state_err = |e: drive::DriveError| CliError::environment("state.unreadable", e);
    if let RolloutCommand::Status(args) = &cmd {
        let state = drive::load(store.root(), &publish).map_err(state_err)?;
        let tree = Tree::open(&publish.dir).map_err(|e| CliError::environment("publish.unreadable", e))?;
        return status(&state, &tree, args.json);
    }
    let (RolloutCommand::Pause(args) | RolloutCommand::Resume(args) | RolloutCommand::Revert(args)) = &cmd else { unreachable!("status returned above") };
    let signer = Signer::load(&publish.key).map_err(|e| CliError::usage("publish.key", e))?;
    let tree = Tree::open(&publish.dir).map_err(|e| CliError::environment("publish.unreadable", e))?;
    let lock = lock(&store)?;
    let mut state = drive::load(store.root(), &publish).map_err(state_err)?;
    let (by, now) = (operator(), drive::now_ms());
    let (action, fx) = match &cmd {
        RolloutCommand::Pause(_) => ("paused", state.pause(&args.ring, true, &by, now)),
        RolloutCommand::Resume(_) => ("resumed", state.pause(&args.ring, false, &by, now)),
        _ => ("reverted", state.revert(&args.ring, &by, now)),
    };
    let fx = fx.map_err(|e| match e {
        CommandError::NoRing(_) => CliError::usage("rollout.no_ring", e),
        CommandError::NothingToRevert(_) => CliError::refused("rollout.nothing_to_revert", e),
    })?;
    drive::commit(&lock, &store, &tree, &signer, &mut state, &fx).map_err(|e| CliError::environment("publish.write", e))?;
    let moved: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Point { ring, release, generation } => Some(json!({ "ring": ring, "release": release, "generation": generation })),
            _ => None,
        })
        .collect();
    if args.json {
        println!("{}", json!({ "ring": args.ring, "action": action, "by": by, "pointers": moved }));
    } else {
        println!("ring {} {action}", args.ring);
        for m in &moved {
            println!("  ring {} now points at {} (generation {})", m["ring"].as_str().unwrap_or(""), m["release"].as_str().unwrap_or(""), m["generation"]);
        }
    }
    Ok(Exit::Ok)
}

fn status(state: &Rollout, tree: &Tree, json_out: bool) -> Result<Exit, CliError> {
    let rings: Vec<serde_json::Value> = state
        .rings
        .iter()
        .map(|r| {
            let pointer = tree.ring(&r.name).ok().flatten();
            let at = |ms: u64| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string();
            let hosts: Vec<serde_json::Value> = r
                .hosts
                .iter()
                .map(|(name, h)| {
                    json!({ "host": name, "live": h.live, "status": h.status, "state": h.state, "error": h.error, "unreachable_since": h.unreachable_since.map(at) })
                })
                .collect();
            json!({
                "name": r.name,
                "release": r.release,
                "history": r.history,
                "generation": r.generation,
                "phase": r.phase,
                "paused": r.paused,
                "pointer": pointer.map(|p| json!({ "release": p.release, "generation": p.generation, "halted": p.halted })),
                "hosts": hosts,
            })
        })
        .collect();
    if json_out {
        println!("{}", json!({ "target": state.target, "completed": state.completed, "halted": state.halted, "rings": rings }));
        return Ok(Exit::Ok);
    }
    println!(
        "rollout of {}: {}",
        state.target.as_deref().unwrap_or("nothing yet"),
        match (&state.halted, state.completed) {
            (Some(h), _) => format!("halted on ring {} ({}): {}", h.ring, json!(h.reason).as_str().unwrap_or("?"), h.detail),
            (None, true) => "complete".into(),
            (None, false) => "in progress".into(),
        }
    );
    for r in &rings {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let paused = if r["paused"] == true { ", paused" } else { "" };
        println!("ring {}: {} (generation {}), {}{paused}", s("name"), s("release"), r["generation"], s("phase"));
        for h in r["hosts"].as_array().into_iter().flatten() {
            let hs = |k: &str| h[k].as_str().unwrap_or("-").to_string();
            let since = h["unreachable_since"].as_str().map(|t| format!("unreachable since {t}: ")).unwrap_or_default();
            let err = h["error"].as_str().map(|e| format!(" ({since}{e})")).unwrap_or_default();
            println!("  {}: live {}, {}{err}", hs("host"), hs("live"), hs("status"));
        }
    }
    Ok(Exit::Ok)
}
