#!/usr/bin/env bash
# lab.sh - a throwaway containerd 1.6 CRI "node" for vpcnet tests and benchmarks.
#
#   lab.sh check                          prerequisites only (exit 3 + "missing: ..." if not met)
#   lab.sh up DIR CNI [VPCNETD-FLAGS...]  CNI: vpcnet | ptp
#   lab.sh down DIR                       remove everything `up` made (also after a failed up)
#   lab.sh reap ROOT                      `down` every lab under ROOT whose owner process is gone
#
# `up` makes a private network namespace (the node's "host" side; the machine's own netns is
# never configured), starts containerd inside it (nsenter --net) with root, state, socket and
# pod netns mounts (netns_mounts_under_state_dir) under DIR, imports a local sandbox image
# built from busybox-static, and for CNI=vpcnet starts vpcnetd in the same namespace. The CNI
# chain is `vpcnet + portmap` or `ptp + host-local + portmap`; the CNI bin dir DIR/cni-bin
# links our `vpcnet` and Debian's plugins (/usr/lib/cni). When vpcnetd has --cni-conf-dir it
# writes the conflist itself (unless LAB_CONFLIST=lab), else this script does (cniVersion
# 1.0.0: the newest containerd 1.6's libcni and Debian's portmap 1.1.1 accept); either way the
# plugin logs to DIR/plugin.log (vpcnetd --cni-log-file). DIR/lab.env describes the lab
# (NETNS, CRI_SOCK, AGENT_SOCK, CONTAINERD_PID, VPCNETD_PID, PY, CLIENT, CONFLIST_BY).
#
# Env: VPCNET_BIN_DIR (default <repo>/target/debug), VPCNET_VENV (default /tmp/vpcnet-venv,
# python with grpcio + grpcio-tools), LAB_NETNS (default vcri-<basename DIR>),
# LAB_VPC_CIDR (10.245.0.0/16), LAB_PTP_SUBNET (10.246.0.0/16), LAB_OWNER_PID (default: the
# caller's pid; `reap` removes labs whose owner is gone, e.g. a test killed before cleanup).
set -uo pipefail
export LC_ALL=C
HERE=$(dirname "$(readlink -f "$0")")
REPO=$(readlink -f "$HERE/../..")
BIN=${VPCNET_BIN_DIR:-$REPO/target/debug}
VENV=${VPCNET_VENV:-/tmp/vpcnet-venv}
PY=$VENV/bin/python
CLIENT=$HERE/cri_client.py
IMAGE=docker.io/library/vpcnet-pause:1

die() { echo "lab.sh: $*" >&2; exit 1; }

check() {
  local miss=()
  [ "$(id -u)" = 0 ] || miss+=("root")
  for b in containerd ctr runc containerd-shim-runc-v2 nsenter ip setsid; do
    command -v "$b" >/dev/null 2>&1 || miss+=("$b")
  done
  if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then miss+=("static /bin/busybox (busybox-static)"); fi
  for p in portmap loopback ptp host-local; do [ -x "/usr/lib/cni/$p" ] || miss+=("/usr/lib/cni/$p"); done
  "$PY" -c 'import grpc, grpc_tools' >/dev/null 2>&1 || miss+=("python venv $VENV with grpcio grpcio-tools")
  if [ ${#miss[@]} -gt 0 ]; then
    echo "missing: ${miss[*]} (scripts/deps.sh installs them)" >&2
    exit 3
  fi
}

# Appends KEY=VALUE to DIR/lab.env (read back by `down` and by the callers).
setenv() { printf '%s=%q\n' "$1" "$2" >>"$DIR/lab.env"; }

wait_socket() { # PATH PID SECS
  local end=$((SECONDS + $3))
  until [ -S "$1" ]; do
    kill -0 "$2" 2>/dev/null || return 1
    ((SECONDS < end)) || return 1
    sleep 0.05
  done
}

up() {
  DIR=$1 CNI=$2; shift 2
  case $CNI in vpcnet | ptp) ;; *) die "CNI must be vpcnet or ptp" ;; esac
  check
  if [ "$CNI" = vpcnet ] && ! { [ -x "$BIN/vpcnet" ] && [ -x "$BIN/vpcnetd" ]; }; then
    die "no vpcnet/vpcnetd in $BIN: cargo build --workspace --bins"
  fi
  [ -e "$DIR/lab.env" ] && die "$DIR/lab.env exists: lab.sh down $DIR first"
  mkdir -p "$DIR"/{root,state,net.d,cni-bin,podlogs,ipam} || die "mkdir $DIR"
  DIR=$(readlink -f "$DIR")
  local ns=${LAB_NETNS:-vcri-$(basename "$DIR")}
  : >"$DIR/lab.env"
  setenv DIR "$DIR"; setenv NETNS "$ns"; setenv CRI_SOCK "$DIR/containerd.sock"
  setenv PY "$PY"; setenv CLIENT "$CLIENT"; setenv CNI "$CNI"; setenv OWNER_PID "${LAB_OWNER_PID:-$PPID}"
  fail() { echo "lab.sh up: $*; cleaning up" >&2; down "$DIR"; exit 1; }

  ip netns add "$ns" || fail "ip netns add $ns"
  ip -n "$ns" link set lo up || fail "lo up"
  # What the namespace would inherit on another machine (tests/src/lib.rs VTEST_INHERIT).
  for kv in ${VTEST_INHERIT:-}; do
    ip netns exec "$ns" sh -c "echo ${kv#*=} > /proc/sys/net/ipv4/${kv%%=*}" || fail "sysctl $kv"
  done
  for p in /usr/lib/cni/*; do ln -sf "$p" "$DIR/cni-bin/" || fail "ln $p"; done
  if [ "$CNI" = vpcnet ]; then ln -sf "$BIN/vpcnet" "$DIR/cni-bin/vpcnet" || fail "ln vpcnet"; fi
  "$PY" "$CLIENT" - image "$DIR/pause.tar" "$IMAGE" >/dev/null || fail "building the sandbox image"

  cat >"$DIR/config.toml" <<EOF
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$DIR/containerd.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$IMAGE"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    disable_apparmor = true
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "native"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$DIR/cni-bin"
      conf_dir = "$DIR/net.d"
      max_conf_num = 1
EOF

  if [ "$CNI" = vpcnet ]; then
    local agent=(--socket "$DIR/vpcnetd.sock" --state-dir "$DIR/agent-state" --vpc-cidr "${LAB_VPC_CIDR:-10.245.0.0/16}" --node-name "$(basename "$DIR")")
    if [ "${LAB_CONFLIST:-agent}" = agent ] && "$BIN/vpcnetd" --help 2>/dev/null | grep -q -- '--cni-conf-dir'; then
      agent+=(--cni-conf-dir "$DIR/net.d"); setenv CONFLIST_BY agent
      # The plugin logs to DIR/plugin.log whoever writes the conflist (not to the machine's
      # /var/log/vpcnet), where the tests read it.
      if "$BIN/vpcnetd" --help 2>/dev/null | grep -q -- '--cni-log-file'; then
        agent+=(--cni-log-file "$DIR/plugin.log" --cni-log-level info)
      fi
    else
      setenv CONFLIST_BY lab
      printf '{"cniVersion":"1.0.0","name":"vpcnet","plugins":[{"type":"vpcnet","socket":"%s","logFile":"%s","logLevel":"info"},{"type":"portmap","capabilities":{"portMappings":true}}]}\n' \
        "$DIR/vpcnetd.sock" "$DIR/plugin.log" >"$DIR/net.d/10-vpcnet.conflist"
    fi
    setsid nsenter --net="/run/netns/$ns" "$BIN/vpcnetd" "${agent[@]}" "$@" </dev/null >"$DIR/vpcnetd.log" 2>&1 &
    setenv VPCNETD_PID $!; setenv AGENT_SOCK "$DIR/vpcnetd.sock"
    wait_socket "$DIR/vpcnetd.sock" $! 15 || { cat "$DIR/vpcnetd.log" >&2; fail "vpcnetd did not serve within 15 s"; }
  else
    setenv CONFLIST_BY lab
    printf '{"cniVersion":"1.0.0","name":"ptp","plugins":[{"type":"ptp","ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"%s"}},{"type":"portmap","capabilities":{"portMappings":true}}]}\n' \
      "${LAB_PTP_SUBNET:-10.246.0.0/16}" "$DIR/ipam" >"$DIR/net.d/10-ptp.conflist"
  fi

  setsid nsenter --net="/run/netns/$ns" containerd --config "$DIR/config.toml" </dev/null >"$DIR/containerd.log" 2>&1 &
  setenv CONTAINERD_PID $!
  wait_socket "$DIR/containerd.sock" $! 30 || { tail -20 "$DIR/containerd.log" >&2; fail "containerd did not serve within 30 s"; }
  ctr -a "$DIR/containerd.sock" -n k8s.io images import --snapshotter native "$DIR/pause.tar" >/dev/null || fail "ctr images import"
  # NetworkReady turns true once containerd has loaded a CNI config (the agent writes it when
  # its pool can assign, if it writes it at all).
  "$PY" "$CLIENT" "$DIR/containerd.sock" wait-ready 30 >/dev/null || { tail -20 "$DIR/containerd.log" >&2; fail "CRI NetworkReady not true within 30 s"; }
  cat "$DIR/lab.env"
}

# Whether PID runs (a zombie does not).
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

kill_pid() { # PID SECS: TERM, wait, KILL
  local p=$1 end=$((SECONDS + $2))
  alive "$p" || return 0
  kill -TERM "$p" 2>/dev/null
  while alive "$p"; do
    ((SECONDS < end)) || { kill -KILL "$p" 2>/dev/null; break; }
    sleep 0.05
  done
  wait "$p" 2>/dev/null || true
}

down() {
  local DIR
  DIR=$(readlink -f "$1") || return 0
  [ -f "$DIR/lab.env" ] || { [ -d "$DIR" ] && rm -rf "$DIR"; return 0; }
  local NETNS="" CRI_SOCK="" CONTAINERD_PID="" VPCNETD_PID="" ids=""
  # shellcheck disable=SC1091
  . "$DIR/lab.env"
  # 1. remove the sandboxes through CRI (CNI DEL runs, pod netns are removed)
  local sb
  for sb in "$DIR"/root/io.containerd.grpc.v1.cri/sandboxes/*; do
    [[ "${sb##*/}" =~ ^[0-9a-f]{64}$ ]] && ids+=" ${sb##*/}"
  done
  if [ -n "$CONTAINERD_PID" ] && alive "$CONTAINERD_PID" && [ -S "$CRI_SOCK" ]; then
    timeout 60 "$PY" "$CLIENT" "$CRI_SOCK" cleanup >/dev/null 2>&1 || echo "lab.sh: CRI cleanup failed" >&2
  fi
  # 2. containerd, then whatever shims (and their sandbox processes) outlived it
  [ -n "$CONTAINERD_PID" ] && kill_pid "$CONTAINERD_PID" 10
  local p c
  # shellcheck disable=SC2013 # pids: one word each
  for p in $(grep -lsF -- "$DIR/containerd.sock" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == containerd-shim* ]] || continue
    for c in $(ps -o pid= --ppid "$p"); do kill -KILL "$c" 2>/dev/null; done
    kill_pid "$p" 5
  done
  [ -n "$VPCNETD_PID" ] && kill_pid "$VPCNETD_PID" 10
  # 3. mounts under DIR (pod netns, /dev/shm, rootfs), deepest first
  local m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "lab.sh: cannot unmount $m" >&2
  done < <(awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  # 4. the node namespace; libcni's result cache and runc's state of our sandboxes (left when
  #    containerd or a shim died); the directory
  [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null
  for c in $ids; do rm -rf /var/lib/cni/results/*-"$c"-* "/run/containerd/runc/k8s.io/$c"; done
  rm -rf "$DIR"
}

reap() {
  local env owner
  for env in "$1"/*/lab.env; do
    [ -f "$env" ] || continue
    owner=$(sed -n 's/^OWNER_PID=//p' "$env")
    if [ -z "$owner" ] || ! kill -0 "$owner" 2>/dev/null; then
      echo "lab.sh: removing stale lab $(dirname "$env")" >&2
      down "$(dirname "$env")"
    fi
  done
}

case ${1:-} in
  check) check ;;
  up) [ $# -ge 3 ] || die "usage: lab.sh up DIR vpcnet|ptp [VPCNETD-FLAGS...]"; shift; up "$@" ;;
  down) [ $# -eq 2 ] || die "usage: lab.sh down DIR"; down "$2" ;;
  reap) [ $# -eq 2 ] || die "usage: lab.sh reap ROOT"; reap "$2" ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
