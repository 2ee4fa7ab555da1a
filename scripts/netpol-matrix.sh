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
. "$ROOT/scripts/netpol-lab.sh"
netpol_lab_need "vpcnet vpcnetd netpol-matrix netpol-probe" "ip nft etcd"
netpol_lab_run netpol-matrix "$@"
