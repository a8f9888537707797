//! Fleet helpers: signing keys from the real `clamgate keygen`, a gate
//! corpus without the clean sample a test update detects, and a tiny static
//! HTTP server over a directory that can corrupt a download in transit.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::daemon::Env;

pub struct Keys {
    pub key: PathBuf,
    pub public: PathBuf,
}

/// `clamgate keygen --out DIR`, the real binary.
pub fn keygen(dir: &Path) -> Keys {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clamgate"))
        .args(["keygen", "--out"])
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    Keys { key: dir.join("publish.key"), public: dir.join("publish.pub") }
}

/// The fixture corpus without `clean/letter.txt`: a gate with this corpus
/// passes the `fp` set's `fp.hdb`, a host with the full corpus rejects it.
pub fn corpus_without_letter(dir: &Path) -> PathBuf {
    let out = dir.join("gate-corpus");
    let status = std::process::Command::new("cp").arg("-a").arg(super::corpus()).arg(&out).status().unwrap();
    assert!(status.success());
    fs::remove_file(out.join("clean/letter.txt")).unwrap();
    out
}

/// Points an [`Env`]'s config at another corpus.
pub fn use_corpus(env: &Env, corpus: &Path) {
    let text = fs::read_to_string(&env.config).unwrap();
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("corpus_dir = ") { format!("corpus_dir = \"{}\"", corpus.display()) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&env.config, text + "\n").unwrap();
}

/// Serves files under `root` (GET only, one request per connection). With
/// `corrupt_once`, the first response for each database file under
/// `releases/` has one byte flipped: a download corrupted in transit.
pub struct StaticServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    stop: Arc<AtomicBool>,
    pub corrupted: Arc<Mutex<HashSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(root: &Path, corrupt_once: bool) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let corrupted = Arc::new(Mutex::new(HashSet::new()));
        let (s, c, r) = (stop.clone(), corrupted.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve_one(conn, &r, corrupt_once, &c);
                }
            }
        });
        StaticServer { addr, root: root.to_path_buf(), stop, corrupted, thread: Some(thread) }
    }
}

fn serve_one(mut conn: TcpStream, root: &Path, corrupt_once: bool, corrupted: &Mutex<HashSet<String>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        if conn.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let file = root.join(&path);
    let body = if path.split('/').any(|p| p == ".." || p.is_empty()) { None } else { fs::read(&file).ok() };
    let Some(mut body) = body else {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let is_db = path.starts_with("releases/") && !path.contains("manifest.json");
    if corrupt_once && is_db && !body.is_empty() && corrupted.lock().unwrap().insert(path.clone()) {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    conn.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())?;
    conn.write_all(&body)
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A health endpoint's `/readyz`: HTTP status and JSON body, if it answers.
pub fn readyz(addr: SocketAddr) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    Some((code, serde_json::from_str(body).ok()?))
}
