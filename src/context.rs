//! What a command needs from the config, built one way for the daemon and
//! every CLI command: the state dir, the corpus and the production clamd
//! with its smoke samples. (The policy is the daemon's and `check`'s alone:
//! a broken policy file must not keep an operator from `rollback` or `pin`.)

use std::path::PathBuf;

use crate::config::Config;
use crate::corpus::{Corpus, CorpusError};
use crate::managed::{ClamdConf, Managed};
use crate::production::{MissingSample, Production, smoke_samples};
use crate::store::{Store, StoreError};

/// Whether the state dir may be created: only the daemon makes one; a CLI
/// command on a missing state dir means a wrong config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateDir {
    Create,
    MustExist,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ContextError {
    #[error("state dir {0} does not exist yet (has `clamgate run` ever started?)")]
    NoStateDir(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Managed(#[from] crate::managed::ConfError),
    #[error("config {}: {source}", file.display())]
    Smoke {
        file: PathBuf,
        #[source]
        source: MissingSample,
    },
}

/// The parts of a running clamgate that the config describes.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) corpus: Corpus,
    pub(crate) production: Production,
    /// Managed mode: the supervisor of production clamd (`[clamd] managed`).
    pub(crate) managed: Option<Managed>,
}

impl Context {
    pub(crate) fn open(config: Config, state: StateDir) -> Result<Context, ContextError> {
        let corpus = Corpus::load(&config.corpus_dir)?;
        let mut production = production(&config, &corpus)?;
        let managed = managed(&config)?;
        if let Some(m) = &managed {
            production.client = crate::clamd::Client::unix(m.production_socket(), config.clamd.timeout);
        }
        // Last: a bad config must not create a state dir.
        let store = open_store(&config, state)?;
        Ok(Context { config, store, corpus, production, managed })
    }
}

/// The supervisor, in managed mode: `conf` read and checked now, so a
/// TCPSocket there stops the start with its file and line.
pub(crate) fn managed(config: &Config) -> Result<Option<Managed>, ContextError> {
    if !config.clamd.managed {
        return Ok(None);
    }
    let conf = ClamdConf::load(&config.clamd.conf)?;
    if let crate::clamd::Endpoint::Unix(p) = &config.clamd.endpoint
        && p != &conf.production_socket
    {
        tracing::debug!(
            "managed mode: production is {}'s LocalSocket {}, not clamd.socket {}",
            conf.file.display(),
            conf.production_socket.display(),
            p.display()
        );
    }
    let c = &config.clamd;
    Ok(Some(Managed::new(conf, &c.binary, &config.state_dir, c.reload_timeout, c.timeout)))
}

/// The state dir alone, for the read-only commands.
pub(crate) fn open_store(config: &Config, state: StateDir) -> Result<Store, ContextError> {
    if state == StateDir::MustExist && !config.state_dir.is_dir() {
        return Err(ContextError::NoStateDir(config.state_dir.clone()));
    }
    Ok(Store::open(&config.state_dir)?)
}

/// The production clamd, with the configured smoke samples from `corpus`.
pub(crate) fn production(config: &Config, corpus: &Corpus) -> Result<Production, ContextError> {
    let smoke = smoke_samples(corpus, config.smoke_samples.as_deref()).map_err(|source| ContextError::Smoke { file: config.display_file(), source })?;
    let client = crate::clamd::Client::new(config.clamd.endpoint.clone(), config.clamd.timeout);
    Ok(Production { client, reload_timeout: config.clamd.reload_timeout, smoke })
}
