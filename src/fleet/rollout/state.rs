//! The rollout's state, as persisted in `rollout.json`, and what goes in
//! and out of its decisions ([`Report`] in, [`Effect`] out).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::journal::Event;
use crate::status::Status;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Rollout {
    /// The release being rolled out: the gate's live one.
    pub(crate) target: Option<String>,
    /// Releases rolled out before, oldest first: the gate going live on
    /// one of them is a fleet rollback, not a new rollout.
    #[serde(default)]
    pub(crate) seen: Vec<String>,
    pub(crate) halted: Option<Halt>,
    #[serde(default)]
    pub(crate) completed: bool,
    pub(crate) rings: Vec<Ring>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Ring {
    pub(crate) name: String,
    /// What its pointer names.
    pub(crate) release: Option<String>,
    /// Releases it ran before `release`, the latest last: a halt or a
    /// revert takes it to the last one.
    #[serde(default)]
    pub(crate) history: Vec<String>,
    pub(crate) generation: u64,
    pub(crate) phase: Phase,
    /// When it was given `release`.
    pub(crate) since: u64,
    #[serde(default)]
    pub(crate) paused: bool,
    #[serde(default)]
    pub(crate) hosts: BTreeMap<String, Host>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Not given the target yet.
    Waiting,
    /// Given it; its hosts are taking it and soaking.
    Taking,
    /// Every host ran it healthily for the soak.
    Soaked,
    /// A host failed it: the ring was reverted.
    Halted,
    /// An operator's revert, or a fleet rollback.
    Reverted,
}

/// What the gate last learnt about one host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Host {
    pub(crate) live: Option<String>,
    pub(crate) status: Option<Status>,
    /// The host's own word on the ring's release (`rejected`, `fetching`, …).
    pub(crate) state: Option<String>,
    /// It passed on the ring's current release at some point.
    pub(crate) took: bool,
    pub(crate) healthy_since: Option<u64>,
    pub(crate) seen_at: Option<u64>,
    /// Why the last ask failed.
    pub(crate) error: Option<String>,
    /// Since when its asks fail (cleared by an answer): a host that took
    /// the release and stays unreachable for `take_timeout` halts the rollout.
    #[serde(default)]
    pub(crate) unreachable_since: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Halt {
    pub(crate) release: String,
    pub(crate) ring: String,
    pub(crate) host: Option<String>,
    pub(crate) reason: HaltReason,
    pub(crate) detail: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HaltReason {
    /// `/readyz` fail on the new release.
    Failed,
    /// The host's own gate refused it.
    Rejected,
    /// It ran it, then went back (a failed production verification).
    RolledBack,
    /// It did not run it within `take_timeout`.
    Timeout,
    /// It ran it, then did not answer for `take_timeout`.
    Unreachable,
    /// `clamgate rollout revert`.
    Operator,
}

/// One host's `/readyz`, as far as the rollout cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    pub(crate) status: Status,
    pub(crate) live: Option<String>,
    /// The release its source is following, and its state.
    pub(crate) wanted: Option<String>,
    pub(crate) state: Option<String>,
}

/// What the driver must do: write a ring pointer, journal an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    Point { ring: String, release: String, generation: u64 },
    Journal(Event),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum CommandError {
    #[error("no ring named {0:?} in [publish]")]
    NoRing(String),
    #[error("ring {0:?} has no earlier release to go back to")]
    NothingToRevert(String),
}
