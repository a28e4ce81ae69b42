#!/usr/bin/env bash
# A real Kubernetes cluster on this machine for the k8s tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler; kwok for six fake GPU/CPU nodes (no container runs there);
# and, where the machine allows it (root, network namespaces), two real worker nodes (worker-1,
# worker-2): a kubelet, containerd, runc and CNI bridge networking each, every node in its own
# network namespace on a private bridge, with CoreDNS serving cluster DNS.
#
#   k8s.sh build   build the binaries from Go modules at the versions pinned in k8s/go.mod,
#                  coredns/go.mod, kueue/go.mod and jobset/go.mod (cached under ~/.cache/simsiam-job)
#   k8s.sh up      start everything (idempotent) and write a kubeconfig; start Kueue and JobSet with
#                  their queues (docs/kubernetes.md); with real nodes, leave namespace simsiam-e2e
#                  with claims `data` (a small Fashion-MNIST ImageFolder), `output` (empty, on both
#                  nodes) and `output-rwo` (empty, ReadWriteOnce, on worker-1 only)
#   k8s.sh image   build docker/Dockerfile.cpu (image.sh build) and load it into the real nodes
#   k8s.sh env     print `export KUBECONFIG=...`
#   k8s.sh down    stop everything
#
# `up` writes the data volume with the project's Python ($SIMSIAM_PYTHON, default .venv/bin/python).
# The real nodes carry the taint simsiam-test/real-node (so the kwok tests' pods never land there);
# namespace simsiam-e2e tolerates it and selects those nodes, as a cluster dedicates nodes to a team.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
moddir="$here/k8s"
k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$moddir/go.mod")"
kwok_version="v0.8.0"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/simsiam-job"
bin="$cache/k8s-$k8s_version/bin"
# State of a running cluster (certs, etcd data, logs, pids); one per machine user.
run="${SIMSIAM_K8S_RUN_DIR:-$cache/k8s-run}"
# kwok's Logs resource definition, from its module: tests point a pod's log at a file they write.
logs_crd="$bin/kwok.x-k8s.io_logs.yaml"
# Non-default ports, so a developer's own cluster (6443, 2379, 10257, 10259) is left alone.
etcd_port=23790
etcd_peer_port=23800
apiserver_port=16443
kcm_port=20257
scheduler_port=20259
kwok_port=20247
# CoreDNS for the real nodes' pods, built from its own module (coredns/go.mod).
coredns_version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$here/coredns/go.mod")"
coredns="$cache/coredns-$coredns_version/coredns"
# Kueue's and JobSet's managers, each built from its own module (kueue/go.mod, jobset/go.mod: their
# k8s.io libraries differ from the control plane's and from each other's), with the CRDs of that
# module beside the binary.
module_version() { awk -v m="$2" '$1 == m {print $2}' "$here/$1/go.mod"; }
kueue_version="$(module_version kueue sigs.k8s.io/kueue)"
jobset_version="$(module_version jobset sigs.k8s.io/jobset)"
kueue_dir="$cache/kueue-$kueue_version"
jobset_dir="$cache/jobset-$jobset_version"
# The real nodes: a private bridge (host end: the API server's and CoreDNS's address), one network
# namespace per node, and one pod subnet per node, routed between the nodes.
bridge=simk8s0
subnet="${SIMSIAM_K8S_SUBNET:-10.213.8}"   # a /24 on the private bridge only
host_ip="$subnet.1"
real_nodes=(worker-1 worker-2)
node_ip() { echo "$subnet.$((10 + ${1#worker-}))"; }
pod_subnet() { echo "10.214.${1#worker-}.0/24"; }
netns_of() { echo "simk8s-$1"; }
e2e_namespace=simsiam-e2e

log() { printf 'k8s.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

components=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

built() {
  local b
  for b in "${components[@]}" kwok; do [[ -x "$bin/$b" ]] || return 1; done
  [[ -f "$logs_crd" && -x "$bin/etcd" && -x "$coredns" ]] || return 1
  [[ -x "$kueue_dir/kueue" && -d "$kueue_dir/crds" && -x "$jobset_dir/jobset" && -d "$jobset_dir/crds" ]]
}

# build_controller NAME PACKAGE DIR: the manager of module sigs.k8s.io/NAME (pinned in NAME/go.mod)
# into DIR/NAME, and the module's CRDs into DIR/crds.
build_controller() {
  local name="$1" pkg="$2" dir="$3" version src t=$SECONDS
  version="$(module_version "$name" "sigs.k8s.io/$name")"
  mkdir -p "$dir"
  if [[ ! -x "$dir/$name" ]]; then
    log "building $name $version"
    (cd "$here/$name" && go build -o "$dir/$name.tmp" \
      -ldflags "-s -w -X sigs.k8s.io/$name/pkg/version.GitVersion=$version" "$pkg")
    mv "$dir/$name.tmp" "$dir/$name"
    log "built $name in $((SECONDS - t))s"
  fi
  if [[ ! -d "$dir/crds" ]]; then
    src="$(cd "$here/$name" && go list -m -f '{{.Dir}}' "sigs.k8s.io/$name")"
    rm -rf "$dir/crds.tmp"
    cp -r "$src/config/components/crd/bases" "$dir/crds.tmp"
    chmod -R u+w "$dir/crds.tmp"
    mv "$dir/crds.tmp" "$dir/crds"
  fi
}

cmd_build() {
  if built; then log "binaries for $k8s_version, Kueue $kueue_version and JobSet $jobset_version already built"; return; fi
  command -v go >/dev/null || die "go is not installed (need Go >= 1.26)"
  mkdir -p "$bin"
  # Module and build caches live under ~/.cache so CI can keep them between runs;
  # -p limits parallel compiles (the build shares small machines).
  export GOMODCACHE="${GOMODCACHE:-$HOME/.cache/go-mod}" GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
  export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--p=2}"
  local start=$SECONDS v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version minor
  minor="${k8s_version#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w"
  for pkg in $v $c; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  for b in "${components[@]}"; do
    [[ -x "$bin/$b" ]] && continue
    log "building $b $k8s_version"
    (cd "$moddir" && go build -ldflags "$ldflags" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$bin/$b.tmp" "$bin/$b"
  done
  # etcd at the version Kubernetes pins (go.mod). Debian's etcd-server 3.4 serves the API server,
  # but lacks RequestWatchProgress, and kwok's watch-list informers then stall between relists.
  if [[ ! -x "$bin/etcd" ]]; then
    log "building etcd $(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$moddir/go.mod")"
    (cd "$moddir" && go build -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
    mv "$bin/etcd.tmp" "$bin/etcd"
  fi
  if [[ ! -x "$bin/kwok" ]]; then
    log "building kwok $kwok_version"
    GOBIN="$bin" go install "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
  fi
  if [[ ! -f "$logs_crd" ]]; then
    local kwok_src
    kwok_src="$(go mod download -json "sigs.k8s.io/kwok@$kwok_version" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
    cp "$kwok_src/kustomize/crd/bases/kwok.x-k8s.io_logs.yaml" "$logs_crd"
  fi
  if [[ ! -x "$coredns" ]]; then
    log "building coredns $coredns_version"
    mkdir -p "${coredns%/*}"
    (cd "$here/coredns" && go build -ldflags "-s -w" -o "$coredns.tmp" .)
    mv "$coredns.tmp" "$coredns"
  fi
  build_controller jobset sigs.k8s.io/jobset "$jobset_dir"
  build_controller kueue sigs.k8s.io/kueue/cmd/kueue "$kueue_dir"
  log "built in $((SECONDS - start))s into $bin"
}

# ---- up / down ------------------------------------------------------------------------------------

kubeconfig="$run/kubeconfig"
kubectl() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

running() { [[ -f "$run/$1.pid" ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

# start NAME CMD...: run in the background, log to $run/NAME.log, remember the pid.
start() {
  local name="$1"; shift
  running "$name" && return
  setsid "$@" >"$run/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

# wait_for WHAT SECONDS CMD...: retry CMD until it succeeds.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "timed out waiting for $what; last lines of the logs in $run:"
      tail -n 5 "$run"/*.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

pki() {
  local d="$run/pki"
  # (A pki from before the real nodes lacks the bridge address: made anew.)
  if [[ -f "$d/admin.crt" ]] && grep -q "IP:$host_ip," "$d/serving.ext"; then return; fi
  rm -rf "$d"
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=simsiam-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # Serving certificate for the API server and kwok's kubelet-like endpoint (both on loopback).
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/serving.key" -out "$d/serving.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
    "$host_ip" >"$d/serving.ext"
  openssl x509 -req -in "$d/serving.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/serving.ext" -out "$d/serving.crt" 2>/dev/null
  # Cluster-admin client certificate (group system:masters): the kubeconfig's user, the
  # controllers' identity and the API server's client certificate towards kwok.
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=simsiam-admin" \
    -keyout "$d/admin.key" -out "$d/admin.csr" 2>/dev/null
  openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -out "$d/admin.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  cat >"$kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: simsiam-test
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority: $run/pki/ca.crt
users:
- name: simsiam-admin
  user:
    client-certificate: $run/pki/admin.crt
    client-key: $run/pki/admin.key
contexts:
- name: simsiam-test
  context: {cluster: simsiam-test, user: simsiam-admin}
current-context: simsiam-test
YAML
}

cmd_up() {
  built || die "binaries missing: run $0 build first"
  mkdir -p "$run"
  pki
  write_kubeconfig
  local p="$run/pki"

  start etcd "$bin/etcd" --name simsiam-test --data-dir "$run/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "simsiam-test=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync
  wait_for etcd 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$etcd_port"

  # Listening beyond loopback for the real nodes' kubelets (on the private bridge); clients need a
  # certificate of the test CA. No pod talks to this API server, so the endpoint reconciler (which
  # would publish an address as the "kubernetes" Service) is off. PodNodeSelector and
  # PodTolerationRestriction let namespace simsiam-e2e pin its pods to the real nodes.
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --anonymous-auth=false \
    --bind-address 0.0.0.0 --advertise-address 127.0.0.1 --secure-port "$apiserver_port" \
    --enable-admission-plugins PodNodeSelector,PodTolerationRestriction \
    --tls-cert-file "$p/serving.crt" --tls-private-key-file "$p/serving.key" \
    --client-ca-file "$p/ca.crt" --authorization-mode RBAC \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --kubelet-client-certificate "$p/admin.crt" --kubelet-client-key "$p/admin.key" \
    --kubelet-preferred-address-types InternalIP
  wait_for kube-apiserver 120 kubectl get --raw /readyz

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$kubeconfig" --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --leader-elect=false --service-account-private-key-file "$p/sa.key" \
    --root-ca-file "$p/ca.crt" --controllers '*,-nodeipam,-service-lb-controller'
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$kubeconfig" --bind-address 127.0.0.1 --secure-port "$scheduler_port" \
    --leader-elect=false

  kubectl apply --server-side -f "$logs_crd" >/dev/null
  wait_for "the Logs CRD" 30 kubectl get logs.kwok.x-k8s.io -A

  start kwok "$bin/kwok" --kubeconfig "$kubeconfig" --config "$here/k8s/kwok.yaml" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --node-port "$kwok_port" --server-address "127.0.0.1:$kwok_port" \
    --tls-cert-file "$p/serving.crt" --tls-private-key-file "$p/serving.key" \
    --node-lease-duration-seconds 40 --enable-crds Logs
  kubectl apply --server-side -f "$here/k8s/nodes.yaml" >/dev/null
  wait_for "6 Ready fake nodes" 90 bash -c \
    "[[ \$('$bin/kubectl' --kubeconfig '$kubeconfig' get nodes -l type=kwok --no-headers | grep -cw Ready) == 6 ]]"
  # Pods need a service account in the namespace before the admission plugin lets them in.
  wait_for "the default service account" 60 kubectl -n default get serviceaccount default
  controllers_up
  local why_not
  if why_not="$(real_nodes_unavailable)"; then
    log "no real nodes: $why_not"
  else
    real_nodes_up
  fi
  log "up: KUBECONFIG=$kubeconfig ($(kubectl get nodes --no-headers | wc -l) nodes)"
}

# ---- Kueue and JobSet ------------------------------------------------------------------------------

# Both managers run on this machine, on loopback, with the admin kubeconfig and no leader election.
# No webhook configuration is registered (docs/kubernetes.md says why): their webhook servers listen,
# with a certificate of the test CA, but the API server never calls them, so every field their
# defaulting webhooks would set must be in the manifest, and a queued Job is created suspended.
kueue_webhook_port=20261
kueue_health_port=20262
jobset_webhook_port=20263
jobset_health_port=20264
# With its own certificate management off, Kueue reads a metrics certificate from this fixed path,
# even with metrics off (only root can write it; without it Kueue does not start).
kueue_metrics_certs=/etc/kueue/metrics/certs

controller_certs() {
  local d="$run/pki/controllers"
  [[ -f "$d/tls.crt" ]] && return
  mkdir -p "$d"
  chmod 700 "$d"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=simsiam-controllers" \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/tls.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$run/pki/ca.crt" -CAkey "$run/pki/ca.key" \
    -CAcreateserial -days 3650 -extfile "$d/tls.ext" -out "$d/tls.crt" 2>/dev/null
}

# Prints why Kueue cannot start here (and succeeds), or installs its metrics certificate and fails.
kueue_unavailable() {
  local d="$run/pki/controllers"
  if ! install -d -m 0700 "$kueue_metrics_certs" 2>/dev/null; then
    echo "it reads a certificate from $kueue_metrics_certs, which this user cannot write"
    return 0
  fi
  install -m 0644 "$d/tls.crt" "$kueue_metrics_certs/tls.crt"
  install -m 0600 "$d/tls.key" "$kueue_metrics_certs/tls.key"
  return 1
}

controllers_up() {
  local c="$run/pki/controllers" why_not
  controller_certs
  kubectl apply --server-side -f "$jobset_dir/crds" -f "$kueue_dir/crds" >/dev/null
  kubectl wait --for condition=Established --timeout 60s -f "$jobset_dir/crds" -f "$kueue_dir/crds" >/dev/null

  # JobSet's defaults (config.jobset.x-k8s.io), but no leader election, no metrics and no
  # certificate management of its own.
  cat >"$run/jobset.yaml" <<EOF
apiVersion: config.jobset.x-k8s.io/v1alpha1
kind: Configuration
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
webhook: {host: 127.0.0.1, port: $jobset_webhook_port, certDir: $c}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:$jobset_health_port"}
EOF
  start jobset env KUBECONFIG="$kubeconfig" "$jobset_dir/jobset" --config "$run/jobset.yaml"
  wait_for "JobSet ready" 60 curl -sf "http://127.0.0.1:$jobset_health_port/readyz"

  # Kueue manages only the Jobs and JobSets that name a queue (label kueue.x-k8s.io/queue-name), so
  # every other job runs as if Kueue were not there. An admitted workload whose pods are not all
  # ready within a minute is evicted (its pods deleted) and requeued, after 5 s, 10 s, ... at most
  # 60 s. The visibility API server (VisibilityOnDemand) would need certificates of its own.
  cat >"$run/kueue.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
manageJobsWithoutQueueName: false
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
webhook: {host: 127.0.0.1, port: $kueue_webhook_port, certDir: $c}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:$kueue_health_port"}
waitForPodsReady:
  timeout: 60s
  requeuingStrategy: {timestamp: Eviction, backoffBaseSeconds: 5, backoffMaxSeconds: 60}
integrations:
  frameworks: [batch/job, jobset.x-k8s.io/jobset]
featureGates: {VisibilityOnDemand: false}
EOF
  if why_not="$(kueue_unavailable)"; then
    log "no Kueue: $why_not"
  else
    start kueue env KUBECONFIG="$kubeconfig" "$kueue_dir/kueue" --config "$run/kueue.yaml"
    wait_for "Kueue ready" 60 curl -sf "http://127.0.0.1:$kueue_health_port/readyz"
  fi
  queues_up
}

# The queues of the test cluster. Two node groups, two ClusterQueues: the kwok nodes (16 GPUs of
# their 32, so a 3 x 8 GPU job waits behind a 2 x 8 one) and the two real nodes, whose quota is what
# they hold on a 2-core machine (4 cpu: one two-pod job at the default 2 cpu per pod fills it). A
# ResourceFlavor per group; Kueue adds its node labels to the admitted pods' nodeSelector. Within a
# ClusterQueue a workload of a higher WorkloadPriorityClass (low, high) preempts a lower one.
# The kwok nodes' LocalQueue is in namespace default, the real nodes' in simsiam-e2e.
queues_up() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: kwok}
spec:
  nodeLabels: {type: kwok}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: real-nodes}
spec:
  nodeLabels: {simsiam-test/real-node: "true"}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: kwok-gpus}
spec:
  namespaceSelector: {}
  queueingStrategy: BestEffortFIFO
  preemption: {withinClusterQueue: LowerPriority, reclaimWithinCohort: Never}
  resourceGroups:
  - coveredResources: [cpu, memory, nvidia.com/gpu, rdma/hca_shared_devices_a]
    flavors:
    - name: kwok
      resources:
      - {name: cpu, nominalQuota: "1000"}
      - {name: memory, nominalQuota: 16Ti}
      - {name: nvidia.com/gpu, nominalQuota: "16"}
      - {name: rdma/hca_shared_devices_a, nominalQuota: "8"}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: real-nodes}
spec:
  namespaceSelector: {}
  queueingStrategy: BestEffortFIFO
  preemption: {withinClusterQueue: LowerPriority, reclaimWithinCohort: Never}
  resourceGroups:
  - coveredResources: [cpu, memory]
    flavors:
    - name: real-nodes
      resources:
      - {name: cpu, nominalQuota: "4"}
      - {name: memory, nominalQuota: 32Gi}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata: {name: low}
value: 100
description: preempted by high within its ClusterQueue
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata: {name: high}
value: 1000
description: preempts low within its ClusterQueue
YAML
  local_queue default kwok-gpus
}

# local_queue NAMESPACE CLUSTERQUEUE: the LocalQueue `simsiam` of NAMESPACE.
local_queue() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {name: simsiam, namespace: $1}
spec: {clusterQueue: $2}
YAML
}

# ---- real nodes ------------------------------------------------------------------------------------

# Prints why this machine cannot run the real nodes (and succeeds), or fails when it can.
real_nodes_unavailable() {
  [[ "$(id -u)" == 0 ]] || { echo "they need root (network namespaces, containers)"; return 0; }
  local tool
  for tool in ip nsenter containerd runc ctr buildah gcc; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed"; return 0; }
  done
  [[ -x /usr/lib/cni/bridge ]] || { echo "the CNI plugins (containernetworking-plugins) are not installed"; return 0; }
  return 1
}

node_dir() { echo "$run/nodes/$1"; }

setup_network() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$host_ip/24" dev "$bridge"
  fi
  ip link set "$bridge" up
  local n m ns veth
  for n in "${real_nodes[@]}"; do
    ns="$(netns_of "$n")"
    veth="simk8s-$n"
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip link add "$veth" type veth peer name eth0 netns "$ns"
      ip link set "$veth" master "$bridge" up
      ip -n "$ns" addr add "$(node_ip "$n")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
      ip -n "$ns" route add default via "$host_ip"
      # Pods on the other node: through that node, across the bridge.
      for m in "${real_nodes[@]}"; do
        [[ "$m" == "$n" ]] || ip -n "$ns" route add "$(pod_subnet "$m")" via "$(node_ip "$m")"
      done
      nsenter --net="/run/netns/$ns" sysctl -qw net.ipv4.ip_forward=1
    fi
    # CoreDNS (on this machine) answers pods through their node.
    ip route replace "$(pod_subnet "$n")" via "$(node_ip "$n")" dev "$bridge"
  done
}

# Cluster DNS for the real nodes' pods: CoreDNS on the bridge address, reading the API server.
start_coredns() {
  mkdir -p "$run/coredns"
  cat >"$run/coredns/Corefile" <<EOF
.:53 {
    bind $host_ip
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig simsiam-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 5
}
EOF
  start coredns "$coredns" -conf "$run/coredns/Corefile"
  wait_for "CoreDNS on $host_ip:53" 30 grep -q "CoreDNS-" "$run/coredns.log"
}

write_node_config() {
  local n="$1" d
  d="$(node_dir "$n")"
  mkdir -p "$d"/{cni/net.d,cni/ipam,kubelet,pod-logs,containerd}
  cat >"$d/cni/net.d/10-simsiam.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "simsiam",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
    "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam",
             "ranges": [[{"subnet": "$(pod_subnet "$n")"}]], "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
  # Everything containerd keeps is per node (its default paths would be shared by both).
  # restrict_oom_score_adj: the machine may deny lowering oom_score_adj (no CAP_SYS_RESOURCE).
  # netns_mounts_under_state_dir: pods' network namespaces stay inside the node's state too.
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:simsiam"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF
  # A kubelet per node: its own root, pod log directory, cgroup root and runtime socket; the node's
  # ports are its own through the network namespace. cgroup v1 (this machine's controllers) needs
  # failCgroupV1: false; containerd 1.6 does not report a cgroup driver, so it is set here.
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$n")
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $run/pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$d/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /simsiam-$n
failCgroupV1: false
failSwapOn: false
clusterDNS: [$host_ip]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: $d/pod-logs
# The test image is loaded, never pulled: image garbage collection must not remove it.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
registerWithTaints:
- {key: simsiam-test/real-node, value: "true", effect: NoSchedule}
EOF
  cat >"$d/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: simsiam-test
  cluster:
    server: https://$host_ip:$apiserver_port
    certificate-authority: $run/pki/ca.crt
users:
- name: $n
  user:
    client-certificate: $run/pki/admin.crt
    client-key: $run/pki/admin.key
contexts:
- name: simsiam-test
  context: {cluster: simsiam-test, user: $n}
current-context: simsiam-test
YAML
}

# The kubelet's cgroup root must exist in every hierarchy (cpuset ones need their CPUs and memory
# nodes set before a child can be made).
make_cgroup_root() {
  local name="$1" h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h" && ! -L "${h%/}" ]] || continue
    mkdir -p "$h$name"
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" >"$h$name/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$name/cpuset.mems"
    fi
  done
}

node_ctr() { local n="$1"; shift; ctr --address "$(node_dir "$n")/containerd.sock" -n k8s.io "$@"; }

start_node() {
  local n="$1" d ns
  d="$(node_dir "$n")"
  ns="/run/netns/$(netns_of "$n")"
  write_node_config "$n"
  make_cgroup_root "simsiam-$n"
  # nsenter --net, not `ip netns exec`: the kubelet and containerd must share this machine's mounts
  # (volumes the kubelet mounts are what the containers get).
  start "containerd-$n" nsenter --net="$ns" containerd --config "$d/containerd.toml"
  wait_for "containerd on $n" 30 node_ctr "$n" version
  node_ctr "$n" images import "$pause_archive" >/dev/null
  start "kubelet-$n" nsenter --net="$ns" "$bin/kubelet" --config "$d/kubelet.yaml" \
    --kubeconfig "$d/kubeconfig" --root-dir "$d/kubelet" --hostname-override "$n" \
    --node-ip "$(node_ip "$n")" --node-labels simsiam-test/real-node=true
}

# Namespace simsiam-e2e: our pods must pass the "restricted" Pod Security level there, and land on
# the real nodes. Its claims `data` and `output` bind to hostPath volumes that both nodes see (as a
# cluster's shared filesystem): `data` holds a small Fashion-MNIST ImageFolder, `output` starts
# empty. `output-rwo` starts empty too, but is a node's own disk: a ReadWriteOnce local volume on
# worker-1 only, so a pod that mounts it runs there. Kueue's LocalQueue `simsiam` of the namespace
# feeds ClusterQueue real-nodes.
e2e_namespace_up() {
  local volumes="$run/volumes" python="${SIMSIAM_PYTHON:-$repo/.venv/bin/python}"
  if [[ ! -d "$volumes/data/train" ]]; then
    rm -rf "$volumes/data"
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m trainer.data.fashion_mnist \
      "$volumes/data" --train 64 --val 16 >/dev/null
  fi
  # The pods run as uid 1000; the output volume is theirs.
  install -d -o 1000 -g 1000 -m 0755 "$volumes/output" "$volumes/output-rwo"
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $e2e_namespace
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
  annotations:
    scheduler.alpha.kubernetes.io/node-selector: simsiam-test/real-node=true
    scheduler.alpha.kubernetes.io/defaultTolerations: '[{"key": "simsiam-test/real-node", "operator": "Exists", "effect": "NoSchedule"}]'
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $e2e_namespace-data
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $e2e_namespace, name: data}
  hostPath: {path: $volumes/data, type: Directory}
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $e2e_namespace-output
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $e2e_namespace, name: output}
  hostPath: {path: $volumes/output, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: $e2e_namespace}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: $e2e_namespace-data
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: output, namespace: $e2e_namespace}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: $e2e_namespace-output
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $e2e_namespace-output-rwo
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $e2e_namespace, name: output-rwo}
  local: {path: $volumes/output-rwo}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [${real_nodes[0]}]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: output-rwo, namespace: $e2e_namespace}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: $e2e_namespace-output-rwo
  resources: {requests: {storage: 1Gi}}
YAML
  local_queue "$e2e_namespace" real-nodes
  wait_for "claims data, output and output-rwo bound" 60 bash -c \
    "[[ \$('$bin/kubectl' --kubeconfig '$kubeconfig' -n $e2e_namespace get pvc --no-headers | grep -cw Bound) == 3 ]]"
  wait_for "the default service account of $e2e_namespace" 60 kubectl -n "$e2e_namespace" get serviceaccount default
}

real_nodes_up() {
  local n start=$SECONDS
  pause_archive="$("$here/image.sh" pause)"
  setup_network
  start_coredns
  for n in "${real_nodes[@]}"; do start_node "$n"; done
  for n in "${real_nodes[@]}"; do
    wait_for "node $n Ready" 120 bash -c \
      "'$bin/kubectl' --kubeconfig '$kubeconfig' get node $n --no-headers | grep -qw Ready"
  done
  e2e_namespace_up
  log "real nodes ${real_nodes[*]} Ready in $((SECONDS - start))s"
}

# k8s.sh image: the trainer image, built (or taken from the cache) and loaded into every real node.
cmd_image() {
  local archive n start=$SECONDS
  archive="$("$here/image.sh" build)"
  for n in "${real_nodes[@]}"; do
    [[ -S "$(node_dir "$n")/containerd.sock" ]] || die "node $n is not up: run $0 up first"
    node_ctr "$n" images import "$archive" >/dev/null
  done
  log "image loaded into ${real_nodes[*]} in $((SECONDS - start))s"
}

# Stop the real nodes: pods first (so containerd removes their network namespaces and mounts), then
# the daemons, then what is left of the nodes' state.
real_nodes_down() {
  local n pid m
  if running kube-apiserver && kubectl get nodes -l simsiam-test/real-node=true --no-headers 2>/dev/null | grep -q .; then
    kubectl delete namespace "$e2e_namespace" --wait=false >/dev/null 2>&1 || true
    for n in "${real_nodes[@]}"; do
      kubectl delete pods -A --field-selector "spec.nodeName=$n" --grace-period=1 --wait=false >/dev/null 2>&1 || true
    done
    local deadline=$((SECONDS + 60))
    for n in "${real_nodes[@]}"; do
      while running "kubelet-$n" && node_ctr "$n" containers ls -q 2>/dev/null | grep -q . && ((SECONDS < deadline)); do
        sleep 1
      done
    done
  fi
  for n in "${real_nodes[@]}"; do stop "kubelet-$n"; stop "containerd-$n"; done
  stop coredns
  for n in "${real_nodes[@]}"; do
    # Whatever the pods left (containers, shims) runs in the node's cgroups or namespace.
    for pid in $(find /sys/fs/cgroup/pids/"simsiam-$n" -name cgroup.procs -exec cat {} + 2>/dev/null) \
               $(ip netns pids "$(netns_of "$n")" 2>/dev/null); do
      kill -9 "$pid" 2>/dev/null || true
    done
    if [[ -d "$(node_dir "$n")" ]]; then
      awk -v d="$(node_dir "$n")/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r \
        | while read -r m; do umount -l "$m" || true; done
      rm -rf "$(node_dir "$n")"
    fi
    ip netns del "$(netns_of "$n")" 2>/dev/null || true
    ip link del "simk8s-$n" 2>/dev/null || true
    ip route del "$(pod_subnet "$n")" 2>/dev/null || true
    find /sys/fs/cgroup/*/"simsiam-$n" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$run/volumes/output" "$run/volumes/output-rwo"
}

stop() {
  local name="$1"
  if running "$name"; then
    kill -- "-$(cat "$run/$name.pid")" 2>/dev/null || kill "$(cat "$run/$name.pid")" 2>/dev/null || true
    for _ in $(seq 100); do running "$name" || break; sleep 0.1; done
    if running "$name"; then kill -9 -- "-$(cat "$run/$name.pid")" 2>/dev/null || true; fi
  fi
  rm -f "$run/$name.pid"
}

cmd_down() {
  local name
  # The controllers first: nothing recreates what the nodes' shutdown removes.
  stop kueue
  stop jobset
  if cmp -s "$kueue_metrics_certs/tls.crt" "$run/pki/controllers/tls.crt"; then
    rm -f "$kueue_metrics_certs/tls.crt" "$kueue_metrics_certs/tls.key"
    rmdir -p "$kueue_metrics_certs" 2>/dev/null || true
  fi
  real_nodes_down
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$name"; done
  # A fresh etcd each time: tests start from an empty cluster.
  rm -rf "$run/etcd"
  log "down"
}

case "${1:-}" in
  build) cmd_build ;;
  built) built ;;
  up) cmd_up ;;
  image) cmd_image ;;
  env) echo "export KUBECONFIG=$kubeconfig"; echo "export PATH=$bin:$PATH" ;;
  down) cmd_down ;;
  *) echo "usage: $0 build|built|up|image|env|down" >&2; exit 2 ;;
esac
