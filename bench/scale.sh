#!/usr/bin/env bash
# Scale lab (issue 10): one etcd and N vpcnetd agents, each in its own network namespace on a
# shared "switch" bridge, started together (a cold start). Prints how long until every node
# holds a claim and routes every other node's prefix, how many claim attempts lost a race, and
# how many agents reported the VPC exhausted; then, after the cold start, the etcd traffic of
# IDLE seconds with nothing changing (etcd's own counters: Range requests and bytes sent to
# clients; and the agents' vpcnet_datastore_requests_total{op="list"} where they have it).
# Nothing touches the machine's root namespace.
#   bench/scale.sh [-N NODES] [-c VPC_CIDR] [-b BIN_DIR] [-i IDLE]  (defaults: 50, 10.128.0.0/9, target/release, 30)
set -euo pipefail
. "$(dirname "$0")/../scripts/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."
NODES=50 VPC=10.128.0.0/9 BIN=$PWD/target/release IDLE=30
while getopts "N:c:b:i:h" o; do
  case $o in N) NODES=$OPTARG ;; c) VPC=$OPTARG ;; b) BIN=$(readlink -f "$OPTARG") ;; i) IDLE=$OPTARG ;; *) sed -n '2,10p' "$0"; exit 0 ;; esac
done
[[ "$IDLE" =~ ^[0-9]+$ ]] || { echo "scale.sh: -i SECONDS" >&2; exit 1; }
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$NODES" -le 4000 ]] || { echo "scale.sh: -N 1..4000" >&2; exit 1; }
command -v etcd >/dev/null && command -v curl >/dev/null && command -v jq >/dev/null \
  || { echo "scale.sh: needs etcd-server, curl, jq (scripts/deps.sh installs them)" >&2; exit 1; }
[ -x "$BIN/vpcnetd" ] || cargo build --release -q -p vpcnet-agent --bin vpcnetd
P=vscale SW=vscale-sw RUN=/tmp/vpcnet-scale ETCD=http://10.199.0.1:2379
PIDS=() ETCD_PID=
cleanup() {
  set +e
  for pid in "${PIDS[@]}" $ETCD_PID; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-"); do ip netns del "$ns"; done
}
trap cleanup EXIT
cleanup; set -e; rm -rf "$RUN"; mkdir -p "$RUN"
node_ip() { echo "10.199.$(( ($1 + 10) / 250 )).$(( ($1 + 10) % 250 + 1 ))"; }
in_ns() { local n=$1; shift; nsenter --net=/run/netns/"$n" "$@"; }

ip netns add "$SW"; ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge; ip -n "$SW" addr add 10.199.0.1/16 dev br0; ip -n "$SW" link set br0 up
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
  mkdir -p "$RUN/n$k"
done

claims() { # distinct nodes holding a claim, total claims
  in_ns "$SW" curl -s -m 5 "$ETCD/v3/kv/range" \
    -d "{\"key\":\"$(printf /vpcnet/claims/ | base64)\",\"range_end\":\"$(printf /vpcnet/claims0 | base64)\"}" \
    | jq -r '[.kvs[]?.value | @base64d | fromjson | .node] | "\(unique | length) \(length)"'
}

t0=$(date +%s.%N)
since() { awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }'; }
for k in $(seq "$NODES"); do
  nsenter --net=/run/netns/"$P-n$k" "$BIN/vpcnetd" --socket "$RUN/n$k/vpcnetd.sock" --state-dir "$RUN/n$k/state" \
    --vpc-cidr "$VPC" --datastore etcd --etcd-endpoints "$ETCD" --node-name "node$k" --node-ip "$(node_ip "$k")" \
    --warm-prefix-target 1 --snat=false --metrics-addr 127.0.0.1:9961 >"$RUN/n$k/vpcnetd.log" 2>&1 &
  PIDS+=($!)
done
t_claimed=
for _ in $(seq 6000); do
  read -r nodes _total <<<"$(claims)"
  if [ "${nodes:-0}" -ge "$NODES" ]; then t_claimed=$(since); break; fi
  sleep 0.1
done
# Every node routes every prefix (peers' via their node IP, its own unreachable).
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
lost=0 exhausted=0
for k in $(seq "$NODES"); do
  m=$(in_ns "$P-n$k" curl -s -m 2 http://127.0.0.1:9961/metrics || true)
  t=$(awk '/^vpcnet_prefix_claims_total\{.*result="taken"/ {print $2}' <<<"$m" | head -1)
  lost=$((lost + ${t:-0}))
  grep -q "VPC exhausted" "$RUN/n$k/vpcnetd.log" && exhausted=$((exhausted + 1))
done
read -r nodes total <<<"$(claims)"
printf 'nodes=%s vpc=%s  every node claimed: %s s  every node routes every prefix: %s s  claims=%s  lost races=%s  agents that logged VPC exhausted=%s\n' \
  "$NODES" "$VPC" "${t_claimed:-never}" "${t_routed:-never}" "$total" "$lost" "$exhausted"

# Idle traffic: nothing changes for IDLE seconds; count what the agents still ask etcd.
etcd_metric() { # sum of an etcd metric's samples whose line matches $1
  in_ns "$SW" curl -s -m 5 "$ETCD/metrics" | awk -v re="$1" '$0 ~ re && !/^#/ {s += $NF} END {printf "%.0f", s}'
}
agents_lists() { # sum over agents of vpcnet_datastore_requests_total{op="list"} (empty: no such metric)
  local sum= k v
  for k in $(seq "$NODES"); do
    v=$(in_ns "$P-n$k" curl -s -m 2 http://127.0.0.1:9961/metrics | awk '/^vpcnet_datastore_requests_total\{.*op="list"/ {print $2}' | head -1 || true)
    [ -n "$v" ] && sum=$(( ${sum:-0} + ${v%.*} ))
  done
  echo "${sum:-n/a}"
}
if [ "$IDLE" -gt 0 ]; then
  sleep 5 # let the cold start's last events settle
  r0=$(etcd_metric 'grpc_server_handled_total.*grpc_method="Range"') b0=$(etcd_metric '^etcd_network_client_grpc_sent_bytes_total') l0=$(agents_lists)
  sleep "$IDLE"
  r1=$(etcd_metric 'grpc_server_handled_total.*grpc_method="Range"') b1=$(etcd_metric '^etcd_network_client_grpc_sent_bytes_total') l1=$(agents_lists)
  lists=n/a; [ "$l0" != n/a ] && [ "$l1" != n/a ] && lists=$((l1 - l0))
  printf 'idle %s s: etcd Range requests=%s  etcd bytes sent to clients=%s  agents list requests=%s\n' \
    "$IDLE" "$((r1 - r0))" "$((b1 - b0))" "$lists"
fi
