#!/usr/bin/env bash
# CPU of one agent start against a real etcd (issue 10): the cost that N agents starting
# together multiply. One private namespace holds etcd (127.0.0.1) and, per run, one vpcnetd
# started with the scale lab's flags (bench/scale.sh) and a fresh state dir and node name.
# etcd is pre-filled with P claims of other nodes (on the agent's underlay /16), so each start
# lists P claims and installs P peer routes, as the last of P+1 nodes of a cold start would.
# Each run ends once the agent logged its "start-up phase=claimed" (plus 300 ms) with SIGTERM;
# prints per run the task-clock of the whole process (perf stat, start to exit) and the
# agent's own per-phase CPU lines; then the medians.
# With -g DIR, every run is sampled by `perf record` instead (DIR/perf.<run>; no task-clock),
# and the symbols that took the most samples over all runs are printed (flat profile).
# With -d D, each run then measures the other half of a cold start's cost, the one N agents
# pay N times each: once the agent has claimed, D more nodes claim, one txn each, one every
# -p MS ms (a paced client in the namespace); the agent's CPU from the first to the routes of
# all D (the sum of its threads' /proc/<tid>/schedstat run time, ns) is printed per delta;
# with -g too, perf records the agent over that window only.
#   bench/start-cpu.sh [-P PEERS] [-r RUNS] [-b BIN_DIR] [-u ID] [-g DIR] [-d D] [-p MS]
#   (defaults: 399, 9, target/release-agent, $$, none, 0, 5)
set -euo pipefail
. "$(dirname "$0")/../scripts/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."
PEERS=399 RUNS=9 BIN=$PWD/target/release-agent ID=$$ REC= DELTAS=0 PACE=5
while getopts "P:r:b:u:g:d:p:h" o; do
  case $o in P) PEERS=$OPTARG ;; r) RUNS=$OPTARG ;; b) BIN=$(readlink -f "$OPTARG") ;; u) ID=$OPTARG ;;
    g) REC=$(readlink -f "$OPTARG") ;; d) DELTAS=$OPTARG ;; p) PACE=$OPTARG ;; *) sed -n '2,19p' "$0"; exit 0 ;; esac
done
[[ "$DELTAS" =~ ^[0-9]+$ && "$DELTAS" -le 4000 ]] || { echo "start-cpu.sh: -d 0..4000" >&2; exit 1; }
[[ "$PACE" =~ ^[0-9]+$ && "$PACE" -le 1000 ]] || { echo "start-cpu.sh: -p 0..1000 (ms)" >&2; exit 1; }
[[ "$PEERS" =~ ^[0-9]+$ && "$PEERS" -le 4000 ]] || { echo "start-cpu.sh: -P 0..4000" >&2; exit 1; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "start-cpu.sh: -r RUNS" >&2; exit 1; }
[[ "$ID" =~ ^[0-9]{1,7}$ ]] || { echo "start-cpu.sh: -u ID (digits)" >&2; exit 1; }
command -v etcd >/dev/null && command -v curl >/dev/null && command -v perf >/dev/null \
  || { echo "start-cpu.sh: needs etcd-server, curl, perf" >&2; exit 1; }
[ -x "$BIN/vpcnetd" ] || { echo "start-cpu.sh: no $BIN/vpcnetd" >&2; exit 1; }
NS=vc$ID-sc RUN=/tmp/vpcnet-start-cpu-$ID ETCD=http://127.0.0.1:2379 ETCD_PID=
cleanup() {
  set +e
  [ -n "$ETCD_PID" ] && kill "$ETCD_PID" 2>/dev/null && wait "$ETCD_PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$RUN"
}
trap cleanup EXIT
rm -rf "$RUN"; mkdir -p "$RUN"
ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
in_ns ip link add dummy0 type veth peer name dummy1
in_ns ip link set dummy1 up
in_ns ip addr add 172.30.0.2/16 dev dummy0
in_ns ip link set dummy0 up
in_ns etcd --name sc --data-dir "$RUN/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster sc=http://127.0.0.1:2380 >"$RUN/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 200); do in_ns curl -sf -m 1 "$ETCD/health" 2>/dev/null | grep -q true && break; sleep 0.05; done
b64() { printf '%s' "$1" | base64 -w0; }
# Peer k (1..P): prefix 10.129.<k/16>.<k%16*16>/28 of node p<k> at 172.30.<k/250+1>.<k%250+1>.
put_ops=() now=$(date +%s%3N)
for k in $(seq "$PEERS"); do
  a=$((k / 16)) b=$((k % 16 * 16)) ip=172.30.$((k / 250 + 1)).$((k % 250 + 1))
  key=$(b64 "/vpcnet/claims/10.129.$a.$b-28")
  val=$(b64 "{\"prefix\":\"10.129.$a.$b/28\",\"node\":\"p$k\",\"nodeIp\":\"$ip\",\"claimedAt\":$now}")
  put_ops+=("{\"requestPut\":{\"key\":\"$key\",\"value\":\"$val\"}}")
  if [ "${#put_ops[@]}" -eq 100 ] || [ "$k" -eq "$PEERS" ]; then
    body=$(IFS=,; echo "{\"success\":[${put_ops[*]}]}")
    in_ns curl -sf -m 5 "$ETCD/v3/kv/txn" -d "$body" >/dev/null
    put_ops=()
  fi
done
echo "start-cpu.sh: etcd holds $PEERS peer claims; load $(cut -d' ' -f1-3 /proc/loadavg); agent $BIN/vpcnetd"
for r in $(seq "$RUNS"); do
  d=$RUN/r$r; mkdir -p "$d"
  perf=(perf stat -x, -e task-clock -o "$d/perf")
  [ -n "$REC" ] && mkdir -p "$REC" && [ "$DELTAS" = 0 ] && perf=(perf record -q -g -F 20000 -o "$REC/perf.$r")
  in_ns "${perf[@]}" -- "$BIN/vpcnetd" --socket "$d/vpcnetd.sock" --state-dir "$d/state" \
    --vpc-cidr 10.128.0.0/9 --datastore etcd --etcd-endpoints "$ETCD" --node-name "me$r" \
    --node-ip 172.30.0.2 --warm-prefix-target 1 --snat=false --metrics-addr 127.0.0.1:9961 \
    >"$d/log" 2>&1 &
  pid=$!
  for _ in $(seq 400); do grep -q 'phase="claimed"\|phase=claimed' "$d/log" 2>/dev/null && break; sleep 0.025; done
  sleep 0.3
  if [ "$DELTAS" -gt 0 ]; then
    # Nodes q<r>-<k> claim prefixes 10.130.<k/16>.<k%16*16>/28 after ours (new ones each run).
    agent=$(pgrep -f -- "--state-dir $d/state" | while read -r p; do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = vpcnetd ] && echo "$p"; done | head -1)
    before=$(cat /proc/"$agent"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}')
    cs0=$(cat /proc/"$agent"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    rec=
    if [ -n "$REC" ]; then perf record -q -g -F 20000 -p "$agent" -o "$REC/perf.$r" & rec=$!; fi
    in_ns python3 - "$DELTAS" "$PACE" "$r" <<'PY'
import base64, http.client, json, sys, time
n, pace, run = int(sys.argv[1]), int(sys.argv[2]) / 1000, sys.argv[3]
b = lambda s: base64.b64encode(s.encode()).decode()
c = http.client.HTTPConnection("127.0.0.1", 2379)
t = time.monotonic()
for k in range(1, n + 1):
    p = f"10.130.{k // 16}.{k % 16 * 16}"
    v = {"prefix": f"{p}/28", "node": f"q{run}-{k}", "nodeIp": f"172.30.{100 + k // 250}.{k % 250 + 1}", "claimedAt": int(time.time() * 1000)}
    body = {"success": [{"requestPut": {"key": b(f"/vpcnet/claims/{p}-28"), "value": b(json.dumps(v))}}]}
    c.request("POST", "/v3/kv/txn", json.dumps(body)); c.getresponse().read()
    t += pace
    time.sleep(max(0, t - time.monotonic()))
PY
    got=0
    for _ in $(seq 400); do
      got=$(in_ns ip route show proto 171 root 10.130.0.0/16 2>/dev/null | grep -c via || true)
      [ "$got" -ge "$DELTAS" ] && break; sleep 0.025
    done
    [ "$got" -ge "$DELTAS" ] || echo "start-cpu.sh: run $r: only $got of $DELTAS routes after 10 s (the figure covers the wait)" >&2
    after=$(cat /proc/"$agent"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}')
    cs1=$(cat /proc/"$agent"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    threads=$(ls /proc/"$agent"/task | wc -l)
    if [ -n "$rec" ]; then kill -INT "$rec"; wait "$rec" || true; fi
    per=$(awk -v a="$after" -v b="$before" -v n="$DELTAS" 'BEGIN {printf "%.1f", (a - b) / n / 1000}')
    per="$per µs, $(awk -v a="$cs1" -v b="$cs0" -v n="$DELTAS" 'BEGIN {printf "%.2f", (a - b) / n}') context switches ($threads threads)"
    echo "$per" | cut -d' ' -f1 >>"$RUN/per-delta"
    in_ns curl -sf -m 5 "$ETCD/v3/kv/deleterange" -d "{\"key\":\"$(b64 /vpcnet/claims/10.130.)\",\"range_end\":\"$(b64 /vpcnet/claims/10.130/)\"}" >/dev/null
  fi
  routes=$(in_ns ip route show proto 171 2>/dev/null | grep -c via || true)
  # The agent itself (perf's child), not perf: perf then writes its figures as the agent exits.
  for p in $(pgrep -f -- "--state-dir $d/state"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = vpcnetd ] && kill -TERM "$p"
  done
  wait "$pid" || true
  in_ns ip route flush proto 171 2>/dev/null || true
  clock=$(awk -F, '/task-clock/ {printf "%.1f", $1}' "$d/perf" 2>/dev/null || true)
  phases=$(grep -o 'phase="\?[a-z -]*"\?[ ]*cpu_ms=[0-9.]*' "$d/log" | sed 's/phase=//; s/"//g; s/ *cpu_ms=/=/' | paste -sd' ')
  echo "run $r: task-clock ${clock:-n/a} ms; peer routes $routes; $phases${per:+; agent CPU per peer claim delta $per}"
  echo "$clock" >>"$RUN/clock"
  grep -o 'phase="\?[a-z -]*"\?[ ]*cpu_ms=[0-9.]*' "$d/log" | sed 's/phase=//; s/"//g; s/ *cpu_ms=/\t/' >>"$RUN/phases"
done
python3 - "$RUN/clock" "$RUN/phases" "$RUN/per-delta" <<'PY'
import os, sys, statistics
clock = [float(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for l in open(sys.argv[2]):
    p, v = l.rstrip("\n").split("\t")
    by.setdefault(p, []).append(float(v))
if clock:
    print(f"median task-clock (whole process, start to exit): {statistics.median(clock):.1f} ms over {len(clock)} runs")
for p, v in by.items():
    print(f"median cpu_ms at {p}: {statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})")
if os.path.exists(sys.argv[3]):
    v = [float(l) for l in open(sys.argv[3]) if l.strip()]
    print(f"agent CPU per peer claim delta: median {statistics.median(v):.1f} µs (min {min(v):.1f}, max {max(v):.1f}) over {len(v)} runs")
PY
if [ -n "$REC" ]; then
  echo "start-cpu.sh: samples per symbol over the $RUNS runs (perf record -F 20000), top 40:"
  for f in "$REC"/perf.*; do perf script -i "$f" -G -F ip,sym,dso 2>/dev/null; done \
    | sed 's/^ *[0-9a-f]* //' | sort | uniq -c | sort -rn | awk '{n += $1; l[NR] = $0} END {for (i = 1; i <= 40 && i <= NR; i++) printf "%6.2f%% %s\n", 100 * l[i] / n, l[i]}'
fi
echo "start-cpu.sh: load $(cut -d' ' -f1-3 /proc/loadavg)"
