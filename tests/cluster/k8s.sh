#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the k8s tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake nodes and pod lifecycles; no container runs).
#
#   k8s.sh build   build the binaries from Go modules at the versions pinned in k8s/go.mod (cached)
#   k8s.sh up      start everything (idempotent) and write a kubeconfig
#   k8s.sh env     print `export KUBECONFIG=...`
#   k8s.sh down    stop everything
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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

log() { printf 'k8s.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

components=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

built() {
  local b
  for b in "${components[@]}" kwok; do [[ -x "$bin/$b" ]] || return 1; done
  [[ -f "$logs_crd" && -x "$bin/etcd" ]]
}

cmd_build() {
  if built; then log "binaries for $k8s_version already in $bin"; return; fi
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
  [[ -f "$d/admin.crt" ]] && return
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=simsiam-test-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # Serving certificate for the API server and kwok's kubelet-like endpoint (both on loopback).
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/serving.key" -out "$d/serving.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
    >"$d/serving.ext"
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

  # No kubelet reaches this API server, so the endpoint reconciler (which would publish the
  # loopback address as the "kubernetes" Service) is off.
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$apiserver_port" \
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
  wait_for "5 Ready fake nodes" 90 bash -c \
    "[[ \$('$bin/kubectl' --kubeconfig '$kubeconfig' get nodes --no-headers | grep -cw Ready) == 5 ]]"
  # Pods need a service account in the namespace before the admission plugin lets them in.
  wait_for "the default service account" 60 kubectl -n default get serviceaccount default
  log "up: KUBECONFIG=$kubeconfig ($(kubectl get nodes --no-headers | wc -l) nodes)"
}

cmd_down() {
  local name
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if running "$name"; then
      kill -- "-$(cat "$run/$name.pid")" 2>/dev/null || kill "$(cat "$run/$name.pid")" 2>/dev/null || true
      for _ in $(seq 50); do running "$name" || break; sleep 0.1; done
    fi
    rm -f "$run/$name.pid"
  done
  # A fresh etcd each time: tests start from an empty cluster.
  rm -rf "$run/etcd"
  log "down"
}

case "${1:-}" in
  build) cmd_build ;;
  built) built ;;
  up) cmd_up ;;
  env) echo "export KUBECONFIG=$kubeconfig"; echo "export PATH=$bin:$PATH" ;;
  down) cmd_down ;;
  *) echo "usage: $0 build|built|up|env|down" >&2; exit 2 ;;
esac
