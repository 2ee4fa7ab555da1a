#!/usr/bin/env bash
# ADD latency with --network-policy off and on (issue 13): the real plugin and vpcnetd in a
# private lab, the fake API server feeding Pods/Namespaces/NetworkPolicies. Prints a
# markdown table (p50/p90/p99 of N sequential ADDs, each followed by its DEL).
#   sudo bench/netpol-add.sh [N]     (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
export NETPOL_BENCH_N=${1:-100}
cargo build --workspace --bins --features vpcnet/failpoints
cargo test --workspace --features vpcnet/failpoints,vpcnet-netlink/test_as_root \
  --test netpol_agent bench_add_latency_with_policies_off_and_on -- --ignored --nocapture
