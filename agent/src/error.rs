//! Why the agent cannot start or must stop. Every message says what was being done and
//! whether the host was touched; `main` prints it and exits non-zero (the only
//! `process::exit`). Errors of single requests are [`crate::node::NodeError`], mapped to CNI
//! codes in [`crate::server`].

use std::path::PathBuf;

use crate::datastore::DatastoreError;
use crate::node::store::StoreError;
use vpcnet_netlink::NetlinkError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag is invalid (the message names it).
    #[error("{0}")]
    Config(String),
    /// Another agent holds the socket's lock.
    #[error(
        "another vpcnetd is running on socket {} (it holds {}); refusing to start, nothing on \
         this host was changed",
        socket.display(),
        lock.display()
    )]
    AlreadyRunning { socket: PathBuf, lock: PathBuf },
    /// Something answers on the socket without holding the lock (an older agent).
    #[error(
        "another vpcnetd (one that takes no lock: an older version?) serves socket {}; \
         refusing to start, nothing on this host was changed",
        .0.display()
    )]
    UnlockedAgent(PathBuf),
    /// The state on disk cannot be trusted (corrupt, or missing pods the host runs).
    #[error(
        "refusing to start: {what}; nothing on this host was changed. The state in {} \
         (pool.json, pool.journal) cannot be trusted: inspect it, or run `vpcnetd \
         rebuild-state` with the same flags to rebuild it from the pods the kernel has (the \
         old files are kept)",
        dir.display()
    )]
    StateRefused { dir: PathBuf, what: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        source: NetlinkError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// Installing or removing the SNAT table failed (the message says how to fix it).
    #[error(transparent)]
    Snat(#[from] crate::snat::SnatError),
    /// A vital background task ended; the agent exits so that it is restarted.
    #[error("the {0}; exiting so that the agent is restarted")]
    TaskEnded(String),
}

impl AgentError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn netlink(what: &'static str) -> impl FnOnce(NetlinkError) -> Self {
        move |source| AgentError::Netlink { what, source }
    }
}
