//! TLS to etcd: the client's options from `--etcd-ca`, `--etcd-cert` and `--etcd-key`.

use std::path::PathBuf;

use super::{invalid, EtcdConfig};
use crate::datastore::DatastoreError;

/// TLS options from the configured files; `None` when none is given. Plain `http://`
/// endpoints with TLS files are refused (the files would silently go unused).
pub(super) fn tls_options(
    cfg: &EtcdConfig,
) -> Result<Option<etcd_client::TlsOptions>, DatastoreError> {
    if cfg.ca.is_none() && cfg.cert.is_none() && cfg.key.is_none() {
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| invalid(format!("reading {}: {e}", p.display())))
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &cfg.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err(invalid("--etcd-cert and --etcd-key go together")),
    }
    if let Some(e) = cfg.endpoints.iter().find(|e| e.starts_with("http://")) {
        return Err(invalid(format!(
            "TLS files given (--etcd-ca/--etcd-cert) but endpoint {e} is plain http: use https://"
        )));
    }
    Ok(Some(tls))
}
