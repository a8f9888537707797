//! The embedded read-only server for the published tree, and the freshclam
//! view (`/freshclam/<ring>/<file>`: any file of the ring's release, the
//! `<db>.cld|.cvd` of `PrivateMirror` and the `DatabaseCustomURL` files alike,
//! for hosts that run only freshclam and clamd). Conditional and partial GETs on every
//! file (ETag, If-None-Match, If-Modified-Since, one Range), so polling is a
//! 304 and a client may resume a torn download (clamgate's own hosts fetch
//! a torn file again from the start). Loopback by default; an optional bearer
//! token. It never writes and never follows a path outside the tree.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};
use tokio::net::TcpListener;

use super::tree::Tree;

const MAX_CONNECTIONS: usize = 512;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A release may be large and a host slow: bounded, but generously.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(600);
const CHUNK: usize = 256 * 1024;

pub(crate) type ServeBody = Either<Full<Bytes>, FileBody>;

/// What the server serves and who may ask.
pub(crate) struct Site {
    pub(crate) tree: Tree,
    /// `Authorization: Bearer <token>` required when set.
    pub(crate) token: Option<String>,
}

/// Accepts until `shutdown` flips; in-flight transfers get 2 s.
pub(crate) async fn serve(listener: TcpListener, site: Arc<Site>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("publish server accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
        let site = site.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(respond(&site, req.method(), req.uri().path(), req.headers()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

fn text(status: StatusCode, body: &'static str) -> Response<ServeBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// One request: method, auth, path to file, then the file's conditional and range rules.
pub(crate) async fn respond(site: &Site, method: &Method, path: &str, headers: &HeaderMap) -> Response<ServeBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: use GET or HEAD\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if let Some(token) = &site.token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_eq(g.trim().as_bytes(), token.as_bytes())) {
            let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let Some((file, pointer)) = locate(&site.tree, path) else { return text(StatusCode::NOT_FOUND, "not found\n") };
    // One trip to the blocking pool: a poll that ends in 304 needs nothing more.
    let opened = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&file)?;
        let meta = f.metadata()?;
        // Through a ring, a file is as new as the ring's last move: freshclam
        // asks If-Modified-Since its own copy, so a ring sent back to an older
        // release must read as modified, not as the old file's mtime.
        let moved = pointer.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        Ok::<_, std::io::Error>((f, meta, moved))
    })
    .await;
    let (mut f, meta, moved) = match opened {
        Ok(Ok((f, m, moved))) if m.is_file() => (tokio::fs::File::from_std(f), m, moved),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let len = meta.len();
    let mut mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if let Some(moved) = moved {
        mtime = mtime.max(ring_moved(moved, SystemTime::now()));
    }
    let etag = etag(len, mtime, &meta);
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(mtime))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, if path.starts_with("/releases/") { "public, max-age=86400, immutable" } else { "no-cache" });
    if not_modified(headers, &etag, mtime) {
        return builder.status(StatusCode::NOT_MODIFIED).body(Either::Left(Full::new(Bytes::new()))).expect("valid headers");
    }
    let content_type = if path.ends_with(".json") { "application/json" } else { "application/octet-stream" };
    builder = builder.header(header::CONTENT_TYPE, content_type);
    let if_range_ok = headers.get(header::IF_RANGE).is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).filter(|_| if_range_ok).map(|r| parse_range(r, len));
    let (status, start, count) = match range {
        None | Some(Range::Ignore) => (StatusCode::OK, 0, len),
        Some(Range::Unsatisfiable) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Either::Left(Full::new(Bytes::new())))
                .expect("valid headers");
        }
        Some(Range::Bytes(a, b)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, count);
    if method == Method::HEAD || count == 0 {
        return builder.body(Either::Left(Full::new(Bytes::new()))).expect("valid headers");
    }
    if start > 0 && f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read\n");
    }
    builder.body(Either::Right(FileBody { file: f, remaining: count })).expect("valid headers")
}

/// The file a path names: `/releases/<id>/<file>`, `/rings/<file>`, or the
/// freshclam view through the ring's pointer (then also the pointer file,
/// whose mtime floors the file's). Every component is a plain name (no dot
/// first, no separators), so nothing outside the tree is reachable.
fn locate(tree: &Tree, path: &str) -> Option<(PathBuf, Option<PathBuf>)> {
    let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if !parts.iter().all(|p| plain(p)) {
        return None;
    }
    match parts.as_slice() {
        ["releases", id, file] => Some((tree.release_dir(id).join(file), None)),
        ["rings", file] => Some((tree.root().join("rings").join(file), None)),
        ["freshclam", ring, file] => {
            let ptr = tree.ring(ring).ok()??;
            // A ring halted on its first release has nothing vetted to give:
            // freshclam gets 404 and keeps what it has, as fleet hosts do.
            if ptr.halted {
                return None;
            }
            Some((tree.release_dir(&ptr.release).join(file), Some(tree.ring_file(ring))))
        }
        _ => None,
    }
}

/// The date a ring's files carry: the pointer's mtime rounded up to the next
/// whole second once that second has come (never a date in the future).
/// HTTP dates have whole seconds and a client keeps its copy unless the
/// answer is newer than it, so a fetch in the second the ring moved, asked
/// with that second, would otherwise read as not modified until the ring
/// moved again; rounded up, it is at most one poll late.
fn ring_moved(moved: SystemTime, now: SystemTime) -> SystemTime {
    let since = moved.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let up = SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs() + u64::from(since.subsec_nanos() > 0));
    if up <= now { up } else { moved }
}

fn plain(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('.') && p.len() <= 255 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn etag(len: u64, mtime: SystemTime, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let nanos = mtime.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("\"{len:x}-{nanos:x}-{:x}\"", meta.ino())
}

/// RFC 9110 13.2.2: If-None-Match decides when present; else If-Modified-Since.
fn not_modified(headers: &HeaderMap, etag: &str, mtime: SystemTime) -> bool {
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return inm.split(',').any(|t| t.trim() == "*" || strip(t) == strip(etag));
    }
    let Some(since) = headers.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(|v| httpdate::parse_http_date(v).ok()) else {
        return false;
    };
    // HTTP dates have whole seconds.
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    secs(mtime) <= secs(since)
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Not a single byte range we serve: the whole file (allowed by RFC 9110).
    Ignore,
    Unsatisfiable,
    /// First and last byte, inclusive.
    Bytes(u64, u64),
}

fn parse_range(value: &str, len: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Range::Ignore };
    if spec.contains(',') {
        return Range::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Ignore };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), _) if a >= len => Range::Unsatisfiable,
        (Ok(a), Ok(b)) if b >= a => Range::Bytes(a, b.min(len - 1)),
        (Ok(_), Ok(_)) => Range::Ignore,
        (Ok(a), Err(_)) if b.is_empty() => Range::Bytes(a, len - 1),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 && len > 0 => Range::Bytes(len.saturating_sub(n), len - 1),
        (Err(_), Ok(_)) if a.is_empty() => Range::Unsatisfiable,
        _ => Range::Ignore,
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Streams `remaining` bytes of an open file in 256 KiB frames (64 KiB cost
/// benches/fleet.sh a 1.02x fan-out against python3 -m http.server; 256 KiB 0.58x).
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = CHUNK.min(self.remaining as usize);
        let mut buf = vec![0u8; want];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while served"))));
                }
                buf.truncate(n);
                self.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// The token file's first line, for `[publish] token` and `[source] token`.
/// An empty one is refused: the server would demand an empty bearer.
pub(crate) fn read_token(file: &Path) -> Result<String, std::io::Error> {
    let token = std::fs::read_to_string(file)?.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the token file is empty"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_ring_dates_from_the_second_after_it_moved_once_that_second_came() {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(ring_moved(at(10_300), at(10_900)), at(10_300), "not a date in the future");
        assert_eq!(ring_moved(at(10_300), at(11_000)), at(11_000));
        assert_eq!(ring_moved(at(10_300), at(99_000)), at(11_000));
        assert_eq!(ring_moved(at(10_000), at(10_000)), at(10_000), "a whole second stays");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-511", 1000), Range::Bytes(0, 511));
        assert_eq!(parse_range("bytes=0-5000", 1000), Range::Bytes(0, 999));
        assert_eq!(parse_range("bytes=900-", 1000), Range::Bytes(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Range::Bytes(900, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Range::Ignore);
        assert_eq!(parse_range("items=0-1", 1000), Range::Ignore);
        assert_eq!(parse_range("bytes=5-1", 1000), Range::Ignore);
    }

    #[test]
    fn only_plain_paths_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        assert!(locate(&tree, "/releases/abc/daily.cvd").is_some());
        for bad in ["/releases/../x/y", "/releases/abc/.hidden", "/etc/passwd", "/rings/../../etc", "/releases/a//b", "/freshclam/none/daily.cvd"] {
            assert!(locate(&tree, bad).is_none(), "{bad}");
        }
    }

    async fn get(site: &Site, path: &str, h: &[(&str, &str)]) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut headers = HeaderMap::new();
        for (k, v) in h {
            headers.insert(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let r = respond(site, &Method::GET, path, &headers).await;
        let (parts, body) = r.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
    }

    #[tokio::test]
    async fn conditional_and_partial_gets_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        std::fs::create_dir_all(tree.release_dir("r1")).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(tree.release_dir("r1").join("daily.cvd"), &data).unwrap();
        let ptr = r#"{"ring":"canary","release":"r1","manifest_sha256":"x","generation":1,"at":"t"}"#;
        std::fs::write(tree.ring_file("canary"), ptr).unwrap();
        let site = Site { tree, token: None };
        let (s, h, body) = get(&site, "/releases/r1/daily.cvd", &[]).await;
        assert_eq!((s, body.len()), (StatusCode::OK, data.len()));
        assert_eq!(body, data);
        let etag = h[header::ETAG].to_str().unwrap().to_string();
        let last = h[header::LAST_MODIFIED].to_str().unwrap().to_string();
        assert_eq!(get(&site, "/releases/r1/daily.cvd", &[("if-none-match", &etag)]).await.0, StatusCode::NOT_MODIFIED);
        assert_eq!(get(&site, "/releases/r1/daily.cvd", &[("if-none-match", "\"other\"")]).await.0, StatusCode::OK);
        assert_eq!(get(&site, "/releases/r1/daily.cvd", &[("if-modified-since", &last)]).await.0, StatusCode::NOT_MODIFIED);
        assert_eq!(get(&site, "/releases/r1/daily.cvd", &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")]).await.0, StatusCode::OK);
        let (s, h, body) = get(&site, "/freshclam/canary/daily.cvd", &[("range", "bytes=0-511")]).await;
        assert_eq!((s, &body[..], h[header::CONTENT_RANGE].to_str().unwrap()), (StatusCode::PARTIAL_CONTENT, &data[..512], "bytes 0-511/200000"));
        let (s, _, body) = get(&site, "/releases/r1/daily.cvd", &[("range", "bytes=199990-")]).await;
        assert_eq!((s, &body[..]), (StatusCode::PARTIAL_CONTENT, &data[199_990..]));
        assert_eq!(get(&site, "/releases/r1/daily.cvd", &[("range", "bytes=300000-")]).await.0, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(get(&site, "/freshclam/canary/daily.cud", &[]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&site, "/freshclam/canary/daily.cvd", &[]).await.2, data);
        let r = respond(&site, &Method::PUT, "/rings/canary.json", &HeaderMap::new()).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let site = Site { token: Some("s3cret".into()), ..site };
        assert_eq!(get(&site, "/rings/canary.json", &[]).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&site, "/rings/canary.json", &[("authorization", "Bearer wrong!")]).await.0, StatusCode::UNAUTHORIZED);
        let (s, _, body) = get(&site, "/rings/canary.json", &[("authorization", "Bearer s3cret")]).await;
        assert_eq!((s, body), (StatusCode::OK, ptr.as_bytes().to_vec()));
    }

    /// A ring sent back to an older release: freshclam's `DatabaseCustomURL`
    /// asks If-Modified-Since its newer copy, and curl keeps that copy unless
    /// the answer is newer, so the ring's view must date from the ring's move.
    #[tokio::test]
    async fn a_rings_files_are_as_new_as_its_pointer() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::open(dir.path()).unwrap();
        std::fs::create_dir_all(tree.release_dir("old")).unwrap();
        let file = tree.release_dir("old").join("daily.cud");
        std::fs::write(&file, b"older release").unwrap();
        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(long_ago).unwrap();
        let ptr = r#"{"ring":"canary","release":"old","manifest_sha256":"x","generation":3,"at":"t"}"#;
        std::fs::write(tree.ring_file("canary"), ptr).unwrap();
        // The ring moved at 1_700_000_000.3 s; a client fetched in that second.
        let moved = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_300);
        std::fs::File::options().write(true).open(tree.ring_file("canary")).unwrap().set_modified(moved).unwrap();
        let site = Site { tree, token: None };
        let since = httpdate::fmt_http_date(long_ago + Duration::from_secs(86_400));
        let (s, h, body) = get(&site, "/freshclam/canary/daily.cud", &[("if-modified-since", &since)]).await;
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"older release"[..]));
        let next_second = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001);
        assert_eq!(h[header::LAST_MODIFIED].to_str().unwrap(), httpdate::fmt_http_date(next_second));
        let same_second = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(get(&site, "/freshclam/canary/daily.cud", &[("if-modified-since", &same_second)]).await.0, StatusCode::OK);
        // The same file by its release path keeps its own date.
        assert_eq!(get(&site, "/releases/old/daily.cud", &[("if-modified-since", &since)]).await.0, StatusCode::NOT_MODIFIED);
        let last = h[header::LAST_MODIFIED].to_str().unwrap().to_string();
        assert_eq!(get(&site, "/freshclam/canary/daily.cud", &[("if-modified-since", &last)]).await.0, StatusCode::NOT_MODIFIED);
        // Any file of the ring's release, and nothing else.
        assert_eq!(get(&site, "/freshclam/canary/custom.hdb", &[]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&site, "/freshclam/other/daily.cud", &[]).await.0, StatusCode::NOT_FOUND);
        // A ring halted with nothing earlier to send: freshclam is not given it.
        let halted = r#"{"ring":"canary","release":"old","manifest_sha256":"x","generation":4,"at":"t","halted":true}"#;
        std::fs::write(site.tree.ring_file("canary"), halted).unwrap();
        assert_eq!(get(&site, "/freshclam/canary/daily.cud", &[]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&site, "/releases/old/daily.cud", &[]).await.0, StatusCode::OK);
    }
}
