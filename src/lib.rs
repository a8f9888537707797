//! clamgate: a gatekeeper for ClamAV signature updates.
//!
//! Modules, in the order data flows through them (see DESIGN.md):
//! - [`clamd`]: client for clamd (PING, VERSION, RELOAD, INSTREAM, STATS)
//!   and [`clamd::process`], which starts clamd instances of our own.

pub mod clamd;
