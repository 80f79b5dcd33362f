"""Presence: who is bound where (``base.Registry``), kept in this process
(``memory``), in the supervisor's Manager (``manager``) or in Redis
(``redis``), each read through the same local view (``view``).  Build one
with ``eurechat.directory.backends.make_registry``."""
