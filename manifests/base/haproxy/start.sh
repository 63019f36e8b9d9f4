#!/bin/sh
# Starts HAProxy with a peers section for HAPROXY_REPLICAS replicas, so the stick table is shared by
# however many replicas run (not a hard-wired pair).
#
# HAProxy resolves peer addresses once, at start, and refuses to start when one does not resolve. With
# publishNotReadyAddresses on the peers Service a pod's DNS name exists as soon as the pod has an IP,
# so this waits (HAPROXY_PEER_WAIT_SECONDS, default 300) until every peer's name resolves.
#   HAPROXY_REPLICAS      number of replicas (the StatefulSet's spec.replicas)
#   HAPROXY_PEER_ADDRESS  address of a peer: {name} is its pod name, {ordinal} its ordinal
#   HAPROXY_LOCAL_PEER    this replica's name (default: the pod's hostname)
#   HAPROXY_RUNTIME_DIR   where the peers section and the admin socket go (default /tmp)
#   HAPROXY_SYNC_SECONDS  how long a new replica is not ready, learning the rooms from its peers (default 5)
#   HAPROXY_DRAINING_SHARDS  shards being retired, e.g. "shard-0" (space- or comma-separated; default
#                         none): each gets weight 0 (haproxy.cfg), so no new room goes there while its
#                         rooms stay
set -eu

fail() {
  echo "start.sh: $*" >&2
  exit 2
}

config_dir=$(dirname "$0")
replicas=${HAPROXY_REPLICAS:-}
case "$replicas" in
  '' | *[!0-9]*) fail "HAPROXY_REPLICAS must be the number of replicas, got '$replicas'" ;;
esac
[ "$replicas" -ge 1 ] || fail "HAPROXY_REPLICAS must be at least 1"
address_template=${HAPROXY_PEER_ADDRESS:-}
[ -n "$address_template" ] || fail "HAPROXY_PEER_ADDRESS must be set, e.g. {name}.haproxy-peers.jitsi.svc.cluster.local:1024"
local_peer=${HAPROXY_LOCAL_PEER:-${HOSTNAME:-$(hostname)}}
prefix=${local_peer%-*}
[ "$prefix" != "$local_peer" ] || fail "this replica's name '$local_peer' has no ordinal"
runtime_dir=${HAPROXY_RUNTIME_DIR:-/tmp}
wait_seconds=${HAPROXY_PEER_WAIT_SECONDS:-300}

# A draining shard must be one of haproxy.cfg's servers: a typo would otherwise drain nothing, silently.
for shard in $(printf '%s\n' "${HAPROXY_DRAINING_SHARDS:-}" | tr ',' ' '); do
  case "$shard" in
    shard-[0-9] | shard-[0-9][0-9]) ;;
    *) fail "HAPROXY_DRAINING_SHARDS: '$shard' is not a shard name (shard-0 ... shard-19)" ;;
  esac
  grep -q "^  server $shard " "$config_dir/haproxy.cfg" ||
    fail "HAPROXY_DRAINING_SHARDS: haproxy.cfg has no server $shard"
  export "HAPROXY_WEIGHT_SHARD_${shard#shard-}=0"
  echo "start.sh: $shard is draining: no new room goes there" >&2
done
export HAPROXY_RUNTIME_DIR="$runtime_dir"

peers_file="$runtime_dir/peers.cfg"
echo "peers jitsi" >"$peers_file.new"
ordinal=0
while [ "$ordinal" -lt "$replicas" ]; do
  name="$prefix-$ordinal"
  address=$(printf '%s\n' "$address_template" | sed "s/{name}/$name/g; s/{ordinal}/$ordinal/g")
  host=${address%:*}
  case "$host" in
    *:*) needs_lookup=false ;;      # an IPv6 address
    *[!0-9.]*) needs_lookup=true ;; # a name
    *) needs_lookup=false ;;        # an IPv4 address
  esac
  waited=0
  while $needs_lookup && ! getent hosts "$host" >/dev/null; do
    [ "$waited" -lt "$wait_seconds" ] || fail "peer $name ($host) did not resolve within ${wait_seconds}s"
    [ "$waited" -gt 0 ] || echo "start.sh: waiting for peer $name ($host) to resolve" >&2
    sleep 1
    waited=$((waited + 1))
  done
  echo "  peer $name $address" >>"$peers_file.new"
  ordinal=$((ordinal + 1))
done
mv "$peers_file.new" "$peers_file"

sync_seconds=${HAPROXY_SYNC_SECONDS:-5}
case "$sync_seconds" in
  '' | *[!0-9]*) fail "HAPROXY_SYNC_SECONDS must be a number of seconds, got '$sync_seconds'" ;;
esac
HAPROXY_READY_AFTER=$(($(date +%s) + sync_seconds))
export HAPROXY_READY_AFTER

exec haproxy -W -db -L "$local_peer" -f "$config_dir/haproxy.cfg" -f "$peers_file"
