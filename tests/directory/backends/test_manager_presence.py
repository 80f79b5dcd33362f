"""The supervisor's presence Manager (``--workers N``): the hub's change feed
and snapshot, a lagging subscriber given a snapshot instead of a backlog, and
each worker's read view following the writes of the others."""

from __future__ import annotations

import asyncio
import os

from eurechat.directory.interfaces import Registration
from eurechat.directory.presence.manager import ManagerRegistry, PresenceHub, start_hub_manager


def test_presence_hub_feed_and_snapshot():
    hub = PresenceHub()
    sub, seq, regs = hub.subscribe(os.getpid())
    assert (seq, regs) == (0, [])
    hub.bind(("bob", "127.0.0.1", 2000), wait=0)
    hub.bind(("ann", "127.0.0.1", 2001), wait=0)
    seq, changes, snap = hub.changes(sub, 0, timeout=0)
    assert seq == 2 and snap is None
    assert [c[1:] for c in changes] == [("bind", ("bob", "127.0.0.1", 2000)),
                                        ("bind", ("ann", "127.0.0.1", 2001))]
    assert hub.remove("bob", ("bob", "127.0.0.1", 9999), wait=0) == (False, 2)
    assert hub.remove("bob", None, wait=0) == (True, 3)
    # An unknown subscriber (e.g. after a hub restart) gets a snapshot.
    seq, changes, snap = hub.changes(12345, 0, timeout=0)
    assert changes is None and snap == [("ann", "127.0.0.1", 2001)]
    # Nothing new: the long poll returns empty after its timeout.
    assert hub.changes(sub, 3, timeout=0.01) == (3, [], None)


def test_manager_registry_views_follow_writes(tmp_path):
    manager = start_hub_manager(str(tmp_path / "hub.sock"), b"k" * 32)
    try:
        async def main():
            a = ManagerRegistry(str(tmp_path / "hub.sock"), b"k" * 32)
            b = ManagerRegistry(str(tmp_path / "hub.sock"), b"k" * 32)
            await a.start()
            await b.start()
            for port in range(2000, 2020):
                reg = Registration("bob", "127.0.0.1", port)
                await a.bind(reg)
                assert b.query("bob") == (reg,)  # no sleep: ACKed means applied everywhere
                assert await b.remove("bob", expected=reg)
                assert a.query("bob") == ()
            assert await a.snapshot() == []
            await a.close()
            await b.close()
        asyncio.run(main())
    finally:
        manager.shutdown()


def test_presence_hub_lagging_subscriber_gets_a_snapshot():
    import collections
    hub = PresenceHub()
    hub._log = collections.deque(maxlen=2)  # a tiny log: easy to fall behind
    sub, _, _ = hub.subscribe(os.getpid())
    for port in (2000, 2001, 2002):
        hub.bind(("bob", "127.0.0.1", port), wait=0)
    hub.bind(("ann", "127.0.0.1", 3000), wait=0)
    seq, changes, snap = hub.changes(sub, 0, timeout=0)
    assert seq == 4 and changes is None
    assert sorted(snap) == [("ann", "127.0.0.1", 3000), ("bob", "127.0.0.1", 2002)]
    # Close enough to the head: the changes themselves.
    seq, changes, snap = hub.changes(sub, 3, timeout=0)
    assert snap is None and [c[0] for c in changes] == [4]
