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
# Non-default ports, so a developer's own cluster (6443, 2379, 10257, 10259) is left alone.
etcd_port=23790
etcd_peer_port=23800
apiserver_port=16443
kcm_port=20257
scheduler_port=20259
kwok_port=20247

log() { printf 'k8s.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

components=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

built() {
  local b
  for b in "${components[@]}" kwok; do [[ -x "$bin/$b" ]] || return 1; done
  [[ -x "$(etcd_binary)" ]]
}

# Debian's etcd-server (3.4) is accepted by this API server; a different etcd can be named with ETCD.
etcd_binary() { command -v "${ETCD:-etcd}" || true; }

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
  if [[ ! -x "$bin/kwok" ]]; then
    log "building kwok $kwok_version"
    GOBIN="$bin" go install "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
  fi
  [[ -x "$(etcd_binary)" ]] || die "etcd not found: apt-get install etcd-server (or set ETCD=/path/to/etcd)"
  log "built in $((SECONDS - start))s into $bin"
}

case "${1:-}" in
  build) cmd_build ;;
  *) echo "usage: $0 build|up|env|down" >&2; exit 2 ;;
esac
