//! Peer routing (placeholder): every other node's prefixes `via <its nodeIP>`, our own as
//! unreachable.

use std::time::Duration;

use crate::agent::datastore::Datastore;
use crate::agent::node::Node;

pub async fn run<D: Datastore>(node: &Node<D>, interval: Duration) {
    loop {
        tokio::select! {
            _ = node.datastore.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
