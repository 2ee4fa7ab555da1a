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
BIN_DIR=${VPCNET_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
for b in vpcnet vpcnetd netpol-bench netpol-probe; do
  [ -x "$BIN_DIR/$b" ] || { echo "$0: $BIN_DIR/$b missing: run cargo build --workspace --bins first" >&2; exit 2; }
done
for t in ip nft etcd iperf3; do
  command -v "$t" >/dev/null || { echo "$0: $t not found (scripts/deps.sh installs it)" >&2; exit 2; }
done
export VPCNET_BIN_DIR=$BIN_DIR
pid=
cleanup() {
  set +e
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  # What the driver could not remove itself (it was killed): its namespaces are vt<pid>x….
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^vt${pid}x"); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^vt${pid}x" | sort -r); do
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "${TMPDIR:-/tmp}"/vpcnet-tests/vt"${pid}"x* 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, bins $BIN_DIR"
"$BIN_DIR/netpol-bench" dataplane "${1:-5}" "${2:-5}" &
pid=$!
rc=0
wait "$pid" || rc=$?
exit "$rc"
