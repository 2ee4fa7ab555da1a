#!/usr/bin/env bash
# Installs what building, the demo and the tests need (Debian 12), only what is missing.
# Sourced by scripts/demo.sh and scripts/test.sh; run as root.
set -euo pipefail

need_apt=()
have() { dpkg -s "$1" >/dev/null 2>&1; }
# protobuf-compiler: etcd-client's build script runs protoc (includes: below). etcd-server: the
# etcd the datastore tests start (/usr/bin/etcd). nftables: `nft`, which the tests and the support bundle read rulesets back with (the agent writes them over netlink).
# iperf3: bench/netpol-dataplane.sh.
for p in iproute2 iputils-ping jq curl ca-certificates build-essential \
         containernetworking-plugins iptables \
         golang-go golang-github-appc-cni-dev dpkg-dev \
         protobuf-compiler etcd-server nftables python3-venv iperf3; do
  have "$p" || need_apt+=("$p")
done
# etcd-client's build script compiles etcd's .proto files, which import Google's well-known
# types (google/protobuf/descriptor.proto …). Debian ships those in libprotobuf-dev, only a
# Recommends of protobuf-compiler, which --no-install-recommends drops: check for the file.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
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

# Offline validation of manifests/ against the Kubernetes schemas (tests/tests/manifests.rs):
# PyPI kubernetes-validate ships the schemas in its wheel. python3-venv: Debian's venv module.
K8S_VALIDATE_VERSION=1.37.0
if [ "$(/tmp/vpcnet-venv/bin/kubernetes-validate --version 2>/dev/null)" != "$K8S_VALIDATE_VERSION" ]; then
  echo "deps: kubernetes-validate $K8S_VALIDATE_VERSION into /tmp/vpcnet-venv"
  /usr/bin/python3 -m venv /tmp/vpcnet-venv
  /tmp/vpcnet-venv/bin/pip install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
fi

# containerd CRI test and benchmark (tests/tests/containerd.rs, bench/cri-bench.sh, tests/cri/):
# Debian's containerd 1.6 + runc, a static busybox for the local sandbox image, and grpcio +
# grpcio-tools (CRI client stubs) in the same venv.
need_cri=()
for p in containerd runc busybox-static; do have "$p" || need_cri+=("$p"); done
if [ ${#need_cri[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_cri[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_cri[@]}" >/dev/null
fi
if ! /tmp/vpcnet-venv/bin/python -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "deps: grpcio-tools into /tmp/vpcnet-venv"
  /usr/bin/python3 -m venv /tmp/vpcnet-venv
  /tmp/vpcnet-venv/bin/pip install -q --disable-pip-version-check "grpcio-tools==1.85.1"
fi
