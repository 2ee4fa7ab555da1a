#!/usr/bin/env bash
# Sourced first by demo.sh and test.sh: they need root (network namespaces, packages). As root
# they just go on; otherwise they re-run themselves through sudo when it exists, keeping the
# caller's Rust toolchain (rustup/cargo homes and PATH), and say what to do when it does not.
#   . scripts/as-root.sh "$0" "$@"
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$1"): not root: re-running through sudo" >&2
    script=$(readlink -f "$1"); shift
    exec sudo --preserve-env=CI,TEST_THREADS,CNITOOL,CARGO_TARGET_DIR \
      env "PATH=$PATH" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" \
      "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" "$script" "$@"
  fi
  echo "$(basename "$1"): run as root (network namespaces and packages need it); sudo is not installed" >&2
  exit 1
fi
