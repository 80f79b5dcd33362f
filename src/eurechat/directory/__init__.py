"""The eurechat directory server: who is online, and where (SPEC sections 2-3)."""
