#!/usr/bin/env bash
# A vendor exit with a plan, on the simulated clouds (cloudsim/, offline): one azure host runs
# a database and two web servers; examples/plans/cloud-exit.yaml creates two aws hosts, moves
# the database, then the web servers, and (--decommission) destroys the emptied azure host.
# Run as root from a bootstrapped checkout (`make bootstrap`):
#   PATH=$PWD/.venv/bin:$PATH bash examples/plans/cloud-exit.sh
set -euo pipefail
export CLOUDMIG_LAB_ID=${CLOUDMIG_LAB_ID:-cx}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/cloudmig-cloud-exit.XXXXXX)
export CLOUDMIG_STATE_DIR=${CLOUDMIG_STATE_DIR:-$work/state}
REDIS=(redis-server --port 6379 --protected-mode no --save "" --appendonly no)
# shellcheck source=examples/vendor-exit/clouds.sh
. "$here/../vendor-exit/clouds.sh"

cleanup() {
  echo "== cleaning up"
  for h in $(cloudmig hosts --json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(h["name"] for h in json.load(sys.stdin)))' 2>/dev/null); do
    cloudmig host destroy "$h" >/dev/null 2>&1 || true
  done
  stop_clouds
  rm -rf "$work"
}
trap cleanup EXIT

start_clouds "$work"

echo "== vendor A: an azure host (boots and joins by itself) and its containers"
cloudmig host create --provider azure --operator-cidr 198.18.0.0/15 az1
cloudmig run az1 db   --label tier=db  --publish 16379:6379 -- "${REDIS[@]}"
cloudmig run az1 web1 --label tier=web --publish 18001:8080 -- python3 -m http.server 8080 --directory /usr/share/doc
cloudmig run az1 web2 --label tier=web --publish 18002:8080 -- python3 -m http.server 8080 --directory /usr/share/doc
cloudmig ps

echo "== the plan, checked, then what it would do"
cloudmig plan validate "$here/cloud-exit.yaml"
cloudmig plan apply --dry-run "$here/cloud-exit.yaml"

echo "== applied: aws hosts made, containers moved, az1 destroyed once drained"
cloudmig plan apply --decommission "$here/cloud-exit.yaml"
cloudmig hosts
cloudmig ps
cat "$CLOUDMIG_STATE_DIR/plans/cloud-exit/report.md"
