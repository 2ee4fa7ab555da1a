#!/usr/bin/env bash
# vpcnet demo: builds vpcnet + vpcnetd, starts the agent on the embedded local datastore in a
# private "host" network namespace, wires N pods (network namespaces) through the real vpcnet
# binary, shows their addresses and the agent's pool, pings every pod from every other, prints
# ADD/DEL timings, and cleans everything up. Nothing touches this machine's own network.
#   sudo ./scripts/demo.sh [-n PODS] [-c VPC_CIDR] [-k]   (-k: keep it running until Enter)
set -euo pipefail
cd "$(dirname "$0")/.."
N=6 VPC=10.240.0.0/16 KEEP=0
while getopts "n:c:kh" o; do
  case $o in
    n) N=$OPTARG ;; c) VPC=$OPTARG ;; k) KEEP=1 ;;
    *) sed -n '2,8p' "$0"; exit 0 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespaces)" >&2; exit 1; }
. scripts/deps.sh

echo "== building (release)"
cargo build --release --bins -q
BIN=$PWD/target/release
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

echo "== host namespace $HOST, vpcnetd on the local datastore, VPC $VPC"
ip netns add "$HOST"
ip -n "$HOST" link set lo up
nsenter --net=/run/netns/$HOST "$BIN/vpcnetd" --socket "$SOCK" --state-dir "$RUN/state" \
  --vpc-cidr "$VPC" --warm-ip-target 8 --ip-cooldown 5s >"$RUN/vpcnetd.log" 2>&1 &
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
nsenter --net=/run/netns/$HOST bash -c '
  for i in $(seq '"$N"'); do
    t0=$EPOCHREALTIME; out=$(cni ADD $i); t1=$EPOCHREALTIME
    ip=$(jq -r ".ips[0].address" <<<"$out")
    [ "$ip" != null ] || { echo "ADD pod$i failed: $out"; exit 1; }
    printf "  pod%-3s %-16s ADD %6.2f ms\n" "$i" "$ip" "$(echo "($t1-$t0)*1000" | bc -l 2>/dev/null || awk "BEGIN{print ($t1-$t0)*1000}")"
    echo "$ip" > /tmp/vpcnet-demo/ip.$i
  done'

echo "== pod namespace of pod1 (what kubelet's pod sees)"
ip -n ${P}-pod1 -4 addr show eth0 | sed 's/^/  /'
ip -n ${P}-pod1 route | sed 's/^/  /'
ip -n ${P}-pod1 neigh | sed 's/^/  /'
echo "== host routes (proto 171 = vpcnet)"
ip -n "$HOST" route show proto 171 | sed 's/^/  /'

echo "== ping matrix (row pings column)"
printf '  %6s' ""; for j in $(seq "$N"); do printf ' pod%-2s' "$j"; done; echo
fails=0
for i in $(seq "$N"); do
  printf '  pod%-3s' "$i"
  for j in $(seq "$N"); do
    if [ "$i" = "$j" ]; then printf '  %-4s' '-'; continue; fi
    if ip netns exec ${P}-pod$i ping -c1 -W1 -q "$(cat $RUN/ip.$j | cut -d/ -f1)" >/dev/null 2>&1; then
      printf '  %-4s' ok
    else printf '  %-4s' FAIL; fails=$((fails+1)); fi
  done; echo
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
sleep 0.5
left=$(ip -n "$HOST" -o link show | grep -c ' vpc' || true)
echo "== after DEL: $(ip -n "$HOST" route show proto 171 | wc -l) pod routes, $left host veths left"
nsenter --net=/run/netns/$HOST "$BIN/vpcnetd" status --socket "$SOCK" | sed -n '2,3p' | sed 's/^/  /'
[ "$fails" = 0 ] && echo "demo OK: $N pods, every pod reached every other" || { echo "demo: $fails pings failed"; exit 1; }
