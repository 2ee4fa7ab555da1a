#!/usr/bin/env bash
# Agent memory with a full node: starts vpcnetd (release build) in a private host namespace,
# wires N pods (default 110 = --max-pods) through the real plugin, then reads the agent's
# VmRSS / VmHWM from /proc. Cleans up after itself.
#   sudo bench/agent-rss.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-110}
# The binaries as shipped (scripts/build-release.sh -> target/dist), or BIN=dir.
BIN=${BIN:-$PWD/target/dist}
[ -x "$BIN/vpcnetd" ] && [ -x "$BIN/vpcnet" ] || scripts/build-release.sh
P=vrss RUN=/tmp/vpcnet-rss
cleanup() { set +e; [ -n "${AP:-}" ] && kill "$AP" 2>/dev/null; wait 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P"); do ip netns del "$ns"; done; }
trap cleanup EXIT; cleanup; rm -rf $RUN; mkdir -p $RUN
ip netns add ${P}h
nsenter --net=/run/netns/${P}h "$BIN/vpcnetd" --socket $RUN/a.sock --state-dir $RUN/state \
  --vpc-cidr 10.240.0.0/16 --max-pods "$N" >$RUN/agent.log 2>&1 &
AP=$!
for _ in $(seq 100); do [ -S $RUN/a.sock ] && break; sleep 0.05; done
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %s kB  ", $1, $2}' /proc/$AP/status; echo; }
echo "idle:        $(rss)"
CONF="{\"cniVersion\":\"1.1.0\",\"name\":\"rss\",\"type\":\"vpcnet\",\"socket\":\"$RUN/a.sock\",\"logFile\":\"$RUN/plugin.log\"}"
for i in $(seq "$N"); do
  ip netns add ${P}p$i
  echo "$CONF" | nsenter --net=/run/netns/${P}h env CNI_COMMAND=ADD CNI_CONTAINERID=rss$i CNI_IFNAME=eth0 \
    CNI_NETNS=/run/netns/${P}p$i "$BIN/vpcnet" >/dev/null
done
echo "$N pods:     $(rss)"
nsenter --net=/run/netns/${P}h "$BIN/vpcnetd" status --socket $RUN/a.sock | sed -n '2,3p'
