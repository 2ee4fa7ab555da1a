#!/usr/bin/env bash
# The whole test suite: unit + property tests (no root needed) and the integration tests
# that run the real binaries in private network namespaces (root). Installs what is missing.
#   sudo ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (network namespaces)" >&2; exit 1; }
. scripts/deps.sh

# Leftovers of a killed earlier run: test namespaces are named vt<pid>x… / vnlt<pid>…; only
# those whose test process is gone are removed (another run may be in progress).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(vt[0-9]+x|vnlt[0-9]+)' || true); do
  pid=$(sed -E 's/^(vt|vnlt)([0-9]+).*/\2/' <<<"$ns")
  kill -0 "$pid" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests --features vpcnet-netlink/test_as_root \
  -- --test-threads "${TEST_THREADS:-2}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$rc"
