//! Talking to a clamd: the client every other module uses (PING, VERSION,
//! RELOAD, INSTREAM), and [`process`], which starts clamd instances of
//! our own (canaries, the demo's production clamd, tests).
//!
//! Every call is bounded by the client's timeout and fails with a
//! [`ClamdError`] naming the socket, because a clamd that hangs must never
//! hang the gate or the milter with it.

pub mod process;
pub mod reply;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clamav_client::tokio as cc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use reply::{ReplyError, ScanVerdict, Version};

/// Chunk size for INSTREAM; clamd's default StreamMaxLength is 100 MiB, and
/// larger chunks mean fewer syscalls on both sides.
const CHUNK: usize = 64 * 1024;

/// Where a clamd listens, as clamd.conf's `LocalSocket` or `TCPSocket`/`TCPAddr`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A failed conversation with clamd. Each variant names the endpoint and the
/// command, so one log line says which clamd failed at what.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("clamd at {endpoint}: {command} timed out after {after:?}")]
    Timeout { endpoint: Endpoint, command: &'static str, after: Duration },
    #[error("clamd at {endpoint}: {command} failed: {source}")]
    Io {
        endpoint: Endpoint,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("clamd at {endpoint}: {command}: {source}")]
    Reply {
        endpoint: Endpoint,
        command: &'static str,
        #[source]
        source: ReplyError,
    },
    #[error("clamd at {endpoint}: cannot read {file}: {source}")]
    File {
        endpoint: Endpoint,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClamdError {
    /// True when clamd could not be reached at all (down, socket missing):
    /// callers report "clamd down" rather than "clamd misbehaves".
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClamdError::Io { source, .. } if matches!(source.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset))
    }
}

/// A cheap, cloneable handle on one clamd. Holds no connection: clamd serves
/// one command per connection for the z-commands we use.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

impl Client {
    pub(crate) fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Client { endpoint, timeout }
    }

    pub fn unix(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Client::new(Endpoint::Unix(path.into()), timeout)
    }

    /// The same clamd with another per-call timeout (scans of big files).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Client { endpoint: self.endpoint.clone(), timeout }
    }

    async fn bounded<T, F>(&self, command: &'static str, fut: F) -> Result<T, ClamdError>
    where
        F: Future<Output = std::io::Result<T>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(ClamdError::Io { endpoint: self.endpoint.clone(), command, source }),
            Err(_) => Err(ClamdError::Timeout { endpoint: self.endpoint.clone(), command, after: self.timeout }),
        }
    }

    fn parsed<T>(&self, command: &'static str, r: Result<T, ReplyError>) -> Result<T, ClamdError> {
        r.map_err(|source| ClamdError::Reply { endpoint: self.endpoint.clone(), command, source })
    }

    /// Runs one clamav-client call against whichever transport we have.
    async fn call<Fu, Fs>(&self, command: &'static str, unix: Fu, tcp: Fs) -> Result<Vec<u8>, ClamdError>
    where
        Fu: AsyncFnOnce(cc::Socket<&Path>) -> std::io::Result<Vec<u8>>,
        Fs: AsyncFnOnce(cc::Tcp<&str>) -> std::io::Result<Vec<u8>>,
    {
        match &self.endpoint {
            Endpoint::Unix(p) => self.bounded(command, unix(cc::Socket { socket_path: p.as_path() })).await,
            Endpoint::Tcp(a) => self.bounded(command, tcp(cc::Tcp { host_address: a.as_str() })).await,
        }
    }

    pub async fn ping(&self) -> Result<(), ClamdError> {
        let raw = self.call("PING", async |c| cc::ping(c).await, async |c| cc::ping(c).await).await?;
        self.parsed("PING", reply::parse_ping(&raw))
    }

    pub async fn version(&self) -> Result<Version, ClamdError> {
        let raw = self.call("VERSION", async |c| cc::get_version(c).await, async |c| cc::get_version(c).await).await?;
        self.parsed("VERSION", reply::parse_version(&raw))
    }

    /// Asks clamd to reload its databases. clamd answers at once and reloads
    /// in the background; watch [`Client::version`] to see the new database.
    pub async fn reload(&self) -> Result<(), ClamdError> {
        let raw = self.call("RELOAD", async |c| cc::reload(c).await, async |c| cc::reload(c).await).await?;
        self.parsed("RELOAD", reply::parse_reload(&raw))
    }

    /// Streams a file's content to clamd (INSTREAM), so clamd needs no access
    /// to our files: the canary and production may run as other users.
    pub async fn scan_file(&self, path: &Path) -> Result<ScanVerdict, ClamdError> {
        // Read first, so a missing sample is a file error, not a clamd error;
        // and in one go: every tokio::fs call (a metadata, an open, each
        // chunk) is a trip to the blocking pool, whose threads and their
        // malloc arenas grew the daemon's RSS in soaks (samples are small).
        let data = tokio::fs::read(path).await.map_err(|source| ClamdError::File { endpoint: self.endpoint.clone(), file: path.to_path_buf(), source })?;
        let mut scan = self.stream().await?;
        scan.send(&data).await?;
        scan.finish().await
    }

    /// Starts an INSTREAM scan fed chunk by chunk, for callers that receive
    /// the data piecewise (the milter) and must not buffer a whole message.
    pub async fn stream(&self) -> Result<StreamScan, ClamdError> {
        let conn = self
            .bounded("INSTREAM", async {
                let mut conn = self.connect().await?;
                conn.write_all(b"zINSTREAM\0").await?;
                Ok(conn)
            })
            .await?;
        Ok(StreamScan { client: self.clone(), conn })
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
            Endpoint::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a.as_str()).await?),
        })
    }
}

/// An INSTREAM scan in progress; see [`Client::stream`]. Each call is bounded
/// by the client's timeout. Dropping it abandons the scan.
pub struct StreamScan {
    client: Client,
    conn: Box<dyn Conn>,
}

impl StreamScan {
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClamdError> {
        let conn = &mut self.conn;
        self.client
            .bounded("INSTREAM", async {
                for chunk in data.chunks(CHUNK) {
                    conn.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
                    conn.write_all(chunk).await?;
                }
                Ok(())
            })
            .await
    }

    pub async fn finish(mut self) -> Result<ScanVerdict, ClamdError> {
        let conn = &mut self.conn;
        let raw = self
            .client
            .bounded("INSTREAM", async {
                conn.write_all(&[0, 0, 0, 0]).await?;
                conn.flush().await?;
                let mut out = Vec::new();
                conn.read_to_end(&mut out).await?;
                Ok(out)
            })
            .await?;
        self.client.parsed("INSTREAM", reply::parse_scan(&raw))
    }
}
