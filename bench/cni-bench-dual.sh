#!/usr/bin/env bash
# Dual-stack side by side (issue 11), one session, same client and options for every row:
# ptp + host-local IPv4, ptp + host-local dual-stack (two ranges, bench/hx-ptp-dual.conflist),
# vpcnet IPv4-only, IPv6-only and dual (vpcnetd started in the bench's host namespace with
# the matching --vpc-cidr), using ../shared/bench/cni-bench.sh. Private namespaces (hx*) only.
#   sudo bench/cni-bench-dual.sh [extra cni-bench options]   (default: -n 50 -p 0 -r 3)
# Prints each configuration's table; the summary line per row is its median ADD/DEL p50.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HARNESS=${HARNESS:-$ROOT/../shared/bench}
[ -x "$HARNESS/cni-bench.sh" ] || { echo "cni-bench.sh not found in $HARNESS (set HARNESS)" >&2; exit 1; }
# The binaries as shipped (static plugin); SKIP_BUILD=1 uses target/dist as it is.
[ "${SKIP_BUILD:-0}" = 1 ] || scripts/build-release.sh
BIN=$ROOT/target/dist
mkdir -p /tmp/vpcnet-bench
# Own namespace names (hx prefix as the harness wants), so another bench session cannot collide.
OPTS=(-n 50 -p 0 -r 3 -H hxdsh -x hxdsp "$@")
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
run() { # label, cni-bench args...
  local label=$1; shift
  echo "### $label"
  "$HARNESS/cni-bench.sh" "${OPTS[@]}" "$@" | tee "/tmp/vpcnet-bench/$label.txt"
}
vpcnet() { # label, --vpc-cidr args
  local label=$1; shift
  run "$label" -c "$BIN:/usr/lib/cni" \
    -S "exec $BIN/vpcnetd --socket /tmp/vpcnet-bench/vpcnetd.sock --state-dir \$HX_RUN/state $* --warm-ip-target 32" \
    -W /tmp/vpcnet-bench/vpcnetd.sock "$ROOT/bench/vpcnet.conflist"
}
run ptp-ipv4 "$HARNESS/confs/hx-ptp.conflist"
run ptp-dual "$ROOT/bench/hx-ptp-dual.conflist"
vpcnet vpcnet-ipv4 --vpc-cidr 10.240.0.0/16
vpcnet vpcnet-ipv6 --vpc-cidr fd00:10::/64
vpcnet vpcnet-dual --vpc-cidr 10.240.0.0/16 --vpc-cidr fd00:10::/64
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "### median p50 (ms): configuration, ADD, DEL"
for l in ptp-ipv4 ptp-dual vpcnet-ipv4 vpcnet-ipv6 vpcnet-dual; do
  awk -v l="$l" '/median/ {m = 1} m && $1 == "add-seq" {a = $6} m && $1 == "del-seq" {d = $6} END {printf "%-12s %8s %8s\n", l, a, d}' \
    "/tmp/vpcnet-bench/$l.txt"
done
