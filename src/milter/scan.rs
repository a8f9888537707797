//! Scan mode's message path: each message streamed to the production
//! clamd as it arrives (header, EOH and body callbacks), the verdict at EOM
//! and what is done with it (accept, reject, quarantine, mark, or tempfail
//! our own failure). Separate from `mod.rs`, which holds the `/readyz` gate
//! both modes share and the serving.

use std::ffi::CString;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use indymilter::{Callbacks, Context, ContextActions, EomContext, SetErrorReply, Status};

use super::metrics::Action;
use super::{OnInfected, Session, Shared, tempfail};
use crate::clamd::{ClamdError, ScanVerdict, StreamScan};
use crate::logging::spell::Subject;

/// Where one message's INSTREAM scan stands.
#[derive(Default)]
pub(super) enum Scan {
    /// Nothing sent yet; opened by the first header (or at EOM, so even an
    /// empty message is scanned before it is accepted).
    #[default]
    Idle,
    Streaming(StreamScan),
    /// The message cannot be scanned; it will be tempfailed at EOM.
    Failed(ScanFailure),
}

/// Why a message could not be scanned (logged when it is tempfailed).
#[derive(Debug, thiserror::Error)]
pub(super) enum ScanFailure {
    #[error("scan state lost mid-message")]
    Lost,
    #[error(transparent)]
    Clamd(#[from] ClamdError),
}

impl Session {
    /// Per-message state that went missing mid-message: the message is
    /// tempfailed at its end, never accepted half-scanned.
    fn lost() -> Session {
        Session { scan: Scan::Failed(ScanFailure::Lost), release: None, client: None }
    }
}

/// `Name: value\r\n`, as clamd should see the header.
fn header_line(name: CString, value: CString) -> Vec<u8> {
    let mut line = name.into_bytes();
    line.extend_from_slice(b": ");
    line.extend_from_slice(value.as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

impl Shared {
    /// Whether the last message could be scanned: ends or extends the spell.
    fn scanned(&self, ok: bool, detail: &dyn std::fmt::Display) {
        let mut spell = self.unscannable.lock().expect("unscannable lock");
        let mark = if ok { spell.good(Instant::now()) } else { spell.bad(Instant::now()) };
        drop(spell);
        if let Some(mark) = mark {
            Subject::ScanFailing.log(mark, &detail.to_string(), None);
        }
    }

    /// Header, EOH and body callbacks: the next piece of the message to clamd.
    async fn feed(self: Arc<Self>, ctx: &mut Context<Session>, data: impl AsRef<[u8]>) -> Status {
        // Taken out for the length of the send: a callback cut short leaves
        // the session missing, and the message is tempfailed, not accepted.
        let mut session = ctx.data.take().unwrap_or_else(Session::lost);
        session.scan = self.send(session.scan, data.as_ref()).await;
        ctx.data = Some(session);
        Status::Continue
    }

    /// Opens the scan on first use; the first failure sticks.
    async fn send(&self, scan: Scan, data: &[u8]) -> Scan {
        let mut stream = match scan {
            Scan::Failed(_) => return scan,
            Scan::Streaming(stream) => stream,
            Scan::Idle => match self.clamd.stream().await {
                Ok(stream) => stream,
                Err(e) => return Scan::Failed(e.into()),
            },
        };
        match stream.send(data).await {
            Ok(()) => Scan::Streaming(stream),
            Err(e) => Scan::Failed(e.into()),
        }
    }

    /// EOM callback: the verdict, acted on; the session stays for the next
    /// message on this connection.
    async fn eom(self: Arc<Self>, ctx: &mut EomContext<Session>) -> Status {
        let session = ctx.data.take().unwrap_or_else(Session::lost);
        let started = Instant::now();
        let verdict = self.verdict(session.scan).await;
        if verdict.is_ok() {
            self.metrics.scanned(started.elapsed());
        }
        ctx.data = Some(Session { release: session.release.clone(), client: session.client.clone(), ..Session::default() });
        let (status, action) = match verdict {
            Ok(ScanVerdict::Clean) => self.clean(ctx, session.release.as_deref()).await,
            Ok(ScanVerdict::Infected(sig)) => self.infected(ctx, &sig, session.client.as_deref()).await,
            Ok(ScanVerdict::Error(e)) => self.unscanned(ctx, &e),
            Err(e) => self.unscanned(ctx, &e),
        };
        self.metrics.action(action);
        status
    }

    async fn verdict(&self, scan: Scan) -> Result<ScanVerdict, ScanFailure> {
        // Even an empty message must be scanned before it is accepted.
        let stream = match scan {
            Scan::Failed(e) => return Err(e),
            Scan::Streaming(stream) => stream,
            Scan::Idle => self.clamd.stream().await?,
        };
        Ok(stream.finish().await?)
    }

    async fn clean(&self, ctx: &mut EomContext<Session>, release: Option<&str>) -> (Status, Action) {
        self.scanned(true, &"");
        if self.cfg.add_header {
            let v = format!("clamgate (release {})", release.unwrap_or("unknown"));
            let _ = ctx.actions.add_header("X-Virus-Scanned", v).await;
        }
        (Status::Continue, Action::Accept)
    }

    /// Our own failure: tempfail, never accept unscanned, never reject.
    fn unscanned(&self, ctx: &mut EomContext<Session>, why: &dyn std::fmt::Display) -> (Status, Action) {
        tracing::debug!(queue_id = %queue_id(ctx), "tempfailing a message that could not be scanned: {why}");
        self.scanned(false, why);
        (tempfail(&mut ctx.reply, &self.cfg.tempfail_text), Action::Error)
    }

    /// Each infected message is logged with Postfix's queue ID (macro `i`,
    /// sent at end of data by default) and the client, so an operator can
    /// find it in the maillog.
    async fn infected(&self, ctx: &mut EomContext<Session>, sig: &str, client: Option<&str>) -> (Status, Action) {
        self.scanned(true, &"");
        let (queue_id, client) = (queue_id(ctx), client.unwrap_or("unknown"));
        let action = self.cfg.on_infected;
        tracing::info!(queue_id = %queue_id, client = %client, signature = %sig, action = %action, "infected message {queue_id} from {client}: {sig}; {action}");
        match self.cfg.on_infected {
            OnInfected::Reject => {
                let _ = ctx.reply.set_error_reply("554", Some("5.7.1"), [format!("Message rejected: virus found ({sig})")]);
                (Status::Reject, Action::Reject)
            }
            // Could not quarantine or mark it: never deliver it silently.
            OnInfected::Quarantine => match ctx.actions.quarantine(format!("clamgate: {sig}")).await {
                Ok(()) => (Status::Continue, Action::Accept),
                Err(_) => (tempfail(&mut ctx.reply, "could not quarantine an infected message"), Action::Error),
            },
            OnInfected::Header => match ctx.actions.add_header("X-Virus-Found", sig).await {
                Ok(()) => (Status::Continue, Action::Accept),
                Err(_) => (tempfail(&mut ctx.reply, "could not mark an infected message"), Action::Error),
            },
        }
    }
}

/// Postfix's queue ID for the message, `unknown` if the MTA did not send it.
fn queue_id(ctx: &EomContext<Session>) -> &str {
    ctx.macros.get(c"i").and_then(|v| v.to_str().ok()).unwrap_or("unknown")
}

/// The message, streamed to clamd as it arrives, and the verdict at EOM.
pub(super) fn scan_callbacks(cb: Callbacks<Session>, shared: Arc<Shared>) -> Callbacks<Session> {
    // Nothing to decide at DATA, but without a DATA callback Postfix sends
    // the DATA macros and the first header back to back without waiting for
    // a reply; over TCP, Nagle on its side and delayed ACK on ours then
    // stall every message ~40 ms. Answering here keeps the exchange moving.
    let cb = cb.on_data(|_ctx| Box::pin(async { Status::Continue }));
    let s = shared.clone();
    let cb = cb.on_header(move |ctx, name, value| Box::pin(s.clone().feed(ctx, header_line(name, value))));
    let s = shared.clone();
    let cb = cb.on_eoh(move |ctx| Box::pin(s.clone().feed(ctx, b"\r\n")));
    let s = shared.clone();
    let cb = cb.on_body(move |ctx, chunk: Bytes| Box::pin(s.clone().feed(ctx, chunk)));
    cb.on_eom(move |ctx| Box::pin(shared.clone().eom(ctx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_reach_clamd_as_written() {
        let line = header_line(CString::new("Subject").unwrap(), CString::new("hi there").unwrap());
        assert_eq!(line, b"Subject: hi there\r\n");
    }
}
