#!/usr/bin/env bash
# Re-ADD before the reaper (issue 14): K times, for each plugin build given (interleaved, so
# the machine's load hits all alike), ADD a new attachment, DEL it, ADD it again at once (its
# DEL'd veth still waits for the reaper) and DEL it; the ADDs' exec times are printed as
# fresh ADD vs re-ADD p50 / p90 / max per build. One agent (the first build's vpcnetd) in a
# private host netns hxreaddh; pod netns hxreaddp<build#>; nothing in the root netns.
#   sudo bench/readd.sh [-k K=20] BINDIR...
set -euo pipefail
cd "$(dirname "$0")/.."
K=20
while getopts k: o; do case $o in k) K=$OPTARG ;; *) sed -n 2,8p "$0"; exit 2 ;; esac; done
shift $((OPTIND - 1))
H=hxreaddh P=hxreaddp OUT=/tmp/vpcnet-readd
cleanup() {
  [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  AGENT=
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($H|$P[0-9]+)$" || true); do ip netns del "$n"; done
}
trap cleanup EXIT
cleanup; rm -rf "$OUT"; mkdir -p "$OUT"
ip netns add $H; ip -n $H link set lo up
for b in $(seq 1 $#); do ip netns add "$P$b"; done
ip netns exec $H "$1/vpcnetd" --socket "$OUT/a.sock" --state-dir "$OUT/state" \
  --vpc-cidr 10.240.0.0/16 --warm-ip-target 32 >"$OUT/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 100); do [ -S "$OUT/a.sock" ] && break; sleep 0.1; done
jq -n --arg s "$OUT/a.sock" '{cniVersion: "1.0.0", name: "hxreadd", type: "vpcnet", mtu: 1500, socket: $s}' >"$OUT/conf.json"
call() { # BUILD# BINDIR COMMAND CID -> prints exec µs
  local t0 t1
  t0=$EPOCHREALTIME
  ip netns exec $H env CNI_COMMAND=$3 CNI_CONTAINERID=$4 CNI_NETNS=/run/netns/$P$1 \
    CNI_IFNAME=eth0 CNI_PATH="$2" "$2/vpcnet" <"$OUT/conf.json" >/dev/null
  t1=$EPOCHREALTIME
  echo $(( ${t1/./} - ${t0/./} ))
}
for k in $(seq 1 "$K"); do
  b=0
  for BIN in "$@"; do
    b=$((b + 1))
    echo "$b fresh $(call $b "$BIN" ADD r$b-$k)" >>"$OUT/times"
    call $b "$BIN" DEL r$b-$k >/dev/null
    echo "$b readd $(call $b "$BIN" ADD r$b-$k)" >>"$OUT/times"
    call $b "$BIN" DEL r$b-$k >/dev/null
  done
  sleep 0.3 # the node goes quiet: the reaper deletes this round's veths
done
stat() { awk -v b="$1" -v w="$2" '$1 == b && $2 == w {print $3}' "$OUT/times" | sort -n |
  awk '{a[NR]=$1} END {printf "%.2f / %.2f / %.2f", a[int((NR+1)/2)]/1000, a[int(NR*0.9+0.5)]/1000, a[NR]/1000}'; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| build | fresh ADD p50 / p90 / max ms | re-ADD before reap p50 / p90 / max ms |\n|---|---|---|\n'
b=0; for BIN in "$@"; do b=$((b + 1)); printf '| %s | %s | %s |\n' "$BIN" "$(stat $b fresh)" "$(stat $b readd)"; done
