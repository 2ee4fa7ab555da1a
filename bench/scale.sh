#!/usr/bin/env bash
# Scale lab (issue 10): one etcd and N vpcnetd agents, each in its own network namespace on a
# shared "switch" bridge, started together (a cold start). Then:
#   1. cold start: how long until every node holds a claim and routes every other node's
#      prefix; claim attempts lost to another node; agents that logged "VPC exhausted" (false:
#      the /9 VPC is nearly empty) or waited for a prefix; agents whose claims list timed out;
#   2. idle (-i seconds, nothing changes): etcd's own counters (Range requests, bytes sent to
#      clients) and the agents' vpcnet_datastore_requests_total{op="list"};
#   3. churn: 10 % of the nodes (every 10th) are killed and come back as new nodes (fresh
#      state, new name: each claims a new prefix; the old claims expire with their lease).
#      "claim -> route on all other nodes": for each new claim, from its claimedAt (the
#      claimer's clock, just before the claim's txn) to the last "peers: route installed" of
#      that prefix in the logs of the nodes that did not churn; p50/p99/max over the claims;
#      etcd bytes sent per second during the churn window;
#   4. agent RSS (VmRSS of every agent): median and max; the load average at each step.
# Every name is unique to the run (-u ID, default the shell's PID): namespaces vs<ID>-*, run
# directory /tmp/vpcnet-scale-<ID>, underlay 172.<16+ID%16>.0.0/16 (outside the VPC), so two
# runs can share the machine. Nothing touches the machine's root namespace.
#   bench/scale.sh [-N NODES] [-c VPC_CIDR] [-b BIN_DIR] [-i IDLE] [-u ID] [-k]
#   (defaults: 50, 10.128.0.0/9, target/release, 30, $$; -k keeps the run directory)
set -euo pipefail
. "$(dirname "$0")/../scripts/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."
NODES=50 VPC=10.128.0.0/9 BIN=$PWD/target/release IDLE=30 ID=$$ KEEP=
while getopts "N:c:b:i:u:kh" o; do
  case $o in N) NODES=$OPTARG ;; c) VPC=$OPTARG ;; b) BIN=$(readlink -f "$OPTARG") ;; i) IDLE=$OPTARG ;;
    u) ID=$OPTARG ;; k) KEEP=1 ;; *) sed -n '2,22p' "$0"; exit 0 ;; esac
done
[[ "$IDLE" =~ ^[0-9]+$ ]] || { echo "scale.sh: -i SECONDS" >&2; exit 1; }
[[ "$ID" =~ ^[0-9]{1,7}$ ]] || { echo "scale.sh: -u ID (digits)" >&2; exit 1; }
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$NODES" -le 4000 ]] || { echo "scale.sh: -N 1..4000" >&2; exit 1; }
command -v etcd >/dev/null && command -v curl >/dev/null && command -v jq >/dev/null && command -v python3 >/dev/null \
  || { echo "scale.sh: needs etcd-server, curl, jq, python3 (scripts/deps.sh installs them)" >&2; exit 1; }
[ -x "$BIN/vpcnetd" ] || cargo build --release -q -p vpcnet-agent --bin vpcnetd
P=vs$ID SW=vs$ID-sw RUN=/tmp/vpcnet-scale-$ID NET=172.$((16 + ID % 16))
ETCD=http://$NET.0.1:2379
PIDS=() ETCD_PID=
cleanup() {
  set +e
  for pid in "${PIDS[@]}" $ETCD_PID; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-"); do ip netns del "$ns"; done
  [ -n "$KEEP" ] || rm -rf "$RUN"
}
trap cleanup EXIT
cleanup; set -e; rm -rf "$RUN"; mkdir -p "$RUN"
node_ip() { echo "$NET.$(( ($1 + 10) / 250 )).$(( ($1 + 10) % 250 + 1 ))"; }
in_ns() { local n=$1; shift; nsenter --net=/run/netns/"$n" "$@"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

ip netns add "$SW"; ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge; ip -n "$SW" addr add "$NET.0.1/16" dev br0; ip -n "$SW" link set br0 up
nsenter --net=/run/netns/"$SW" etcd --name sw --data-dir "$RUN/etcd" --quota-backend-bytes 4294967296 \
  --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster sw=http://127.0.0.1:2380 >"$RUN/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 200); do in_ns "$SW" curl -sf -m 1 "$ETCD/health" 2>/dev/null | grep -q true && break; sleep 0.05; done

# Namespaces and links first (one ip -batch each), so the agents can start together.
{ for k in $(seq "$NODES"); do echo "netns add $P-n$k"; done; } | ip -batch -
{ for k in $(seq "$NODES"); do echo "link add n$k type veth peer name eth0 netns $P-n$k"; echo "link set n$k master br0 up"; done; } | ip -n "$SW" -batch -
for k in $(seq "$NODES"); do
  { echo "link set lo up"; echo "addr add $(node_ip "$k")/16 dev eth0"; echo "link set eth0 up"; } | ip -n "$P-n$k" -batch -
done

claims_json() {
  in_ns "$SW" curl -s -m 5 "$ETCD/v3/kv/range" \
    -d "{\"key\":\"$(printf /vpcnet/claims/ | base64)\",\"range_end\":\"$(printf /vpcnet/claims0 | base64)\"}"
}
claims() { # distinct nodes holding a claim, total claims
  claims_json | jq -r '[.kvs[]?.value | @base64d | fromjson | .node] | "\(unique | length) \(length)"'
}
# start_agent K NAME DIR: node K's agent as NAME with state in DIR.
start_agent() {
  mkdir -p "$3"
  nsenter --net=/run/netns/"$P-n$1" "$BIN/vpcnetd" --socket "$3/vpcnetd.sock" --state-dir "$3/state" \
    --vpc-cidr "$VPC" --datastore etcd --etcd-endpoints "$ETCD" --node-name "$2" --node-ip "$(node_ip "$1")" \
    --warm-prefix-target 1 --snat=false --metrics-addr 127.0.0.1:9961 >"$3/vpcnetd.log" 2>&1 &
  PIDS[$1]=$!
}

echo "scale.sh: N=$NODES run $RUN (namespaces $P-*), load before start: $(load)"
t0=$(date +%s.%N)
since() { awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }'; }
for k in $(seq "$NODES"); do start_agent "$k" "node$k" "$RUN/n$k"; done
t_claimed=
for _ in $(seq 6000); do
  read -r nodes _total <<<"$(claims)"
  if [ "${nodes:-0}" -ge "$NODES" ]; then t_claimed=$(since); break; fi
  sleep 0.1
done
load_claimed=$(load)
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
  if [ "$short" = 0 ]; then t_routed=$(since); break; fi
  sleep 0.2
done
metric_sum() { # sum over the agents of the samples of $1 (a regex on the line)
  local sum=0 k v
  for k in $(seq "$NODES"); do
    v=$(in_ns "$P-n$k" curl -s -m 2 http://127.0.0.1:9961/metrics | awk -v re="$1" '$0 ~ re {s += $2} END {printf "%.0f", s}' || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
lost=$(metric_sum '^vpcnet_prefix_claims_total\{.*result="taken"')
waiting_now=$(metric_sum '^vpcnet_pool_waiting_for_prefix ')
logs_with() { { grep -l "$1" "$RUN"/n*/vpcnetd.log 2>/dev/null || true; } | wc -l; }
exhausted=$(logs_with "VPC exhausted")
waited=$(logs_with "waiting for a prefix\|claim races")
timeouts=$(logs_with "listing claims.*\(timed out\|no answer\)")
read -r nodes total <<<"$(claims)"
printf 'cold start: every node claimed: %s s  every node routes every prefix: %s s  claims=%s  lost races=%s  agents that logged VPC exhausted=%s  agents that waited for a prefix=%s (waiting now: %s)  agents timing out listing claims=%s  load: %s\n' \
  "${t_claimed:-never}" "${t_routed:-never}" "$total" "$lost" "$exhausted" "$waited" "$waiting_now" "$timeouts" "$load_claimed"

# Idle traffic: nothing changes for IDLE seconds; count what the agents still ask etcd.
etcd_metric() { # sum of an etcd metric's samples whose line matches $1
  in_ns "$SW" curl -s -m 5 "$ETCD/metrics" | awk -v re="$1" '$0 ~ re && !/^#/ {s += $NF} END {printf "%.0f", s}'
}
BYTES='^etcd_network_client_grpc_sent_bytes_total'
if [ "$IDLE" -gt 0 ]; then
  sleep 5 # let the cold start's last events settle
  r0=$(etcd_metric 'grpc_server_handled_total.*grpc_method="Range"') b0=$(etcd_metric "$BYTES") l0=$(metric_sum '^vpcnet_datastore_requests_total\{.*op="list"')
  sleep "$IDLE"
  r1=$(etcd_metric 'grpc_server_handled_total.*grpc_method="Range"') b1=$(etcd_metric "$BYTES") l1=$(metric_sum '^vpcnet_datastore_requests_total\{.*op="list"')
  printf 'idle %s s: etcd Range requests=%s  etcd bytes sent to clients=%s (%s/s)  agents list requests=%s  load: %s\n' \
    "$IDLE" "$((r1 - r0))" "$((b1 - b0))" "$(( (b1 - b0) / IDLE ))" "$((l1 - l0))" "$(load)"
fi

# Churn: every 10th node killed, back at once as a new node (fresh state, new name).
CHURN=() KEPT=()
for k in $(seq "$NODES"); do if [ $((k % 10)) = 0 ]; then CHURN+=("$k"); else KEPT+=("$k"); fi; done
if [ "${#CHURN[@]}" -gt 0 ]; then
  b0=$(etcd_metric "$BYTES") c0=$(date +%s.%N)
  for k in "${CHURN[@]}"; do kill -9 "${PIDS[$k]}" 2>/dev/null || true; done
  for k in "${CHURN[@]}"; do wait "${PIDS[$k]}" 2>/dev/null || true; done
  for k in "${CHURN[@]}"; do start_agent "$k" "node$k-r" "$RUN/n$k-r"; done
  # Until every new node's claim is routed on every kept node (or 120 s).
  churn_done=
  for _ in $(seq 600); do
    mapfile -t fresh < <(claims_json | jq -r '.kvs[]?.value | @base64d | fromjson | select(.node | endswith("-r")) | .prefix')
    if [ "${#fresh[@]}" -ge "${#CHURN[@]}" ]; then
      short=0
      for k in "${KEPT[@]}"; do
        have=$(ip -n "$P-n$k" -4 route show proto 171)
        for p in "${fresh[@]}"; do grep -q "^$p via" <<<"$have" || { short=1; break 2; }; done
      done
      [ "$short" = 0 ] && { churn_done=1; break; }
    fi
    sleep 0.2
  done
  c1=$(date +%s.%N) b1=$(etcd_metric "$BYTES")
  window=$(awk -v a="$c1" -v b="$c0" 'BEGIN { printf "%.1f", a - b }')
  claims_json >"$RUN/claims-after-churn.json"
  python3 - "$RUN" "${KEPT[*]}" <<'PY'
import base64, datetime, json, re, sys
run, kept = sys.argv[1], sys.argv[2].split()
kvs = json.load(open(f"{run}/claims-after-churn.json")).get("kvs", [])
claims = [json.loads(base64.b64decode(kv["value"])) for kv in kvs]
fresh = {c["prefix"]: c["claimedAt"] / 1000.0 for c in claims if c["node"].endswith("-r")}
pat = re.compile(r"^(\S+)Z .*route installed route=(\S+) via")
seen = {p: {} for p in fresh}
for k in kept:
    for line in open(f"{run}/n{k}/vpcnetd.log", errors="replace"):
        m = pat.match(line)
        if m and m.group(2) in seen:
            t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
            seen[m.group(2)].setdefault(k, t)
lat = []
missing = 0
for p, t0 in fresh.items():
    if len(seen[p]) < len(kept):
        missing += 1
        continue
    lat.append(max(seen[p].values()) - t0)
lat.sort()
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")
print(f"churn: {len(fresh)} new claims, claim -> route on all {len(kept)} other nodes: "
      f"p50 {q(0.5):.3f} s  p99 {q(0.99):.3f} s  max {q(1.0):.3f} s  (claims not routed everywhere: {missing})")
PY
  printf 'churn window %s s (%s; the window ends when the check sees every route: an upper bound): etcd bytes sent to clients=%s (%s per churning node)  load: %s\n' \
    "$window" "$([ -n "$churn_done" ] && echo converged || echo 'NOT converged')" "$((b1 - b0))" \
    "$(( (b1 - b0) / ${#CHURN[@]} ))" "$(load)"
fi

# Agent memory.
rss=()
for k in $(seq "$NODES"); do
  v=$(awk '/^VmRSS:/ {print $2}' "/proc/${PIDS[$k]}/status" 2>/dev/null || true)
  [ -n "$v" ] && rss+=("$v")
done
if [ "${#rss[@]}" -gt 0 ]; then
  printf '%s\n' "${rss[@]}" | sort -n | awk '{a[NR] = $1} END {printf "agent RSS (VmRSS, %d agents): median %.1f MiB  max %.1f MiB\n", NR, a[int((NR + 1) / 2)] / 1024, a[NR] / 1024}'
fi
