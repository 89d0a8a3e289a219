#!/usr/bin/env bash
# One entry point for a fresh machine: creates (or reuses) .venv, installs the project with its
# compiled kernels, then runs the main job or the tests.
#   scripts/dev.sh demo   a federation on this machine: a coordinator and three party daemons (real
#                         processes, mutual TLS, masked sums) edit the embedded default; checked against
#                         global MEMIT
#   scripts/dev.sh test   the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COLLABEDIT_VENV:-.venv}

bootstrap() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
  fi
  # Reinstall only when the dependency list or the compiled sources changed.
  local stamp="$VENV/.installed" want
  want=$( { cat requirements.txt pyproject.toml setup.py CMakeLists.txt
             find csrc proto -type f 2>/dev/null | sort | xargs -r cat; } 2>/dev/null | sha256sum | cut -d' ' -f1 ) || true
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.txt
    "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

# The Node client's dependencies (clients/node), for its tests; reinstalled when its lockfile changes.
node_deps() {
  command -v npm >/dev/null 2>&1 || return 0
  local stamp=clients/node/node_modules/.collabedit-installed want
  want=$(sha256sum clients/node/package-lock.json | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    npm ci --prefix clients/node --ignore-scripts --no-audit --no-fund --silent
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    bootstrap
    exec "$VENV/bin/collabedit" demo --json results/demo.json "$@"
    ;;
  test)
    bootstrap
    node_deps
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
