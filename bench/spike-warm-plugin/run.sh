#!/usr/bin/env bash
# SPIKE (issue 14, round 8 in docs/benchmarks.md) — not product code. Measures an ADD through a
# *warm* plugin process (started ahead of time, past glibc's and Rust's start, waiting in
# accept) reached by a small static forwarder without libc (forwarder.c), against today's
# exec'd plugin, call by call against one real agent in a private namespace (ab.py).
#   sudo bench/spike-warm-plugin/run.sh [-n PAIRS=50 (<= 50: 2 N pods per agent)] [-k WARM=3] [-g GAP_MS=3] [-r ROUNDS=3]
# Builds: the plugin with plugin.patch applied (a worker mode) in a scratch worktree of HEAD,
# with scripts/build-release.sh's flags, into target/spike-warm; the forwarder with gcc. The
# agent is target/dist/vpcnetd (scripts/build-release.sh). Nothing in the root namespace.
set -euo pipefail
N=50 K=3 GAP=3 R=3
while getopts n:k:g:r: o; do case $o in n) N=$OPTARG ;; k) K=$OPTARG ;; g) GAP=$OPTARG ;; r) R=$OPTARG ;; *) sed -n 2,9p "$0"; exit 2 ;; esac; done
HERE=$(cd "$(dirname "$0")" && pwd) ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=/tmp/vpcnet-spike H=vspkh P=vspkp SRC=/tmp/vpcnet-spike-src
AGENT=$ROOT/target/dist/vpcnetd
[ -x "$AGENT" ] || { echo "run.sh: no $AGENT (scripts/build-release.sh)" >&2; exit 1; }
host="$(rustc -vV | sed -n 's/^host: //p')"
rm -rf "$SRC"; git -C "$ROOT" worktree prune
git -C "$ROOT" worktree add -q --detach "$SRC" HEAD
git -C "$SRC" apply "$HERE/plugin.patch"
(cd "$SRC" && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --locked -q -p vpcnet --bin vpcnet --target "$host" --target-dir "$ROOT/target/spike-warm")
PLUGIN=$ROOT/target/spike-warm/$host/release/vpcnet
git -C "$ROOT" worktree remove --force "$SRC"
gcc -O2 -static -nostdlib -fno-stack-protector -fno-builtin -fno-tree-loop-distribute-patterns \
  -o "$ROOT/target/spike-warm/forwarder" "$HERE/forwarder.c"
down() { [ -n "${AP:-}" ] && kill "$AP" 2>/dev/null && wait "$AP" 2>/dev/null || true; AP=
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($H|$P[0-9]+)$" || true); do ip netns del "$n"; done; rm -rf "$OUT"; }
trap down EXIT
for r in $(seq 1 "$R"); do
  down; mkdir -p $OUT
  ip netns add $H; ip -n $H link set lo up; for i in $(seq 1 $((2 * N))); do ip netns add $P$i; done
  ip netns exec $H "$AGENT" --socket $OUT/a.sock --state-dir $OUT/state --vpc-cidr 10.240.0.0/16 --warm-ip-target 64 >$OUT/agent.log 2>&1 &
  AP=$!
  for _ in $(seq 1 100); do [ -S $OUT/a.sock ] && break; sleep 0.1; done; sleep 1
  printf '{"cniVersion":"1.0.0","name":"spk","type":"vpcnet","mtu":1500,"socket":"%s","logFile":"%s/plugin.log"}' $OUT/a.sock $OUT >$OUT/conf.json
  echo "round $r (load $(cut -d' ' -f1 /proc/loadavg)):"
  ip netns exec $H python3 "$HERE/ab.py" "$PLUGIN" "$ROOT/target/spike-warm/forwarder" $OUT/conf.json $P "$N" "$K" "$GAP"
done
