"""One recipient's route driven without sockets: a fake owner (the
``RouteOwner`` interface) and fake connections that record what is written."""

from __future__ import annotations

import asyncio
from typing import List, Optional

from eurechat.peer.outbox import OutItem
from eurechat.peer.protocol import encode_message
from eurechat.peer.route import Route
from eurechat.peer.settings import Timings


class FakeConn:
    def __init__(self, dialled: bool = True) -> None:
        self.dialled = dialled
        self.closed = False
        self.paused = False
        self.addr = ("10.0.0.2", 5000) if dialled else None
        self.written: List[bytes] = []

    def write(self, data: bytes, answer_due: bool = False) -> None:
        self.written.append(data)


class FakeOwner:
    def __init__(self, loop: asyncio.AbstractEventLoop, addr=("10.0.0.2", 5000)) -> None:
        self.timings = Timings(window=2, lookup_interval=3.0)
        self.loop = loop
        self.closing = False
        self.has_directory = True
        self.addr = addr
        self.acks: List[List[str]] = []
        self.told: List[int] = []
        self.resolved = 0
        self.conn: Optional[FakeConn] = None

    def live_conn(self, name):
        return self.conn

    async def resolve(self, name):
        self.resolved += 1
        return self.addr

    def new_connection(self, name):
        raise AssertionError("no dial in these tests")

    def forget(self, name):
        pass

    def identified(self, conn):
        pass

    def acked(self, route, done):
        self.acks.append([i.msgid for i in done])

    def unreachable(self, route, queued, reason):
        self.told.append(queued)


def item(n: int) -> OutItem:
    return OutItem(n, f"m{n}", encode_message("alice", f"m{n}", f"t{n}"), 0.0)


def run(coro):
    return asyncio.run(coro)


def route_with(owner: FakeOwner, n: int) -> Route:
    route = Route(owner, "bob", lambda attempt: 60.0)
    for i in range(1, n + 1):
        route.enqueue(item(i))
    return route


class TestSending:
    def test_a_connection_gets_the_window_then_more_per_ack(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 3)
            conn = FakeConn()
            route.use(conn)
            assert conn.written == [item(1).frame + item(2).frame]
            route.on_ack("m1", conn)
            assert owner.acks == [["m1"]]
            route.pump()
            assert conn.written[-1] == item(3).frame
            route.stop()
        run(main())

    def test_a_paused_connection_is_not_written_to(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 1)
            conn = FakeConn()
            conn.paused = True
            route.use(conn)
            assert conn.written == []
            route.stop()
        run(main())


class TestWhoMayAcknowledge:
    def test_an_ack_on_another_connection_is_ignored(self):
        """An impostor claiming bob's name must not delete what bob never got."""
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 1)
            ours, impostor = FakeConn(), FakeConn(dialled=False)
            route.use(ours)
            route.on_ack("m1", impostor)
            assert owner.acks == [] and len(route.outbox) == 1
            route.on_ack("m1", ours)
            assert owner.acks == [["m1"]] and len(route.outbox) == 0
            route.stop()
        run(main())

    def test_an_ack_proves_the_route(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 1)
            route.dialing.attempt = 3
            conn = FakeConn()
            route.use(conn)
            route.on_ack("m1", conn)
            assert route.attempt == 0
            route.stop()
        run(main())


class TestTwoConnections:
    def test_the_pair_rule_decides_and_the_loser_is_reported(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 1)
            mine, theirs = FakeConn(dialled=True), FakeConn(dialled=False)
            assert route.adopt(mine, "alice") is None
            adopted = route.adopt(theirs, "alice")         # alice < bob: hers stays
            assert adopted.keep is mine and adopted.lose is theirs
            assert not adopted.abort_loser and adopted.probe_kept
            assert route.conn is mine
            route.stop()
        run(main())


class TestLosingTheConnection:
    def test_a_proven_connection_lost_is_redialled_at_once(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop(), addr=None)
            route = route_with(owner, 1)
            conn = FakeConn()
            route.use(conn)
            conn.closed = True
            route.lost(conn, None)
            assert route.connecting is not None       # at once, not on a timer
            assert await route.connecting is False    # "not online"
            assert owner.told == [1]
            assert route.timer is not None            # then the backoff
            route.stop()
        run(main())

    def test_another_open_connection_takes_over_and_everything_goes_again(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 2)
            first, second = FakeConn(), FakeConn(dialled=False)
            route.use(first)
            first.closed = True
            route.lost(first, second)
            assert route.conn is second
            assert second.written == [item(1).frame + item(2).frame]
            route.stop()
        run(main())

    def test_losing_a_connection_we_do_not_send_over_changes_nothing(self):
        async def main():
            owner = FakeOwner(asyncio.get_running_loop())
            route = route_with(owner, 1)
            ours, other = FakeConn(), FakeConn()
            route.use(ours)
            route.lost(other, None)
            assert route.conn is ours and route.connecting is None
            route.stop()
        run(main())
