# Sourced (after scripts/as-root.sh, with ROOT set) by scripts/netpol-matrix.sh and
# bench/netpol-{propagation,dataplane}.sh: the lab's drivers (tests/src/bin/netpol-*.rs) need
# the same binaries and tools, and the same clean-up when they are killed.
#   netpol_lab_need "BINARIES" "TOOLS"   exit 2 naming what is missing; exports VPCNET_BIN_DIR
#   netpol_lab_run DRIVER ARGS...        runs $BIN_DIR/DRIVER, exits with its status
# On exit (also when interrupted) the driver is stopped and whatever it could not remove
# itself — its namespaces vt<pid>x…, its scratch directories — is removed.
BIN_DIR=${VPCNET_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
me=$(basename "$0")
netpol_lab_need() {
  local b t
  for b in $1; do
    [ -x "$BIN_DIR/$b" ] || { echo "$me: $BIN_DIR/$b missing: run cargo build --workspace --bins first" >&2; exit 2; }
  done
  for t in $2; do
    command -v "$t" >/dev/null || { echo "$me: $t not found (scripts/deps.sh installs it)" >&2; exit 2; }
  done
  export VPCNET_BIN_DIR=$BIN_DIR
}
pid=
netpol_lab_cleanup() {
  set +e
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  # What the driver could not remove itself (it was killed): its namespaces are vt<pid>x….
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^vt${pid}x"); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^vt${pid}x" | sort -r); do
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "${TMPDIR:-/tmp}"/vpcnet-tests/vt"${pid}"x* 2>/dev/null
  return 0
}
trap netpol_lab_cleanup EXIT
trap 'exit 130' INT TERM
netpol_lab_run() {
  local driver=$1 rc=0
  shift
  "$BIN_DIR/$driver" "$@" &
  pid=$!
  wait "$pid" || rc=$?
  exit "$rc"
}
