#!/bin/bash
# What one veth-deletion batch costs the kernel, and what it does to a concurrent rtnl user:
# N veths (peers in a second netns) in one link group, deleted with one request, while a
# prober times `ip link set lo mtu` (needs rtnl_lock) in a loop. Private netns hxreap*.
#   sudo bench/reap-cost.sh N
N=$1
ip netns add hxreaph; ip netns add hxreapp
for i in $(seq 1 $N); do ip -n hxreaph link add hxreapv$i group 77 type veth peer name e$i netns hxreapp; done
ip -n hxreaph link set lo up
# concurrent prober: `ip link set lo mtu` in the peer netns, timed, 60 times
( for k in $(seq 1 60); do s=$EPOCHREALTIME; ip -n hxreapp link set lo mtu 65000; e=$EPOCHREALTIME; echo "$(( (${e/./}-${s/./}) ))"; done > /tmp/hxreap-probe.txt ) &
sleep 0.02
s=$EPOCHREALTIME; ip -n hxreaph link del group 77; e=$EPOCHREALTIME
wait
echo "N=$N group del: $(( (${e/./}-${s/./}) )) us; probe max: $(sort -n /tmp/hxreap-probe.txt | tail -1) us p50: $(sort -n /tmp/hxreap-probe.txt | sed -n 30p)"
ip netns del hxreaph; ip netns del hxreapp
