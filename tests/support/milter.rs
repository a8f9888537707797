//! Milter traffic without Postfix: indymilter-test plays the MTA.

use indymilter::ProtoOpts;
use indymilter_test::{Status, TestConnection};

/// Opens a session and sends one recipient, skipping the stages the milter
/// did not ask for, as Postfix does; returns the milter's answer to RCPT
/// (gate mode decides there: Accept, or Tempfail while unhealthy).
pub async fn rcpt(addr: std::net::SocketAddr) -> Status {
    let mut conn = TestConnection::open(addr).await.unwrap();
    let opts = conn.negotiated_opts();
    if !opts.contains(ProtoOpts::NO_CONNECT) {
        let status = conn.connect("client.example.org", ([127, 0, 0, 1], 40000)).await.unwrap();
        if status != Status::Continue {
            return status;
        }
    }
    if !opts.contains(ProtoOpts::NO_MAIL) {
        conn.mail(["<sender@example.org>"]).await.unwrap();
    }
    let status = conn.rcpt(["<rcpt@example.net>"]).await.unwrap();
    let _ = conn.close().await;
    status
}
