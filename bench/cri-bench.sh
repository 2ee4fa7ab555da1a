#!/usr/bin/env bash
# cri-bench.sh - RunPodSandbox / StopPodSandbox latency through a real containerd 1.6 CRI
# (Debian's package), vpcnet vs the reference ptp + host-local, same session, same client.
#
#   sudo bench/cri-bench.sh [-n N] [-r RUNS] [-w WARMUP] [-k KEEPDIR]
#     -n N       pods per run (default 30): N x RunPodSandbox, then N x (Stop, Remove)
#     -r RUNS    repetitions (default 3); the order of the two CNIs alternates between runs,
#                the table shows the median over runs of each column
#     -w WARMUP  pods run and removed before the timed ones (default 2)
#     -k DIR     keep the raw per-run JSON in DIR (default: a temp dir, printed)
#
# Each (run, CNI) gets a fresh lab from tests/cri/lab.sh: containerd and (for vpcnet) vpcnetd
# in a private network namespace, everything under a temp dir, removed afterwards. Chains:
# `vpcnet + portmap` and `ptp + host-local + portmap` (cniVersion 1.0.0 for both). Latency is
# the CRI call as the client sees it (tests/cri/cri_client.py, time.perf_counter); percentiles
# are nearest-rank (so with N=30 p99 is the maximum). Needs what tests/cri/lab.sh check names
# and a built workspace: target/release if it has vpcnet + vpcnetd, else target/debug
# (VPCNET_BIN_DIR picks another build).
set -uo pipefail
export LC_ALL=C
HERE=$(dirname "$(readlink -f "$0")")
LAB=$HERE/../tests/cri/lab.sh
N=30 RUNS=3 WARM=2 KEEP=""
while getopts "n:r:w:k:h" o; do
  case $o in n) N=$OPTARG ;; r) RUNS=$OPTARG ;; w) WARM=$OPTARG ;; k) KEEP=$OPTARG ;; *) sed -n '2,/^set /p' "$0" | sed '$d'; exit 2 ;; esac
done
# The two conflists are written alike by lab.sh (cniVersion 1.0.0, portmap chained); the one
# vpcnetd writes (--cni-conf-dir) is used with LAB_CONFLIST=agent.
export LAB_CONFLIST=${LAB_CONFLIST:-lab}
# vpcnet's binaries: the release build when there is one (like the Go reference plugins).
REPO=$(readlink -f "$HERE/..")
if [ -z "${VPCNET_BIN_DIR:-}" ]; then
  if [ -x "$REPO/target/release/vpcnet" ] && [ -x "$REPO/target/release/vpcnetd" ]; then
    VPCNET_BIN_DIR=$REPO/target/release
  else VPCNET_BIN_DIR=$REPO/target/debug; fi
fi
export VPCNET_BIN_DIR
echo "vpcnet binaries: $VPCNET_BIN_DIR ($("$VPCNET_BIN_DIR/vpcnetd" --version 2>/dev/null))" >&2
"$LAB" check || exit 2
OUT=${KEEP:-$(mktemp -d /tmp/vpcnet-cri-bench.XXXXXX)}
mkdir -p "$OUT"
ROOT=/tmp/vpcnet-cri
"$LAB" reap "$ROOT"
CUR=""
cleanup() { [ -n "$CUR" ] && "$LAB" down "$CUR"; CUR=""; }
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load.txt"
for r in $(seq 1 "$RUNS"); do
  if ((r % 2)); then order="vpcnet ptp"; else order="ptp vpcnet"; fi
  for cni in $order; do
    CUR=$ROOT/b$$-$cni
    LAB_OWNER_PID=$$ "$LAB" up "$CUR" "$cni" >/dev/null || exit 1
    # shellcheck disable=SC1091
    . "$CUR/lab.env"
    if ((WARM > 0)); then "$PY" "$CLIENT" "$CRI_SOCK" bench "$WARM" warm >/dev/null || exit 1; fi
    : >"$CUR/plugin.log" 2>/dev/null
    "$PY" "$CLIENT" "$CRI_SOCK" bench "$N" pod >"$OUT/run$r-$cni.json" || exit 1
    # vpcnet's own ADD/DEL time (from its log), to see how much of the CRI call is the plugin
    if [ -f "$CUR/plugin.log" ]; then
      grep -oE '(Add|Del) container=[0-9a-f]+ ok in [0-9.]+' "$CUR/plugin.log" | awk '{print $1, $5}' >"$OUT/run$r-$cni.plugin"
    fi
    echo "run $r $cni: $(cut -c1-120 "$OUT/run$r-$cni.json")..." >&2
    cleanup
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt"

"$PY" - "$OUT" "$RUNS" <<'EOF'
import json, math, os, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def pct(v, p):
    v = sorted(v); return v[max(0, math.ceil(p / 100 * len(v)) - 1)]
def summary(v):
    return {'p50': pct(v, 50), 'p90': pct(v, 90), 'p99': pct(v, 99), 'mean': statistics.mean(v)}
rows = {}
for cni in ('vpcnet', 'ptp'):
    per = []
    for r in range(1, runs + 1):
        d = json.load(open(os.path.join(out, 'run%d-%s.json' % (r, cni))))
        assert all(d['ips']), 'a sandbox without IP in run %d %s' % (r, cni)
        assert len(set(d['ips'])) == len(d['ips']), 'duplicate IPs in run %d %s' % (r, cni)
        s = {'run': summary(d['run_ms']), 'stop': summary(d['stop_ms']), 'rm': summary(d['remove_ms'])}
        pf = os.path.join(out, 'run%d-%s.plugin' % (r, cni))
        if os.path.exists(pf):
            adds = [float(l.split()[1]) for l in open(pf) if l.startswith('Add')]
            dels = [float(l.split()[1]) for l in open(pf) if l.startswith('Del')]
            if adds: s['plugin_add_p50'] = pct(adds, 50)
            if dels: s['plugin_del_p50'] = pct(dels, 50)
        per.append(s)
    rows[cni] = per
json.dump(rows, open(os.path.join(out, 'summary.json'), 'w'), indent=1)
med = lambda xs: statistics.median(xs)
print('\n| CNI chain | RunPodSandbox p50 / p90 / p99 | StopPodSandbox p50 / p90 / p99 | RemovePodSandbox p50 | runs: Run p50 | runs: Stop p50 |')
print('| --- | --- | --- | --- | --- | --- |')
names = {'vpcnet': 'vpcnet + portmap', 'ptp': 'ptp + host-local + portmap'}
for cni, per in rows.items():
    m = lambda k, q: med([s[k][q] for s in per])
    print('| %s | %.1f / %.1f / %.1f | %.1f / %.1f / %.1f | %.1f | %s | %s |' % (
        names[cni], m('run', 'p50'), m('run', 'p90'), m('run', 'p99'), m('stop', 'p50'), m('stop', 'p90'),
        m('stop', 'p99'), m('rm', 'p50'), ' / '.join('%.1f' % s['run']['p50'] for s in per),
        ' / '.join('%.1f' % s['stop']['p50'] for s in per)))
v = [s for s in rows['vpcnet'] if 'plugin_add_p50' in s]
if v:
    print('\nvpcnet plugin itself (its log), median of runs: ADD p50 %.1f ms, DEL p50 %.1f ms' % (
        med([s['plugin_add_p50'] for s in v]), med([s.get('plugin_del_p50', 0) for s in v])))
a, b = med([s['run']['p50'] for s in rows['vpcnet']]), med([s['run']['p50'] for s in rows['ptp']])
print('RunPodSandbox p50: vpcnet %.1f ms vs ptp+host-local %.1f ms -> %s' % (a, b, 'vpcnet lower' if a < b else 'vpcnet NOT lower'))
EOF
echo "raw results: $OUT"
