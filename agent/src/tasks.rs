//! The agent's background tasks, in one [`JoinSet`]: the socket server, the veth reaper, the
//! metrics endpoint and the loops (warm pool, periodic reconcile, peer routes, conflist).
//!
//! Invariant: **the agent is never up but deaf or half-done.** Every task runs forever; one
//! that ends or panics is logged. If it is a [vital](Task::vital) one (all but the metrics
//! endpoint), the agent stops with an error and exits non-zero, so its supervisor (the
//! DaemonSet's kubelet, systemd) restarts it: a dead socket server would otherwise leave the
//! agent running but answering no plugin, a dead warm loop would let the pool run dry. The
//! metrics endpoint costs only metrics and probes (as when its port cannot be bound), and a
//! dead `/healthz` gets the agent restarted by its liveness probe anyway.
//! (A release build has `panic = "abort"`: there a panic ends the process at once.)

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{AbortHandle, Id, JoinError, JoinSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// The plugin's socket.
    Server,
    Reaper,
    /// `/metrics`, `/healthz`, `/readyz`, `/pool`.
    Metrics,
    Warm,
    Reconcile,
    Peers,
    Conflist,
    /// `--network-policy`: the API watches and the nftables ruleset.
    NetworkPolicy,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Server => "socket server",
            Task::Reaper => "veth reaper",
            Task::Metrics => "metrics endpoint",
            Task::Warm => "warm pool loop",
            Task::Reconcile => "reconcile loop",
            Task::Peers => "peer routes loop",
            Task::Conflist => "conflist writer",
            Task::NetworkPolicy => "network policy loop",
        }
    }

    /// Whether its end stops the agent (see the module docs).
    pub fn vital(self) -> bool {
        self != Task::Metrics
    }

    /// Whether it holds a clone of the node's `Arc` while it runs (see [`Tasks::drain`]).
    fn holds_node(self) -> bool {
        self != Task::Reaper
    }
}

/// How a task ended, for the log.
fn how(r: &Result<(), JoinError>) -> String {
    match r {
        Ok(()) => "ended".into(),
        Err(e) if e.is_cancelled() => "was cancelled".into(),
        Err(e) => format!("panicked: {e}"),
    }
}

#[derive(Debug, Default)]
pub struct Tasks {
    set: JoinSet<()>,
    live: HashMap<Id, (Task, AbortHandle)>,
}

impl Tasks {
    pub fn spawn(&mut self, task: Task, f: impl Future<Output = ()> + Send + 'static) {
        let h = self.set.spawn(f);
        self.live.insert(h.id(), (task, h));
    }

    fn ended(&mut self, r: Result<(Id, ()), JoinError>) -> Option<(Task, String)> {
        let (id, r) = match r {
            Ok((id, ())) => (id, Ok(())),
            Err(e) => (e.id(), Err(e)),
        };
        let (task, _) = self.live.remove(&id)?;
        Some((task, how(&r)))
    }

    /// Waits for the next task to end (they are not meant to): which one, and how.
    /// Pending forever when none is left.
    pub async fn next(&mut self) -> (Task, String) {
        loop {
            match self.set.join_next_with_id().await {
                Some(r) => {
                    if let Some(t) = self.ended(r) {
                        return t;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Logs the tasks that ended meanwhile (while stopping: not a failure any more).
    fn reap(&mut self) {
        while let Some(r) = self.set.try_join_next_with_id() {
            if let Some((task, how)) = self.ended(r) {
                tracing::warn!(task = task.name(), "{how} while the agent was stopping");
            }
        }
    }

    /// Stops `task` and waits until it is gone (its future, and what it owns, dropped).
    pub async fn stop(&mut self, task: Task) {
        for (t, h) in self.live.values() {
            if *t == task {
                h.abort();
            }
        }
        while self.live.values().any(|(t, _)| *t == task) {
            let Some(r) = self.set.join_next_with_id().await else {
                break;
            };
            if let Some((t, how)) = self.ended(r) {
                if t != task {
                    tracing::warn!(task = t.name(), "{how} while the agent was stopping");
                }
            }
        }
    }

    /// Waits, at most `bound`, until nobody but these tasks and the caller holds `node`:
    /// every connection task of the socket server (and of the metrics endpoint) holds a clone
    /// while it runs, so once the server is [stopped](Tasks::stop), this is "until the
    /// requests in flight are answered". Returns how many were still running at the bound.
    pub async fn drain<T>(&mut self, node: &Arc<T>, bound: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            self.reap();
            let ours = 1 + self.live.values().filter(|(t, _)| t.holds_node()).count();
            let in_flight = Arc::strong_count(node).saturating_sub(ours);
            if in_flight == 0 || tokio::time::Instant::now() >= deadline {
                return in_flight;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Aborts every task left and waits until all are gone.
    pub async fn shutdown(&mut self) {
        self.set.shutdown().await;
        self.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_task_that_ends_or_panics_is_reported() {
        rt().block_on(async {
            let mut tasks = Tasks::default();
            tasks.spawn(Task::Warm, std::future::pending());
            tasks.spawn(Task::Server, async { panic!("boom") });
            let (task, how) = tasks.next().await;
            assert_eq!(task, Task::Server);
            assert!(how.contains("panicked"), "{how}");
            tasks.spawn(Task::Peers, async {});
            let (task, how) = tasks.next().await;
            assert_eq!((task, how.as_str()), (Task::Peers, "ended"));
            tasks.shutdown().await;
        });
    }

    #[test]
    fn drain_waits_for_the_holders_beyond_the_tasks() {
        rt().block_on(async {
            let node = Arc::new(());
            let mut tasks = Tasks::default();
            let held = node.clone();
            tasks.spawn(Task::Warm, async move {
                let _held = held;
                std::future::pending::<()>().await
            });
            // Only the loop holds it: nothing in flight.
            assert_eq!(tasks.drain(&node, Duration::from_secs(5)).await, 0);
            // A "request" holding it for 200 ms: drain waits for it.
            let req = node.clone();
            let t0 = tokio::time::Instant::now();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                drop(req);
            });
            assert_eq!(tasks.drain(&node, Duration::from_secs(5)).await, 0);
            assert!(t0.elapsed() >= Duration::from_millis(200));
            // One that never ends: drain gives up at the bound and says so.
            let stuck = node.clone();
            assert_eq!(tasks.drain(&node, Duration::from_millis(100)).await, 1);
            drop(stuck);
            tasks.stop(Task::Warm).await;
            assert_eq!(
                Arc::strong_count(&node),
                1,
                "the stopped task dropped its clone"
            );
        });
    }
}
