"""Failed-login throttling (``base.Throttle``): one sliding window, kept in
memory (``memory``), in SQLite shared by the workers of a host (``sqlite``)
or in Redis shared by every host (``redis``).  Build one with
``eurechat.directory.backends.make_throttle``."""
