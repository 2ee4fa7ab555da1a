#!/usr/bin/env bash
# Scale lab (issue 10): one etcd and N vpcnetd agents, each in its own network namespace on a
# shared "switch" bridge, started together (a cold start). Then:
#   1. cold start: how long until every node holds a claim and routes every other node's
#      prefix; claim attempts lost to another node; agents that logged "VPC exhausted" (false:
#      the /9 VPC is nearly empty) or waited for a prefix; agents whose claims list timed out;
#   2. idle (-i seconds, nothing changes): etcd's own counters (Range requests, bytes sent to
#      clients) and the agents' vpcnet_datastore_requests_total{op="list"};
#   3. churn: 10 % of the nodes (every 10th) are killed and come back as new nodes (fresh
#      state, new name: each claims a new prefix; the old claims stay until a sweep takes them after the grace).
#      "claim -> route on all other nodes": for each new claim, from its claimedAt (the
#      claimer's clock, just before the claim's txn) to the last "peers: routes installed" of
#      that prefix in the logs of the nodes that did not churn; p50/p99/max over the claims;
#      and from each new node's own start ("vpcnetd starting") to the same last route (what a
#      joining node waits for; a claim stamped earlier in the start shows a longer claim ->
#      route for the same route); etcd bytes sent per second during the churn window; the
#      kernel's routes checked once after it (every kept node routes every new claim);
#   4. agent RSS (VmRSS of every agent): median and max; the load average at each step;
#   5. /readyz over the whole run (-r MS, 0 = off): one poller (target/debug/readyz-poll,
#      tests/src/bin) asks every agent's /readyz in turn, a round every MS ms, and logs each
#      agent's changes of answer; the lab counts 503s by reason — "starting" (the start-up
#      reconcile) against any other — and answers that timed out, and when every agent was
#      first ready.
# The agents are started by one small launcher (target/debug/netns-launch, tests/src/bin:
# fork + setns + exec per agent, at nice -10, agents at 0), not a shell and an nsenter each;
# cold-start times are given from the script's start, from the first agent's "vpcnetd
# starting" and from the last one's. CPU per agent start: utime + stime of every agent when
# every node is claimed (from /proc), and per start-up phase (the agents' "start-up phase=…
# cpu_ms=…" lines: cumulative CPU at the end of each phase); lease keep-alive failures and
# other retries during the cold start; in the idle window (after -w seconds) the messages etcd
# sent per gRPC method.
# -e NICE starts etcd under `nice -n NICE` (default 0, like the agents; relative to the
# script's own niceness, normally 0): with -e -10 it gets the
# CPU ahead of the agents, roughly as an etcd on its own control-plane machine would — a
# diagnostic of what on these shared cores is etcd's latency and what is the run queue's;
# issue 10's figures are taken without it.
# Every name is unique to the run (-u ID, default the shell's PID): namespaces vs<ID>-*, run
# directory /tmp/vpcnet-scale-<ID>, underlay 172.<16+ID%16>.0.0/16 (outside the VPC), so two
# runs can share the machine. Nothing touches the machine's root namespace.
#   bench/scale.sh [-N NODES] [-c VPC_CIDR] [-b BIN_DIR] [-i IDLE] [-w WAIT] [-u ID] [-r MS] [-e NICE] [-k]
#   (defaults: 50, 10.128.0.0/9, target/release-agent, 30, 5, $$, 500, 0; -k keeps the run directory)
set -euo pipefail
. "$(dirname "$0")/../scripts/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."
NODES=50 VPC=10.128.0.0/9 BIN=$PWD/target/release-agent IDLE=30 WAIT=5 ID=$$ KEEP= POLL=500 ETCD_NICE=0
while getopts "N:c:b:i:w:u:r:e:kh" o; do
  case $o in N) NODES=$OPTARG ;; c) VPC=$OPTARG ;; b) BIN=$(readlink -f "$OPTARG") ;; i) IDLE=$OPTARG ;;
    w) WAIT=$OPTARG ;; u) ID=$OPTARG ;; r) POLL=$OPTARG ;; e) ETCD_NICE=$OPTARG ;;
    k) KEEP=1 ;; *) sed -n '2,41p' "$0"; exit 0 ;; esac
done
[[ "$IDLE" =~ ^[0-9]+$ ]] || { echo "scale.sh: -i SECONDS" >&2; exit 1; }
[[ "$WAIT" =~ ^[0-9]+$ ]] || { echo "scale.sh: -w SECONDS" >&2; exit 1; }
[[ "$POLL" =~ ^[0-9]+$ ]] || { echo "scale.sh: -r MS" >&2; exit 1; }
[[ "$ETCD_NICE" =~ ^-?[0-9]+$ && "$ETCD_NICE" -ge -20 && "$ETCD_NICE" -le 19 ]] || { echo "scale.sh: -e NICE (-20..19)" >&2; exit 1; }
[[ "$ID" =~ ^[0-9]{1,7}$ ]] || { echo "scale.sh: -u ID (digits)" >&2; exit 1; }
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$NODES" -le 4000 ]] || { echo "scale.sh: -N 1..4000" >&2; exit 1; }
command -v etcd >/dev/null && command -v curl >/dev/null && command -v jq >/dev/null && command -v python3 >/dev/null \
  || { echo "scale.sh: needs etcd-server, curl, jq, python3 (scripts/deps.sh installs them)" >&2; exit 1; }
[ -x "$BIN/vpcnetd" ] || cargo build --profile release-agent -q -p vpcnet-agent --bin vpcnetd
LAUNCH=$PWD/target/debug/netns-launch POLLER=$PWD/target/debug/readyz-poll
[ -x "$LAUNCH" ] || cargo build -q -p vpcnet-tests --bin netns-launch
[ "$POLL" = 0 ] || [ -x "$POLLER" ] || cargo build -q -p vpcnet-tests --bin readyz-poll
P=vs$ID SW=vs$ID-sw RUN=/tmp/vpcnet-scale-$ID NET=172.$((16 + ID % 16))
ETCD=http://$NET.0.1:2379
PIDS=() ETCD_PID= LAUNCHERS=() POLLER_PID=
cleanup() {
  set +e
  for pid in $POLLER_PID "${PIDS[@]}" $ETCD_PID; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do while [ -e "/proc/$pid" ] && ! dead "$pid"; do sleep 0.05; done; done
  wait 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-"); do ip netns del "$ns"; done
  [ -n "$KEEP" ] || rm -rf "$RUN"
}
trap cleanup EXIT
cleanup; set -e; rm -rf "$RUN"; mkdir -p "$RUN"
dead() { # the process is gone or a zombie (its sockets are closed)
  local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [ -z "$st" ] || [ "$st" = Z ]
}
node_ip() { echo "$NET.$(( ($1 + 10) / 250 )).$(( ($1 + 10) % 250 + 1 ))"; }
in_ns() { local n=$1; shift; nsenter --net=/run/netns/"$n" "$@"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Every MAC address is fixed (the bridge's: BR_MAC; node K's eth0: node_mac K), so that both
# ends of every agent link get a permanent neighbour entry (below). Without them each agent's
# namespace resolves etcd's address and the switch namespace every agent's (2 N entries), and
# the kernel's neighbour table is one for all namespaces: beyond gc_thresh3 (1024 here, a
# root-namespace sysctl this lab must not touch) new entries are refused or evicted and the
# agents' TCP connects to etcd time out (~510 agents). Entries added as NUD_PERMANENT are
# exempt from the table's garbage collection and not counted against gc_thresh2/3 (kernel
# >= 5.0, neigh_alloc(exempt_from_gc)); the lab prints the ARP table's counters to show it.
BR_MAC=02:76:$(printf '%02x' $((ID % 256))):00:00:01
node_mac() { printf '02:77:%02x:%02x:%02x:%02x' $((ID % 256)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)); }
ip netns add "$SW"; ip -n "$SW" link set lo up
ip -n "$SW" link add br0 address "$BR_MAC" type bridge; ip -n "$SW" addr add "$NET.0.1/16" dev br0; ip -n "$SW" link set br0 up
nsenter --net=/run/netns/"$SW" nice -n "$ETCD_NICE" etcd --name sw --data-dir "$RUN/etcd" --quota-backend-bytes 4294967296 \
  --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster sw=http://127.0.0.1:2380 >"$RUN/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 200); do in_ns "$SW" curl -sf -m 1 "$ETCD/health" 2>/dev/null | grep -q true && break; sleep 0.05; done

# Namespaces and links first (one ip -batch each), so the agents can start together.
{ for k in $(seq "$NODES"); do echo "netns add $P-n$k"; done; } | ip -batch -
{ for k in $(seq "$NODES"); do echo "link add n$k type veth peer name eth0 address $(node_mac "$k") netns $P-n$k"; echo "link set n$k master br0 up"; done; } | ip -n "$SW" -batch -
for k in $(seq "$NODES"); do
  { echo "link set lo up"; echo "addr add $(node_ip "$k")/16 dev eth0"; echo "link set eth0 up"
    echo "neigh replace $NET.0.1 lladdr $BR_MAC dev eth0 nud permanent"; } | ip -n "$P-n$k" -batch -
done
{ for k in $(seq "$NODES"); do echo "neigh replace $(node_ip "$k") lladdr $(node_mac "$k") dev br0 nud permanent"; done; } | ip -n "$SW" -batch -
# The kernel's IPv4 neighbour table (one for all namespaces): entries and forced GC runs.
# (Machine-wide counters: another session's namespaces add to them too.)
arp_stats() {
  ip -n "$SW" -s ntable show name arp_cache 2>/dev/null | awk '!done {for (i = 1; i < NF; i++) {
      if ($i == "entries") e = $(i + 1); if ($i == "forced_gc_runs") f = $(i + 1); if ($i == "table_fulls") t = $(i + 1) }}
    /table_fulls/ {done = 1} END {printf "entries %s, forced GC runs %s, table full %s", e, f, t}'
}
echo "scale.sh: neighbour table after the permanent entries: $(arp_stats)"

claims_json() {
  in_ns "$SW" curl -s -m 5 "$ETCD/v3/kv/range" \
    -d "{\"key\":\"$(printf /vpcnet/claims/ | base64)\",\"range_end\":\"$(printf /vpcnet/claims0 | base64)\"}"
}
claims() { # distinct nodes holding a claim, total claims
  claims_json | jq -r '[.kvs[]?.value | @base64d | fromjson | .node] | "\(unique | length) \(length)"'
}
# agent_spec K NAME DIR: the launcher's line for node K's agent as NAME with state in DIR.
agent_spec() {
  mkdir -p "$3"
  echo "$P-n$1 $3/vpcnetd.log $BIN/vpcnetd --socket $3/vpcnetd.sock --state-dir $3/state" \
    "--vpc-cidr $VPC --datastore etcd --etcd-endpoints $ETCD --node-name $2 --node-ip $(node_ip "$1")" \
    "--warm-prefix-target 1 --snat=false --metrics-addr 127.0.0.1:9961"
}
# launch BATCH K... (specs in $RUN/specs-BATCH, in the order of the Ks): one launcher starts
# them all; their PIDs go to PIDS[K].
launch() {
  local batch=$1 i=0 pids; shift
  "$LAUNCH" "$RUN/pids-$batch" <"$RUN/specs-$batch" >"$RUN/launch-$batch.log" 2>&1 &
  LAUNCHERS+=($!)
  for _ in $(seq 2400); do [ -e "$RUN/pids-$batch" ] && break; sleep 0.05; done
  mapfile -t pids <"$RUN/pids-$batch"
  [ "${#pids[@]}" = $# ] || { echo "scale.sh: launcher started ${#pids[@]} of $#: $(cat "$RUN/launch-$batch.log")" >&2; exit 1; }
  for k in "$@"; do PIDS[$k]=${pids[$i]}; i=$((i + 1)); done
}
# The first and last "vpcnetd starting" of these logs, as epoch seconds.
start_span() {
  python3 - "$@" <<'PY'
import datetime, sys
ts = []
for f in sys.argv[1:]:
    for line in open(f, errors="replace"):
        if "vpcnetd starting" in line:
            ts.append(datetime.datetime.fromisoformat(line.split()[0].rstrip("Z")).replace(tzinfo=datetime.timezone.utc).timestamp())
            break
print(f"{min(ts):.3f} {max(ts):.3f}" if ts else "nan nan")
PY
}
cpu_ms_of() { # utime + stime of PID, ms
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.0f", ($12 + $13) * 1000 / hz }' "/proc/$1/stat" 2>/dev/null || true
}

echo "scale.sh: N=$NODES run $RUN (namespaces $P-*), load before start: $(load), etcd at nice $ETCD_NICE"
for k in $(seq "$NODES"); do agent_spec "$k" "node$k" "$RUN/n$k"; done >"$RUN/specs-0"
if [ "$POLL" != 0 ]; then
  for k in $(seq "$NODES"); do echo "$P-n$k"; done | "$POLLER" "$POLL" 9961 "$RUN/readyz" &
  POLLER_PID=$!
fi
t0=$(date +%s.%N)
since() { awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }'; }
launch 0 $(seq "$NODES")
t_launched=$(since)
t_claimed= a_claimed=
# Polled every 0.1 s by a count of the claims, from one process with one connection (a poll
# from the shell — nsenter, curl, base64, sed — cost ~18 ms of CPU, ~9 % of these 2 cores at
# 10 polls a second, during the cold start it measures; the full list decoded by jq each time
# cost 20-40 ms); once there are N, the full list says whether N distinct nodes hold them (the
# time is taken after it). Prints that time (epoch s), nothing if not within 600 s.
a_claimed=$(in_ns "$SW" python3 - "$NODES" "$ETCD" <<'PY'
import base64, http.client, json, sys, time, urllib.parse
n, etcd = int(sys.argv[1]), urllib.parse.urlsplit(sys.argv[2])
b = lambda s: base64.b64encode(s.encode()).decode()
rng = {"key": b("/vpcnet/claims/"), "range_end": b("/vpcnet/claims0")}
conn = None
def ask(body):
    global conn
    try:
        conn = conn or http.client.HTTPConnection(etcd.hostname, etcd.port, timeout=5)
        conn.request("POST", "/v3/kv/range", json.dumps(body))
        return json.loads(conn.getresponse().read())
    except Exception:  # no answer within 5 s (etcd busy), or a closed connection: poll again
        conn = None
        return {}
for _ in range(6000):
    if int(ask(dict(rng, count_only=True)).get("count", 0)) >= n:
        kvs = ask(rng).get("kvs", [])
        if len({json.loads(base64.b64decode(kv["value"]))["node"] for kv in kvs}) >= n:
            print(f"{time.time():.6f}")
            break
    time.sleep(0.1)
PY
) || true
[ -n "$a_claimed" ] && t_claimed=$(awk -v a="$a_claimed" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
load_claimed=$(load) arp_claimed=$(arp_stats)
# etcd's own metrics at that point (requests per method, disk, apply, watchers), kept with -k.
in_ns "$SW" curl -s -m 5 "$ETCD/metrics" >"$RUN/etcd-metrics-claimed" || true
# CPU each agent has used by now (every node claimed), and etcd's.
for k in $(seq "$NODES"); do cpu_ms_of "${PIDS[$k]}"; echo; done >"$RUN/cpu-at-claimed"
etcd_cpu_claimed=$(cpu_ms_of "$ETCD_PID")
# Every node routes every prefix (peers' via their node IP, its own unreachable). One pass
# over N namespaces takes a while at large N: this time is an upper bound.
t_routed=
for _ in $(seq 600); do
  read -r _ total <<<"$(claims)"
  short=0
  for k in $(seq "$NODES"); do
    n=$(ip -n "$P-n$k" -4 route show proto 171 | grep -c / || true)
    [ "$n" -ge "$total" ] || { short=1; break; }
  done
  if [ "$short" = 0 ]; then a_routed=$(date +%s.%N) t_routed=$(since); break; fi
  sleep 0.2
done
read -r first_start last_start <<<"$(start_span "$RUN"/n*/vpcnetd.log)"
# From the agents' logs: the last "peers: routes installed" of the cold start (one clock).
last_route=$(cat "$RUN"/n*/vpcnetd.log | grep -E "routes? installed" | cut -d' ' -f1 | sort | tail -1 | python3 -c '
import datetime, sys
t = sys.stdin.read().strip().rstrip("Z")
print(f"{datetime.datetime.fromisoformat(t).replace(tzinfo=datetime.timezone.utc).timestamp():.3f}" if t else "")')
rel() { [ -n "$1" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }' || echo never; }
printf 'launch: %s agents in %s s (script start to all spawned; %s); first to last "vpcnetd starting": %s s\n' \
  "$NODES" "$t_launched" "$(cat "$RUN/launch-0.log")" "$(rel "$last_start" "$first_start")"
printf 'cold start from the first agent started: every node claimed %s s, every node routes every prefix %s s (last route installed, logs: %s s); from the last agent started: %s s, %s s (%s s)\n' \
  "$(rel "$a_claimed" "$first_start")" "$(rel "${a_routed:-}" "$first_start")" "$(rel "$last_route" "$first_start")" \
  "$(rel "$a_claimed" "$last_start")" "$(rel "${a_routed:-}" "$last_start")" "$(rel "$last_route" "$last_start")"
sort -n "$RUN/cpu-at-claimed" | awk -v e="$etcd_cpu_claimed" 'NF {a[++n] = $1; s += $1}
  END {p = int(n * 0.9); if (p < 1) p = 1
    printf "CPU at \"every node claimed\": per agent median %d ms  p90 %d ms  max %d ms  sum %.1f s;  etcd %.1f s\n", a[int((n + 1) / 2)], a[p], a[n], s / 1000, e / 1000}'
# Per start-up phase: the agents' cumulative CPU at the end of each phase (their order varies:
# lease, watch and claim run concurrently).
python3 - "$RUN"/n*/vpcnetd.log <<'PY'
import datetime, re, sys
ts = lambda line: datetime.datetime.fromisoformat(line.split()[0].rstrip("Z")).timestamp()
phases, walls, kids = {}, {}, {}
for f in sys.argv[1:]:
    start = None
    for line in open(f, errors="replace"):
        if start is None and "vpcnetd starting" in line:
            start = ts(line)
        if "start-up" not in line:
            continue
        m = re.search(r'phase="?([a-z -]+)"?\s+cpu_ms=([0-9.]+)', line)
        if m and start is not None:
            phases.setdefault(m.group(1), []).append(float(m.group(2)))
            walls.setdefault(m.group(1), []).append(ts(line) - start)
            c = re.search(r"children_cpu_ms=([0-9.]+)", line)
            kids.setdefault(m.group(1), []).append(float(c.group(1)) if c else 0.0)
med = lambda v: sorted(v)[len(v) // 2]
p90 = lambda v: sorted(v)[int(len(v) * 0.9)]
for name, v in sorted(phases.items(), key=lambda kv: med(kv[1])):
    w, k = walls[name], kids[name]
    print(f"  start-up phase {name:<20} agents {len(v):>5}  cumulative CPU median {med(v):7.1f} ms  p90 {p90(v):7.1f} ms"
          f"  + children (nft) median {med(k):5.1f} ms"
          f"   wall from the agent's start median {med(w):6.3f} s  p90 {p90(w):6.3f} s")
PY
metric_sum() { # sum over the agents of the samples of $1 (a regex on the line)
  local sum=0 k v
  for k in $(seq "$NODES"); do
    v=$(in_ns "$P-n$k" curl -s -m 2 http://127.0.0.1:9961/metrics | awk -v re="$1" '$0 ~ re {s += $2} END {printf "%.0f", s}' || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
lost=$(metric_sum '^vpcnet_prefix_claims_total\{.*result="taken"')
cold_lists=$(metric_sum '^vpcnet_datastore_requests_total\{.*op="list"')
waiting_now=$(metric_sum '^vpcnet_pool_waiting_for_prefix ')
logs_with() { { grep -l "$1" "$RUN"/n*/vpcnetd.log 2>/dev/null || true; } | wc -l; }
exhausted=$(logs_with "VPC exhausted")
waited=$(logs_with "waiting for a prefix\|claim races")
timeouts=$(logs_with "listing claims.*\(timed out\|no answer\)")
count_in_logs() { cat "$RUN"/n*/vpcnetd.log 2>/dev/null | grep -c "$1" || true; }
printf 'cold start: claims lists the agents sent to etcd: %s (%s per agent)\n' "$cold_lists" \
  "$(awk -v a="$cold_lists" -v n="$NODES" 'BEGIN { printf "%.2f", a / n }')"
printf 'cold-start retries (log lines over all agents): lease keep-alive failed %s  watch failed %s  any "no answer within" %s  agents with any retry %s\n' \
  "$(count_in_logs "lease keep-alive failed")" "$(count_in_logs "etcd: watch failed")" "$(count_in_logs "no answer within")" \
  "$(logs_with "retrying")"
read -r nodes total <<<"$(claims)"
printf 'cold start: every node claimed: %s s  every node routes every prefix: %s s  claims=%s  lost races=%s  agents that logged VPC exhausted=%s  agents that waited for a prefix=%s (waiting now: %s)  agents timing out listing claims=%s  load: %s\n' \
  "${t_claimed:-never}" "${t_routed:-never}" "$total" "$lost" "$exhausted" "$waited" "$waiting_now" "$timeouts" "$load_claimed"
echo "cold start: neighbour table at \"every node claimed\": $arp_claimed"

# Idle traffic: nothing changes for IDLE seconds; count what the agents still ask etcd.
etcd_metric() { # sum of an etcd metric's samples whose line matches $1
  in_ns "$SW" curl -s -m 5 "$ETCD/metrics" | awk -v re="$1" '$0 ~ re && !/^#/ {s += $NF} END {printf "%.0f", s}'
}
BYTES='^etcd_network_client_grpc_sent_bytes_total'
if [ "$IDLE" -gt 0 ]; then
  sleep "$WAIT" # let the cold start's last events settle
  msgs() { in_ns "$SW" curl -s -m 5 "$ETCD/metrics" | awk '/^grpc_server_msg_sent_total/ && match($0, /grpc_method="[A-Za-z]+"/) {m[substr($0, RSTART + 13, RLENGTH - 14)] += $NF} END {for (k in m) print k, m[k]}' | sort; }
  r0=$(etcd_metric 'grpc_server_handled_total.*grpc_method="Range"') b0=$(etcd_metric "$BYTES") l0=$(metric_sum '^vpcnet_datastore_requests_total\{.*op="list"')
  msgs >"$RUN/msgs-0"
  sleep "$IDLE"
  r1=$(etcd_metric 'grpc_server_handled_total.*grpc_method="Range"') b1=$(etcd_metric "$BYTES") l1=$(metric_sum '^vpcnet_datastore_requests_total\{.*op="list"')
  msgs >"$RUN/msgs-1"
  printf 'idle %s s (from %s s after every route): etcd Range requests=%s  etcd bytes sent to clients=%s (%s/s, %s per node per s)  agents list requests=%s  load: %s\n' \
    "$IDLE" "$WAIT" "$((r1 - r0))" "$((b1 - b0))" "$(( (b1 - b0) / IDLE ))" \
    "$(awk -v b="$((b1 - b0))" -v t="$IDLE" -v n="$NODES" 'BEGIN { printf "%.1f", b / t / n }')" "$((l1 - l0))" "$(load)"
  join -a2 -e 0 -o 0,1.2,2.2 "$RUN/msgs-0" "$RUN/msgs-1" | awk -v t="$IDLE" -v n="$NODES" '$3 > $2 {printf "  idle: etcd sent %d %s messages (%.3f per node per s)\n", $3 - $2, $1, ($3 - $2) / t / n}'

fi

# Churn: every 10th node killed, back at once as a new node (fresh state, new name).
CHURN=() KEPT=()
for k in $(seq "$NODES"); do if [ $((k % 10)) = 0 ]; then CHURN+=("$k"); else KEPT+=("$k"); fi; done
if [ "${#CHURN[@]}" -gt 0 ]; then
  # Where each kept node's log stands before the churn: routes logged after this are the churn's.
  stat -c '%s' $(for k in "${KEPT[@]}"; do echo "$RUN/n$k/vpcnetd.log"; done) >"$RUN/churn-offsets"
  b0=$(etcd_metric "$BYTES") c0=$(date +%s.%N)
  for k in "${CHURN[@]}"; do kill -9 "${PIDS[$k]}" 2>/dev/null || true; done
  for k in "${CHURN[@]}"; do while ! dead "${PIDS[$k]}"; do sleep 0.02; done; done
  for k in "${CHURN[@]}"; do agent_spec "$k" "node$k-r" "$RUN/n$k-r"; done >"$RUN/specs-1"
  launch 1 "${CHURN[@]}"
  # Until every new node's claim is routed on every kept node (or 120 s), by one process: the
  # claims over one HTTP connection, the routes from the kept nodes' logs, each read on from
  # where the last poll stopped (~15 ms of CPU a poll at 900 kept nodes). It was a shell loop
  # every 0.2 s — curl and jq over the whole claims list, then `ip route` in one kept node
  # after another, a process each (~2 s of CPU a pass at 900) — on the same 2 cores as the
  # routes it waited for, heaviest exactly when the last of them were being installed. The
  # kernel's routes are checked once after the window (below), off the clock.
  churn_done=$(in_ns "$SW" python3 - "$ETCD" "$RUN" "${#CHURN[@]}" "${KEPT[*]}" <<'PY'
import base64, http.client, json, os, re, sys, time, urllib.parse
etcd, run, want, kept = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
b = lambda s: base64.b64encode(s.encode()).decode()
rng = json.dumps({"key": b("/vpcnet/claims/"), "range_end": b("/vpcnet/claims0")})
pat = re.compile(r"routes? installed (?:n=\d+ routes|route)=(.*)$")
conn, fresh = None, set()
offset = dict(zip(kept, (int(x) for x in open(f"{run}/churn-offsets").read().split())))
seen = {k: set() for k in kept}
def claims():
    global conn
    try:
        conn = conn or http.client.HTTPConnection(etcd.hostname, etcd.port, timeout=5)
        conn.request("POST", "/v3/kv/range", rng)
        return [json.loads(base64.b64decode(kv["value"])) for kv in json.loads(conn.getresponse().read()).get("kvs", [])]
    except Exception:  # etcd busy (no answer within 5 s) or the connection closed: poll again
        conn = None
        return []
def read_on(k):
    try:
        with open(f"{run}/n{k}/vpcnetd.log", "rb") as f:
            f.seek(offset[k])
            data = f.read()
    except OSError:
        return
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    offset[k] += end
    for line in data[:end].decode(errors="replace").splitlines():
        m = pat.search(line)
        if m:
            seen[k].update(r.split(" via ")[0] for r in m.group(1).split(", "))
until = time.time() + 120
while time.time() < until:
    if len(fresh) < want:
        fresh = {c["prefix"] for c in claims() if c.get("node", "").endswith("-r")}
    for k in kept:
        read_on(k)
    if len(fresh) >= want and all(fresh <= seen[k] for k in kept):
        print(1)
        break
    time.sleep(0.25)
PY
) || churn_done=
  c1=$(date +%s.%N) b1=$(etcd_metric "$BYTES")
  window=$(awk -v a="$c1" -v b="$c0" 'BEGIN { printf "%.1f", a - b }')
  claims_json >"$RUN/claims-after-churn.json"
  # The kernel's routes, once, after the window: every kept node routes every new claim.
  jq -r '.kvs[]?.value | @base64d | fromjson | select(.node | endswith("-r")) | .prefix' \
    "$RUN/claims-after-churn.json" >"$RUN/churn-fresh"
  kernel_short=0
  for k in "${KEPT[@]}"; do # one ip and one awk a node: how many new claims it has no route for
    n=$(ip -n "$P-n$k" -4 route show proto 171 | awk 'NR == FNR {want[$1]; next} $2 == "via" {delete want[$1]} END {print length(want)}' "$RUN/churn-fresh" -)
    kernel_short=$((kernel_short + n))
  done
  python3 - "$RUN" "${KEPT[*]}" "${CHURN[*]}" <<'PY'
import base64, datetime, json, re, sys
run, kept, churned = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def ts(s):  # a log line's time stamp (UTC, trailing Z optional), epoch seconds
    return datetime.datetime.fromisoformat(s.rstrip("Z")).replace(tzinfo=datetime.timezone.utc).timestamp()
kvs = json.load(open(f"{run}/claims-after-churn.json")).get("kvs", [])
claims = [json.loads(base64.b64decode(kv["value"])) for kv in kvs]
fresh = {c["prefix"]: c["claimedAt"] / 1000.0 for c in claims if c["node"].endswith("-r")}
# "peers: routes installed n=K routes=P via GW, P via GW, ..." (one line per batch; older
# agents: "peers: route installed route=P via GW", one per route).
pat = re.compile(r"^(\S+)Z .*routes? installed (?:n=\d+ routes|route)=(.*)$")
seen = {p: {} for p in fresh}
offsets = dict(zip(kept, (int(x) for x in open(f"{run}/churn-offsets").read().split())))
for k in kept:
    with open(f"{run}/n{k}/vpcnetd.log", "rb") as f:
        f.seek(offsets[k])  # what the node logged from the churn on
        lines = f.read().decode(errors="replace").splitlines()
    for line in lines:
        m = pat.match(line)
        if not m:
            continue
        for r in m.group(2).split(", "):
            p = r.split(" via ")[0]
            if p in seen:
                seen[p].setdefault(k, ts(m.group(1)))
# Each new node's own start ("vpcnetd starting" in its log): the node's view of joining.
started = {}
for k in churned:
    for line in open(f"{run}/n{k}-r/vpcnetd.log", errors="replace"):
        if "vpcnetd starting" in line:
            started[f"node{k}-r"] = ts(line.split()[0])
            break
owner = {c["prefix"]: c["node"] for c in claims if c["node"].endswith("-r")}
lat, from_start = [], []
missing = 0
for p, t0 in fresh.items():
    if len(seen[p]) < len(kept):
        missing += 1
        continue
    lat.append(max(seen[p].values()) - t0)
    if owner.get(p) in started:
        from_start.append(max(seen[p].values()) - started[owner[p]])
def q(v, f):
    v = sorted(v)
    return v[min(len(v) - 1, int(f * len(v)))] if v else float("nan")
print(f"churn: {len(fresh)} new claims, claim -> route on all {len(kept)} other nodes: "
      f"p50 {q(lat, 0.5):.3f} s  p99 {q(lat, 0.99):.3f} s  max {q(lat, 1.0):.3f} s  (claims not routed everywhere: {missing})")
# The claim's own time stamp is taken just before its txn: a node that claims earlier in its
# start-up (while etcd is busy with the others' start) shows a longer claim -> route for the
# same or an earlier route. From the new node's start it is the time a joining node waits.
print(f"churn: new node started -> its prefix routed on all {len(kept)} other nodes: "
      f"p50 {q(from_start, 0.5):.3f} s  p99 {q(from_start, 0.99):.3f} s  max {q(from_start, 1.0):.3f} s  ({len(from_start)} nodes)")
PY
  printf 'churn window %s s (%s; the window ends when the check sees every route in the logs: an upper bound): etcd bytes sent to clients=%s (%s per churning node)  load: %s\n' \
    "$window" "$([ -n "$churn_done" ] && echo converged || echo 'NOT converged')" "$((b1 - b0))" \
    "$(( (b1 - b0) / ${#CHURN[@]} ))" "$(load)"
  printf 'churn: the kernel after the window: %s of %s (kept node, new claim) routes missing\n' \
    "$kernel_short" "$(( ${#KEPT[@]} * $(wc -l <"$RUN/churn-fresh") ))"
fi

# /readyz over the run (the poller's changes of answer; it is stopped here, before the
# churn's agents are counted out).
if [ -n "$POLLER_PID" ]; then
  kill "$POLLER_PID" 2>/dev/null; wait "$POLLER_PID" 2>/dev/null || true; POLLER_PID=
  python3 - "$RUN/readyz" "$first_start" "$NODES" <<'PY'
import collections, sys
path, first, nodes = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
starting = other = timeouts = errors = 0
other_agents, timeout_agents, reasons, first_ready = set(), set(), collections.Counter(), {}
for line in open(path, errors="replace"):
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) < 3:
        continue
    t, ns, state = int(parts[0]) / 1000.0, parts[1], parts[2]
    if state == "200":
        first_ready.setdefault(ns, t)
    elif state.startswith("503 starting"):
        starting += 1
    elif state.startswith("503"):
        other += 1
        other_agents.add(ns)
        reasons[state] += 1
    elif state == "timeout":
        timeouts += 1
        timeout_agents.add(ns)
    elif state == "error":
        errors += 1
last = f"{max(first_ready.values()) - first:.2f} s" if len(first_ready) >= nodes else f"never ({len(first_ready)} of {nodes})"
print(f"/readyz (changes of answer over the run): 503 start-up {starting}  503 other {other} (agents {len(other_agents)})"
      f"  no answer within 1 s {timeouts} (agents {len(timeout_agents)})  errors {errors};"
      f"  every agent first ready {last} from the first agent started")
for r, n in reasons.most_common(5):
    print(f"  503 other: {n} x {r}")
PY
fi

# Agent memory.
rss=()
for k in $(seq "$NODES"); do
  v=$(awk '/^VmRSS:/ {print $2}' "/proc/${PIDS[$k]}/status" 2>/dev/null || true)
  [ -n "$v" ] && rss+=("$v")
done
if [ "${#rss[@]}" -gt 0 ]; then
  printf '%s\n' "${rss[@]}" | sort -n | awk '{a[NR] = $1} END {printf "agent RSS (VmRSS, %d agents): median %.1f MiB  max %.1f MiB\n", NR, a[int((NR + 1) / 2)] / 1024, a[NR] / 1024}'
  # Of which: anonymous (heap, stacks, the binary's relocated data) and file-backed (the
  # binary's and the libraries' pages: shared by the agents of this lab, counted in each VmRSS).
  for k in $(seq "$NODES"); do
    awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {if (a != "") print a, f}' "/proc/${PIDS[$k]}/status" 2>/dev/null || true
  done | sort -n | awk '{a[NR] = $1; f[NR] = $2} END {if (NR) printf "  of which RssAnon median %.1f MiB (max %.1f), RssFile %.1f MiB (that agent)\n", a[int((NR + 1) / 2)] / 1024, a[NR] / 1024, f[int((NR + 1) / 2)] / 1024}'
fi
echo "neighbour table at the end: $(arp_stats)"
