"""What the command-line programs share for a person's mistakes: one short
usage line and the error last (where a terminal leaves the eye), the check
for an optional dependency, and whether there is a terminal to ask on.

``eurechat-directory`` and ``eurechat-peer`` both report every usage error
the same way and exit 2::

    usage: eurechat-peer --user NAME [options]   (--help lists them)
    eurechat-peer: error: argument --log-level: invalid choice: 'LOUD' (...)

argparse's own report starts with the full usage, which for the directory
is a dozen lines of options: the one line that says what is wrong scrolled
past the top of it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Optional

__all__ = ["Parser", "MissingExtra", "require_extra", "can_prompt", "EXTRAS", "LOG_LEVELS"]

#: The levels ``--log-level`` takes, in both programs.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

#: Optional module -> the extra of ``pyproject.toml`` that installs it.
EXTRAS = {"redis": "redis", "psycopg": "postgres", "uvloop": "fast",
          "prometheus_client": "metrics"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are two short lines: the usage
    (``short_usage`` when argparse's would take more than one line), then the
    error.  Subcommand parsers made by ``add_subparsers`` are of this class too."""

    def __init__(self, *args, short_usage: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.short_usage = short_usage

    def error(self, message: str) -> NoReturn:
        usage = self.format_usage().strip()
        if "\n" in usage or len(usage) > 100:
            usage = f"usage: {self.short_usage or self.prog + ' [options]'}"
        self.exit(2, f"{usage}   ({self.prog} --help lists every option)\n"
                     f"{self.prog}: error: {message}\n")


class MissingExtra(Exception):
    """An optional dependency is not installed; ``str()`` is the line to print."""

    def __init__(self, module: str, why: str) -> None:
        extra = EXTRAS.get(module, module)
        super().__init__(f"{why} needs the {module!r} package, which is not installed: "
                         f"pip install 'eurechat[{extra}]'")
        self.module = module
        self.extra = extra


def require_extra(module: str, why: str) -> None:
    """Import ``module`` now, so that a missing optional dependency is one line
    at start-up (``MissingExtra``), not a traceback in whatever imports it
    later (possibly in each of N worker processes)."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(module, why) from None


def missing_extra(exc: BaseException) -> Optional[MissingExtra]:
    """``exc`` as a MissingExtra when it is the ImportError of an optional
    dependency (a safety net for a path that did not check first)."""
    if isinstance(exc, ImportError):
        root = (exc.name or "").split(".")[0]
        if root in EXTRAS:
            return MissingExtra(root, "this configuration")
    return None


def can_prompt() -> bool:
    """A terminal to ask a password on: the controlling one (``/dev/tty``,
    what getpass prefers, so piped stdin still works), else stdin if it is a
    terminal (a session without a controlling terminal, e.g. under ``setsid``)."""
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        pass
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:
        return False
