"""eurechat: a peer-to-peer instant messenger and the protocol beneath it."""

__version__ = "0.1.0"
