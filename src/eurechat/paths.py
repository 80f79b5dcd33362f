"""Where eurechat keeps its files by default, for the directory and the peer."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_dir"]


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/eurechat``, else ``~/.local/share/eurechat``: the
    directory's accounts and throttle, and each peer's outbox and inbox,
    live side by side there unless ``--data-dir`` says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "share")
    return Path(base) / "eurechat"
