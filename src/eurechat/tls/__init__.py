"""TLS for every eurechat link (SPEC §5): identities, fingerprints, contexts.

The package is kept apart from the directory and the peer because both ends of
every link need the same facts: how a key is named (``fingerprint``), which
certificate says what (``eurechat:directory``, ``eurechat:user:<name>``), and
how a listening port tells TLS from plaintext.
"""
