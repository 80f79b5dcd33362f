#!/usr/bin/env bash
# From a fresh clone to a running directory server, in one command:
#   ci/directory.sh [eurechat-directory options...]
# Creates .venv, builds eurechat with its compiled framing (falling back to
# pure Python with a loud warning if there is no compiler), then runs
# `eurechat-directory` with its embedded defaults (SQLite under
# ~/.local/share/eurechat, 127.0.0.1:8888) plus whatever options you pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=$(cat pyproject.toml setup.py $(find src -name '*.py' -o -name '*.pyx' | sort) | sha1sum | cut -c1-16)
if [ "$(cat .venv/.eurechat-stamp 2>/dev/null)" != "$stamp" ] || [ ! -x .venv/bin/eurechat-directory ]; then
    echo "== installing eurechat into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q --force-reinstall --no-deps . >&2
    .venv/bin/python -m pip install -q ".[fast]" >&2
    echo "$stamp" > .venv/.eurechat-stamp
fi
exec .venv/bin/eurechat-directory "$@"
