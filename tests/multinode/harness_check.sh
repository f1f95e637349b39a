#!/usr/bin/env bash
# The namespace cluster itself (netns_cluster.sh): every host has its name and address and
# resolves the others, the links carry the rate they were given (a transfer takes at least its
# bytes / rate), the missing delay is said aloud, two clusters made at the same time do not
# collide, and `down` leaves no namespace, /etc/netns entry or state directory behind.
# Exit 77 (skipped, with the reason) where such a cluster cannot be built.
set -euo pipefail
cluster="$(cd "$(dirname "$0")" && pwd)/netns_cluster.sh"
"$cluster" check

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

RATE_BITS=20000000 BYTES=2500000
log=$(mktemp)
ids=()
cleanup() {
  for i in "${ids[@]}"; do "$cluster" down "$i"; done
  rm -f "$log"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

a=$("$cluster" up 2 --rate 20mbit --delay 20us 2> "$log")
ids+=("$a")
b=$("$cluster" up 3 --rate 1gbit --delay 0)
ids+=("$b")
cat "$log"
[ "$a" != "$b" ] || fail "two clusters got the same id"

for k in 0 1; do
  name=$("$cluster" exec "$a" "h$k" hostname)
  [ "$name" = "h$k" ] || fail "host h$k calls itself '$name'"
  addr=$("$cluster" exec "$a" "h$k" ip -4 -o addr show dev eth0 | awk '{print $4}')
  [ "$addr" = "10.77.0.$((k + 1))/24" ] || fail "h$k has address '$addr'"
done
seen=$("$cluster" exec "$a" h0 getent hosts h1 | awk '{print $1}')
[ "$seen" = 10.77.0.2 ] || fail "h0 resolves h1 to '$seen'"
[ "$("$cluster" exec "$b" h2 hostname)" = h2 ] || fail "the second cluster's h2 is not h2"

# Both ends of every link are shaped, with netem (rate and delay) or tbf (rate, delay announced).
qdisc=$("$cluster" exec "$a" h1 tc qdisc show dev eth0)
echo "h1 eth0: $qdisc"
case "$qdisc" in
  *netem*delay*) ;;
  *tbf*rate\ 20Mbit*) grep -q "WARNING: link delay 20us NOT applied" "$log" || fail "delay missing without a warning" ;;
  *) fail "h1's link is not shaped: $qdisc" ;;
esac
sw_qdisc=$(ip netns exec "$(basename "$a")-sw" tc qdisc show dev h1)
case "$sw_qdisc" in *tbf*|*netem*) ;; *) fail "the switch's port to h1 is not shaped: $sw_qdisc" ;; esac

# A transfer from h0 to h1 at 20 Mbit/s cannot be faster than its bytes / rate.
"$cluster" exec "$a" h1 node -e '
  require("net").createServer((s) => {
    let n = 0;
    s.on("data", (d) => { n += d.length; });
    s.on("end", () => s.end(String(n)));
  }).listen(9000, "10.77.0.2");' &
server=$!
before=$("$cluster" bytes "$a" h1)
result=$("$cluster" exec "$a" h0 node -e '
  const net = require("net");
  const bytes = Number(process.argv[1]);
  const deadline = Date.now() + 10000;
  (function attempt() {
    const t0 = process.hrtime.bigint();
    const s = net.connect(9000, "h1", () => s.end(Buffer.alloc(bytes, 7)));
    let reply = "";
    s.on("data", (d) => { reply += d; });
    s.on("end", () => console.log(reply, Number(process.hrtime.bigint() - t0) / 1e9));
    s.on("error", (e) => {
      if (Date.now() > deadline) throw e;
      setTimeout(attempt, 100);
    });
  })();' "$BYTES")
crossed=$(( $("$cluster" bytes "$a" h1) - before ))
kill "$server"
wait "$server" 2>/dev/null || true
read -r got seconds <<< "$result"
least=$(awk -v b="$BYTES" -v r="$RATE_BITS" 'BEGIN { printf "%.3f", 0.9 * b * 8 / r }')
echo "h0 -> h1: $got bytes in $seconds s (at least $least s at 20 Mbit/s); h1's link carried $crossed bytes"
[ "$got" = "$BYTES" ] || fail "h1 received $got of $BYTES bytes"
[ "$crossed" -ge "$BYTES" ] || fail "h1's link counted $crossed bytes, fewer than were sent"
awk -v s="$seconds" -v l="$least" 'BEGIN { exit !(s >= l) }' || fail "the transfer beat the link's rate"

# down removes everything it made.
for i in "${ids[@]}"; do
  "$cluster" down "$i"
  n=$(basename "$i")
  ! ip netns list | grep -q "^$n-" || fail "namespaces of $n left behind"
  ! ls -d /etc/netns/"$n"-* >/dev/null 2>&1 || fail "/etc/netns entries of $n left behind"
  [ ! -e "$i" ] || fail "state directory $i left behind"
done
ids=()
echo "PASSED"
