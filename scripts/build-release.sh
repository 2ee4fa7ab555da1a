#!/usr/bin/env bash
# The release binaries, built exactly as the image's Dockerfile builds them: `vpcnet` (the
# front the runtime execs for every ADD/DEL: no libc, ~2 KB, hands the command to vpcnetd;
# front/), `vpcnet-standalone` (the CNI plugin as a process of its own, which the front execs
# when vpcnetd does not take a command) linked statically (+crt-static, for the
# host target so build scripts stay dynamic; it resolves no names, so glibc's NSS caveat does
# not apply), `vpcnetd` dynamically. Copies both to OUT_DIR (default target/dist), which is
# what the benchmarks run. Static linking makes the plugin's exec-to-exit ~1.7–2.2 ms shorter
# at p50 (no dynamic loader, no libc relocation; docs/benchmarks.md, issue 14 round 2), and
# position-dependent (relocation-model=static: no 5 600 relative relocations to apply at
# every start, ~100 µs of each exec, round 5) — like the reference plugins' Go binaries.
# `vpcnetd` is built with the release-agent profile (Cargo.toml: release + fat LTO, one codegen
# unit, opt-level "s": a smaller resident set on every node, issue 10); the plugin with release.
#   scripts/build-release.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/dist}
host="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --locked -q -p vpcnet --bin vpcnet-standalone --target "$host"
cargo build --profile release-agent --locked -q -p vpcnet-agent --bin vpcnetd
cargo build --release --locked -q --manifest-path front/Cargo.toml --target-dir target/front
mkdir -p "$OUT"
cp "target/$host/release/vpcnet-standalone" target/release-agent/vpcnetd target/front/release/vpcnet "$OUT/"
