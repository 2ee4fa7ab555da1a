//! etcd backend (placeholder until the etcd client lands).

use std::time::Duration;

use ipnetwork::Ipv4Network;

use super::{Datastore, DatastoreError, PrefixClaim};

/// How to reach etcd and how claims live there.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/vpcnet`; claims live under `<prefix>/claims/`.
    pub prefix: String,
    /// Claims hang off a lease with this TTL, kept alive by the agent.
    pub lease_ttl: Duration,
    /// Where the current lease ID is remembered across restarts.
    pub state_dir: std::path::PathBuf,
    pub node: String,
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

#[derive(Debug)]
pub struct EtcdDatastore {
    _cfg: EtcdConfig,
}

fn unavailable() -> DatastoreError {
    DatastoreError::Unavailable {
        backend: "etcd",
        msg: "etcd backend not built yet".into(),
    }
}

impl EtcdDatastore {
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdDatastore, DatastoreError> {
        Ok(EtcdDatastore { _cfg: cfg })
    }
}

impl Datastore for EtcdDatastore {
    fn name(&self) -> &'static str {
        "etcd"
    }
    async fn claim(&self, _claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        Err(unavailable())
    }
    async fn release(&self, _prefix: Ipv4Network, _node: &str) -> Result<(), DatastoreError> {
        Err(unavailable())
    }
    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        Err(unavailable())
    }
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
}
