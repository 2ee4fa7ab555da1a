#!/usr/bin/env bash
# The agent's CPU per ADD (issue 14): for each BIN_DIR (vpcnet + vpcnetd), a fresh agent in a
# private host namespace, N sequential ADDs through that dir's plugin, the agent's task-clock
# over them (`perf stat -p`) and the wall time per ADD. Dirs alternate ROUNDS times, so
# compare dirs within one run. Nothing is configured in the root namespace.
#   sudo bench/agent-cpu.sh [-n N=100] [-r ROUNDS=2] BIN_DIR...
# e.g. bench/agent-cpu.sh /tmp/before-bin target/dist  (scripts/build-release.sh [OUT_DIR])
set -euo pipefail
N=100 R=2
while getopts n:r: o; do case $o in n) N=$OPTARG ;; r) R=$OPTARG ;; *) sed -n 2,7p "$0"; exit 2 ;; esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n 2,7p "$0"; exit 2; }
OUT=/tmp/vpcnet-agent-cpu H=vacpuh P=vacpup
down() {
  [ -n "${AP:-}" ] && kill "$AP" 2>/dev/null && wait "$AP" 2>/dev/null || true; AP=
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($H|$P[0-9]+)$" || true); do ip netns del "$n"; done
  rm -rf "$OUT"
}
trap down EXIT
for r in $(seq 1 "$R"); do
  for D in "$@"; do
    D=$(cd "$D" && pwd); down; mkdir -p $OUT
    ip netns add $H; ip -n $H link set lo up
    for i in $(seq 1 "$N"); do ip netns add $P$i; done
    ip netns exec $H "$D/vpcnetd" --socket $OUT/a.sock --state-dir $OUT/state \
      --vpc-cidr 10.240.0.0/16 --warm-ip-target 64 >$OUT/agent.log 2>&1 &
    AP=$!
    for _ in $(seq 1 100); do [ -S $OUT/a.sock ] && break; sleep 0.1; done; sleep 1
    printf '{"cniVersion":"1.0.0","name":"vacpu","type":"vpcnet","mtu":1500,"socket":"%s"}' $OUT/a.sock >$OUT/conf.json
    perf stat -e task-clock -p "$AP" -o $OUT/pstat & PS=$!
    sleep 0.3; t0=$(date +%s%N)
    ip netns exec $H sh -c "for i in \$(seq 1 $N); do CNI_COMMAND=ADD CNI_CONTAINERID=c\$i CNI_NETNS=/run/netns/$P\$i CNI_IFNAME=eth0 CNI_PATH=/x $D/vpcnet <$OUT/conf.json >/dev/null || echo ADD \$i failed; done"
    t1=$(date +%s%N); kill -INT $PS; wait $PS || true
    ms=$(awk '/task-clock/ {print $1}' $OUT/pstat)
    echo "round $r $D: agent CPU $(awk -v m="$ms" -v n="$N" 'BEGIN {printf "%.0f", m * 1000 / n}') us/ADD, wall $(( (t1 - t0) / 1000 / N )) us/ADD (load $(cut -d' ' -f1 /proc/loadavg))"
  done
done
