#!/usr/bin/env bash
# What a user installs: `python -m build` gives an sdist and a wheel; the
# wheel holds the compiled framing module and no .pyx/.c source; installed
# into a fresh venv it runs IMPLEMENTATION == "cython".  Then the build
# switch EURECHAT_BUILD_EXTENSION, each mode for real:
#   yes   + no compiler (CC=/bin/false)      -> the build fails
#   unset + no compiler                      -> pure wheel, loud warning
#   no                                       -> pure wheel, py3-none-any
#   unset + working compiler, broken _framing -> the build fails (never hidden)
#
#   [EURECHAT_PYTHON=venv/bin/python] ci/check_wheel.sh [--quick]
#   (--quick: only the wheel, not the build modes)
#
# Takes about 40 s (the main build sets up an isolated environment); ci/test.sh
# runs it after installing the test venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${EURECHAT_PYTHON:-$ROOT/.venv/bin/python}  # needs build, Cython, setuptools>=77
WORK=$(mktemp -d "${TMPDIR:-/tmp}/eurechat-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
start=$(date +%s)

echo "== python -m build (sdist + wheel, extension required)"
EURECHAT_BUILD_EXTENSION=yes "$PY" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "python -m build"; }
sdist=$(ls "$WORK"/dist/eurechat-*.tar.gz)
wheel=$(ls "$WORK"/dist/eurechat-*.whl)
echo "   $(basename "$sdist")  $(basename "$wheel")"

"$PY" - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
so = [n for n in names if n.startswith("eurechat/_framing") and n.endswith((".so", ".pyd"))]
assert so, f"wheel has no compiled eurechat._framing: {names}"
src = [n for n in names if n.endswith((".pyx", ".c"))]
assert not src, f"wheel carries sources: {src}"
assert "eurechat/_framing.pyi" in names and "eurechat/py.typed" in names
members = tarfile.open(sdist).getnames()
assert any(m.endswith("src/eurechat/_framing.pyx") for m in members), "sdist lacks the .pyx"
assert not any(m.endswith((".so", "_framing.c")) for m in members), "sdist carries build output"
print("   wheel:", ", ".join(so), "- no .pyx/.c;  sdist: .pyx, no .c/.so")
PY

echo "== fresh venv, install the wheel, import from outside the tree"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$wheel"
(cd "$WORK" && env -u EURECHAT_PUREPYTHON "$WORK/venv/bin/python" -W error::RuntimeWarning -c '
import eurechat.framing as f, eurechat._framing as c
assert f.IMPLEMENTATION == "cython", f.IMPLEMENTATION
assert f.Decoder is c.Decoder
assert f.Decoder().feed(b"MESSAGE 12 sender\nHello world!") == [f.Message("MESSAGE", ["sender"], "Hello world!")]
print("   IMPLEMENTATION =", f.IMPLEMENTATION, "from", c.__file__)
')

if [ "${1:-}" = "--quick" ]; then
    echo "OK ($(( $(date +%s) - start )) s)"
    exit 0
fi

# The mode checks build without isolation (the dev venv has setuptools and
# Cython), each from a clean copy of the tree so no build output leaks in.
build_mode() {  # build_mode NAME [ENV...]: wheel into $WORK/NAME, log in $WORK/NAME.log
    local name=$1; shift
    rm -rf "$WORK/src-$name"; mkdir -p "$WORK/src-$name"
    git ls-files -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 cp --parents -t "$WORK/src-$name"
    [ -n "${BREAK_PYX:-}" ] && printf '%s\n' "$BREAK_PYX" >>"$WORK/src-$name/src/eurechat/_framing.pyx"
    (cd "$WORK/src-$name" && env "$@" "$PY" -m build --wheel --no-isolation \
        --outdir "$WORK/$name" . >"$WORK/$name.log" 2>&1)
}

echo "== EURECHAT_BUILD_EXTENSION=yes, no compiler -> fails"
if build_mode yes-nocc EURECHAT_BUILD_EXTENSION=yes CC=/bin/false; then
    fail "the build succeeded without a compiler although the extension was required"
fi
echo "   failed, as it must"

echo "== EURECHAT_BUILD_EXTENSION unset, no compiler -> pure wheel with a warning"
build_mode unset-nocc -u EURECHAT_BUILD_EXTENSION CC=/bin/false \
    || { tail -30 "$WORK/unset-nocc.log"; fail "fallback build"; }
grep -q "WARNING: eurechat's compiled framing extension was NOT built" "$WORK/unset-nocc.log" \
    || fail "no visible warning in the build output"
# No pipe into grep -q: with pipefail, an early grep exit (SIGPIPE to unzip)
# would make a match look like no match.
listing=$(unzip -l "$WORK"/unset-nocc/*.whl)
if grep -qE "_framing[^ ]*\.(so|pyd)" <<<"$listing"; then
    fail "fallback wheel has a compiled _framing module"
fi
grep -q "eurechat/fallback.py" <<<"$listing" || fail "fallback wheel lacks the pure decoder"
echo "   built pure, warning shown"

echo "== EURECHAT_BUILD_EXTENSION=no -> pure wheel, no compiler needed"
build_mode no EURECHAT_BUILD_EXTENSION=no CC=/bin/false \
    || { tail -30 "$WORK/no.log"; fail "pure build"; }
ls "$WORK"/no/*-py3-none-any.whl >/dev/null || fail "pure wheel is not py3-none-any: $(ls "$WORK/no")"
grep -q "WARNING" "$WORK/no.log" && fail "=no must not warn"
echo "   $(basename "$WORK"/no/*.whl)"

echo "== EURECHAT_BUILD_EXTENSION unset, compiler works, _framing broken -> fails"
BREAK_PYX=$'cdef extern from *:\n    """\n    #error deliberately broken by ci/check_wheel.sh\n    """' \
    build_mode unset-broken -u EURECHAT_BUILD_EXTENSION \
    && fail "a broken extension was silently replaced by the pure twin"
grep -q "deliberately broken" "$WORK/unset-broken.log" || { tail -20 "$WORK/unset-broken.log"; fail "unexpected failure"; }
echo "   failed, as it must"

echo "OK ($(( $(date +%s) - start )) s)"
