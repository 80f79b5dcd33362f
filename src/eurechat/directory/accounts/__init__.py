"""Accounts: names and argon2id password records (``base.AccountStore``), in
SQLite (``sqlite``) or PostgreSQL (``postgres``), hashed and validated in one
place (``hashing``, ``eurechat.names``).  Build one with
``eurechat.directory.backends.make_accounts``."""
