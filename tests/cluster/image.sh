#!/usr/bin/env bash
# Container images for the real test nodes, built without a registry (needs root, Debian's
# debootstrap, buildah and gcc). Every image is kept as an OCI archive under
# ~/.cache/simsiam-job/images/, named by a hash of what goes into it, so a warm run builds nothing.
#
#   image.sh base    Debian bookworm (debootstrap from the Debian mirror apt uses) with Python 3.11
#                    and pip in a venv first on PATH: what python:3.11-slim-bookworm gives a user
#   image.sh build   docker/Dockerfile.cpu, unchanged, built FROM that base; tagged TAG (default
#                    localhost/simsiam:test-cpu)
#   image.sh pause   the pods' sandbox image, built from the pause.c Kubernetes ships
# Each prints the path of its archive (for `ctr images import`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/simsiam-job"
images="$cache/images"
suite=bookworm
# The Debian mirror apt uses here (deb822 or one-line sources), else Debian's own.
apt_mirror() {
  { sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources
    awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2)}' /etc/apt/sources.list; } 2>/dev/null \
    | grep -v security | head -n 1 || true
}
mirror="${SIMSIAM_DEBIAN_MIRROR:-$(apt_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"
base_packages=python3,python3-venv
base_tag="localhost/simsiam-base:$suite-py311"
tag="${TAG:-localhost/simsiam:test-cpu}"
pause_tag="localhost/pause:simsiam"

log() { printf 'image.sh: %s\n' "$*" >&2; }
tmp=""   # a temporary directory, removed on exit (of the subshell too, where $(...) runs a step)
die() { log "error: $*"; exit 1; }

# buildah keeps its own store here (not the machine's default one), on vfs: no overlay mounts.
buildah() {
  command buildah --root "$cache/buildah/storage" --runroot "$cache/buildah/run" --storage-driver vfs "$@"
}

sha() { sha256sum | cut -c1-16; }

# load ARCHIVE TAG: make TAG available to buildah from its cached archive.
load() {
  buildah inspect --type image "$2" >/dev/null 2>&1 || buildah pull -q "oci-archive:$1" >/dev/null
}

# commit_from_rootfs DIR TAG ARCHIVE: a single-layer image of DIR, exported to ARCHIVE.
commit_from_rootfs() {
  local dir="$1" image="$2" archive="$3" ctr
  ctr="$(buildah from scratch)"
  # As one tar (buildah unpacks it): owners and modes stay as they are in DIR.
  tar -C "$dir" -cf "$archive.rootfs.tar" .
  buildah add "$ctr" "$archive.rootfs.tar" / >/dev/null
  rm -f "$archive.rootfs.tar"
  shift 3
  buildah config "$@" "$ctr"
  buildah commit -q --rm "$ctr" "$image" >/dev/null
  buildah push -q "$image" "oci-archive:$archive.tmp:$image"
  mv "$archive.tmp" "$archive"
}

cmd_base() {
  local key archive start=$SECONDS
  key="$(printf '%s\n' "$suite" "$base_packages" "$(sed -n '/^cmd_base()/,/^}/p' "$0")" | sha)"
  archive="$images/base-$suite-py311-$key.tar"
  if [[ ! -f "$archive" ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed"
    mkdir -p "$images"
    tmp="$(mktemp -d "$images/rootfs.XXXXXX")"
    trap 'rm -rf "$tmp" "$tmp.log"' EXIT
    local rootfs="$tmp"
    log "debootstrap $suite from $mirror"
    debootstrap --variant=minbase --include="$base_packages" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
      || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed"; }
    # pip in a venv: Debian's own Python refuses `pip install` (PEP 668); the official python
    # images have a pip-managed Python first on PATH, and so does this one.
    chroot "$rootfs" python3 -m venv /opt/python
    chroot "$rootfs" /opt/python/bin/python -m pip --version >/dev/null
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/{doc,man,info}/*
    commit_from_rootfs "$rootfs" "$base_tag" "$archive" \
      --env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd python3
    find "$images" -name 'base-*.tar' ! -name "${archive##*/}" -delete
    log "base image $base_tag built in $((SECONDS - start))s"
  fi
  echo "$archive"
}

# Hash of everything the Dockerfile reads (the files .dockerignore lets through).
inputs_key() {
  (cd "$repo" && {
    cat docker/Dockerfile.cpu .dockerignore
    find pyproject.toml README.md simsiam_job trainer k8s slurm \( -name __pycache__ -prune \) -o \
      \( -type f -o -type l \) -print | LC_ALL=C sort | while read -r f; do
      if [[ -L "$f" ]]; then echo "$f -> $(readlink "$f")"; else sha256sum "$f"; fi
    done
  }) | sha
}

cmd_build() {
  local base_archive key archive start=$SECONDS
  base_archive="$(cmd_base)"
  key="$(printf '%s\n' "$base_archive" "$(inputs_key)" | sha)"
  archive="$images/simsiam-test-cpu-$key.tar"
  if [[ ! -f "$archive" ]]; then
    load "$base_archive" "$base_tag"
    # The build's `pip install` reaches the package index from the host network, with this
    # machine's pip settings (pip.conf, certificates) where it has them.
    local mounts=()
    [[ -f /etc/pip.conf ]] && mounts+=(--volume /etc/pip.conf:/etc/pip.conf:ro)
    [[ -d /etc/ssl/certs ]] && mounts+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
    log "building $tag from docker/Dockerfile.cpu (FROM $base_tag)"
    buildah bud -q --format docker --network host --isolation chroot "${mounts[@]}" \
      --build-arg "PYTHON_IMAGE=$base_tag" -f "$repo/docker/Dockerfile.cpu" -t "$tag" "$repo" >/dev/null
    buildah push -q "$tag" "oci-archive:$archive.tmp:$tag"
    mv "$archive.tmp" "$archive"
    # The archive is what is kept: older builds and buildah's copies are of no further use.
    find "$images" -name 'simsiam-test-cpu-*.tar' ! -name "${archive##*/}" -delete
    buildah rmi --all --force >/dev/null 2>&1 || true
    log "image $tag built in $((SECONDS - start))s ($(du -h "$archive" | cut -f1) archive)"
  fi
  echo "$archive"
}

# The sandbox ("pause") image every pod starts with: a static binary that sleeps until signalled.
# Kubernetes ships its source in the module the control plane is built from.
cmd_pause() {
  local moddir="$here/k8s" k8s_version src key archive dir
  k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$moddir/go.mod")"
  export GOMODCACHE="${GOMODCACHE:-$HOME/.cache/go-mod}"
  src="$(cd "$moddir" && go mod download -json "k8s.io/kubernetes@$k8s_version" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/build/pause/linux/pause.c"
  [[ -f "$src" ]] || die "no pause.c in k8s.io/kubernetes@$k8s_version"
  key="$(sha <"$src")"
  archive="$images/pause-$key.tar"
  if [[ ! -f "$archive" ]]; then
    mkdir -p "$images"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    dir="$tmp"
    gcc -Os -static -DVERSION="$k8s_version" -o "$dir/pause" "$src"
    commit_from_rootfs "$dir" "$pause_tag" "$archive" --entrypoint '["/pause"]' --user 65535:65535
  fi
  echo "$archive"
}

case "${1:-}" in
  base) cmd_base ;;
  build) cmd_build ;;
  pause) cmd_pause ;;
  *) echo "usage: $0 base|build|pause" >&2; exit 2 ;;
esac
