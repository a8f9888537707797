//! clamgate: a gatekeeper for ClamAV signature updates.
//!
//! Modules, in the order data flows through them (docs/ARCHITECTURE.md has
//! the whole picture):
//! - [`watch`]: file events and fingerprints of `incoming_dir`.
//! - [`candidate`]: snapshot of a directory of database files, file rules,
//!   and the manifest whose digest names a candidate.
//! - [`validate`]: static checks: container headers and MD5, text database
//!   lines, sanity against the live release.
//! - [`canary`]: a throw-away clamd on the candidate, within budgets.
//! - [`memguard`]: the memory guard: a canary waits while its engine would
//!   not fit (host MemAvailable, clamgate's cgroup limit).
//! - [`corpus`]: samples that must be detected or stay clean, scanned and judged.
//! - [`gate`]: the pipeline tying the steps together into a [`gate::Report`].
//! - [`isolate`]: per-file isolation: the files behind a failure held back,
//!   the rest gated again as a reduced set.
//! - [`store`]: the state dir: releases, `current`, quarantine, lock.
//! - [`journal`]: the append-only history, one typed [`journal::Event`] a line.
//! - [`production`]: the production clamd: RELOAD, VERSION, smoke scans.
//! - [`diff`]: signatures added and removed between two releases (`show`).
//! - [`promote`]: moving `current` and proving production runs it, or going back.
//! - [`managed`]: managed mode: clamgate runs production clamd, and hands
//!   the production socket to the canary that passed.
//! - [`daemon`]: `clamgate run`, the loop that ties the above together.
//! - [`health`]: the prober and the HTTP endpoint (`/livez`, `/readyz`, `/metrics`).
//! - [`metrics`]: the Prometheus registry.
//! - [`logging`]: journald or stderr, the level, and spells (a run of
//!   failures logged at its start, once a minute and at its end).
//! - [`milter`]: the Postfix side, asking `/readyz` (and in scan mode, clamd).
//! - [`fleet`]: many hosts: the gate publishes a signed tree and rolls each
//!   release out ring by ring on the hosts' health; a host follows its ring.
//!
//! Around them: [`config`] and [`policy`] (the operator's files, read by
//! [`settings`]), [`context`] (what a command builds from the config),
//! [`reason`] (rejection codes), [`status`] (pass/warn/fail), [`clamd`]
//! (client and our own clamd processes), [`failpoint`] (crash points for
//! tests), [`runtime`] (tokio's and malloc's bounds), [`demo`] and [`cli`].

pub(crate) mod canary;
pub mod candidate;
pub mod clamd;
pub mod cli;
pub mod config;
pub(crate) mod context;
pub mod corpus;
pub(crate) mod daemon;
pub(crate) mod demo;
pub(crate) mod diff;
pub(crate) mod durable;
pub mod failpoint;
pub mod fleet;
pub(crate) mod gate;
pub mod health;
pub(crate) mod isolate;
pub mod journal;
pub mod logging;
pub(crate) mod managed;
pub(crate) mod memguard;
pub mod metrics;
pub(crate) mod milter;
pub mod policy;
pub(crate) mod production;
pub(crate) mod promote;
pub mod reason;
pub mod runtime;
pub mod settings;
pub(crate) mod status;
pub mod store;
pub mod validate;
pub(crate) mod watch;
