#!/usr/bin/env bash
# A perf profile of vpcnet ADDs (issue 14): the agent in a private host netns (hxperfh), N pods
# (hxperfp*), the plugin's ADDs recorded with call graphs (user and kernel), then the top of
# the report. Nothing is configured in the root netns.
#   sudo bench/perf-add.sh [-n N=50] [-b BINDIR=target/dist]
# Output: /tmp/vpcnet-perf/perf.data, report.txt (self time by symbol), and, if
# FlameGraph's stackcollapse-perf.pl / flamegraph.pl are on PATH, flame.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
N=50 BIN=$PWD/target/dist  # scripts/build-release.sh
while getopts n:b: o; do case $o in n) N=$OPTARG ;; b) BIN=$OPTARG ;; *) sed -n 2,7p "$0"; exit 2 ;; esac; done
OUT=/tmp/vpcnet-perf; rm -rf "$OUT"; mkdir -p "$OUT"
H=hxperfh P=hxperfp
cleanup() {
  [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($H|$P[0-9]+)$" || true); do ip netns del "$n"; done
}
trap cleanup EXIT
cleanup
ip netns add $H; ip -n $H link set lo up
for i in $(seq 1 "$N"); do ip netns add "$P$i"; done
ip netns exec $H "$BIN/vpcnetd" --socket "$OUT/a.sock" --state-dir "$OUT/state" \
  --vpc-cidr 10.240.0.0/16 --warm-ip-target 64 >"$OUT/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 100); do [ -S "$OUT/a.sock" ] && break; sleep 0.1; done
jq -n --arg s "$OUT/a.sock" --arg l "$OUT/plugin.log" '{cniVersion: "1.0.0", name: "hxperf", type: "vpcnet", mtu: 1500, socket: $s, logFile: $l}' >"$OUT/conf.json"
cat >"$OUT/adds.sh" <<IN
for i in \$(seq 1 $N); do
  CNI_COMMAND=ADD CNI_CONTAINERID=perf\$i CNI_NETNS=/run/netns/$P\$i CNI_IFNAME=eth0 \
    CNI_PATH=$BIN "$BIN/vpcnet" <"$OUT/conf.json" >/dev/null
done
IN
# The whole machine while the ADD loop runs, with kernel time; reported: the plugin's process
# (`vpcnet`: the front, or the standalone plugin when the front falls back) and the agent's
# threads that run the front's commands (`front-cmd`) — together, one ADD's work outside the
# agent's own Assign handling (its tokio threads, reported apart below).
ip netns exec $H perf record -q -a -F 5000 -g -o "$OUT/perf.data" -- sh "$OUT/adds.sh"
: >"$OUT/report.txt"
for comm in front-cmd vpcnet vpcnet-standalon; do   # (a comm is cut at 15 characters)
  { echo "## $comm"; perf report -i "$OUT/perf.data" --stdio --no-children --comm $comm --sort sym \
      --percent-limit 0.3 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25; } >>"$OUT/report.txt" || true
done
perf report -i "$OUT/perf.data" --stdio --no-children --sort comm \
  --percent-limit 0.5 -g none 2>/dev/null | grep -v '^$' >"$OUT/comms.txt" || true
if command -v stackcollapse-perf.pl >/dev/null && command -v flamegraph.pl >/dev/null; then
  perf script -i "$OUT/perf.data" --comm front-cmd | stackcollapse-perf.pl | flamegraph.pl >"$OUT/flame.svg"
fi
grep -v '^#' "$OUT/comms.txt" | head -12
cat "$OUT/report.txt"
