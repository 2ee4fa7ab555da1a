#!/usr/bin/env bash
# The whole test suite: unit + property tests (no root needed) and the integration tests
# that run the real binaries in private network namespaces (root). Installs what is missing.
#   ./scripts/test.sh        (as root, or through sudo)
set -euo pipefail
. "$(dirname "$0")/as-root.sh" "$0" "$@"
cd "$(dirname "$0")/.."
. scripts/deps.sh

# Leftovers of a killed earlier run: test namespaces are named vt<pid>x… / vnlt<pid>…; only
# those whose test process is gone are removed (another run may be in progress).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(vt[0-9]+x|vnlt[0-9]+)' || true); do
  pid=$(sed -E 's/^(vt|vnlt)([0-9]+).*/\2/' <<<"$ns")
  kill -0 "$pid" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

cargo build --workspace --bins --features vpcnet/failpoints
# The `vpcnet` front (no_std, its own workspace: front/Cargo.toml) beside the other binaries,
# where the tests exec `vpcnet`; it falls back to the `vpcnet-standalone` built above.
cargo build --release --locked --manifest-path front/Cargo.toml --target-dir target/front
cp target/front/release/vpcnet target/debug/vpcnet
log=$(mktemp)
# A test that cannot run what it checks (a missing tool) says so in this file, one line
# "test: reason" (vpcnet_tests::skip), and is counted as skipped, not passed.
export VTEST_SKIP_LOG
VTEST_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$VTEST_SKIP_LOG"' EXIT
set +e
# --no-fail-fast: every test binary runs even when an earlier one failed.
cargo test --workspace --lib --bins --tests --no-fail-fast --features vpcnet-netlink/test_as_root,vpcnet/failpoints \
  -- --test-threads "${TEST_THREADS:-2}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The front's own unit tests (its pure parts, on the host with std), and its wire edge cases
# against a fake agent (a reply code out of range, a wrong magic, a closed connection…).
cargo test --locked --manifest-path front/Cargo.toml --target-dir target/front 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
FRONT_BIN=target/front/release/vpcnet front/e2e/run.sh 2>&1 | tail -n 25 || rc=1
set -e
echo
failed_names=$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' || true)
crashed=$(grep -E '^error: test failed|^    `-p ' "$log" || true)
if [ -n "$failed_names" ]; then echo "failed tests:"; sed 's/^/  /' <<<"$failed_names"; fi
if [ "$rc" != 0 ] && [ -n "$crashed" ]; then echo "failed test binaries:"; sed 's/^/  /' <<<"$crashed"; fi
skipped=$(grep -c . "$VTEST_SKIP_LOG" || true)
if [ "$skipped" -gt 0 ]; then echo "skipped tests:"; sed 's/^/  /' "$VTEST_SKIP_LOG"; fi
# One closing line for the whole suite (cargo prints one per test binary); a skipped test
# returned early and so is in cargo's "passed": it is moved to "skipped". `#[ignore]`d tests
# (benchmarks, run by their bench/ scripts) are counted apart: they are not skips.
awk -v s="$skipped" -v rc="$rc" '/^test result:/ { p += $4; f += $6; i += $8 }
  END { if (rc != 0 && f == 0) f = 1; printf "%d passed, %d failed, %d skipped, %d ignored (benchmarks)\n", p - s, f, s, i }' "$log"
# CI must not go green on checks that did not run.
if [ "$rc" = 0 ] && [ "$skipped" -gt 0 ] && [ -n "${CI:-}" ]; then
  echo "test.sh: $skipped test(s) skipped under CI: everything they need is installed by scripts/deps.sh" >&2
  rc=1
fi
exit "$rc"
