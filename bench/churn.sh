#!/usr/bin/env bash
# Interleaved churn, as a node sees it: LIVE pods are up; then STEPS times, ADD a new pod and
# DEL the oldest, back to back (the worst case for anything that defers work to a quiet
# moment). Plugins are exec'd directly (like cni-bench.sh -d raw: the time is the exec only),
# in a private host netns (hxchurnh) with fresh pod netns (hxchurnp*); nothing is configured in
# the root netns. Side by side in the same session: a no-op plugin (the floor), ptp +
# host-local (../shared/bench/confs/hx-ptp.conflist), vpcnet (agent started in the host netns)
# and, with -B DIR, a second vpcnet build (e.g. the commit before a change).
#   sudo bench/churn.sh [-k LIVE=20] [-m STEPS=200] [-r RUNS=3] [-b BINDIR] [-B BEFORE_BINDIR]
# Prints per plugin: ADD p50/p90/p99, DEL p50/p99, fails; each cell the median over the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HOST=hxchurnh PFX=hxchurnp
if [ "${1:-}" = --inner ]; then
  # inside the host netns: D CNIPATH PLUGIN CONF LIVE STEPS
  D=$2 CNIPATH=$3 PLUG=$4 CONF=$5 LIVE=$6 STEPS=$7
  call() { CNI_COMMAND=$1 CNI_CONTAINERID=churn$2 CNI_NETNS=/run/netns/$PFX$2 CNI_IFNAME=eth0 \
    CNI_PATH=$CNIPATH "$PLUG" <"$CONF" >/dev/null 2>>"$D/plugin.err"; }
  timed() { local t0 t1 rc=0; t0=$EPOCHREALTIME; call "$1" "$2" || rc=$?; t1=$EPOCHREALTIME
    echo "$1 $2 $rc $(( ${t1/./} - ${t0/./} ))" >>"$D/times"; }
  for i in $(seq 1 20); do t0=$EPOCHREALTIME; /bin/true; t1=$EPOCHREALTIME; echo "TRUE $i 0 $(( ${t1/./} - ${t0/./} ))" >>"$D/times"; done
  for i in $(seq 1 "$LIVE"); do call ADD "$i" || true; done
  for s in $(seq 1 "$STEPS"); do timed ADD $((LIVE + s)); timed DEL "$s"; done
  for i in $(seq $((STEPS + 1)) $((STEPS + LIVE))); do call DEL "$i" || true; done
  exit 0
fi
LIVE=20 STEPS=200 RUNS=3 BIN=$ROOT/target/dist BEFORE=  # scripts/build-release.sh
while getopts k:m:r:b:B: o; do case $o in
  k) LIVE=$OPTARG ;; m) STEPS=$OPTARG ;; r) RUNS=$OPTARG ;; b) BIN=$OPTARG ;; B) BEFORE=$OPTARG ;;
  *) sed -n 2,11p "$0"; exit 2 ;; esac; done
HARNESS=${HARNESS:-$ROOT/../shared/bench}
OUT=/tmp/vpcnet-churn/$(date +%H%M%S)
mkdir -p "$OUT"
cleanup() {
  [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  AGENT=
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($HOST|$PFX[0-9]+)$" || true); do ip netns del "$n"; done
}
trap cleanup EXIT
# one run: NAME CNIPATH PLUGIN_BINARY PLUGIN_JSON [AGENT_BINARY]
run_one() {
  local name=$1 cnipath=$2 plug=$3 pjson=$4 agentbin=${5:-} d
  d=$OUT/$name/run$R; mkdir -p "$d"
  cleanup
  ip netns add $HOST; ip -n $HOST link set lo up
  ip netns exec $HOST sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
  for i in $(seq 1 $((LIVE + STEPS))); do ip netns add "$PFX$i"; done
  echo "$pjson" | jq -c --arg d "$d" '. + {cniVersion: "1.0.0", name: "hxchurn"}
    | if .ipam.type == "host-local" then .ipam.dataDir = ($d + "/ipam") else . end
    | if .type == "vpcnet" then .socket = ($d + "/a.sock") | .logFile = ($d + "/plugin.log") else . end' >"$d/conf.json"
  if [ -n "$agentbin" ]; then
    ip netns exec $HOST "$agentbin" --socket "$d/a.sock" --state-dir "$d/state" \
      --vpc-cidr 10.240.0.0/16 --warm-ip-target 32 >"$d/agent.log" 2>&1 &
    AGENT=$!
    for _ in $(seq 1 100); do [ -S "$d/a.sock" ] && break; sleep 0.1; done
  fi
  ip netns exec $HOST "$ROOT/bench/churn.sh" --inner "$d" "$cnipath" "$plug" "$d/conf.json" "$LIVE" "$STEPS"
  cleanup
}
pct() { # FILE OP P -> nearest-rank percentile (ms) of successful calls
  awk -v op="$2" '$1 == op && $3 == 0 {print $4}' "$1" | sort -n | awk -v p="$3" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} i = int((p * NR + 99) / 100); if (i < 1) i = 1; printf "%.2f\n", a[i] / 1000}'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
VPC='{"type":"vpcnet","mtu":1500}'
PTP=$(jq -c '.plugins[0]' "$HARNESS/confs/hx-ptp.conflist")
CASES=(noop ptp vpcnet); [ -n "$BEFORE" ] && CASES+=(vpcnet-before)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for R in $(seq 1 "$RUNS"); do
  for c in "${CASES[@]}"; do case $c in
    noop) run_one noop "$ROOT/bench/noop" "$ROOT/bench/noop/hxnoop" '{"type":"hxnoop"}' ;;
    ptp) run_one ptp /usr/lib/cni /usr/lib/cni/ptp "$PTP" ;;
    vpcnet) run_one vpcnet "$BIN:/usr/lib/cni" "$BIN/vpcnet" "$VPC" "$BIN/vpcnetd" ;;
    vpcnet-before) run_one vpcnet-before "$BEFORE:/usr/lib/cni" "$BEFORE/vpcnet" "$VPC" "$BEFORE/vpcnetd" ;;
  esac; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)   raw times: $OUT/<plugin>/run*/times"
printf '| plugin | /bin/true p50 | churn ADD p50 / p90 / p99 ms | churn DEL p50 / p99 ms | failed calls |\n|---|---|---|---|---|\n'
for c in "${CASES[@]}"; do
  cell() { for f in "$OUT/$c"/run*/times; do pct "$f" "$1" "$2"; done | median; }
  fails=$(cat "$OUT/$c"/run*/times | awk '$1 != "TRUE" && $3 != 0' | wc -l)
  printf '| %s | %s | %s / %s / %s | %s / %s | %s |\n' "$c" "$(cell TRUE 50)" "$(cell ADD 50)" "$(cell ADD 90)" "$(cell ADD 99)" "$(cell DEL 50)" "$(cell DEL 99)" "$fails"
done
