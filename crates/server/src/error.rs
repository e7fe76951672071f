//! Why a server could not start. Each variant says what to fix.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tether_store::StoreError;

use crate::config::ConfigError;

/// A server that did not start: nothing is left running.
#[derive(Debug)]
pub enum StartError {
    /// A setting is out of range or inconsistent: fix the configuration.
    Config(ConfigError),
    /// The data directory could not be created (permissions, full disk).
    DataDir { path: PathBuf, source: io::Error },
    /// Storage could not be opened: an unreachable database, an unreadable
    /// file, or a schema newer than this build. `spec` has no password.
    Storage { spec: String, source: StoreError },
    /// A listener could not be bound (port in use, no permission).
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Cluster mode could not start: NATS unreachable, or JetStream off.
    Cluster(String),
    /// A thread, poller or socket option failed: the process is out of a
    /// resource (threads, descriptors, memory).
    Os(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "bad configuration: {e}"),
            StartError::DataDir { path, source } => {
                write!(f, "cannot create data dir {}: {source}", path.display())
            }
            StartError::Storage { spec, source } => {
                write!(f, "cannot open storage {spec}: {source}")
            }
            StartError::Listen { what, addr, source } => {
                write!(f, "cannot listen on {addr} ({what}): {source}")
            }
            StartError::Cluster(e) => write!(f, "cannot join the cluster: {e}"),
            StartError::Os(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::DataDir { source, .. } => Some(source),
            StartError::Storage { source, .. } => Some(source),
            StartError::Listen { source, .. } => Some(source),
            StartError::Cluster(_) => None,
            StartError::Os(e) => Some(e),
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Os(e)
    }
}
