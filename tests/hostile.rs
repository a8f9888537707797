//! Hostile input: each gets a clear error, in bounded time and memory, and
//! nothing stops working.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use support::daemon::{live_v1, wait_ready};
use support::*;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn odd_names_sparse_giants_links_and_loops_in_a_candidate() {
    let cmd = Cmd::new();
    let dir = cmd.path().join("incoming");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(set("good").join("clamgate.hdb"), dir.join("clamgate.hdb")).unwrap();
    std::fs::write(dir.join("new\nline.hdb"), b"x").unwrap();
    std::fs::write(dir.join("bell\x07.hdb"), b"x").unwrap();
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.hdb")), b"x").unwrap();
    // 10 GB, sparse: must be refused from its size, never read.
    std::fs::File::create(dir.join("huge.cvd")).unwrap().set_len(10 << 30).unwrap();
    std::os::unix::fs::symlink("loop.hdb", dir.join("loop.hdb")).unwrap();
    // A hard link is a regular file: it is read (never written) and judged on content.
    let outside = cmd.path().join("outside.txt");
    std::fs::write(&outside, b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::hard_link(&outside, dir.join("linked.hdb")).unwrap();

    let (code, r) = cmd.json(&["check", &s(&dir), "--corpus", &s(&corpus())]);
    assert_eq!(code, 1, "{r:#}");
    let got: Vec<(String, String)> =
        r["reasons"].as_array().unwrap().iter().map(|x| (x["file"].as_str().unwrap().into(), x["reason"].as_str().unwrap().into())).collect();
    let has = |file: &str, code: &str| got.iter().any(|(f, c)| f == file && c == code);
    assert!(has("\"new\\nline.hdb\"", "file.bad_name"), "{got:?}");
    assert!(has("\"bell\\u{7}.hdb\"", "file.bad_name"), "{got:?}");
    assert!(got.iter().any(|(f, c)| f.contains("\\xFF") && c == "file.bad_name"), "{got:?}");
    assert!(has("huge.cvd", "file.too_large"), "{got:?}");
    assert!(has("loop.hdb", "file.symlink"), "{got:?}");
    assert!(has("linked.hdb:1", "db.malformed_line"), "{got:?}");
    assert_eq!(std::fs::read(&outside).unwrap(), b"root:x:0:0:root:/root:/bin/bash\n");
    // Human output keeps every reason on one line: escaped names, no raw newline.
    let (_, out, _) = cmd.run(&["check", &s(&dir), "--corpus", &s(&corpus())]);
    assert!(out.lines().any(|l| l.contains("new\\nline.hdb") && l.contains("[file.bad_name]")), "{out}");
}

#[test]
fn a_hundred_thousand_tiny_files_are_refused_without_copying_them_all() {
    let cmd = Cmd::new();
    let dir = cmd.path().join("incoming");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..100_000 {
        std::fs::write(dir.join(format!("t{i:06}.hdb")), b"").unwrap();
    }
    let (code, r) = check_json(&cmd, &dir);
    assert_eq!(code, 1);
    assert!(r["reasons"].as_array().unwrap().iter().any(|x| x["reason"] == "file.too_many"), "{}", r["reasons"]);
    assert_eq!(r["manifest"]["files"].as_array().unwrap().len(), 200, "stopped at the policy's max_files");
}

fn check_json(cmd: &Cmd, dir: &std::path::Path) -> (i32, serde_json::Value) {
    cmd.json(&["check", &s(dir), "--corpus", &s(&corpus())])
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_and_pipelining_floods_do_not_take_the_health_endpoint_down() {
    let (env, d, _prod) = live_v1("").await;

    // Slowloris: 300 connections that never finish their headers (more than
    // the 256 allowed). The server drops them at its header timeout.
    let mut slow: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(env.health).ok())
        .map(|mut c| {
            let _ = c.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            c
        })
        .collect();
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the server (EOF, 408, or reset), never left hanging forever.
        let _ = c.read(&mut buf);
    }
    drop(slow);
    wait_ready(&env, 200).await;

    // Pipelining flood: 5,000 requests in one write; all answered in order or
    // the connection closed, and the endpoint stays up.
    let mut c = TcpStream::connect(env.health).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut flood = "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5_000);
    flood.push_str("GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let writer = {
        let mut w = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = w.write_all(flood.as_bytes());
        })
    };
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let _ = writer.join();
    let answered = String::from_utf8_lossy(&out).matches("HTTP/1.1 200").count();
    assert!(answered > 0, "no pipelined request answered");
    wait_ready(&env, 200).await;
    assert!(std::path::Path::new(&format!("/proc/{}", d.pid())).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn milter_peers_sending_garbage_or_vanishing_mid_message_do_not_hurt_it() {
    let (env, _d, _prod) = live_v1("").await;
    let m = env.spawn_milter("mode = \"scan\"\n");

    // Garbage, and a frame announcing 4 GiB.
    for bytes in [&b"\x00\x00\x00\x05Xhello garbage"[..], b"\xff\xff\xff\xffO", b"GET / HTTP/1.1\r\n\r\n"] {
        let mut c = TcpStream::connect(m.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = c.write_all(bytes);
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf); // the milter closes; it does not wait for 4 GiB
    }
    // A peer that disappears in the middle of a message body.
    {
        let mut conn = indymilter_test::TestConnection::open(m.addr).await.unwrap();
        conn.connect("x", ([127, 0, 0, 1], 1)).await.unwrap();
        conn.rcpt(["<b@example.net>"]).await.unwrap();
        conn.header("Subject", "half").await.unwrap();
        conn.eoh().await.unwrap();
        conn.body(vec![b'x'; 100_000]).await.unwrap();
        drop(conn);
    }
    // Still serving: a clean message gets through, scanned.
    let mut conn = indymilter_test::TestConnection::open(m.addr).await.unwrap();
    conn.connect("x", ([127, 0, 0, 1], 1)).await.unwrap();
    assert_eq!(conn.rcpt(["<b@example.net>"]).await.unwrap(), indymilter_test::Status::Continue);
    conn.header("Subject", "whole").await.unwrap();
    conn.eoh().await.unwrap();
    conn.body(b"hello\r\n".to_vec()).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, indymilter_test::Status::Continue);
    assert!(format!("{actions:?}").contains("X-Virus-Scanned"), "{actions:?}");
}
