"""Who runs the liveness checker (``base.Election``): this host alone
(``local``) or the holders of leases in Redis (``lease``).  Build one with
``eurechat.directory.backends.make_election``."""
