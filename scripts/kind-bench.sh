#!/usr/bin/env bash
# vpcnet on a real (kind) Kubernetes cluster, measured against kindnet, kind's default CNI.
#
# For each CNI in turn (one cluster at a time, so they don't compete for the machine): creates a
# 3-node kind cluster from manifests/kind-config.yaml (1 control plane + 2 workers), installs the
# CNI (vpcnet: builds the image, `kind load`s it, applies manifests/vpcnet-kubernetes.yaml with
# its CRD, or with DATASTORE=etcd manifests/vpcnet-etcd.yaml pointed at kind's own etcd over
# TLS), waits for every node to be Ready, then measures
#   - pod start-up latency: PODS pause pods, created in bursts of BATCH, each timed from the
#     moment a watch sees it created to the moment the watch sees it Ready (p50, p99);
#   - pod -> pod TCP throughput with iperf3 (IPERF_SECONDS, one stream), client and server on
#     the same worker and on different workers;
# and prints one table. Clusters are deleted at the end (KEEP=1 keeps them).
#
# Needs Docker (a running engine), kind, kubectl and bash >= 5, on Linux or macOS; internet
# access for the base images (rust, debian) and kind's node image. It cannot run in CI or on
# the development machines (no Docker engine there): run it on a workstation.
#
#   ./scripts/kind-bench.sh
#   PODS=300 BATCH=100 IPERF_SECONDS=10 CNIS="vpcnet kindnet" DATASTORE=kubernetes KEEP=0 \
#   KIND_NODE_IMAGE=kindest/node:v1.32.2 ./scripts/kind-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C   # $EPOCHREALTIME with a '.' decimal point

die() { echo "kind-bench: $*" >&2; exit 1; }
[ "${BASH_VERSINFO[0]}" -ge 5 ] || die "needs bash >= 5 (for \$EPOCHREALTIME); this is bash $BASH_VERSION"
missing=()
for t in docker kind kubectl; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
[ ${#missing[@]} -eq 0 ] || die "needs ${missing[*]} on PATH: this benchmark runs on Docker + kind + kubectl (see manifests/README.md)"
docker info >/dev/null 2>&1 || die "cannot reach a Docker engine (\`docker info\` failed): start Docker first"

PODS=${PODS:-300}
BATCH=${BATCH:-100}
IPERF_SECONDS=${IPERF_SECONDS:-10}
CNIS=${CNIS:-vpcnet kindnet}
KEEP=${KEEP:-0}
DATASTORE=${DATASTORE:-kubernetes}
PREFIX=${CLUSTER_PREFIX:-vpcnet-bench}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
IMAGE=${IMAGE:-vpcnet:$VERSION}
IPERF_IMAGE=vpcnet-bench-iperf3:1
NS=vpcnet-bench
OUT=$(mktemp -d "${TMPDIR:-/tmp}/kind-bench.XXXXXX")
if [ "$BATCH" -lt 1 ] || [ "$BATCH" -gt 200 ]; then die "BATCH must be 1..200 (two workers, 110 pods each)"; fi
for c in $CNIS; do case $c in vpcnet|kindnet) ;; *) die "CNIS: unknown CNI $c (vpcnet, kindnet)";; esac; done
case $DATASTORE in kubernetes|etcd) ;; *) die "DATASTORE: kubernetes or etcd (local serves one node only)";; esac

CLUSTER=""
k() { kubectl --context "kind-$CLUSTER" "$@"; }
cleanup() {
  if [ -n "$CLUSTER" ] && [ "$KEEP" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# ---- images --------------------------------------------------------------------------------
build_images() {
  if [[ " $CNIS " == *" vpcnet "* ]]; then
    log "building $IMAGE (Dockerfile)"
    docker build -t "$IMAGE" . >"$OUT/docker-build.log" 2>&1 || { tail -n 30 "$OUT/docker-build.log" >&2; die "docker build failed (log: $OUT/docker-build.log)"; }
  fi
  log "building $IPERF_IMAGE"
  docker build -t "$IPERF_IMAGE" - >"$OUT/iperf-build.log" 2>&1 <<'EOF' || die "building the iperf3 image failed (log: $OUT/iperf-build.log)"
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iperf3 \
 && rm -rf /var/lib/apt/lists/*
EOF
}

# ---- clusters ------------------------------------------------------------------------------
create_cluster() { # cni
  local cni=$1 cfg="$OUT/kind-$1.yaml"
  CLUSTER="$PREFIX-$cni"
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  if [ "$cni" = kindnet ]; then
    sed 's/disableDefaultCNI: true/disableDefaultCNI: false/' manifests/kind-config.yaml >"$cfg"
  else
    cp manifests/kind-config.yaml "$cfg"
  fi
  log "creating kind cluster $CLUSTER ($cni)"
  kind create cluster --name "$CLUSTER" --config "$cfg" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} >"$OUT/kind-$cni.log" 2>&1 \
    || { tail -n 30 "$OUT/kind-$cni.log" >&2; die "kind create cluster failed"; }
  kind load docker-image "$IPERF_IMAGE" --name "$CLUSTER" >/dev/null
}

install_vpcnet() {
  log "installing vpcnet ($DATASTORE datastore)"
  kind load docker-image "$IMAGE" --name "$CLUSTER" >/dev/null
  if [ "$DATASTORE" = kubernetes ]; then
    k apply -f manifests/crd-prefixclaims.yaml >/dev/null
    k wait --for condition=established crd/prefixclaims.vpcnet.io --timeout=60s >/dev/null
    sed -e "s#image: vpcnet:.*#image: $IMAGE#" manifests/vpcnet-kubernetes.yaml >"$OUT/vpcnet.yaml"
  else
    etcd_secret_and_manifest
  fi
  k apply -f "$OUT/vpcnet.yaml" >/dev/null
  k -n kube-system rollout status ds/vpcnet --timeout=300s >&2 \
    || { k -n kube-system logs ds/vpcnet --all-containers --tail=50 >&2 || true; die "vpcnet DaemonSet did not become ready"; }
}

etcd_secret_and_manifest() {
  local cp="$CLUSTER-control-plane" etcd_ip d
  # kubeadm's etcd listens on the control plane's address with client-certificate auth; any
  # certificate signed by its CA is accepted: the health-check client's will do.
  etcd_ip=$(k get node "$cp" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  d="$OUT/etcd-pki"; mkdir -p "$d"
  for f in ca.crt healthcheck-client.crt healthcheck-client.key; do
    docker exec "$cp" cat "/etc/kubernetes/pki/etcd/$f" >"$d/$f"
  done
  k -n kube-system create secret generic vpcnet-etcd-tls \
    --from-file=ca.crt="$d/ca.crt" --from-file=tls.crt="$d/healthcheck-client.crt" \
    --from-file=tls.key="$d/healthcheck-client.key" >/dev/null
  sed -e "s#https://etcd.vpcnet.invalid:2379#https://$etcd_ip:2379#" \
      -e "s#image: vpcnet:.*#image: $IMAGE#" manifests/vpcnet-etcd.yaml >"$OUT/vpcnet.yaml"
}

wait_ready() {
  log "waiting for nodes and CoreDNS to be Ready"
  k wait --for=condition=Ready node --all --timeout=300s >/dev/null
  k -n kube-system rollout status deploy/coredns --timeout=300s >/dev/null
  k create namespace "$NS" >/dev/null
  # Pods are admitted only once the namespace's default ServiceAccount exists.
  for _ in $(seq 60); do k -n "$NS" get serviceaccount default >/dev/null 2>&1 && break; sleep 1; done
}

# ---- pod start-up latency --------------------------------------------------------------------
pause_image() {
  # The runtime's sandbox image is on every kind node already: no pull in the measurement.
  local img
  img=$(docker exec "$CLUSTER-worker" crictl images 2>/dev/null | awk '$1 ~ /\/pause$/ {print $1 ":" $2; exit}')
  echo "${img:-registry.k8s.io/pause:3.10}"
}

gen_pods() { # batch count image
  local i
  for i in $(seq 1 "$2"); do
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: s$1-$i, namespace: $NS, labels: {app: startup, batch: b$1}}
spec:
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  enableServiceLinks: false
  containers: [{name: pause, image: "$3", imagePullPolicy: IfNotPresent}]
EOF
  done
}

startup() { # cni -> appends seconds, one per pod, to $OUT/<cni>-startup.txt
  local cni=$1 lat="$OUT/$1-startup.txt" img b=0 made=0 n ev wpid got
  : >"$lat"
  img=$(pause_image)
  while [ "$made" -lt "$PODS" ]; do
    b=$((b + 1)); n=$((PODS - made < BATCH ? PODS - made : BATCH))
    ev="$OUT/$cni-events-$b.txt"
    # Every change of every pod of the batch, stamped on arrival (same clock for both ends).
    k get pods -n "$NS" -l "batch=b$b" --watch \
      -o jsonpath='{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}' \
      2>/dev/null > >(while IFS= read -r line; do echo "$EPOCHREALTIME $line"; done >"$ev") &
    wpid=$!
    sleep 2   # let the watch be established before the first create
    log "$cni: start-up batch $b: $n pods"
    gen_pods "$b" "$n" "$img" | k create -f - >/dev/null
    k wait --for=condition=Ready pod -n "$NS" -l "batch=b$b" --timeout=600s >/dev/null
    sleep 2; kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true; sleep 1
    awk '{ if (!($2 in c)) c[$2] = $1; if ($3 == "True" && !($2 in r)) r[$2] = $1 }
         END { for (p in r) printf "%.3f\n", r[p] - c[p] }' "$ev" >>"$lat"
    got=$(awk -v b="s$b-" 'index($2, b) == 1 && $3 == "True" {print $2}' "$ev" | sort -u | wc -l)
    [ "$got" -eq "$n" ] || log "warning: batch $b: the watch saw $got of $n pods become Ready"
    k delete pods -n "$NS" -l "batch=b$b" --wait=true >/dev/null
    made=$((made + n))
  done
}

percentile() { # p file -> nearest-rank percentile
  sort -n "$2" | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
    i = int(p / 100 * NR); if (i < p / 100 * NR) i++; if (i < 1) i = 1; printf "%.2f", v[i] }'
}

# ---- pod -> pod throughput -------------------------------------------------------------------
iperf_pod() { # name node command...
  local name=$1 node=$2; shift 2
  local cmd; cmd=$(printf '"%s", ' "$@"); cmd="[${cmd%, }]"
  cat <<EOF | k create -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $NS, labels: {app: iperf}}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  terminationGracePeriodSeconds: 0
  automountServiceAccountToken: false
  containers: [{name: iperf, image: $IPERF_IMAGE, imagePullPolicy: Never, command: $cmd}]
EOF
}

throughput() { # cni -> "same cross" in Gbit/s
  local w1="$CLUSTER-worker" w2="$CLUSTER-worker2" ip same cross
  iperf_pod iperf-server "$w1" iperf3 -s
  iperf_pod iperf-same "$w1" sleep infinity
  iperf_pod iperf-cross "$w2" sleep infinity
  k wait --for=condition=Ready pod -n "$NS" iperf-server iperf-same iperf-cross --timeout=300s >/dev/null
  ip=$(k get pod -n "$NS" iperf-server -o jsonpath='{.status.podIP}')
  log "$1: iperf3 to $ip, same node and cross node, ${IPERF_SECONDS}s each"
  sleep 2   # the server is Ready when started, not necessarily listening yet
  same=$(k exec -n "$NS" iperf-same -- iperf3 -c "$ip" -t "$IPERF_SECONDS" -O 1 -f g | awk '/receiver/ {print $(NF-2); exit}')
  cross=$(k exec -n "$NS" iperf-cross -- iperf3 -c "$ip" -t "$IPERF_SECONDS" -O 1 -f g | awk '/receiver/ {print $(NF-2); exit}')
  k delete pods -n "$NS" -l app=iperf --wait=true >/dev/null
  echo "${same:-n/a} ${cross:-n/a}"
}

# ---- run -----------------------------------------------------------------------------------
declare -A P50 P99 SAME CROSS KVER
build_images
for cni in $CNIS; do
  create_cluster "$cni"
  if [ "$cni" = vpcnet ]; then install_vpcnet; fi
  wait_ready
  KVER[$cni]=$(k version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -n1)
  startup "$cni"
  P50[$cni]=$(percentile 50 "$OUT/$cni-startup.txt")
  P99[$cni]=$(percentile 99 "$OUT/$cni-startup.txt")
  res=$(throughput "$cni")
  read -r "SAME[$cni]" "CROSS[$cni]" <<<"$res"
  if [ "$KEEP" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null; fi
  CLUSTER=""
done

echo
echo "kind $(kind version | awk '{print $2}'), vpcnet on the $DATASTORE datastore, 3 nodes (1 control plane + 2 workers), $PODS pods in bursts of $BATCH, iperf3 ${IPERF_SECONDS}s x 1 stream"
printf '%-38s' "metric"; for c in $CNIS; do printf ' %12s' "$c"; done; echo
printf '%-38s' "kubernetes"; for c in $CNIS; do printf ' %12s' "${KVER[$c]:-?}"; done; echo
printf '%-38s' "pod start-up p50, created->Ready (s)"; for c in $CNIS; do printf ' %12s' "${P50[$c]}"; done; echo
printf '%-38s' "pod start-up p99, created->Ready (s)"; for c in $CNIS; do printf ' %12s' "${P99[$c]}"; done; echo
printf '%-38s' "pod->pod same node (Gbit/s)"; for c in $CNIS; do printf ' %12s' "${SAME[$c]}"; done; echo
printf '%-38s' "pod->pod cross node (Gbit/s)"; for c in $CNIS; do printf ' %12s' "${CROSS[$c]}"; done; echo
echo "raw data: $OUT"
