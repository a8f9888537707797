//! `[publish]` (the gate) and `[source]` (a fleet host): parsed into types
//! that are valid once built; problems name their key like the rest of the config.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::Fields;

pub(crate) mod defaults {
    pub(crate) const PUBLISH_DIR: &str = "/var/lib/clamgate/publish";
    /// Loopback: the tree is public, but who may fetch it is the operator's choice.
    pub(crate) const PUBLISH_LISTEN: &str = "127.0.0.1:3312";
    pub(crate) const PUBLISH_KEY: &str = "/etc/clamgate/publish.key";
    pub(crate) const PUBLIC_KEY: &str = "/etc/clamgate/publish.pub";
}

/// The gate's side: where the signed tree goes, who serves it, and the rings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PublishConfig {
    pub(crate) dir: PathBuf,
    /// `None` when set to "": another web server serves `dir`.
    pub(crate) listen: Option<String>,
    /// The minisign secret key (`clamgate keygen`).
    pub(crate) key: PathBuf,
    /// A file holding a bearer token the embedded server requires; `None`: open.
    pub(crate) token: Option<PathBuf>,
    /// How often the gate asks each host's `/readyz`.
    pub(crate) host_poll_interval: Duration,
    /// How long a host may take to run a ring's new release before the
    /// rollout halts and the ring is reverted.
    pub(crate) take_timeout: Duration,
    pub(crate) rings: Vec<RingConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RingConfig {
    pub(crate) name: String,
    /// Each host's health address (`http://mx1:3311`).
    pub(crate) hosts: Vec<String>,
    /// Healthy time on the new release before the next ring gets it.
    pub(crate) soak: Duration,
}

/// A fleet host's side: which ring pointer it follows and whose key signs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceConfig {
    /// `http://gate:3312/rings/<ring>.json`.
    pub(crate) url: String,
    pub(crate) poll_interval: Duration,
    pub(crate) trust_gate_verdict: bool,
    pub(crate) public_key: PathBuf,
    pub(crate) token: Option<PathBuf>,
    /// The gate unreachable this long makes `/readyz` warn.
    pub(crate) warn_after: Duration,
}

impl PublishConfig {
    pub(crate) fn parse(s: &mut Fields) -> PublishConfig {
        let rings =
            s.tables("ring", |r| RingConfig { name: r.string("name", ""), hosts: r.opt_strings("hosts").unwrap_or_default(), soak: r.span("soak", "30m") });
        let mut names = std::collections::BTreeSet::new();
        for ring in &rings {
            if !valid_name(&ring.name) {
                s.problem("ring", format_args!("ring name {:?} must be letters, digits, '-' or '_'", ring.name));
            } else if !names.insert(ring.name.clone()) {
                s.problem("ring", format_args!("ring {:?} is named twice", ring.name));
            }
            if let Some(h) = ring.hosts.iter().find(|h| !h.starts_with("http://")) {
                s.problem("ring", format_args!("host {h:?} of ring {:?} is not an http:// health address", ring.name));
            }
        }
        PublishConfig {
            dir: s.path("dir", defaults::PUBLISH_DIR),
            listen: Some(s.string("listen", defaults::PUBLISH_LISTEN)).filter(|l| !l.is_empty()),
            key: s.path("key", defaults::PUBLISH_KEY),
            token: Some(s.string("token", "")).filter(|t| !t.is_empty()).map(PathBuf::from),
            host_poll_interval: s.duration("host_poll_interval", "10s"),
            take_timeout: s.duration("take_timeout", "30m"),
            rings,
        }
    }
}

impl SourceConfig {
    pub(crate) fn parse(s: &mut Fields) -> SourceConfig {
        let url = s.string("url", "");
        if !url.starts_with("http://") || ring_of_url(&url).is_none() {
            s.problem("url", "must be an http:// URL ending in /rings/<name>.json");
        }
        SourceConfig {
            url,
            poll_interval: s.duration("poll_interval", "60s"),
            trust_gate_verdict: s.bool("trust_gate_verdict", false),
            public_key: s.path("public_key", defaults::PUBLIC_KEY),
            token: Some(s.string("token", "")).filter(|t| !t.is_empty()).map(PathBuf::from),
            warn_after: s.duration("warn_after", "1h"),
        }
    }

    /// The ring this host follows, from its URL.
    pub(crate) fn ring(&self) -> &str {
        ring_of_url(&self.url).unwrap_or("")
    }

    /// The tree's root URL (without the trailing slash).
    pub(crate) fn base(&self) -> &str {
        self.url.rsplit_once("/rings/").map_or("", |(b, _)| b)
    }
}

fn ring_of_url(url: &str) -> Option<&str> {
    let (_, file) = url.rsplit_once("/rings/")?;
    file.strip_suffix(".json").filter(|n| valid_name(n))
}

/// Ring names become file names in the tree.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(Path::new("c.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn rings_parse_in_order_with_zero_soak() {
        let c = parse(
            "[publish]\nkey = \"/k\"\n[[publish.ring]]\nname = \"canary\"\nhosts = [\"http://a:3311\"]\nsoak = \"2s\"\n\
             [[publish.ring]]\nname = \"all\"\nhosts = [\"http://b:3311\", \"http://c:3311\"]\nsoak = \"0s\"\n",
        )
        .unwrap();
        let p = c.publish.unwrap();
        assert_eq!(p.rings.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["canary", "all"]);
        assert_eq!((p.rings[0].soak, p.rings[1].soak), (Duration::from_secs(2), Duration::ZERO));
        assert_eq!(p.listen.as_deref(), Some("127.0.0.1:3312"));
        assert!(c.source.is_none());
    }

    #[test]
    fn bad_rings_and_urls_are_named() {
        let err = parse("[publish]\n[[publish.ring]]\nname = \"a/b\"\nhosts = [\"mx1\"]\nsoak = \"x\"\ncolour = 1\n[source]\nurl = \"http://g/x.json\"\n")
            .unwrap_err();
        for want in ["ring name \"a/b\"", "host \"mx1\"", "publish.ring[0].soak", "publish.ring[0].colour: unknown key", "source.url"] {
            assert!(err.contains(want), "{want:?} missing: {err}");
        }
    }

    #[test]
    fn source_knows_its_ring_and_base() {
        let c = parse("[source]\nurl = \"http://gate:3312/rings/canary.json\"\n").unwrap();
        let s = c.source.unwrap();
        assert_eq!((s.ring(), s.base()), ("canary", "http://gate:3312"));
        assert_eq!(s.poll_interval, Duration::from_secs(60));
    }
}
