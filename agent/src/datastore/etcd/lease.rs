//! The lease this node's claims hang off: establishing it (the current one, the one
//! remembered in [`LEASE_FILE`] if etcd still knows it, or a new grant) and the file that
//! remembers it across restarts.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::{EtcdBackend, Hex, LEASE_FILE};
use crate::datastore::common::Backend;
use crate::datastore::DatastoreError;

impl EtcdBackend {
    pub(super) fn lease_file(&self) -> PathBuf {
        self.state_dir.join(LEASE_FILE)
    }

    pub(super) fn stored_lease(&self) -> Option<i64> {
        let text = std::fs::read_to_string(self.lease_file()).ok()?;
        match text.trim().parse::<i64>() {
            Ok(id) if id != 0 => Some(id),
            _ => {
                tracing::warn!(file = %self.lease_file().display(), "etcd: ignoring a malformed lease file");
                None
            }
        }
    }

    pub(super) fn store_lease(&self, id: i64) {
        let r = std::fs::create_dir_all(&self.state_dir).and_then(|()| {
            crate::node::store::write_atomic(
                &self.state_dir,
                LEASE_FILE,
                format!("{id}\n").as_bytes(),
            )
        });
        if let Err(e) = r {
            // Not fatal: a restart then grants a new lease and announces the node on it.
            tracing::warn!(file = %self.lease_file().display(), error = %e, "etcd: could not remember the lease");
        }
    }

    /// The live lease: the current one, else the remembered one if etcd still knows it, else
    /// a new grant. Called by the keep-alive task only (a claim does not wait for a lease).
    pub(super) async fn ensure_lease(&self) -> Result<i64, DatastoreError> {
        let id = self.lease.load(Ordering::SeqCst);
        if id != 0 {
            return Ok(id);
        }
        let _g = self.lease_lock.lock().await;
        let id = self.lease.load(Ordering::SeqCst);
        if id != 0 {
            return Ok(id);
        }
        let mut c = self.client.clone();
        if let Some(old) = self.stored_lease() {
            self.count("lease");
            let sent = tokio::time::Instant::now();
            let r = c
                .lease_time_to_live(old, None)
                .await
                .map_err(|e| self.unavailable("looking up lease", e))?;
            if r.ttl() > 0 && r.granted_ttl() == self.ttl_secs {
                tracing::info!(lease = %Hex(old), ttl_left_s = r.ttl(), "etcd: reusing lease");
                self.held_until(old, sent, r.ttl());
                self.lease.store(old, Ordering::SeqCst);
                self.lease_kick.notify_one();
                return Ok(old);
            }
        }
        self.count("lease");
        // Its TTL starts when etcd grants it, after this: the first renewal is due no sooner
        // than one keep-alive interval from now.
        let sent = tokio::time::Instant::now();
        let renew_at = sent + self.keepalive_every;
        let r = c
            .lease_grant(self.ttl_secs, None)
            .await
            .map_err(|e| self.unavailable("granting lease", e))?;
        let id = r.id();
        if id == 0 {
            return Err(self.unavailable("granting lease", "etcd returned lease 0"));
        }
        tracing::info!(lease = %Hex(id), ttl_s = r.ttl(), "etcd: granted lease");
        crate::obs::process::startup_phase("lease");
        self.held_until(id, sent, r.ttl());
        self.store_lease(id);
        *self
            .first_renew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((id, renew_at));
        self.lease.store(id, Ordering::SeqCst);
        self.lease_kick.notify_one();
        Ok(id)
    }

    /// When the first renewal of `lease` is due, if it was just granted (and not renewed yet):
    /// the keep-alive task waits for it instead of renewing at once.
    pub(super) fn take_first_renew(&self, lease: i64) -> Option<tokio::time::Instant> {
        self.first_renew
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .filter(|(id, _)| *id == lease)
            .map(|(_, at)| at)
    }

    /// Notes that etcd has `lease` for at least `ttl_secs` from `sent` (when the grant, renewal
    /// or look-up that answered so was sent: etcd counts the TTL from later).
    pub(super) fn held_until(&self, lease: i64, sent: tokio::time::Instant, ttl_secs: i64) {
        let ttl = std::time::Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0));
        *self
            .alive_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((lease, sent + ttl));
    }

    /// Forgets `id` (if still current) so the next user establishes a new lease.
    pub(super) fn forget_lease(&self, id: i64) {
        let _ = self
            .lease
            .compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
        self.lease_kick.notify_one();
    }
}
