"""Declares the compiled framing extension; all metadata is in pyproject.toml.

``EURECHAT_BUILD_EXTENSION`` decides what a failed compile means:
``yes`` makes it fatal (CI), ``no`` builds a pure-Python package, unset tries
and falls back to pure Python *with a visible warning* -- a broken build must
never hide silently behind the twin.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("EURECHAT_BUILD_EXTENSION", "").strip().lower()
if MODE not in ("", "yes", "no"):
    sys.exit(f"EURECHAT_BUILD_EXTENSION must be 'yes', 'no' or unset, not {MODE!r}")


class optional_build_ext(build_ext):
    """build_ext that, unless the extension is required, warns instead of failing."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure
            self._fallback(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    def _fallback(self, exc):
        if MODE == "yes":
            raise
        banner = "*" * 72
        sys.stderr.write(
            f"\n{banner}\nWARNING: eurechat's compiled framing extension failed to build:\n"
            f"  {exc}\nInstalling the pure-Python decoder instead (slower). Set\n"
            f"EURECHAT_BUILD_EXTENSION=yes to make this fatal.\n{banner}\n\n")


ext_modules = []
if MODE != "no":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("eurechat._framing", ["src/eurechat/_framing.pyx"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": optional_build_ext})
