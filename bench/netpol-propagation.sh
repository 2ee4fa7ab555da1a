#!/usr/bin/env bash
# Policy change -> enforced on every node (issue 13): 3 nodes x 100 pods, 10 namespaces, 100
# background policies, the real vpcnetd --network-policy=true per node on a real etcd, the fake
# Kubernetes API server over HTTP. CHANGES changes (create/update/delete of one NetworkPolicy,
# a pod relabelled in and out of a peer selector), each timed from the API write until every
# node's kernel shows it (nft -j list set in the node's namespace, polled back to back), and
# the agents' own vpcnet_network_policy_change_to_kernel_seconds beside it.
#   sudo bench/netpol-propagation.sh [CHANGES]      (default 55)
# Needs the binaries (cargo build --workspace --bins), ip, nft, etcd, iperf3 (scripts/deps.sh).
# Everything lives in private namespaces vt<pid>x…; nothing touches this machine's own
# network; all of it is removed on exit, also when interrupted. Uses target/debug unless
# VPCNET_BIN_DIR says otherwise (a release build: scripts/build-release.sh, then
# VPCNET_BIN_DIR=target/dist/…).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/as-root.sh" "$0" "$@"
. "$ROOT/scripts/netpol-lab.sh"
netpol_lab_need "vpcnet vpcnetd netpol-bench netpol-probe" "ip nft etcd iperf3"
echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, bins $BIN_DIR"
netpol_lab_run netpol-bench propagation "${1:-55}"
