#!/usr/bin/env bash
# The multi-node tests: a two-host namespace cluster (netns_cluster.sh) is made for the test and
# removed after it, whatever happens. Exit 77 (skipped, with the reason) where such a cluster
# cannot be built.
#
#   run_test.sh tp MIN_LINK_BYTES TEST_TP_MODEL ARGS...
#       tensor parallelism with one rank per host (test_tp_model: tp = 2 equals tp = 1)
#   run_test.sh serve MIN_LINK_BYTES NODE SCRIPT
#       `sinkserve serve` with one rank per host, driven by SCRIPT from h0
#
# Both check that the ranks landed on different hosts and that at least MIN_LINK_BYTES crossed
# h1's link while the test ran: the ranks did talk over the shaped network, not shared memory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cluster="$here/netns_cluster.sh"
"$cluster" check

mode=$1 min_bytes=$2
shift 2
id=$("$cluster" up 2 --rate "${SINKSERVE_MULTINODE_RATE:-10gbit}" --delay "${SINKSERVE_MULTINODE_DELAY:-20us}")
trap '"$cluster" down "$id"' EXIT
trap 'exit 1' INT TERM

placed=$("$cluster" mpirun "$id" --map-by node -np 2 hostname | sort | tr '\n' ' ')
if [ "$placed" != "h0 h1 " ]; then
  echo "FAIL: one rank per host expected on h0 and h1, the ranks ran on: $placed" >&2
  exit 1
fi
echo "ranks placed on: $placed"

before=$("$cluster" bytes "$id" h1)
case "$mode" in
  tp)
    # TCP between the hosts only: a transport that found a shortcut would not cross the link.
    "$cluster" mpirun "$id" --map-by node -np 2 --mca btl tcp,self "$@" ;;
  serve)
    launch="[\"$cluster\",\"mpirun\",\"$id\",\"--map-by\",\"node\",\"-np\",\"2\",\"--mca\",\"btl\",\"tcp,self\"]"
    "$cluster" exec "$id" h0 env SINKSERVE_MULTINODE_LAUNCH="$launch" "$@" ;;
  *)
    echo "run_test.sh: unknown mode '$mode'" >&2
    exit 2 ;;
esac
crossed=$(( $("$cluster" bytes "$id" h1) - before ))
echo "h1's link carried $crossed bytes (at least $min_bytes expected)"
if [ "$crossed" -lt "$min_bytes" ]; then
  echo "FAIL: too little traffic crossed the link between the hosts" >&2
  exit 1
fi
