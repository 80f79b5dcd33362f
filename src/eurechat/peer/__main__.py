"""``python -m eurechat.peer``: see ``eurechat.peer.cli``."""

import sys

from .cli import main

sys.exit(main())
