//! The background watch of PrefixClaims that signals `changed`: LIST for a resourceVersion,
//! WATCH from it, resume when the stream ends, re-list on `410 Gone`, back off while the API
//! server is away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, WatchEvent, WatchParams};

use super::{
    claim_of, is_code, ClaimObject, KubernetesBackend, BACKOFF_MAX, OP_TIMEOUT, WATCH_TIMEOUT_SECS,
};
use crate::backoff::Backoff;
use crate::datastore::{common, ClaimDelta, PrefixClaim};

/// The claims as the watch has seen them.
#[derive(Debug, Default)]
pub(super) struct View {
    /// Filled by a LIST and followed by a watch that is open: `list` may answer from it.
    pub(super) synced: bool,
    /// Object name → claim (malformed objects are left out, as `list` always did).
    pub(super) claims: std::collections::BTreeMap<String, PrefixClaim>,
}

impl KubernetesBackend {
    pub(super) fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the view with a full list (in sync from now on): [`ClaimDelta::Resync`].
    fn view_fill(&self, items: &[ClaimObject]) {
        let claims = items
            .iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, claim_of(o)?)))
            .collect();
        *self.view() = View {
            synced: true,
            claims,
        };
        let _ = self.deltas.send(ClaimDelta::Resync);
    }

    /// Applies one watch event to the view and publishes what changed (under the view's
    /// lock, so subscribers see the view's order).
    fn view_apply(&self, obj: &ClaimObject, deleted: bool) {
        let Some(name) = obj.metadata.name.clone() else {
            return;
        };
        let mut v = self.view();
        let delta = match (deleted, claim_of(obj)) {
            (false, Some(c)) => (v.claims.insert(name, c.clone()).as_ref() != Some(&c))
                .then_some(ClaimDelta::Put(c)),
            _ => v.claims.remove(&name).map(ClaimDelta::Removed),
        };
        if let Some(d) = delta {
            let _ = self.deltas.send(d);
        }
    }
}

/// Logs the end of an outage the watch had reported.
fn recovered(last_err: &mut Option<String>) {
    if last_err.take().is_some() {
        tracing::info!("kubernetes: watching claims again");
    }
}

/// One object event: into the view (and `deltas`), `rv` follows it, `changed` is signalled.
fn on_event(
    inner: &KubernetesBackend,
    o: ClaimObject,
    deleted: bool,
    rv: &mut String,
    last_err: &mut Option<String>,
) {
    recovered(last_err);
    inner.view_apply(&o, deleted);
    if let Some(v) = o.metadata.resource_version {
        *rv = v;
    }
    inner.changed.notify_one();
}

/// How one watch request ended.
enum WatchEnd {
    /// The server closed the stream (its timeout): resume from the last resourceVersion.
    Closed,
    /// 410 Gone: the resourceVersion is too old; re-list.
    Gone,
    /// Anything else: back off, then resume (or re-list if no resourceVersion is known).
    Failed(String),
}

/// One watch request from `rv`; `rv` follows the events and bookmarks. Returns how it ended
/// and whether any event arrived.
async fn watch_once(
    inner: &KubernetesBackend,
    rv: &mut String,
    last_err: &mut Option<String>,
) -> (WatchEnd, bool) {
    let wp = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
    let stream = match inner.claims.watch(&wp, rv).await {
        Ok(s) => {
            // Open from a resourceVersion the view reflects: in sync again (events missed
            // while not watching are replayed first).
            inner.view().synced = true;
            s
        }
        Err(e) if is_code(&e, 410) => return (WatchEnd::Gone, false),
        Err(e) => return (WatchEnd::Failed(e.to_string()), false),
    };
    let mut stream = std::pin::pin!(stream);
    let mut progressed = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                on_event(inner, o, false, rv, last_err);
                progressed = true;
            }
            Ok(WatchEvent::Deleted(o)) => {
                on_event(inner, o, true, rv, last_err);
                progressed = true;
            }
            Ok(WatchEvent::Bookmark(b)) => {
                recovered(last_err);
                *rv = b.metadata.resource_version;
                progressed = true;
            }
            Ok(WatchEvent::Error(e)) if e.code == 410 => return (WatchEnd::Gone, progressed),
            // A non-2xx answer to the watch request itself arrives as the stream's first item.
            Err(e) if is_code(&e, 410) => return (WatchEnd::Gone, progressed),
            Ok(WatchEvent::Error(e)) => {
                return (WatchEnd::Failed(format!("watch error: {e}")), progressed)
            }
            Err(e) => return (WatchEnd::Failed(e.to_string()), progressed),
        }
    }
    (WatchEnd::Closed, progressed)
}

/// Background: LIST for a resourceVersion, then WATCH from it for as long as it lasts;
/// resume after the stream ends, re-list on 410 Gone, back off while the server is away.
pub(super) async fn watch_claims(inner: Arc<KubernetesBackend>) {
    let mut backoff = common::backoff(BACKOFF_MAX);
    let mut rv: Option<String> = None;
    let mut listed_before = false;
    let mut last_err: Option<String> = None;
    // Logs a failure (once until it changes), then waits out the back-off.
    let retry = |last_err: &mut Option<String>, backoff: &mut Backoff, msg: String| {
        let msg = format!("watching claims at {}: {msg}", inner.server);
        let delay = backoff.next_delay();
        if last_err.as_deref() != Some(msg.as_str()) {
            tracing::warn!(error = %msg, retry_in = ?delay, "kubernetes: watch failed; retrying with back-off");
            *last_err = Some(msg);
        }
        tokio::time::sleep(delay)
    };
    loop {
        let mut version = match rv.take() {
            Some(v) => v,
            None => {
                inner.count_list();
                let listed =
                    tokio::time::timeout(OP_TIMEOUT, inner.claims.list(&ListParams::default()))
                        .await;
                match listed {
                    Ok(Ok(list)) => match list.metadata.resource_version {
                        Some(v) if !v.is_empty() => {
                            recovered(&mut last_err);
                            inner.view_fill(&list.items);
                            if listed_before {
                                // Events may have been missed while not watching.
                                inner.changed.notify_one();
                            }
                            listed_before = true;
                            v
                        }
                        _ => {
                            retry(
                                &mut last_err,
                                &mut backoff,
                                "LIST returned no resourceVersion".into(),
                            )
                            .await;
                            continue;
                        }
                    },
                    Ok(Err(e)) => {
                        retry(&mut last_err, &mut backoff, e.to_string()).await;
                        continue;
                    }
                    Err(_) => {
                        retry(
                            &mut last_err,
                            &mut backoff,
                            format!("LIST: no answer within {OP_TIMEOUT:?}"),
                        )
                        .await;
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        let (end, progressed) = watch_once(&inner, &mut version, &mut last_err).await;
        // Not watching: `list` reads the server until the watch is open again.
        inner.view().synced = false;
        if progressed {
            backoff.reset();
        }
        match end {
            WatchEnd::Closed => {
                rv = Some(version);
                // A server that ends every watch at once must not make this spin.
                if !progressed && started.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(backoff.next_delay()).await;
                } else {
                    backoff.reset();
                }
            }
            WatchEnd::Gone => {
                tracing::info!(
                    resource_version = %version,
                    "kubernetes: resourceVersion too old (410 Gone): re-listing claims"
                );
            }
            WatchEnd::Failed(msg) => {
                rv = Some(version);
                retry(&mut last_err, &mut backoff, msg).await;
            }
        }
    }
}
