# Sourced by the examples that run on the simulated clouds (bash):
#   . examples/vendor-exit/clouds.sh
#   start_clouds "$work"      # sim_pid set, the clouds' env (AWS_ENDPOINT_URL, ...) exported
#   stop_clouds               # VMs, servers and the lab bridge go
sim_pid=""

start_clouds() {
  local work=$1 dir
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  echo "== the simulated clouds"
  python3 "$dir/simulate.py" --lab-id "$CLOUDMIG_LAB_ID" --env-file "$work/cloud.env" &
  sim_pid=$!
  for _ in $(seq 100); do [ -f "$work/cloud.env" ] && break; sleep 0.2; done
  [ -f "$work/cloud.env" ] || { echo "the simulated clouds did not start" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$work/cloud.env"
}

stop_clouds() {
  [ -n "$sim_pid" ] && { kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; }
  sim_pid=""
}
