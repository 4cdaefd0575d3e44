#!/usr/bin/env bash
# The demo command: sets up a virtualenv and runs `watchkeeper demo`. Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WK_SETUP_MINIMAL=1 source scripts/setup.sh
exec .venv/bin/watchkeeper demo "$@"
