//! clamgate: a gatekeeper for ClamAV signature updates.
//!
//! Modules, in the order data flows through them (see DESIGN.md):
//! - [`candidate`]: snapshot of a directory of database files, file rules,
//!   and the manifest whose digest names a candidate.
//! - [`validate`]: static checks: container headers and MD5, text database
//!   lines, sanity against the live release.
//! - [`canary`]: a throw-away clamd on the candidate, within budgets.
//! - [`corpus`]: samples that must be detected or stay clean, scanned and judged.
//! - [`gate`]: the pipeline tying the steps together into a [`gate::Report`].
//! - [`policy`]: the thresholds, from `policies/*.toml`.
//! - [`reason`]: rejection reasons with stable codes.
//! - [`clamd`]: client for clamd (PING, VERSION, RELOAD, INSTREAM, STATS)
//!   and [`clamd::process`], which starts clamd instances of our own.
//! - [`settings`]: reading TOML settings with every bad key named.
//! - [`cli`]: the `clamgate` commands.

pub mod canary;
pub mod candidate;
pub mod clamd;
pub mod cli;
pub mod config;
pub mod corpus;
pub mod daemon;
pub mod demo;
pub mod failpoint;
pub mod gate;
pub mod health;
pub mod journal;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod promote;
pub mod reason;
pub mod settings;
pub mod store;
pub mod validate;
pub mod watch;
