#!/usr/bin/env bash
# A cluster of "hosts" on one machine: each host is a network namespace with its own address and
# its own hostname, linked to a switch (a bridge, in a namespace of its own) by a veth pair whose
# both directions are shaped with tc. Open MPI runs across the hosts with a hostfile; its launch
# agent enters the namespace of the host it is asked for. Needs root. See docs/cluster.md.
#
#   netns_cluster.sh check                     exit 0 if clusters can be built here, else print
#                                              why not and exit 77
#   netns_cluster.sh up N [--rate R] [--delay D]
#                                              make hosts h0..hN-1 (default rate 10gbit, delay
#                                              20us); prints the cluster id (the state directory)
#   netns_cluster.sh down ID                   remove the cluster (idempotent)
#   netns_cluster.sh exec ID HOST CMD...       run CMD in HOST, with HOST as its hostname
#   netns_cluster.sh mpirun ID ARGS...         mpirun in h0 across the cluster; ARGS place the
#                                              ranks, e.g. `--map-by node -np 2 prog` (one rank
#                                              per host) or `--host h0:2 -np 2 prog`
#   netns_cluster.sh bytes ID HOST             bytes through HOST's link so far (sent + received)
#
# Ids are state directories under ${TMPDIR:-/tmp} (sinkserve-netns.XXXXXX); namespaces are named
# after them, so clusters made at the same time never share a name. Inside a cluster every name
# is the same (hosts h0.., addresses 10.77.0.(k+1)/24, interface eth0): each cluster's switch is
# its own namespace, so their subnets never meet.
set -euo pipefail

SUBNET_PREFIX=10.77.0
SUBNET=$SUBNET_PREFIX.0/24
ME="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

die() {
  echo "netns_cluster: $*" >&2
  exit 1
}

# Everything a cluster needs, tried for real on a throwaway namespace pair: a check that only
# looked for the commands would pass in containers that refuse to create the devices.
check() {
  local why=""
  if [ "$(id -u)" -ne 0 ]; then
    why="not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
  elif ! command -v ip >/dev/null || ! command -v tc >/dev/null || ! command -v unshare >/dev/null; then
    why="ip, tc or unshare missing (iproute2, util-linux)"
  else
    local probe="sinkserve-probe-$$"
    if ! ip netns add "$probe" 2>/dev/null; then
      why="'ip netns add' fails here (no network namespaces)"
    else
      if ! ip -n "$probe" link add br0 type bridge 2>/dev/null; then
        why="cannot create a bridge inside a network namespace"
      elif ! ip -n "$probe" link add a0 type veth peer name a1 2>/dev/null; then
        why="cannot create veth pairs"
      elif ! ip -n "$probe" link set a0 up 2>/dev/null ||
           ! ip netns exec "$probe" tc qdisc add dev a0 root tbf rate 1gbit burst 64kb latency 10ms 2>/dev/null; then
        why="tc cannot shape a link (no sch_tbf)"
      elif ! ip netns exec "$probe" unshare --uts true 2>/dev/null; then
        why="cannot give a namespace its own hostname (unshare --uts)"
      elif ! mkdir -p "/etc/netns/$probe" 2>/dev/null; then
        why="cannot write /etc/netns (where each host's /etc/hosts goes)"
      fi
      rm -rf "/etc/netns/$probe"
      ip netns del "$probe" 2>/dev/null || true
    fi
  fi
  if [ -n "$why" ]; then
    echo "SKIP: multi-node namespace cluster unavailable: $why"
    exit 77
  fi
}

ns_of() {  # ns_of ID HOST
  echo "$(basename "$1")-$2"
}

require_cluster() {
  [ -f "$1/hosts" ] || die "no cluster at '$1' (the id 'up' printed)"
}

# Applies the rate (and, where the kernel has sch_netem, the delay) to one end of a link.
# netem alone keeps both; without it tbf keeps the rate and the missing delay is said aloud.
shape() {  # shape NS DEV RATE DELAY
  local ns=$1 dev=$2 rate=$3 delay=$4
  if [ "$delay" != 0 ] &&
     ip netns exec "$ns" tc qdisc add dev "$dev" root netem delay "$delay" rate "$rate" limit 100000 2>/dev/null; then
    echo netem
    return
  fi
  # The bucket holds what the link sends in 100 us (at least a few frames): a larger one would let
  # a step's collectives, which follow idle compute time, pass at the machine's speed instead of
  # the link's.
  local bps
  bps=$(tc_rate_bits "$rate")
  local burst=$(( bps / 8 / 10000 ))
  [ "$burst" -ge 4096 ] || burst=4096
  ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 20ms ||
    die "tc tbf on $ns/$dev failed"
  echo tbf
}

tc_rate_bits() {  # 10gbit, 100mbit, 25gbit, 1000kbit, 5000bit -> bits per second
  local r=${1,,}
  case "$r" in
    *gbit) echo $(( ${r%gbit} * 1000000000 )) ;;
    *mbit) echo $(( ${r%mbit} * 1000000 )) ;;
    *kbit) echo $(( ${r%kbit} * 1000 )) ;;
    *bit) echo "${r%bit}" ;;
    *) die "rate '$1': give it as <integer>gbit, mbit, kbit or bit" ;;
  esac
}

up() {
  local n=$1 rate=10gbit delay=20us
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --rate) rate=$2; shift 2 ;;
      --delay) delay=$2; shift 2 ;;
      *) die "up: unknown option '$1'" ;;
    esac
  done
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up: host count must be in 1..200"
  tc_rate_bits "$rate" >/dev/null
  local id
  id=$(mktemp -d "${TMPDIR:-/tmp}/sinkserve-netns.XXXXXX")
  # A failure half way leaves nothing behind.
  trap 'down "$id" >/dev/null 2>&1 || true' ERR
  local sw
  sw=$(ns_of "$id" sw)
  ip netns add "$sw"
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  local hosts_file="$id/etc-hosts" k
  echo "127.0.0.1 localhost" > "$hosts_file"
  for ((k = 0; k < n; ++k)); do echo "$SUBNET_PREFIX.$((k + 1)) h$k"; done >> "$hosts_file"
  local how=""
  for ((k = 0; k < n; ++k)); do
    local ns
    ns=$(ns_of "$id" "h$k")
    ip netns add "$ns"
    # `ip netns exec` binds /etc/netns/NS/* over /etc: every host resolves every other by name.
    mkdir -p "/etc/netns/$ns"
    cp "$hosts_file" "/etc/netns/$ns/hosts"
    ip -n "$sw" link add "h$k" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "h$k" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$SUBNET_PREFIX.$((k + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    # Both directions: what a host sends (its eth0) and what the switch sends it (its port).
    how=$(shape "$ns" eth0 "$rate" "$delay")
    shape "$sw" "h$k" "$rate" "$delay" >/dev/null
    echo "h$k" >> "$id/hosts"
  done
  trap - ERR
  for ((k = 0; k < n; ++k)); do echo "h$k slots=64"; done > "$id/hostfile"
  # Open MPI calls its launch agent as `agent HOST COMMAND...` (what it would give ssh).
  cat > "$id/agent" <<EOF
#!/bin/sh
host=\$1
shift
exec "$ME" exec "$id" "\$host" sh -c "\$*"
EOF
  chmod +x "$id/agent"
  printf '%s\n' "$rate" > "$id/rate"
  printf '%s\n' "$delay" > "$id/delay"
  echo "netns_cluster: $n host(s) h0..h$((n - 1)) on $SUBNET, links $rate each way" >&2
  if [ "$how" = netem ]; then
    echo "netns_cluster: links delayed by $delay each way (netem)" >&2
  elif [ "$delay" != 0 ]; then
    echo "netns_cluster: WARNING: link delay $delay NOT applied: this kernel has no sch_netem;" \
         "links are rate-limited (tbf) only" >&2
    echo "none" > "$id/delay"
  fi
  echo "$id"
}

down() {
  local id=$1
  [ -d "$id" ] || return 0
  case "$(basename "$id")" in sinkserve-netns.*) ;; *) die "down: '$id' is not a cluster id" ;; esac
  local ns
  for ns in $(ip netns list | awk '{print $1}'); do
    case "$ns" in "$(basename "$id")"-*)
      # Processes left in a host (a rank that outlived its job) would keep it alive.
      local pids
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
      rm -rf "/etc/netns/$ns"
      ;;
    esac
  done
  rm -rf "$id"
}

run_in() {  # run_in ID HOST CMD...: CMD in HOST's namespace under HOST as hostname
  local id=$1 host=$2
  shift 2
  require_cluster "$id"
  grep -qx "$host" "$id/hosts" || die "no host '$host' in cluster $id (hosts: $(tr '\n' ' ' < "$id/hosts"))"
  exec ip netns exec "$(ns_of "$id" "$host")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
}

cluster_mpirun() {
  local id=$1
  shift
  require_cluster "$id"
  # Ranks on different hosts talk TCP over the links; ranks on one host, shared memory (vader,
  # without the cross-memory attach that containers forbid), unless ARGS choose the transports
  # (Open MPI takes each parameter once). Open MPI's own control traffic and the TCP transport
  # stay on the cluster's subnet. Every host shares this machine's cores, more ranks than the
  # hostfile's slots would tell Open MPI: a rank spinning in a collective would take the core
  # from the rank it waits for, so waiting ranks yield.
  local btl=(--mca btl tcp,vader,self) prev=""
  for a in "$@"; do
    if [ "$a" = btl ] && { [ "$prev" = --mca ] || [ "$prev" = -mca ]; }; then btl=(); fi
    prev=$a
  done
  run_in "$id" h0 mpirun --allow-run-as-root --oversubscribe --bind-to none \
    --hostfile "$id/hostfile" --mca plm_rsh_agent "$id/agent" \
    --mca oob_tcp_if_include "$SUBNET" --mca btl_tcp_if_include "$SUBNET" \
    "${btl[@]}" --mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1 "$@"
}

link_bytes() {
  local id=$1 host=$2
  require_cluster "$id"
  ip netns exec "$(ns_of "$id" "$host")" sh -c \
    'echo $(( $(cat /sys/class/net/eth0/statistics/rx_bytes) + $(cat /sys/class/net/eth0/statistics/tx_bytes) ))'
}

[ $# -ge 1 ] || die "usage: netns_cluster.sh check | up N [--rate R] [--delay D] | down ID | exec ID HOST CMD... | mpirun ID ARGS... | bytes ID HOST"
cmd=$1
shift
case "$cmd" in
  check) check ;;
  up) [ $# -ge 1 ] || die "up: host count missing"; up "$@" ;;
  down) [ $# -eq 1 ] || die "down ID"; down "$1" ;;
  exec) [ $# -ge 3 ] || die "exec ID HOST CMD..."; run_in "$@" ;;
  mpirun) [ $# -ge 2 ] || die "mpirun ID ARGS..."; cluster_mpirun "$@" ;;
  bytes) [ $# -eq 2 ] || die "bytes ID HOST"; link_bytes "$@" ;;
  *) die "unknown command '$cmd'" ;;
esac
