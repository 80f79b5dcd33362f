"""Declares the compiled framing extension; all metadata is in pyproject.toml.

``EURECHAT_BUILD_EXTENSION`` decides what a failed compile means:

* ``yes`` -- the extension is required: no Cython, no compiler or a compile
  error fails the build (CI uses this).
* ``no``  -- build a pure-Python package; the extension is not even tried.
* unset   -- try; when *no working C compiler* (or no Cython) is available,
  install the pure-Python decoder and say so loudly, at build time here and
  at import time in ``eurechat.framing``.  A compiler that works but fails
  on ``_framing`` is a broken build and is fatal even here: it must never
  hide behind the pure-Python twin (the lesson of msgpack issue #481).
"""

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("EURECHAT_BUILD_EXTENSION", "").strip().lower()
if MODE not in ("", "yes", "no"):
    sys.exit(f"EURECHAT_BUILD_EXTENSION must be 'yes', 'no' or unset, not {MODE!r}")

PYX = "src/eurechat/_framing.pyx"
BANNER = "*" * 72


def warn_pure(reason: str) -> None:
    sys.stderr.write(
        f"\n{BANNER}\nWARNING: eurechat's compiled framing extension was NOT built:\n"
        f"  {reason}\nInstalling the pure-Python decoder instead (several times slower;\n"
        f"eurechat.framing.IMPLEMENTATION will be 'python' and importing it warns).\n"
        f"Set EURECHAT_BUILD_EXTENSION=yes to make this fatal, =no to silence it.\n"
        f"{BANNER}\n\n")


class optional_build_ext(build_ext):
    """build_ext that falls back to pure Python only when there is no compiler."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any toolchain failure
            if MODE == "yes" or self._compiler_works():
                raise
            warn_pure(f"no working C compiler ({exc})")

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. the compiler cannot even be set up
            if MODE == "yes" or self._compiler_works():
                raise
            warn_pure(f"no working C compiler ({exc})")

    def _compiler_works(self) -> bool:
        """Can the configured compiler build a trivial C file?"""
        compiler = getattr(self, "compiler", None)
        if compiler is None or isinstance(compiler, str):
            return False
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("int eurechat_probe(void) { return 0; }\n")
            try:
                compiler.compile([src], output_dir=tmp)
            except Exception:  # noqa: BLE001
                return False
        return True


ext_modules = []
if MODE != "no":
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if MODE == "yes":
            sys.exit(f"EURECHAT_BUILD_EXTENSION=yes but Cython is not available: {exc}")
        warn_pure(f"Cython is not available ({exc})")
    else:
        ext_modules = cythonize(
            [Extension("eurechat._framing", [PYX])],
            compiler_directives={
                "language_level": "3",
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
                # The docstrings must equal the pure twin's (a test checks).
                "embedsignature": False,
            },
        )

setup(ext_modules=ext_modules, cmdclass={"build_ext": optional_build_ext})
