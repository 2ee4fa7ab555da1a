# syntax=docker/dockerfile:1
# The vpcnet image: `vpcnetd` (the node agent, the DaemonSet's process) and `vpcnet` (the CNI
# plugin, which the DaemonSet's install-cni init container copies onto the node).
#   docker build -t vpcnet:0.1.0 .
# Needs a Docker engine with BuildKit (the default since Docker 23). Manifests: manifests/.

FROM rust:1-bookworm AS build
# etcd-client's build script compiles etcd's .proto files: it needs protoc and Google's
# well-known .proto includes (libprotobuf-dev; only a Recommends of protobuf-compiler).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && test -f /usr/include/google/protobuf/descriptor.proto \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# vpcnet (the front, front/: no libc at all) and vpcnet-standalone (the plugin it falls back
# to) are executed on the node by the container runtime, not in this image, so they must not
# depend on the node's C library; vpcnet-standalone is linked statically (+crt-static; it resolves no names,
# so glibc's NSS caveat does not apply) and position-dependent (no relocations to apply at each
# of its starts; scripts/build-release.sh). vpcnetd runs in this image and links dynamically,
# built with the release-agent profile (Cargo.toml: for size, one agent on every node).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    host="$(rustc -vV | sed -n 's/^host: //p')"; \
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
      cargo build --release --locked -p vpcnet --bin vpcnet-standalone --target "$host"; \
    cargo build --profile release-agent --locked -p vpcnet-agent --bin vpcnetd; \
    cargo build --release --locked --manifest-path front/Cargo.toml --target-dir target/front; \
    mkdir -p /out; \
    cp "target/$host/release/vpcnet-standalone" target/release-agent/vpcnetd target/front/release/vpcnet /out/

# The portmap and loopback CNI plugins (chained in / needed beside vpcnet's conflist), from
# Debian's containernetworking-plugins (Go, statically linked: they run on the node). The
# install-cni init container installs them next to vpcnet when the node lacks them.
FROM debian:bookworm-slim AS cni-plugins
RUN apt-get update \
 && apt-get install -y --no-install-recommends containernetworking-plugins \
 && test -x /usr/lib/cni/portmap && test -x /usr/lib/cni/loopback \
 && rm -rf /var/lib/apt/lists/*

FROM debian:bookworm-slim
# SNAT rules go through the nftables crate, which runs `nft -j -f -`: the agent needs `nft`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/vpcnet /out/vpcnet-standalone /out/vpcnetd /usr/local/bin/
COPY --from=cni-plugins /usr/lib/cni/portmap /usr/lib/cni/loopback /usr/local/bin/
LABEL org.opencontainers.image.title="vpcnet" \
      org.opencontainers.image.description="VPC-style Kubernetes CNI: vpcnet plugin + vpcnetd agent" \
      org.opencontainers.image.licenses="Apache-2.0"
# Runs as root, on purpose: the agent needs CAP_NET_ADMIN in the node's network namespace
# (routes, veths, nftables), and capabilities of a non-root user in a container are not
# effective without file capabilities (ambient capabilities are not settable from a pod spec);
# it also owns root-only paths on the node (/run/vpcnet socket, mode 0660 root, checked with
# SO_PEERCRED; /var/lib/vpcnet; /etc/cni/net.d; /opt/cni/bin). The DaemonSet drops every other
# capability, forbids privilege escalation and mounts the root filesystem read-only.
USER 0:0
ENTRYPOINT ["/usr/local/bin/vpcnetd"]
