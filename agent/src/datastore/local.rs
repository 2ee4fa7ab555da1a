//! The embedded single-node datastore: the claims live in one JSON file in the agent's state
//! directory, rewritten atomically and durably on every change (claims are rare: one per 16
//! pods). Claims from several processes on one machine are serialised by an flock.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

use super::{Datastore, DatastoreError, PrefixClaim};
use crate::node::store::{create_private, write_atomic};

const FILE: &str = "claims.json";
const LOCK: &str = ".claims.lock";

#[derive(Debug)]
pub struct LocalDatastore {
    dir: PathBuf,
}

fn err(e: impl std::fmt::Display) -> DatastoreError {
    DatastoreError::Unavailable {
        backend: "local",
        msg: e.to_string(),
    }
}

impl LocalDatastore {
    pub fn open(dir: &Path) -> Result<LocalDatastore, DatastoreError> {
        std::fs::create_dir_all(dir).map_err(err)?;
        Ok(LocalDatastore {
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `f` over the claims under an exclusive lock; writes them back if it returns true.
    fn with_claims<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, PrefixClaim>) -> (bool, T),
    ) -> Result<T, DatastoreError> {
        let lock_file = create_private(&self.dir.join(LOCK), false).map_err(err)?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| err(e))?;
        let mut claims: BTreeMap<String, PrefixClaim> = match File::open(self.dir.join(FILE)) {
            Ok(f) => serde_json::from_reader(io::BufReader::new(f)).map_err(|e| {
                DatastoreError::Invalid {
                    backend: "local",
                    msg: format!("{}: {e}", self.dir.join(FILE).display()),
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(e)),
        };
        let (changed, out) = f(&mut claims);
        if changed {
            let bytes = serde_json::to_vec_pretty(&claims).map_err(err)?;
            write_atomic(&self.dir, FILE, &bytes).map_err(err)?;
        }
        Ok(out)
    }
}

impl Datastore for LocalDatastore {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn claim(&self, claim: &PrefixClaim) -> Result<bool, DatastoreError> {
        self.with_claims(|claims| match claims.entry(claim.prefix.to_string()) {
            std::collections::btree_map::Entry::Occupied(_) => (false, false),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(claim.clone());
                (true, true)
            }
        })
    }

    async fn release(&self, prefix: IpNetwork, node: &str) -> Result<(), DatastoreError> {
        self.with_claims(|claims| {
            let key = prefix.to_string();
            if claims.get(&key).is_some_and(|c| c.node == node) {
                claims.remove(&key);
                (true, ())
            } else {
                (false, ())
            }
        })
    }

    async fn list(&self) -> Result<Vec<PrefixClaim>, DatastoreError> {
        self.with_claims(|claims| (false, claims.values().cloned().collect()))
    }

    /// One node: no race for prefixes.
    fn shared(&self) -> bool {
        false
    }

    /// One node, no peers: nothing to watch.
    async fn changed(&self) {
        std::future::pending::<()>().await
    }
}
