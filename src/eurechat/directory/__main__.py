"""``python -m eurechat.directory``: the same as the ``eurechat-directory`` command."""

import sys

from .cli import main

sys.exit(main())
