#!/usr/bin/env bash
# `make vendor-exit`: leave one cloud for another with a live database, on simulated clouds.
#   1. the simulated clouds (examples/vendor-exit/simulate.py): moto's EC2 and our ARM server,
#      whose instances boot as lab namespaces at 198.18.x addresses, running their user-data
#   2. `cloudmig host create --provider azure old-home` and `--provider aws new-home`: each VM
#      boots, and the host joins by itself over SSH (host key pinned before first contact)
#   3. redis-server on the azure host, ~50 MiB of data, port 16379 on its public address, and a
#      live client holding ONE TCP connection to that address
#   4. `cloudmig migrate db --to new-home`: post-copy, through a WireGuard tunnel whose ports
#      each cloud's firewall opens to the other side only
#   5. the report and the client's summary; then both hosts and the clouds are removed
set -euo pipefail
export CLOUDMIG_LAB_ID=${CLOUDMIG_LAB_ID:-vx}
PORT=16379
KEYS=${VENDOR_EXIT_KEYS:-50000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cloudmig-vendor-exit.XXXXXX)
export CLOUDMIG_STATE_DIR=${CLOUDMIG_STATE_DIR:-$work/state}
client_pid=""
# shellcheck source=examples/vendor-exit/clouds.sh
. "$here/clouds.sh"

cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null || true
  echo; echo "== cleaning up"
  for h in old-home new-home; do cloudmig host destroy "$h" >/dev/null 2>&1 || true; done
  stop_clouds
  rm -rf "$work"
}
trap cleanup EXIT

start_clouds "$work"

echo "== hosts: one on azure, one on aws (each boots and joins by itself)"
operator=198.18.0.0/15    # the controller reaches the lab's addresses from the lab bridge
cloudmig host create --provider azure --operator-cidr "$operator" old-home
cloudmig host create --provider aws --operator-cidr "$operator" new-home
cloudmig hosts
old=$(cloudmig hosts --json | python3 -c 'import json,sys; print([h["public_address"] for h in json.load(sys.stdin) if h["name"]=="old-home"][0])')

echo "== redis-server on azure's old-home, published on $old:$PORT"
cloudmig run old-home db --publish "$PORT:6379" -- redis-server --port 6379 --protected-mode no \
  --save "" --appendonly no --enable-debug-command yes
redis-cli -h "$old" -p "$PORT" DEBUG POPULATE "$KEYS" key 1000 >/dev/null
echo "   $(redis-cli -h "$old" -p "$PORT" DBSIZE) keys in memory"

echo "== live client on $old:$PORT"
python3 "$here/../live_client.py" "$old" "$PORT" --summary "$work/client.json" &
client_pid=$!
sleep 3

echo "== migrate db from azure to aws (post-copy)"
cloudmig migrate db --to new-home --report "$work/report.json"
sleep 3
kill -TERM "$client_pid"; wait "$client_pid" || true
client_pid=""

echo "== after the move"
cloudmig ps
echo "   keys through azure's address (forwarded to aws): $(redis-cli -h "$old" -p "$PORT" DBSIZE)"
echo "== report"
python3 "$here/../report_summary.py" "$work/report.json" "$work/client.json"
