#!/usr/bin/env bash
# Where vpcnet ADDs wait (issue 14): the agent in a private host netns (hxoffh), pods
# hxoffp*, LIVE=20 pods up first, then one MODE:
#   seq    N ADDs back to back
#   churn  N × {ADD a new pod, DEL the oldest} (as bench/churn.sh)
#   par    N ADDs at once
# recorded with `perf record -a -g -e sched:sched_switch -e sched:sched_wakeup`; prints the
# ADD times and, for the plugin's processes (comm COMM, default vpcnet), the off-CPU time
# summed by the kernel stack they slept in (D: uninterruptible, e.g. rtnl_lock or an RCU
# grace period; S: waiting, e.g. for the agent's reply) plus the time they were runnable
# but had no CPU; then the CPU time per task name (all tasks: the agent's blocking threads
# are `tokio-rt-worker`). Nothing is configured in the root netns.
#   sudo bench/offcpu.sh [-b BINDIR=target/dist] [-n N=100] [-c COMM=vpcnet] MODE
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD BIN=$PWD/target/dist N=100 COMM=vpcnet LIVE=20  # scripts/build-release.sh
while getopts b:n:c: o; do case $o in b) BIN=$OPTARG ;; n) N=$OPTARG ;; c) COMM=$OPTARG ;; *) sed -n 2,13p "$0"; exit 2 ;; esac; done
shift $((OPTIND - 1)); MODE=${1:?MODE: seq, churn or par}
HOST=hxoffh PFX=hxoffp
D=/tmp/vpcnet-offcpu/$MODE-$(date +%H%M%S); mkdir -p "$D"
cleanup() {
  [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  AGENT=
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($HOST|$PFX[0-9]+)$" || true); do ip netns del "$n"; done
}
trap cleanup EXIT
cleanup
ip netns add $HOST; ip -n $HOST link set lo up
ip netns exec $HOST sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
for i in $(seq 1 $((LIVE + N))); do ip netns add "$PFX$i"; done
jq -n --arg d "$D" '{cniVersion: "1.0.0", name: "hxoff", type: "vpcnet", mtu: 1500, socket: ($d + "/a.sock"),
  logFile: ($d + "/plugin.log"), logLevel: "debug"}' >"$D/conf.json"
ip netns exec $HOST "$BIN/vpcnetd" --socket "$D/a.sock" --state-dir "$D/state" \
  --vpc-cidr 10.240.0.0/16 --warm-ip-target 32 >"$D/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 100); do [ -S "$D/a.sock" ] && break; sleep 0.1; done
cat >"$D/inner.sh" <<IN
call() { CNI_COMMAND=\$1 CNI_CONTAINERID=off\$2 CNI_NETNS=/run/netns/$PFX\$2 CNI_IFNAME=eth0 \
  CNI_PATH=$BIN $BIN/vpcnet <$D/conf.json >/dev/null 2>>$D/plugin.err; }
timed() { local t0 t1 rc=0; t0=\$EPOCHREALTIME; call "\$1" "\$2" || rc=\$?; t1=\$EPOCHREALTIME
  echo "\$1 \$2 \$rc \$(( \${t1/./} - \${t0/./} ))" >>$D/times; }
for i in \$(seq 1 $LIVE); do call ADD \$i || true; done
case $MODE in
  seq) for s in \$(seq 1 $N); do timed ADD \$(($LIVE + s)); done ;;
  churn) for s in \$(seq 1 $N); do timed ADD \$(($LIVE + s)); timed DEL \$s; done ;;
  par) for s in \$(seq 1 $N); do timed ADD \$(($LIVE + s)) & done; wait ;;
esac
IN
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
ip netns exec $HOST perf record -q -a -g -e sched:sched_switch -e sched:sched_wakeup -o "$D/sched.data" -- bash "$D/inner.sh"
pct() { awk -v op="$2" '$1 == op && $3 == 0 {print $4}' "$1" | sort -n | awk -v p="$3" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} i = int((p * NR + 99) / 100); if (i < 1) i = 1; printf "%.2f\n", a[i] / 1000}'; }
echo "$MODE: ADD p50 / p90 / p99 $(pct "$D/times" ADD 50) / $(pct "$D/times" ADD 90) / $(pct "$D/times" ADD 99) ms; load after: $(cut -d' ' -f1-3 /proc/loadavg); data in $D"
echo "## off-CPU time of $COMM (all $((LIVE + N)) ADDs$([ "$MODE" = churn ] && echo " and $N DELs")), by the stack it slept in"
# perf sched timehist: a task's line carries the wait before that run and the stack it left
# the CPU with; so the wait on line k belongs to the stack of the task's line k-1.
perf sched timehist -i "$D/sched.data" -g --state --max-stack 8 2>/dev/null | awk -v COMM="$COMM" '
  $3 ~ "^" COMM "\\[" { tid = $3; wait = $4; delay = $5; st = $7; stack = ""
    for (i = 8; i <= NF; i++) stack = stack " " $i
    if (tid in last) { W[last[tid]] += wait - delay; N[last[tid]]++; DL += delay }
    last[tid] = st " " stack }
  END { for (k in W) printf "%9.2f ms %5d  %s\n", W[k], N[k], k
        printf "%9.2f ms        runnable, waiting for a CPU\n", DL }' | sort -rn | head -12 | cut -c1-200
echo "## CPU time by task name (ms)"
perf sched timehist -i "$D/sched.data" 2>/dev/null | awk 'NR > 3 { c = $3; sub(/\[.*$/, "", c); r[c] += $6 }
  END { for (k in r) printf "%10.1f %s\n", r[k], k }' | sort -rn | head -8
