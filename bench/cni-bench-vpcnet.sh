#!/usr/bin/env bash
# Side-by-side benchmark: vpcnet (with vpcnetd started in the bench's host namespace) and
# the reference ptp + host-local, same client, same session, using ../shared/bench/cni-bench.sh.
#   sudo bench/cni-bench-vpcnet.sh [extra cni-bench options, e.g. -d raw|cnitool]
# Defaults: -n 100 sequential, -p 20 parallel, -r 3 runs (median), 2 warm-up cycles.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HARNESS=${HARNESS:-$ROOT/../shared/bench}
[ -x "$HARNESS/cni-bench.sh" ] || { echo "cni-bench.sh not found in $HARNESS (set HARNESS)" >&2; exit 1; }
# The binaries as shipped (static plugin): scripts/build-release.sh -> target/dist.
scripts/build-release.sh
BIN=$ROOT/target/dist
mkdir -p /tmp/vpcnet-bench
OPTS=(-n 100 -p 20 -r 3 "$@")
echo "### ptp + host-local"
"$HARNESS/cni-bench.sh" "${OPTS[@]}" "$HARNESS/confs/hx-ptp.conflist"
echo "### vpcnet"
"$HARNESS/cni-bench.sh" "${OPTS[@]}" -c "$BIN:/usr/lib/cni" \
  -S "exec $BIN/vpcnetd --socket /tmp/vpcnet-bench/vpcnetd.sock --state-dir \$HX_RUN/state --vpc-cidr 10.240.0.0/16 --warm-ip-target 32" \
  -W /tmp/vpcnet-bench/vpcnetd.sock "$ROOT/bench/vpcnet.conflist"
