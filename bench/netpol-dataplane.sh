#!/usr/bin/env bash
# Pod -> pod TCP throughput (iperf3) and new-connection rate with 100 policies selecting the
# destination vs none (issue 13; target >= 0.95x): 2 nodes, the real vpcnetd
# --network-policy=true, the fake Kubernetes API server; same-node and cross-node clients;
# the modes alternate per run; medians printed with the load average.
#   sudo bench/netpol-dataplane.sh [RUNS] [SECONDS]   (default 5 runs, 5 s each)
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
netpol_lab_run netpol-bench dataplane "${1:-5}" "${2:-5}"
