#!/usr/bin/env bash
# `make demo`: the product demo, on this machine, in about a minute.
#   1. a lab of two hosts (network namespaces h1, h2 with public addresses)
#   2. a Debian-packaged redis-server as a container on h1, ~200 MiB of data, port 16379
#      published on h1's public address
#   3. a live client holding ONE TCP connection to h1's public address
#   4. `cloudmig migrate db --to h2` (post-copy) while the client keeps going
#   5. the report, and the client's longest wait; then everything is removed
set -euo pipefail
export CLOUDMIG_STATE_DIR=${CLOUDMIG_STATE_DIR:-/var/lib/cloudmig-demo}
export CLOUDMIG_LAB_ID=${CLOUDMIG_LAB_ID:-demo}
PORT=16379
KEYS=${DEMO_KEYS:-200000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cloudmig-demo.XXXXXX)
client_pid=""

cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null || true
  echo; echo "== cleaning up"
  cloudmig lab down || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== readiness"
cloudmig doctor | tail -1
echo "== lab"
cloudmig lab down >/dev/null 2>&1 || true
cloudmig lab up --hosts 2
h1=$(cloudmig hosts --json | python3 -c 'import json,sys; print([h["public_address"] for h in json.load(sys.stdin) if h["name"]=="h1"][0])')
echo "== redis-server on h1, published on $h1:$PORT"
cloudmig run h1 db --publish "$PORT:6379" -- redis-server --port 6379 --protected-mode no \
  --save "" --appendonly no --enable-debug-command yes
redis-cli -h "$h1" -p "$PORT" DEBUG POPULATE "$KEYS" key 1000 >/dev/null
echo "   $(redis-cli -h "$h1" -p "$PORT" DBSIZE) keys in memory"
cloudmig ps

echo "== live client"
python3 "$here/live_client.py" "$h1" "$PORT" --summary "$work/client.json" &
client_pid=$!
sleep 3

echo "== migrate db to h2 (post-copy)"
cloudmig migrate db --to h2 --report "$work/report.json"
sleep 3
kill -TERM "$client_pid"; wait "$client_pid" || true
client_pid=""

echo "== after the migration"
cloudmig ps
echo "   keys through h1's address (forwarded): $(redis-cli -h "$h1" -p "$PORT" DBSIZE)"
echo "== report"
python3 "$here/report_summary.py" "$work/report.json" "$work/client.json"
