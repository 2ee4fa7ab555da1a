#!/usr/bin/env bash
# vpcnet demo: builds vpcnet + vpcnetd, starts the agent on the embedded local datastore in a
# private "host" network namespace, wires N pods (network namespaces) through the real vpcnet
# binary, shows their addresses and the agent's pool, pings every pod from every other, prints
# ADD/DEL timings, and cleans everything up. Nothing touches this machine's own network.
#   ./scripts/demo.sh [-n PODS] [-c VPC_CIDR] [-f 4|6|dual] [-C VPC_CIDR_V6] [-k]
#   (-k: keep it running until Enter; -f: the pods' families, default 4; -C: the IPv6 VPC,
#   default fd00:10::/64; with 6 or dual every pod pings every other over each family it has)
# Many nodes (-N > 1): a "VPC switch" namespace (bridge 10.199.0.1/24, one etcd), N node
# namespaces (10.199.0.11, .12, …) each running vpcnetd on the etcd datastore, -n pods per
# node; shows each node's pods, prefixes and routes and a full-mesh ping matrix.
#   ./scripts/demo.sh -N 3 [-n PODS_PER_NODE] [-c VPC_CIDR] [-k]   (IPv4 only)
set -euo pipefail
. "$(dirname "$0")/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."
N=6 VPC=10.240.0.0/16 VPC6=fd00:10::/64 FAM=4 KEEP=0 NODES=1
while getopts "n:c:C:f:N:kh" o; do
  case $o in
    n) N=$OPTARG ;; c) VPC=$OPTARG ;; C) VPC6=$OPTARG ;; f) FAM=$OPTARG ;; N) NODES=$OPTARG ;;
    k) KEEP=1 ;;
    *) sed -n '2,14p' "$0"; exit 0 ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ && "$NODES" -le 200 ]] || { echo "demo.sh: -N must be 1..200" >&2; exit 1; }
case $FAM in
  4|6|dual) ;;
  *) echo "demo.sh: -f must be 4, 6 or dual" >&2; exit 1 ;;
esac
if [ "$NODES" -gt 1 ] && [ "$FAM" != 4 ]; then
  echo "demo.sh: -f $FAM is single-node only for now (the many-node demo is IPv4)" >&2; exit 1
fi
# The families of the pods: IPv4 first, like the CNI result.
case $FAM in 4) FAMS="4" ;; 6) FAMS="6" ;; dual) FAMS="4 6" ;; esac
. scripts/deps.sh
if [ "$NODES" -gt 1 ]; then
  missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v curl >/dev/null || missing+=(curl)
  command -v nft >/dev/null || missing+=(nftables)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

echo "== building (release, as shipped: static plugin; scripts/build-release.sh)"
scripts/build-release.sh
BIN=$PWD/target/dist

# ---- many nodes: switch + etcd + N × (node namespace, vpcnetd, pods) -------------------------
multi_node() {
  local P=vdemo SW=vdemo-sw RUN=/tmp/vpcnet-demo ETCD=http://10.199.0.1:2379
  local k i ns out
  PIDS=() ETCD_PID=
  mn_cleanup() {
    set +e
    for pid in "${PIDS[@]}" $ETCD_PID; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^vdemo-"); do ip netns del "$ns"; done
  }
  trap mn_cleanup EXIT
  mn_cleanup; set -e; rm -rf "$RUN"; mkdir -p "$RUN"
  node_ip() { echo "10.199.0.$((10 + $1))"; }
  in_ns() { local n=$1; shift; nsenter --net=/run/netns/"$n" "$@"; }

  echo "== switch $SW: bridge br0 10.199.0.1/24 (underlay, outside the VPC $VPC), etcd on $ETCD"
  ip netns add "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" addr add 10.199.0.1/24 dev br0
  ip -n "$SW" link set br0 up
  # nsenter execs its command, so $! is etcd's own pid (a backgrounded shell function would not be).
  nsenter --net=/run/netns/"$SW" etcd --name sw --data-dir "$RUN/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster sw=http://127.0.0.1:2380 >"$RUN/etcd.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 200); do
    in_ns "$SW" curl -sf -m 1 "$ETCD/health" 2>/dev/null | grep -q true && break; sleep 0.05
  done
  in_ns "$SW" curl -sf -m 1 "$ETCD/health" | grep -q true || { tail "$RUN/etcd.log"; exit 1; }

  echo "== $NODES nodes: namespace ${P}-n<k> on the switch, vpcnetd --datastore etcd in each"
  for k in $(seq "$NODES"); do
    ns=${P}-n$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$SW" link add "n$k" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "n$k" master br0 up
    ip -n "$ns" addr add "$(node_ip "$k")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 10.199.0.1
    mkdir -p "$RUN/n$k"
    nsenter --net=/run/netns/"$ns" "$BIN/vpcnetd" --socket "$RUN/n$k/vpcnetd.sock" --state-dir "$RUN/n$k/state" \
      --vpc-cidr "$VPC" --datastore etcd --etcd-endpoints "$ETCD" \
      --node-name "node$k" --node-ip "$(node_ip "$k")" \
      --warm-ip-target 8 --ip-cooldown 5s --peer-sync-interval 1s >"$RUN/n$k/vpcnetd.log" 2>&1 &
    PIDS+=($!)
  done
  for k in $(seq "$NODES"); do
    for _ in $(seq 200); do [ -S "$RUN/n$k/vpcnetd.sock" ] && break; sleep 0.05; done
    [ -S "$RUN/n$k/vpcnetd.sock" ] || { cat "$RUN/n$k/vpcnetd.log"; exit 1; }
  done

  echo "== ADD $N pods on each node"
  cni() { # cmd node i
    local conf
    conf=$(printf '{"cniVersion":"1.1.0","name":"demo","type":"vpcnet","socket":"%s","logFile":"%s"}' \
      "$RUN/n$2/vpcnetd.sock" "$RUN/n$2/plugin.log")
    CNI_COMMAND=$1 CNI_CONTAINERID=demo-n$2-pod$3 CNI_IFNAME=eth0 CNI_NETNS=/run/netns/${P}-n$2p$3 \
    CNI_PATH=$BIN CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=n$2-pod$3" \
      in_ns "${P}-n$2" "$BIN/vpcnet" <<<"$conf"
  }
  local PODS=()   # "k i ip"
  for k in $(seq "$NODES"); do
    for i in $(seq "$N"); do
      ip netns add "${P}-n${k}p$i"
      out=$(cni ADD "$k" "$i") || { echo "ADD n${k}p$i failed: $out"; exit 1; }
      PODS+=("$k $i $(jq -r '.ips[0].address' <<<"$out" | cut -d/ -f1)")
    done
  done

  # Each node routes the others' prefixes once it sees their claims: wait (bounded) until every
  # node has a prefix route (its own: unreachable) for every prefix any node holds.
  local want have
  for _ in $(seq 100); do
    want=$(for k in $(seq "$NODES"); do
      in_ns "${P}-n$k" "$BIN/vpcnetd" status --json --socket "$RUN/n$k/vpcnetd.sock" | jq -r '.prefixes[].prefix'
    done | sort -u | wc -l)
    have=$(for k in $(seq "$NODES"); do ip -n "${P}-n$k" -4 route show proto 171 | grep -c /; done | sort -u | xargs)
    [ "$have" = "$want" ] && break
    sleep 0.1
  done

  for k in $(seq "$NODES"); do
    echo "== node$k  ($(node_ip "$k"), namespace ${P}-n$k)"
    printf '  pods:  '
    for p in "${PODS[@]}"; do read -r pk pi pip <<<"$p"; [ "$pk" = "$k" ] && printf 'n%sp%s=%s  ' "$pk" "$pi" "$pip"; done; echo
    in_ns "${P}-n$k" "$BIN/vpcnetd" status --socket "$RUN/n$k/vpcnetd.sock" | sed -n '1,4p' | sed 's/^/  /'
    echo "  held prefixes, and prefix routes (proto 171):"
    in_ns "${P}-n$k" "$BIN/vpcnetd" status --json --socket "$RUN/n$k/vpcnetd.sock" \
      | jq -r '.prefixes[] | "    held   \(.prefix)  (\(.assigned) assigned)"'
    ip -n "${P}-n$k" -4 route show proto 171 | grep / | sed 's/^/    route  /'
  done
  echo "== claims in etcd (prefix -> node nodeIP)"
  in_ns "$SW" curl -s "$ETCD/v3/kv/range" \
    -d "{\"key\":\"$(printf /vpcnet/claims/ | base64)\",\"range_end\":\"$(printf /vpcnet/claims0 | base64)\"}" \
    | jq -r '.kvs[]?.value | @base64d | fromjson | "  \(.prefix) -> \(.node) \(.nodeIp // "-")"'

  echo "== ping matrix (row pings column; n<k>p<i> = pod i on node k)"
  printf '  %-6s' ""; for p in "${PODS[@]}"; do read -r pk pi _ <<<"$p"; printf ' %-5s' "n${pk}p$pi"; done; echo
  local fails=0 total=0 from to fk fi tip
  for from in "${PODS[@]}"; do
    read -r fk fi _ <<<"$from"
    printf '  %-6s' "n${fk}p$fi"
    for to in "${PODS[@]}"; do
      if [ "$from" = "$to" ]; then printf ' %-5s' '-'; continue; fi
      tip=${to##* }
      total=$((total + 1))
      if in_ns "${P}-n${fk}p$fi" ping -c1 -W1 -q "$tip" >/dev/null 2>&1; then
        printf ' %-5s' ok
      else printf ' %-5s' FAIL; fails=$((fails + 1)); fi
    done; echo
  done

  if [ "$KEEP" = 1 ]; then read -rp "running; press Enter to tear down " _; fi

  echo "== DEL every pod"
  for p in "${PODS[@]}"; do read -r pk pi _ <<<"$p"; cni DEL "$pk" "$pi" >/dev/null || echo "  DEL n${pk}p$pi failed"; done
  if [ "$fails" = 0 ]; then echo "demo OK: $NODES nodes × $N pods, all $total pings across the mesh ok"
  else echo "demo: $fails of $total pings failed"; exit 1; fi
}
if [ "$NODES" -gt 1 ]; then multi_node; exit; fi
P=vdemo                         # every namespace and file of the demo starts with this
HOST=${P}-host
RUN=/tmp/vpcnet-demo
SOCK=$RUN/vpcnetd.sock
AGENT_PID=

cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${P}-"); do ip netns del "$ns"; done
}
trap cleanup EXIT
cleanup; rm -rf "$RUN"; mkdir -p "$RUN"

VPC_ARGS=()
for f in $FAMS; do
  if [ "$f" = 4 ]; then VPC_ARGS+=(--vpc-cidr "$VPC"); else VPC_ARGS+=(--vpc-cidr "$VPC6"); fi
done
SHOWN=$(for f in $FAMS; do [ "$f" = 4 ] && printf '%s ' "$VPC" || printf '%s ' "$VPC6"; done)
echo "== host namespace $HOST, vpcnetd on the local datastore, VPC ${SHOWN% }"
ip netns add "$HOST"
ip -n "$HOST" link set lo up
nsenter --net=/run/netns/$HOST "$BIN/vpcnetd" --socket "$SOCK" --state-dir "$RUN/state" \
  "${VPC_ARGS[@]}" --warm-ip-target 8 --ip-cooldown 5s >"$RUN/vpcnetd.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || { cat "$RUN/vpcnetd.log"; exit 1; }
sleep 0.3   # let the warm pool fill (ADD would not wait for it anyway)
nsenter --net=/run/netns/$HOST "$BIN/vpcnetd" status --socket "$SOCK" | sed -n '1,4p'

CONF=$(printf '{"cniVersion":"1.1.0","name":"demo","type":"vpcnet","socket":"%s","logFile":"%s"}' "$SOCK" "$RUN/plugin.log")
for i in $(seq "$N"); do ip netns add "${P}-pod$i"; done

# One shell inside the host namespace runs the plugin, so the timings are the plugin's own.
cni() { # cmd i
  CNI_COMMAND=$1 CNI_CONTAINERID=demo-pod-$2 CNI_IFNAME=eth0 CNI_NETNS=/run/netns/${P}-pod$2 \
  CNI_PATH=$BIN CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=pod$2" "$BIN/vpcnet" <<<"$CONF"
}
export -f cni; export P BIN CONF
echo "== ADD $N pods"
if [ "$FAM" = 4 ]; then
nsenter --net=/run/netns/$HOST bash -c '
  for i in $(seq '"$N"'); do
    t0=$EPOCHREALTIME; out=$(cni ADD $i); t1=$EPOCHREALTIME
    ip=$(jq -r ".ips[0].address" <<<"$out")
    [ "$ip" != null ] || { echo "ADD pod$i failed: $out"; exit 1; }
    printf "  pod%-3s %-16s ADD %6.2f ms\n" "$i" "$ip" "$(echo "($t1-$t0)*1000" | bc -l 2>/dev/null || awk "BEGIN{print ($t1-$t0)*1000}")"
    echo "$ip" > /tmp/vpcnet-demo/ip.$i
  done'
else
# Every address of the result (IPv4 first), one file per family: ip.<i> (IPv4), ip6.<i>.
nsenter --net=/run/netns/$HOST bash -c '
  for i in $(seq '"$N"'); do
    t0=$EPOCHREALTIME; out=$(cni ADD $i); t1=$EPOCHREALTIME
    ips=$(jq -r "[.ips[]?.address] | join(\" \")" <<<"$out" 2>/dev/null || true)
    [ -n "$ips" ] || { echo "ADD pod$i failed: $out"; exit 1; }
    printf "  pod%-3s %-40s ADD %6.2f ms\n" "$i" "$ips" "$(awk "BEGIN{print ($t1-$t0)*1000}")"
    for a in $ips; do
      case $a in *:*) echo "$a" > /tmp/vpcnet-demo/ip6.$i ;; *) echo "$a" > /tmp/vpcnet-demo/ip.$i ;; esac
    done
  done'
fi

echo "== pod namespace of pod1 (what kubelet's pod sees)"
for f in $FAMS; do ip -n ${P}-pod1 -$f addr show eth0 | sed 's/^/  /'; done
for f in $FAMS; do ip -n ${P}-pod1 -$f route | sed 's/^/  /'; done
for f in $FAMS; do ip -n ${P}-pod1 -$f neigh | sed 's/^/  /'; done
echo "== host routes (proto 171 = vpcnet)"
for f in $FAMS; do ip -n "$HOST" -$f route show proto 171 | sed 's/^/  /'; done

fails=0 total=0
for f in $FAMS; do
  if [ "$FAM" = 4 ]; then echo "== ping matrix (row pings column)"; file=ip
  elif [ "$f" = 4 ]; then echo "== ping matrix, IPv4 (row pings column)"; file=ip
  else echo "== ping matrix, IPv6 (row pings column)"; file=ip6; fi
  printf '  %6s' ""; for j in $(seq "$N"); do printf ' pod%-2s' "$j"; done; echo
  for i in $(seq "$N"); do
    printf '  pod%-3s' "$i"
    for j in $(seq "$N"); do
      if [ "$i" = "$j" ]; then printf '  %-4s' '-'; continue; fi
      total=$((total+1))
      if ip netns exec ${P}-pod$i ping -c1 -W1 -q "$(cut -d/ -f1 "$RUN/$file.$j")" >/dev/null 2>&1; then
        printf '  %-4s' ok
      else printf '  %-4s' FAIL; fails=$((fails+1)); fi
    done; echo
  done
done

echo "== agent pool"
nsenter --net=/run/netns/$HOST "$BIN/vpcnetd" status --socket "$SOCK" | sed 's/^/  /'

if [ "$KEEP" = 1 ]; then read -rp "running; press Enter to tear down " _; fi

echo "== DEL $N pods"
nsenter --net=/run/netns/$HOST bash -c '
  for i in $(seq '"$N"'); do
    t0=$EPOCHREALTIME; cni DEL $i >/dev/null || { echo "DEL pod$i failed"; exit 1; }; t1=$EPOCHREALTIME
    printf "  pod%-3s DEL %6.2f ms\n" "$i" "$(awk "BEGIN{print ($t1-$t0)*1000}")"
  done'
left=$(ip -n "$HOST" -o link show | grep -c ' vpc' || true)
if [ "$FAM" = 4 ]; then
  routes=$(ip -n "$HOST" route show proto 171 | grep -vc / || true)
else
  routes=$(for f in $FAMS; do ip -n "$HOST" -$f route show proto 171 | grep -Evc '/|^unreachable' || true; done | awk '{s+=$1} END{print s}')
fi
echo "== right after DEL: $routes pod routes, $left host veths (the agent deletes them in one batch)"
sleep 1.2   # the pods' namespaces still exist here; a runtime would have deleted them already
left=$(ip -n "$HOST" -o link show | grep -c ' vpc' || true)
echo "== 1.2 s later: $left host veths left"
nsenter --net=/run/netns/$HOST "$BIN/vpcnetd" status --socket "$SOCK" | sed -n '2,3p' | sed 's/^/  /'
if [ "$FAM" = 4 ]; then
  [ "$fails" = 0 ] && echo "demo OK: $N pods, every pod reached every other" || { echo "demo: $fails pings failed"; exit 1; }
else
  fam_text=$([ "$FAM" = 6 ] && echo "IPv6" || echo "IPv4 and IPv6")
  [ "$fails" = 0 ] && echo "demo OK: $N pods ($fam_text), every pod reached every other over each family ($total pings)" \
    || { echo "demo: $fails of $total pings failed"; exit 1; }
fi
