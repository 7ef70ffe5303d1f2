#!/usr/bin/env bash
# Run a Python module of the project as the operator does, from the repository root:
#   scripts/operator-python.sh MODULE [ARGS...]
# The project's .venv when it exists (make venv), else the system python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
cd "$root"
exec "$py" -m "$@"
