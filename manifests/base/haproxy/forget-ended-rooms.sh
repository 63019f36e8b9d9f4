#!/bin/sh
# Forgets, on this HAProxy replica, the rooms of a draining shard that have ended, so that a room name
# used again (a weekly class, a standing meeting) goes to a shard that takes new rooms instead of
# opening on the draining one and keeping it alive. Rooms still live there are kept: they stay where
# they are until they end. Run on every replica (a forgotten entry is not passed on to peers), with the
# shard's room census on stdin (docs/deploying.md, "Retiring a shard"):
#
#   kubectl -n jitsi exec deploy/shard-0-prosody -c prosody -- curl -fsS http://127.0.0.1:5280/room-census \
#     | kubectl -n jitsi exec -i haproxy-0 -- sh /usr/local/etc/haproxy/forget-ended-rooms.sh shard-0
#
# An entry touched in the last FORGET_RECENT_SECONDS (default 120) is kept whatever the census says: its
# room may have opened after the census was read. Prints one line: the shard's rooms and participants,
# and what happened to its entries. Exits 2 with one sentence on bad input, changing nothing.
set -eu

fail() {
  echo "forget-ended-rooms.sh: $*" >&2
  exit 2
}

shard=${1:-}
case "$shard" in
  shard-[0-9] | shard-[0-9][0-9]) ;;
  *) fail "usage: forget-ended-rooms.sh SHARD < census, SHARD being shard-0 ... shard-19 (got '$shard')" ;;
esac
config_dir=$(dirname "$0")
socket=${HAPROXY_RUNTIME_DIR:-/tmp}/admin.sock
[ -S "$socket" ] || fail "no HAProxy admin socket at $socket (is HAProxy running here?)"
recent_seconds=${FORGET_RECENT_SECONDS:-120}
case "$recent_seconds" in
  '' | *[!0-9]*) fail "FORGET_RECENT_SECONDS must be a number of seconds, got '$recent_seconds'" ;;
esac

# The table's expire, as haproxy.cfg sets it: an entry's remaining time within recent_seconds of it means
# a request of that room came in the last recent_seconds (every request of a room renews its entry).
expire=$(sed -n 's/^ *stick-table .* expire \([0-9][0-9]*[smhd]\)\( .*\)*$/\1/p' "$config_dir/haproxy.cfg")
case "$expire" in
  *d) unit_ms=86400000 ;;
  *h) unit_ms=3600000 ;;
  *m) unit_ms=60000 ;;
  *s) unit_ms=1000 ;;
  *) fail "$config_dir/haproxy.cfg has no stick-table with an expire" ;;
esac
expire_ms=$((${expire%?} * unit_ms))

census=$(cat)
case "$census" in
  *'"room_census"'*) ;;
  *) fail "stdin is not a room census (Prosody's /room-census JSON): nothing forgotten" ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Room JIDs → the room names HAProxy keys on (the `room` URL parameter: the JID's local part).
printf '%s' "$census" | grep -o '"room_name" *: *"[^"]*"' |
  sed 's/^.*: *"//; s/@.*$//' | tr 'A-Z' 'a-z' | sort -u >"$work/live"
rooms=$(grep -c . "$work/live" || true)
participants=$(printf '%s' "$census" | grep -o '"participants" *: *[0-9]*' |
  sed 's/^.*: *//' | awk '{ sum += $1 } END { print sum + 0 }')

runtime() {
  printf '%s\n' "$1" | socat -t 5 - "UNIX-CONNECT:$socket"
}

runtime "show table shards" >"$work/table"
grep -q '^# table: shards' "$work/table" || fail "HAProxy did not list the table shards: $(head -c 200 "$work/table")"
# key, then whether it was touched recently, of every entry of this shard.
awk -v shard="$shard" -v expire="$expire_ms" -v recent="$((recent_seconds * 1000))" '
  $NF == "server_key=" shard {
    key = ""; left = 0
    for (i = 1; i <= NF; i++) {
      if ($i ~ /^key=/) key = substr($i, 5)
      if ($i ~ /^exp=/) left = substr($i, 5) + 0
    }
    print key, (expire - left < recent ? "recent" : "idle")
  }' "$work/table" >"$work/entries"

entries=0 kept_live=0 kept_recent=0 kept_odd=0 forgotten=0 in_use=
: >"$work/forget"
while read -r key touched; do
  entries=$((entries + 1))
  lower=$(printf '%s' "$key" | tr 'A-Z' 'a-z')
  if grep -qxF -- "$lower" "$work/live"; then
    kept_live=$((kept_live + 1))
  elif [ "$touched" = recent ]; then
    kept_recent=$((kept_recent + 1))
  else
    case "$key" in
      # Only names the runtime API takes as one word; anything else expires on its own.
      '' | *[!A-Za-z0-9._~%+-]*) kept_odd=$((kept_odd + 1)) ;;
      *)
        echo "clear table shards key $key" >>"$work/forget"
        forgotten=$((forgotten + 1))
        ;;
    esac
  fi
done <"$work/entries"
# Twenty commands per connection: the runtime API reads one line per connection here.
if [ "$forgotten" -gt 0 ]; then
  awk '{ line = (NR % 20 == 1) ? $0 : line "; " $0 } NR % 20 == 0 { print line } END { if (NR % 20) print line }' \
    "$work/forget" | while read -r batch; do
    runtime "$batch" >/dev/null
  done
  # HAProxy refuses to remove an entry a connection still uses ("clear table" in its management guide):
  # those are counted, and a later run takes them.
  runtime "show table shards" | awk -v shard="$shard" '$NF == "server_key=" shard {
      for (i = 1; i <= NF; i++) if ($i ~ /^key=/) print "clear table shards key " substr($i, 5)
    }' >"$work/left"
  in_use=$(grep -cxF -f "$work/forget" "$work/left" || true)
  forgotten=$((forgotten - in_use))
  [ "$in_use" -gt 0 ] || in_use=
fi
echo "$shard: $rooms rooms and $participants participants live; ${HOSTNAME:-haproxy}'s table had $entries of its rooms: $forgotten ended and forgotten, $kept_live live, $kept_recent touched in the last ${recent_seconds}s, $kept_odd with names left to expire${in_use:+, $in_use still in use (run again)}"
