#!/usr/bin/env bash
# The NetworkPolicy truth-table lab (issue 13; docs/network-policy.md, "The truth-table lab").
#   sudo scripts/netpol-matrix.sh [--json] CASE_OR_DIR...      e.g. tests/netpol/
# Builds the lab once (3 node namespaces on a switch, etcd, one fake Kubernetes API server,
# the real vpcnetd --network-policy=true per node, pods x/a … z/c ADDed by the real plugin),
# then per case: resets the API objects to the case's, waits until every node applied its
# ruleset, probes TCP/UDP 80/81 from every pod to every pod, prints the observed matrix
# against `expect:`. Exit status: 0 all cases match, 1 any difference, 2 bad usage/case.
# Needs the binaries built first (cargo build --workspace --bins), ip, nft, etcd (all from
# scripts/deps.sh). Everything lives in private namespaces vt<pid>x…; nothing touches this
# machine's own network; all of it is removed on exit, also when interrupted.
set -euo pipefail
. "$(dirname "$0")/as-root.sh" "$0" "$@"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${VPCNET_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
for b in vpcnet vpcnetd netpol-matrix netpol-probe; do
  [ -x "$BIN_DIR/$b" ] || { echo "netpol-matrix.sh: $BIN_DIR/$b missing: run cargo build --workspace --bins first" >&2; exit 2; }
done
for t in ip nft etcd; do
  command -v "$t" >/dev/null || { echo "netpol-matrix.sh: $t not found (scripts/deps.sh installs it)" >&2; exit 2; }
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
"$BIN_DIR/netpol-matrix" "$@" &
pid=$!
rc=0
wait "$pid" || rc=$?
exit "$rc"
