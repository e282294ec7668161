#!/usr/bin/env bash
# `make demo`: the product demo. (Filled in as the migration lands; for now, readiness.)
set -euo pipefail
cloudmig doctor
