#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, for the tests (needs root and `ip netns`).
#
#   tests/cluster/slurm.sh up     install slurm-wlm/munge if missing, start munged, slurmctld and
#                                 two slurmd nodes (node1, node2); idempotent
#   tests/cluster/slurm.sh down   stop everything `up` started and remove its namespaces
#   tests/cluster/slurm.sh env    print `export SLURM_CONF=...` for the Slurm commands
#
# Each node is a network namespace with its own address on a private bridge, its own host name
# (a UTS namespace) and its own /etc/hosts (a mount namespace), so what runs in a job
# sees a normal cluster node; the filesystem is this machine's, as on a cluster's shared filesystem.
# Only addresses on the bridge this script creates are used.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${SIMSIAM_SLURM_STATE:-/var/lib/simsiam-slurm}"
CONF="$STATE/etc/slurm.conf"
BRIDGE=simslurm0
SUBNET_PREFIX="${SIMSIAM_SLURM_SUBNET:-10.213.7}"   # a /24 on the private bridge only
CTL_ADDR="$SUBNET_PREFIX.1"
NODES=(node1 node2)
node_addr() { echo "$SUBNET_PREFIX.$((10 + ${1#node}))"; }
netns_of() { echo "simslurm-$1"; }

log() { echo "slurm.sh: $*" >&2; }
die() { log "$*"; exit 1; }

ensure_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_ok && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  runuser -u munge -- munged
  touch "$STATE/run/munged.ours"
  for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
  die "munged did not start"
}

write_config() {
  install -d "$STATE"/{etc,ctld,run,log,spool}
  sed -e "s|@STATE@|$STATE|g" -e "s|@CTL_ADDR@|$CTL_ADDR|g" \
      -e "s|@NODE1_ADDR@|$(node_addr node1)|g" -e "s|@NODE2_ADDR@|$(node_addr node2)|g" \
      "$HERE/slurm/slurm.conf.in" >"$CONF.new"
  mv "$CONF.new" "$CONF"
}

hosts_file() {
  echo "127.0.0.1 localhost"
  echo "$CTL_ADDR slurmctl"
  for n in "${NODES[@]}"; do echo "$(node_addr "$n") $n"; done
}

setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  for n in "${NODES[@]}"; do
    local ns veth
    ns="$(netns_of "$n")"
    veth="simslurm-$n"
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip link add "$veth" type veth peer name eth0 netns "$ns"
      ip link set "$veth" master "$BRIDGE" up
      ip -n "$ns" addr add "$(node_addr "$n")/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
  done
  hosts_file >"$STATE/etc/hosts"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
  export SLURM_CONF="$CONF"
  if ! pid_alive "$STATE/run/slurmctld.pid"; then
    # The controller must see its own name (SlurmctldHost) as its host name.
    # shellcheck disable=SC2016  # $0 is expanded by the inner shell
    unshare --uts sh -c 'hostname slurmctl && exec slurmctld -c -f "$0"' "$CONF"
  fi
  for n in "${NODES[@]}"; do
    install -d "$STATE/spool/$n"
    if ! pid_alive "$STATE/run/slurmd-$n.pid"; then
      # Not `ip netns exec`: it remounts /sys, hiding the cgroup mounts slurmd insists on
      # probing. A private mount namespace gives the node its own /etc/hosts instead.
      # shellcheck disable=SC2016  # $0, $1, $2 are expanded by the inner shell
      nsenter --net="/run/netns/$(netns_of "$n")" unshare --uts --mount sh -c \
        'mount --bind "$2" /etc/hosts && hostname "$1" && exec slurmd -N "$1" -f "$0"' \
        "$CONF" "$n" "$STATE/etc/hosts"
    fi
  done
}

wait_idle() {
  export SLURM_CONF="$CONF"
  local states=""
  for _ in $(seq 120); do
    states="$(sinfo -h -N -o '%N %t' 2>/dev/null || true)"
    if [ "$(grep -cE ' (idle|mix|alloc)$' <<<"$states")" -eq "${#NODES[@]}" ]; then
      return 0
    fi
    # Nodes left down/drained by an earlier run come back once their slurmd registers.
    scontrol update nodename="node[1-${#NODES[@]}]" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  die "nodes did not become idle: ${states:-no answer from slurmctld} (logs: $STATE/log)"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, daemons)"
  ensure_packages
  install -d "$STATE/run"
  write_config
  start_munge
  setup_network
  start_daemons
  wait_idle
  log "up: $(SLURM_CONF="$CONF" sinfo -h -N -o '%N=%t' | tr '\n' ' ')(SLURM_CONF=$CONF)"
}

stop_pidfile() {
  local f="$1"
  if pid_alive "$f"; then
    local pid
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_down() {
  for n in "${NODES[@]}"; do
    local ns
    ns="$(netns_of "$n")"
    stop_pidfile "$STATE/run/slurmd-$n.pid"
    if ip netns list | grep -qw "$ns"; then
      # Job steps outlive slurmd; everything left in the node's namespace is ours.
      local pid
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
    ip link del "simslurm-$n" 2>/dev/null || true
  done
  stop_pidfile "$STATE/run/slurmctld.pid"
  ip link del "$BRIDGE" 2>/dev/null || true
  if [ -e "$STATE/run/munged.ours" ]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$STATE/run/munged.ours"
  fi
  log "down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 up|down|env" ;;
esac
