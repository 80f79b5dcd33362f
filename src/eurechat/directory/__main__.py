"""``python -m eurechat.directory``: the same as the ``eurechat-directory`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
