"""Pins: the key this peer first saw for each name (``<data-dir>/known_peers``).

Trust on first use, as SSH and Signal do it: the first fingerprint seen for a
name is kept; a different one later is a key change the user must be told
about (it is either a rotation or reset the other person made, or someone
else's key introduced by a directory that should not be trusted blindly).
The store only records and compares; what a change means for delivery
(``--strict-keys``) is decided by the peer.

The file is plain text, one pin per line, ``<local user> <name> <fingerprint>
<trusted>``, so several local users may share a data directory without
sharing their trust.  It is rewritten whole through a temporary file and
``os.replace``, so a crash leaves the old or the new file, never half of one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Union

from ..tls.fingerprint import is_fingerprint
from ..tls.identity import write_private

__all__ = ["PinCheck", "Pins", "PIN_FILE"]

log = logging.getLogger("eurechat.peer.pins")

PIN_FILE = "known_peers"


class PinCheck(NamedTuple):
    """What a fingerprint seen for ``name`` means against the pin.

    ``first``: nothing was pinned (it is pinned now); ``changed``: a pin
    existed and differs (``old`` holds it; the new key is not trusted until
    ``trust``); neither: it matches.
    """

    name: str
    fingerprint: str
    old: Optional[str]
    first: bool
    changed: bool


class _Pin(NamedTuple):
    fingerprint: str
    trusted: bool
    pending: Optional[str]  # a changed key seen and not yet trusted


class Pins:
    """The pins of one local user, loaded from and saved to ``known_peers``."""

    def __init__(self, data_dir: Union[str, Path], user: str) -> None:
        self.path = Path(data_dir) / PIN_FILE
        self.user = user
        self._pins: Dict[str, _Pin] = {}
        self._others: list = []  # lines of other local users, kept verbatim
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or line.startswith("#"):
                continue
            if len(fields) not in (4, 5) or not is_fingerprint(fields[2]):
                log.warning("%s:%d: not a pin, ignored: %r", self.path, number, line[:80])
                continue
            if fields[0] != self.user:
                self._others.append(line)
                continue
            pending = fields[4] if len(fields) == 5 and is_fingerprint(fields[4]) else None
            self._pins[fields[1]] = _Pin(fields[2], fields[3] == "trusted", pending)

    def _save(self) -> None:
        lines = list(self._others)
        for name in sorted(self._pins):
            pin = self._pins[name]
            state = "trusted" if pin.trusted else "untrusted"
            lines.append(" ".join([self.user, name, pin.fingerprint, state]
                                  + ([pin.pending] if pin.pending else [])))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(str(self.path), "".join(line + "\n" for line in lines).encode("utf-8"))

    def get(self, name: str) -> Optional[str]:
        """The pinned fingerprint of ``name``, if any."""
        pin = self._pins.get(name)
        return pin.fingerprint if pin else None

    def pending(self, name: str) -> Optional[str]:
        """A changed key seen for ``name`` and not trusted yet."""
        pin = self._pins.get(name)
        return pin.pending if pin else None

    def check(self, name: str, fingerprint: str) -> PinCheck:
        """Compare ``fingerprint`` with the pin of ``name``; pin it if new.

        A changed key is remembered as pending (so the warning survives a
        restart) but does not replace the pin until ``trust``.
        """
        pin = self._pins.get(name)
        if pin is None:
            self._pins[name] = _Pin(fingerprint, True, None)
            self._save()
            return PinCheck(name, fingerprint, None, True, False)
        if pin.fingerprint == fingerprint:
            if pin.pending is not None:
                self._pins[name] = pin._replace(pending=None)
                self._save()
            return PinCheck(name, fingerprint, None, False, False)
        if pin.pending != fingerprint:
            self._pins[name] = pin._replace(pending=fingerprint)
            self._save()
        return PinCheck(name, fingerprint, pin.fingerprint, False, True)

    def trust(self, name: str, fingerprint: Optional[str] = None) -> Optional[str]:
        """Accept the key seen for ``name`` (the pending one unless given).

        Returns the fingerprint now pinned, or None if there is nothing to
        trust for that name.
        """
        pin = self._pins.get(name)
        new = fingerprint or (pin.pending if pin else None) or (pin.fingerprint if pin else None)
        if new is None:
            return None
        self._pins[name] = _Pin(new, True, None)
        self._save()
        return new
