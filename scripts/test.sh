#!/usr/bin/env bash
# The test command: sets up everything it needs on a fresh machine with python3 and pip, then
# runs the linters, the type checker and the test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -n 2 -p no:cacheprovider "$@"
