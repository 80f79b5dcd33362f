#!/usr/bin/env bash
# From a fresh clone to a passing test suite, in one command:
#   ci/test.sh
# Installs what the tests need (redis-server, PostgreSQL binaries, a venv,
# the package built WITH its compiled extension), then runs the whole suite
# against the compiled framing and once more against the pure-Python twin.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
# systemd-analyze checks the units in contrib/ (tests/deploy).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)          # s_client transcripts
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)              # a non-loopback source (netns)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing system packages: ${need_apt[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "== venv and build (extension required)"
VENV=${EURECHAT_TEST_VENV:-.venv-test}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV"/bin/python -m pip install -q --upgrade pip
# Non-editable install: the suite runs against what a user would install.
export EURECHAT_BUILD_EXTENSION=yes
"$VENV"/bin/python -m pip install -q --force-reinstall --no-deps .
"$VENV"/bin/python -m pip install -q ".[test,bench,dev]"
"$VENV"/bin/python - <<'PY'
import eurechat.framing as f
assert f.IMPLEMENTATION == "cython", f"built with the extension required, got {f.IMPLEMENTATION}"
print("framing implementation:", f.IMPLEMENTATION)
PY

echo "== ruff"
"$VENV"/bin/ruff check src tests ci bench fuzz

echo "== wheel and EURECHAT_BUILD_EXTENSION modes"
EURECHAT_PYTHON="$ROOT/$VENV/bin/python" ci/check_wheel.sh

# Run from outside the source tree so tests import the installed package.
cd "$ROOT/tests"
export EURECHAT_REQUIRE_EXTENSION=1
echo "== pytest (compiled framing)"
"$ROOT/$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@" .
# The pure-Python decoder runs everything that decodes bytes in the test
# process (the framing twins side by side, the sans-IO directory session, the
# peer protocol, the fuzz targets) and one end-to-end pass of each server
# through it; the rest of the suite is about processes, storage and timing,
# which do not depend on which decoder parses.  (EURECHAT_PURE_ALL=1 runs the
# whole suite a second time instead.)
PURE_TESTS=(framing fuzz test_channel.py
            directory/test_session.py directory/test_session_hello_and_cacert.py
            directory/test_session_certificates.py directory/test_protocol.py
            directory/test_limits.py directory/test_transcript.py
            peer/test_protocol.py peer/test_e2e.py)
[ "${EURECHAT_PURE_ALL:-}" = 1 ] && PURE_TESTS=(.)
echo "== pytest (EURECHAT_PUREPYTHON=1): ${PURE_TESTS[*]}"
EURECHAT_PUREPYTHON=1 "$ROOT/$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@" "${PURE_TESTS[@]}"
