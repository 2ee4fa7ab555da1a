#!/usr/bin/env bash
# The kernel's IPv6 work per new pod veth (issue 14): N ADDs with each plugin build given, then
# after S seconds the IPv6 packets the veths sent (DAD neighbour solicitations, MLD reports,
# router solicitations: /proc/net/snmp6 of the host netns and of every pod netns) and the
# IPv6 addresses they carry. Private netns hxv6h / hxv6p*; nothing in the root netns.
#   sudo bench/v6-work.sh [-n N=30] [-s S=3] BINDIR...   (each BINDIR has vpcnet and vpcnetd)
set -euo pipefail
cd "$(dirname "$0")/.."
N=30 S=3
while getopts n:s: o; do case $o in n) N=$OPTARG ;; s) S=$OPTARG ;; *) sed -n 2,6p "$0"; exit 2 ;; esac; done
shift $((OPTIND - 1))
H=hxv6h P=hxv6p OUT=/tmp/vpcnet-v6work
cleanup() {
  [ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  AGENT=
  for n in $(ip netns list | awk '{print $1}' | grep -E "^($H|$P[0-9]+)$" || true); do ip netns del "$n"; done
}
trap cleanup EXIT
snmp() { ip netns exec "$1" awk -v k="$2" '$1 == k {print $2}' /proc/net/snmp6; }
printf '| build | ADD ms (sum of %s) | IPv6 addrs on veths | Icmp6OutMsgs | Icmp6OutNeighborSolicits | Icmp6OutRouterSolicits | Icmp6OutMLDv2Reports |\n|---|---|---|---|---|---|---|\n' "$N"
for BIN in "$@"; do
  cleanup; rm -rf "$OUT"; mkdir -p "$OUT"
  ip netns add $H; ip -n $H link set lo up
  for i in $(seq 1 "$N"); do ip netns add "$P$i"; done
  ip netns exec $H "$BIN/vpcnetd" --socket "$OUT/a.sock" --state-dir "$OUT/state" \
    --vpc-cidr 10.240.0.0/16 --warm-ip-target 64 >"$OUT/agent.log" 2>&1 &
  AGENT=$!
  for _ in $(seq 1 100); do [ -S "$OUT/a.sock" ] && break; sleep 0.1; done
  jq -n --arg s "$OUT/a.sock" '{cniVersion: "1.0.0", name: "hxv6", type: "vpcnet", mtu: 1500, socket: $s}' >"$OUT/conf.json"
  t0=$EPOCHREALTIME
  for i in $(seq 1 "$N"); do
    ip netns exec $H env CNI_COMMAND=ADD CNI_CONTAINERID=v6$i CNI_NETNS=/run/netns/$P$i \
      CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/vpcnet" <"$OUT/conf.json" >/dev/null
  done
  t1=$EPOCHREALTIME
  sleep "$S"
  addrs=$(( $(ip -n $H -6 -o addr show | grep -c ' vpc' || true) ))
  declare -A tot=()
  for k in Icmp6OutMsgs Icmp6OutNeighborSolicits Icmp6OutRouterSolicits Icmp6OutMLDv2Reports; do tot[$k]=$(snmp $H $k); done
  for i in $(seq 1 "$N"); do
    addrs=$(( addrs + $(ip -n "$P$i" -6 -o addr show dev eth0 | wc -l) ))
    for k in "${!tot[@]}"; do tot[$k]=$(( ${tot[$k]} + $(snmp "$P$i" $k) )); done
  done
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$BIN" "$(( (${t1/./} - ${t0/./}) / 1000 ))" "$addrs" \
    "${tot[Icmp6OutMsgs]}" "${tot[Icmp6OutNeighborSolicits]}" "${tot[Icmp6OutRouterSolicits]}" "${tot[Icmp6OutMLDv2Reports]}"
  unset tot
done
