#!/usr/bin/env bash
# Installs what building, the demo and the tests need (Debian 12), only what is missing.
# Sourced by scripts/demo.sh and scripts/test.sh; run as root.
set -euo pipefail

need_apt=()
have() { dpkg -s "$1" >/dev/null 2>&1; }
for p in iproute2 iputils-ping jq ca-certificates build-essential \
         containernetworking-plugins iptables \
         golang-go golang-github-appc-cni-dev dpkg-dev; do
  have "$p" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The reference CNI client, built from Debian's source package (not packaged as a binary).
CNITOOL=${CNITOOL:-/tmp/cniharness/bin/cnitool}
if [ ! -x "$CNITOOL" ]; then
  echo "deps: building cnitool"
  bash "$(dirname "${BASH_SOURCE[0]}")/build-cnitool.sh" "$(dirname "$CNITOOL")" >/dev/null
fi
export CNITOOL
