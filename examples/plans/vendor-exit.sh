#!/usr/bin/env bash
# A vendor exit on the lab, offline: four lab hosts, h1 and h2 playing vendor A and h3 and h4
# vendor B; six containers on vendor A labelled by tier; examples/plans/vendor-exit.yaml moves
# them in three waves. Run as root from a bootstrapped checkout (`make bootstrap`):
#   PATH=$PWD/.venv/bin:$PATH bash examples/plans/vendor-exit.sh
set -euo pipefail
export CLOUDMIG_STATE_DIR=${CLOUDMIG_STATE_DIR:-/var/lib/cloudmig-vendor-exit}
export CLOUDMIG_LAB_ID=${CLOUDMIG_LAB_ID:-vx}
here=$(cd "$(dirname "$0")" && pwd)
REDIS=(redis-server --port 6379 --protected-mode no --save "" --appendonly no)

trap 'echo "== cleaning up"; cloudmig lab down >/dev/null || true' EXIT
cloudmig lab down >/dev/null 2>&1 || true
cloudmig lab up --hosts 4 >/dev/null

echo "== vendor A: h1, h2"
cloudmig run h1 db    --label tier=db    --publish 16301:6379 -- "${REDIS[@]}"
cloudmig run h1 cache --label tier=cache --publish 16302:6379 -- "${REDIS[@]}"
cloudmig run h1 web1  --label tier=web   --publish 18001:8080 -- python3 -m http.server 8080 --directory /usr/share/doc
cloudmig run h2 web2  --label tier=web   --publish 18002:8080 -- python3 -m http.server 8080 --directory /usr/share/doc
cloudmig run h2 queue --label tier=queue --publish 16303:6379 -- "${REDIS[@]}"
cloudmig run h2 jobs  --publish 16304:6379 -- "${REDIS[@]}"
cloudmig ps

echo "== the plan, checked, then what it would do"
cloudmig plan validate "$here/vendor-exit.yaml"
cloudmig plan apply --dry-run "$here/vendor-exit.yaml"

echo "== applied (a crash here is continued by: cloudmig plan resume)"
cloudmig plan apply "$here/vendor-exit.yaml"
cloudmig ps
cat "$CLOUDMIG_STATE_DIR/plans/vendor-exit/report.md"
