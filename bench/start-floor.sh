#!/usr/bin/env bash
# What an exec'd plugin pays before its own code runs (issue 14, round 8): builds three probes
# with gcc — `raw` (static, no libc: `_start` exits at once), `cpuid100` (the same with 100
# `cpuid` instructions first) and `cstatic` (static glibc, empty `main`) — and compares them
# with the plugin's `CNI_COMMAND=VERSION`:
#   1. spawn-to-exit p50 (bench/spawn-cost.py, interleaved);
#   2. CPU and page faults per start (`perf stat -r`);
#   3. with gdb installed: how many `cpuid` instructions each start executes (a breakpoint on
#      every `cpuid` in the binary, counted) — glibc's start-up asks the CPU for its features
#      and cache geometry, and under a hypervisor every `cpuid` is a trap.
# Nothing is configured; the probes live in a temporary directory.
#   bench/start-floor.sh [-n SPAWNS=800] [PLUGIN=target/dist/vpcnet]
set -euo pipefail
N=800
while getopts n: o; do case $o in n) N=$OPTARG ;; *) sed -n 2,12p "$0"; exit 2 ;; esac; done
shift $((OPTIND - 1))
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PLUGIN=$(realpath "${1:-$ROOT/target/dist/vpcnet}")
[ -x "$PLUGIN" ] || { echo "start-floor.sh: no plugin at $PLUGIN (scripts/build-release.sh)" >&2; exit 1; }
T=$(mktemp -d /tmp/vpcnet-start-floor.XXXXXX)
trap 'rm -rf "$T"' EXIT
printf 'void _start(void) { __asm__ volatile("mov $60, %%eax; xor %%edi, %%edi; syscall"); }\n' >"$T/raw.c"
cat >"$T/cpuid100.c" <<'EOF'
#include <cpuid.h>
void _start(void) {
  unsigned a, b, c, d;
  for (int i = 0; i < 100; i++) __cpuid_count(0, 0, a, b, c, d);
  __asm__ volatile("mov $60, %eax; xor %edi, %edi; syscall");
}
EOF
printf 'int main(void) { return 0; }\n' >"$T/cstatic.c"
gcc -O2 -static -nostdlib -o "$T/raw" "$T/raw.c"
gcc -O2 -static -nostdlib -o "$T/cpuid100" "$T/cpuid100.c"
gcc -O2 -static -o "$T/cstatic" "$T/cstatic.c"

echo "== spawn to exit (CNI_COMMAND=VERSION, $N interleaved spawns each)"
python3 "$ROOT/bench/spawn-cost.py" -n "$N" "$T/raw" "$T/cpuid100" "$T/cstatic" "$PLUGIN"

echo "== CPU and page faults per start (perf stat -r 300)"
for b in "$T/raw" "$T/cpuid100" "$T/cstatic" "$PLUGIN"; do
  CNI_COMMAND=VERSION perf stat -r 300 -x, -e task-clock,page-faults "$b" 2>&1 >/dev/null |
    awk -F, -v b="$(basename "$b")" '$3 == "task-clock" {t = $1} $3 == "page-faults" {p = $1}
      END {printf "%-10s task-clock %.3f ms  page faults %d\n", b, t, p}'
done

if command -v gdb >/dev/null; then
  echo "== cpuid instructions executed per start (gdb)"
  for b in "$T/cstatic" "$PLUGIN"; do
    objdump -d "$b" | awk '/\tcpuid/ {sub(":", "", $1); print $1}' >"$T/sites"
    { echo "set pagination off"; echo "set confirm off"
      while read -r a; do printf 'break *0x%s\ncommands\nsilent\ncontinue\nend\n' "$a"; done <"$T/sites"
      echo run; echo "info breakpoints"; } >"$T/count.gdb"
    CNI_COMMAND=VERSION gdb -q -batch -x "$T/count.gdb" "$b" 2>/dev/null >"$T/gdb.out" </dev/null || true
    awk -v b="$(basename "$b")" '/^[0-9]+ +breakpoint/ {loc = $NF; sub(/\+[0-9]+>$/, "", loc); sub(/^</, "", loc)}
      /already hit/ {n += $4; f[loc] += $4}
      END {printf "%-10s %d cpuid:", b, n; for (l in f) printf " %s×%d", l, f[l]; print ""}' "$T/gdb.out"
  done
else
  echo "(gdb not installed: cpuid count skipped)"
fi
