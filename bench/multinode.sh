#!/usr/bin/env bash
# Multi-node measurements (issue: cross-node throughput, first pod ready), on the same lab
# shape as `scripts/demo.sh -N`: a switch namespace (bridge 10.199.0.1/24, one etcd) and two
# node namespaces each running vpcnetd on etcd. Everything lives in private namespaces
# prefixed vbench-; nothing touches this machine's own network.
#   sudo bench/multinode.sh [-f 4|6|dual] [SECS] [RUNS]
# Prints: time from "agent starts on a fresh node" to "first pod ready" (ADD returned), and
# iperf3 TCP pod→pod throughput same node vs cross node (median of RUNS runs of SECS s).
# -f (docs/dual-stack.md): 4 (default: IPv4 VPC, output as always), 6 (IPv6-only VPC
# fd00:70::/64) or dual (both). With 6 or dual every node also gets an IPv6 underlay address
# fd00:199::1k/64 (its IPv6 --node-ip: peers route its IPv6 prefix via it), and the
# throughput lines are measured per family of the pods, each line prefixed "IPv4"/"IPv6".
# etcd stays on the IPv4 underlay. VBENCH_PREFIX (default vbench) names the namespaces and
# the run directory; VPCNET_BIN_DIR runs binaries already built there (no release build).
set -euo pipefail
cd "$(dirname "$0")/.."
FAM=4
while getopts f: o; do
  case $o in
    f) FAM=$OPTARG ;;
    *) echo "usage: $0 [-f 4|6|dual] [SECS] [RUNS]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
case $FAM in
  4) FAMS=(4) VPCFLAGS=(--vpc-cidr 10.240.0.0/16) ;;
  6) FAMS=(6) VPCFLAGS=(--vpc-cidr fd00:70::/64) ;;
  dual) FAMS=(4 6) VPCFLAGS=(--vpc-cidr 10.240.0.0/16 --vpc-cidr fd00:70::/64) ;;
  *) echo "-f takes 4, 6 or dual, not $FAM" >&2; exit 2 ;;
esac
SECS=${1:-5} RUNS=${2:-3}
if [ -n "${VPCNET_BIN_DIR:-}" ]; then BIN=$(realpath "$VPCNET_BIN_DIR")
else BIN=$PWD/target/release; cargo build --release --bins -q; fi
P=${VBENCH_PREFIX:-vbench}
SW=$P-sw RUN=/tmp/vpcnet-bench-mn-$P ETCD=http://10.199.0.1:2379
[ "$P" = vbench ] && RUN=/tmp/vpcnet-bench-mn
PIDS=()
cleanup() { set +e; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${P}-"); do ip netns del "$ns"; done; }
trap cleanup EXIT; cleanup; rm -rf $RUN; mkdir -p $RUN
ip netns add $SW; ip -n $SW link set lo up
ip -n $SW link add br0 type bridge; ip -n $SW addr add 10.199.0.1/24 dev br0; ip -n $SW link set br0 up
nsenter --net=/run/netns/$SW etcd --name sw --data-dir $RUN/etcd --listen-client-urls $ETCD \
  --advertise-client-urls $ETCD --listen-peer-urls http://127.0.0.1:2380 \
  --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster sw=http://127.0.0.1:2380 >$RUN/etcd.log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ip netns exec $SW curl -sf -m 1 $ETCD/health 2>/dev/null | grep -q true && break; sleep 0.1; done
CONF() { printf '{"cniVersion":"1.0.0","name":"bench","type":"vpcnet","socket":"%s","logFile":"%s"}' "$RUN/n$1.sock" "$RUN/plugin.log"; }
add() { # node pod -> the pod's first address
  CNI_COMMAND=ADD CNI_CONTAINERID=n$1p$2 CNI_IFNAME=eth0 CNI_NETNS=/run/netns/${P}-n$1p$2 \
    nsenter --net=/run/netns/${P}-n$1 "$BIN/vpcnet" <<<"$(CONF "$1")" | jq -r '.ips[0].address' | cut -d/ -f1
}
V6() { [ "$FAM" != 4 ]; } # the IPv6 underlay and --node-ip
for k in 1 2; do
  N=${P}-n$k
  ip netns add $N; ip -n $N link set lo up
  ip -n $SW link add up$k type veth peer name eth0 netns $N
  ip -n $SW link set up$k master br0 up
  ip -n $N addr add 10.199.0.1$k/24 dev eth0; ip -n $N link set eth0 up
  ip -n $N route add default via 10.199.0.1
  if V6; then ip -n $N addr add fd00:199::1$k/64 dev eth0 nodad; fi
  for i in 1 2; do ip netns add ${N}p$i; done
done
# First pod ready: agent start -> ADD returned with an address, on a fresh node (empty state).
for k in 1 2; do
  t0=$EPOCHREALTIME
  NODE6=(); if V6; then NODE6=(--node-ip fd00:199::1$k); fi
  nsenter --net=/run/netns/${P}-n$k "$BIN/vpcnetd" --socket $RUN/n$k.sock --state-dir $RUN/n$k \
    "${VPCFLAGS[@]}" --datastore etcd --etcd-endpoints $ETCD --node-name node$k --node-ip 10.199.0.1$k "${NODE6[@]}" \
    --peer-sync-interval 1s --metrics-addr off >$RUN/n$k.log 2>&1 &
  PIDS+=($!)
  until [ -S $RUN/n$k.sock ]; do sleep 0.002; done
  ip=$(add $k 1); t1=$EPOCHREALTIME
  printf 'node%s: first pod ready %.1f ms after agent start (%s)\n' $k "$(awk "BEGIN{print (${t1/./}-${t0/./})/1000}")" "$ip"
done
add 1 2 >/dev/null; add 2 2 >/dev/null
iperf() { # from-ns -> IP11
  ip netns exec ${P}-n1p1 iperf3 -s -1 -B "$IP11" -p 5201 >/dev/null 2>&1 & local s=$!
  for _ in $(seq 50); do ip netns exec ${P}-n1p1 ss -Htln 'sport = :5201' | grep -q . && break; sleep 0.1; done
  ip netns exec "$1" iperf3 -c "$IP11" -p 5201 -t "$SECS" -J | jq '.end.sum_received.bits_per_second/1e9*100|round/100'
  wait $s 2>/dev/null || true
}
med() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for f in "${FAMS[@]}"; do
  # The family's label: none for the default -f 4 (its output is what it always was).
  L=""; [ "$FAM" != 4 ] && L="IPv$f "
  IP11=$(ip -n ${P}-n1p1 -$f -o addr show eth0 scope global | awk '{print $4}' | cut -d/ -f1)
  # peers' routes (of this family)
  VIA=10.199.0.11; [ "$f" = 6 ] && VIA=fd00:199::11
  for _ in $(seq 50); do ip -n ${P}-n2 -$f route | grep -q "via $VIA" && break; sleep 0.1; done
  same=(); cross=()
  for r in $(seq "$RUNS"); do
    same+=("$(iperf ${P}-n1p2)"); cross+=("$(iperf ${P}-n2p1)")
    echo "${L}run $r: same node ${same[-1]} Gbit/s, cross node ${cross[-1]} Gbit/s"
  done
  echo "${L}iperf3 TCP 1 stream ${SECS}s, median of $RUNS: same node $(printf '%s\n' "${same[@]}" | med) Gbit/s, cross node $(printf '%s\n' "${cross[@]}" | med) Gbit/s"
done
