"""End to end: the real directory CLI, real peer processes, driven through --json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from eurechat.framing import Message
from support.client import FramedClient
from support.peers import PASSWORD, peer_cmd
from support.processes import test_env


def texts(peer, sender=None):
    return [e["text"] for e in peer.events("message") if sender is None or e["from"] == sender]


def test_two_peers_chat_both_ways(cluster):
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd("/msg bob hello bob")
    m = bob.wait_event("message", text="hello bob")
    assert m["from"] == "alice"
    q = alice.wait_event("queued", to="bob")
    d = alice.wait_event("delivered", to="bob")
    assert q["id"] == d["id"] == m["id"]
    # A line without "/" goes to the last peer written to.
    alice.cmd("and again")
    bob.wait_event("message", text="and again")
    bob.cmd("/msg alice hi alice", "second line")
    alice.wait_event("message", **{"from": "bob", "text": "hi alice"})
    alice.wait_event("message", **{"from": "bob", "text": "second line"})
    bob.count("delivered", 2)
    # /who, /ping, /pending
    alice.cmd("/who")
    who = alice.wait_event("who")
    names = {u["name"]: u for u in who["users"]}
    assert set(names) == {"alice", "bob"}
    ready = bob.events("ready")[0]
    assert f"{names['bob']['address']}:{names['bob']['port']}" == ready["listen"]
    mark = len(alice.events())
    alice.cmd("/who bob")
    assert alice.wait_event("who", start=mark)["users"] == [names["bob"]]
    alice.cmd("/ping bob")
    pong = alice.wait_event("pong")
    assert pong["from"] == "bob" and pong["ms"] >= 0
    alice.cmd("/pending")
    assert alice.wait_event("pending")["messages"] == []
    # Each message shown exactly once.
    assert texts(bob) == ["hello bob", "and again"]
    assert texts(alice) == ["hi alice", "second line"]
    assert alice.quit() == 0
    # /quit sent LEAVE: alice is no longer listed.
    bob.cmd("/who")
    who = bob.wait_event("who", start=len(bob.events()) - 1)
    assert [u["name"] for u in who["users"]] == ["bob"]
    assert bob.quit() == 0


def test_wildcard_listen_binds_the_address_the_directory_sees(cluster):
    bob = cluster.peer("bob", "--listen", "0.0.0.0:0")
    port = int(bob.events("ready")[0]["listen"].rsplit(":", 1)[1])
    alice = cluster.peer("alice")
    alice.cmd("/who bob")
    assert alice.wait_event("who")["users"] == [{"name": "bob", "address": "127.0.0.1",
                                                  "port": port}]
    alice.cmd("/msg bob over the wildcard")
    bob.wait_event("message", text="over the wildcard")


def test_errors_are_events_and_the_peer_keeps_going(cluster):
    alice = cluster.peer("alice")
    alice.cmd("nobody yet", "/frobnicate", "/msg", "/msg -bad hi", "/ping")
    alice.count("error", 5)
    alice.cmd("/who")
    alice.wait_event("who")


def test_multi_recipient_one_id_tracked_per_recipient(cluster):
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    carol = cluster.peer("carol")
    alice.cmd("/msg bob,carol hello both")
    mb = bob.wait_event("message", text="hello both")
    mc = carol.wait_event("message", text="hello both")
    assert mb["id"] == mc["id"]
    queued = alice.count("queued", 2)
    assert sorted(e["to"] for e in queued) == ["bob", "carol"]
    assert {e["id"] for e in queued} == {mb["id"]}
    alice.wait_event("delivered", to="bob", id=mb["id"])
    alice.wait_event("delivered", to="carol", id=mb["id"])
    # Plain lines now go to both.
    alice.cmd("to you two")
    bob.wait_event("message", text="to you two")
    carol.wait_event("message", text="to you two")


def test_multi_recipient_one_offline_is_tracked_on_its_own(cluster):
    carol = cluster.peer("carol")
    assert carol.quit() == 0
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd("/msg bob,carol for both of you")
    m = bob.wait_event("message", text="for both of you")
    alice.wait_event("delivered", to="bob", id=m["id"])
    alice.cmd("/pending")
    pending = alice.wait_event("pending")["messages"]
    assert pending == [{"to": "carol", "id": m["id"], "text": "for both of you"}]
    carol = cluster.peer("carol", register=False)
    mc = carol.wait_event("message", text="for both of you")
    assert mc["id"] == m["id"]
    alice.wait_event("delivered", to="carol", id=m["id"])
    assert len(bob.events("message")) == 1


def test_offline_recipient_gets_queued_messages_exactly_once(cluster):
    bob = cluster.peer("bob")
    assert bob.quit() == 0          # bob exists but is offline
    alice = cluster.peer("alice")
    alice.cmd(*[f"/msg bob offline {i}" for i in range(5)])
    queued = alice.count("queued", 5)
    alice.cmd("/pending")
    pending = alice.wait_event("pending")["messages"]
    assert [p["text"] for p in pending] == [f"offline {i}" for i in range(5)]
    assert [p["id"] for p in pending] == [q["id"] for q in queued]
    assert alice.events("delivered") == []
    bob = cluster.peer("bob", register=False)
    bob.count("message", 5)
    alice.count("delivered", 5)
    alice.cmd("/msg bob online now")
    bob.wait_event("message", text="online now")
    assert texts(bob) == [f"offline {i}" for i in range(5)] + ["online now"]


def test_recipient_back_is_found_by_lookup_not_by_waiting_out_the_backoff(cluster):
    """Dial backoff is long here (60 s base); lookups every 0.1 s still find bob
    the moment he is back, at a new port."""
    env = cluster.env(EURECHAT_RETRY_BASE="60", EURECHAT_RETRY_MAX="60",
                      EURECHAT_LOOKUP_INTERVAL="0.1")
    bob = cluster.peer("bob")
    alice = cluster.peer("alice", env=env)
    alice.cmd("/msg bob first")
    bob.wait_event("message", text="first")
    bob.kill9()                       # stale registration: alice's dial to it fails
    alice.cmd("/msg bob while you were away")
    alice.wait_event("queued", to="bob", start=len(alice.events()) - 1)
    bob = cluster.peer("bob", register=False)
    bob.wait_event("message", text="while you were away", timeout=20)


def test_sender_killed_with_queued_messages_delivers_after_restart(cluster):
    bob = cluster.peer("bob")
    assert bob.quit() == 0
    alice = cluster.peer("alice")
    alice.cmd(*[f"/msg bob queued {i}" for i in range(50)])
    queued = alice.count("queued", 50)
    alice.kill9()
    bob = cluster.peer("bob", register=False)
    alice = cluster.peer("alice", register=False)
    bob.count("message", 50)
    delivered = alice.count("delivered", 50)
    assert {d["id"] for d in delivered} == {q["id"] for q in queued}
    assert texts(bob) == [f"queued {i}" for i in range(50)]
    assert [e["id"] for e in bob.events("message")] == [q["id"] for q in queued]


def test_sender_killed_mid_stream_everything_it_queued_arrives_once(cluster):
    n = 3000
    bob = cluster.peer("bob")
    alice = cluster.peer("alice")
    alice.cmd(*[f"/msg bob k{i}" for i in range(n)])
    bob.count("message", 300)
    alice.kill9()
    queued = [e["id"] for e in alice.events("queued")]   # what alice had accepted
    assert len(queued) >= 300
    alice = cluster.peer("alice", register=False)
    alice.cmd("/msg bob after the restart")
    bob.wait_event("message", text="after the restart", timeout=60)
    shown = [e["id"] for e in bob.events("message")]
    assert len(shown) == len(set(shown)), "a message was shown twice"
    # Everything alice reported queued arrives, once, in order.  (A batch
    # committed just before the kill may arrive without its "queued" lines.)
    assert shown[:len(queued)] == queued
    got = texts(bob)[:-1]
    assert got == [f"k{i}" for i in range(len(got))]


def test_receiver_killed_mid_stream_loses_nothing_and_repeats_nothing(cluster):
    n = 2000
    bob = cluster.peer("bob")
    alice = cluster.peer("alice")
    alice.cmd(*[f"/msg bob s{i}" for i in range(n)])
    bob.count("message", 100)
    bob.kill9()
    first = texts(bob)
    assert 100 <= len(first) <= n
    alice.cmd("/msg bob after the crash")
    bob2 = cluster.peer("bob", register=False)
    bob2.wait_event("message", text="after the crash", timeout=60)
    second = texts(bob2)
    shown = first + second
    expected = [f"s{i}" for i in range(n)] + ["after the crash"]
    assert len(shown) == len(set(shown)), "a message was shown twice"
    assert shown == expected
    alice.count("delivered", n + 1)


def test_ten_thousand_messages_complete_and_in_order(cluster):
    n = 10_000
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd(*[f"/msg bob n{i}" for i in range(n)])
    bob.count("message", n, timeout=90)
    assert texts(bob) == [f"n{i}" for i in range(n)]
    alice.count("delivered", n, timeout=30)
    ids = [e["id"] for e in alice.events("queued")]
    assert len(set(ids)) == n


def test_directory_restart_mid_conversation(cluster):
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd("/msg bob before")
    bob.wait_event("message", text="before")
    cluster.stop_directory()
    # The pair's connection does not need the directory.
    alice.cmd("/msg bob during")
    bob.wait_event("message", text="during")
    bob.cmd("/msg alice reply during")
    alice.wait_event("message", text="reply during")
    alice.cmd("/who")
    alice.wait_event("error")
    cluster.restart_directory()
    # Both log in and BIND again on their own: a QUERY sees them both.
    alice.who_until(lambda who: {u["name"] for u in who["users"]} == {"alice", "bob"})
    # A newcomer finds them through the restarted directory.
    carol = cluster.peer("carol")
    carol.cmd("/msg alice,bob hello after restart")
    alice.wait_event("message", text="hello after restart")
    bob.wait_event("message", text="hello after restart")


def test_directory_down_at_start_is_not_fatal(cluster):
    bob = cluster.peer("bob")
    alice_reg = cluster.peer("alice")
    assert alice_reg.quit() == 0
    cluster.stop_directory()
    alice = cluster.peer("alice", register=False)
    alice.wait_event("error")  # directory unreachable, retrying
    alice.cmd("/msg bob queued while the directory was down")
    alice.wait_event("queued", to="bob")
    cluster.restart_directory()
    bob.wait_event("message", text="queued while the directory was down", timeout=30)
    alice.wait_event("delivered", to="bob")


def _run_peer(cluster, name, *extra, env=None, cmd=None, data=None):
    argv = (cmd or peer_cmd()) + ["--user", name, "--directory", cluster.hostport,
                                  "--data-dir", str(cluster.tmp / "peers" / (data or name)),
                                  *extra]
    return subprocess.run(argv, input=b"/quit\n", capture_output=True, timeout=60,
                          env=env or cluster.env())


def test_closed_stdout_quits_and_keeps_unshown_messages(cluster):
    """A reader that goes away (``| head -1``) ends the peer cleanly, and what
    it could not show is shown at the next start."""
    alice = cluster.peer("alice")
    argv = peer_cmd() + ["--user", "bob", "--register", "--json", "--directory",
                         cluster.hostport, "--data-dir", str(cluster.tmp / "peers" / "bob")]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=cluster.env(),
                            start_new_session=True)
    try:
        assert b'"event": "ready"' in proc.stdout.readline()
        proc.stdout.close()           # the reader is gone: bob's next write gets EPIPE
        alice.cmd("/msg bob into the void")
        alice.wait_event("delivered", to="bob")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait(10)
    bob = cluster.peer("bob", register=False)
    bob.wait_event("message", text="into the void")


def test_wrong_password_and_taken_name_exit_codes(cluster):
    alice = cluster.peer("alice")
    res = _run_peer(cluster, "alice", "--json", data="elsewhere",
                    env=cluster.env(EURECHAT_PASSWORD="wrong password"))
    assert res.returncode == 3, res.stderr
    assert b"authentication failed" in res.stderr
    res = _run_peer(cluster, "alice", "--register", data="elsewhere",
                    env=cluster.env(EURECHAT_PASSWORD="another password"))
    assert res.returncode == 4, res.stderr
    assert b"taken" in res.stderr
    # --register of your own existing account is fine: it just logs in.
    res = _run_peer(cluster, "erin", "--register")
    assert res.returncode == 0, res.stderr
    res = _run_peer(cluster, "erin", "--register")
    assert res.returncode == 0, res.stderr
    # Same user twice on one data directory: refused, exit 5.
    res = _run_peer(cluster, "alice")
    assert res.returncode == 5, res.stderr
    # A --listen address that is taken (alice's own): exit 6.
    res = _run_peer(cluster, "frank", "--register", "--listen",
                    alice.events("ready")[0]["listen"])
    assert res.returncode == 6, res.stderr
    assert b"cannot listen" in res.stderr
    assert alice.quit() == 0


def test_password_file_and_missing_password(cluster, tmp_path: Path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    env = cluster.env()
    del env["EURECHAT_PASSWORD"]
    res = _run_peer(cluster, "dave", "--register", "--json", "--password-file", str(pw), env=env)
    assert res.returncode == 0, res.stderr
    assert b'"event": "ready"' in res.stdout
    res = subprocess.run(peer_cmd() + ["--user", "dave", "--directory", cluster.hostport,
                                       "--data-dir", str(tmp_path / "d2")],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=env,
                         start_new_session=True)  # no controlling terminal: cannot prompt
    assert res.returncode == 2
    assert b"EURECHAT_PASSWORD" in res.stderr


def test_console_script(cluster):
    script = shutil.which("eurechat-peer", path=os.path.dirname(sys.executable)) or \
        shutil.which("eurechat-peer")
    assert script, "the eurechat-peer console script is not installed"
    bob = cluster.peer("bob")
    alice = cluster.peer("alice", cmd=[script])
    alice.cmd("/msg bob via the console script")
    bob.wait_event("message", text="via the console script")
    assert alice.quit() == 0


def test_an_impostor_connection_does_not_receive_queued_messages(cluster):
    bob = cluster.peer("bob")
    assert bob.quit() == 0                      # LEAVE: bob is not registered now
    alice = cluster.peer("alice")
    alice.cmd("/msg bob for bob only")
    alice.wait_event("queued", to="bob")
    host, port = alice.events("ready")[0]["listen"].rsplit(":", 1)
    with FramedClient(host, int(port)) as impostor:
        # Claims to be bob: alice records what it says, but must not send
        # bob's queue over this connection (bob is not registered from here).
        assert impostor.request("MESSAGE", "bob", "fake1", payload="hi, I am bob") == \
            Message("ACK", ("fake1",))
        assert impostor.request("PING", "t") == Message("PONG", ("t",))
        # Nor may it acknowledge (and so delete) what is queued for bob.
        impostor.send_raw(b"ACK 0\nACK 0\nACK 0 " + alice.events("queued")[0]["id"].encode()
                          + b"\n")
        assert impostor.request("PING", "u") == Message("PONG", ("u",))
        alice.cmd("/pending")
        assert [m["text"] for m in alice.wait_event("pending")["messages"]] == ["for bob only"]
        bob = cluster.peer("bob", register=False)
        bob.wait_event("message", text="for bob only")
        alice.wait_event("delivered", to="bob")
        impostor.sock.setblocking(False)
        try:
            leaked = impostor.sock.recv(65536)
        except BlockingIOError:
            leaked = b""
        assert b"for bob only" not in leaked


def test_seed_style_peer_and_protocol_errors(cluster):
    alice = cluster.peer("alice")
    host, port = alice.events("ready")[0]["listen"].rsplit(":", 1)
    with FramedClient(host, int(port)) as c:
        # The directory's liveness probe: the nonce comes back.
        assert c.request("PING", "n0nce") == Message("PONG", ("n0nce",))
        # Seed peers: MESSAGE without msgid, answered by a bare ACK.
        assert c.request("MESSAGE", "zed", payload="hi from a seed peer") == Message("ACK")
        assert c.request("MESSAGE", "zed", "id-1", payload="with an id") == \
            Message("ACK", ("id-1",))
        # A duplicate is ACKed again and not shown again.
        assert c.request("MESSAGE", "zed", "id-1", payload="with an id") == \
            Message("ACK", ("id-1",))
        # Oversized: refused, connection kept.
        c.send_raw(b"MESSAGE 2000000 zed id-2\n" + b"x" * 2_000_000)
        reply = c.recv()
        assert reply.type == "ERR" and b"too large" in reply.payload
        assert c.request("PING") == Message("PONG")
        # One connection speaks for one sender.
        c.send("MESSAGE", "mallory", "id-3", payload="impostor")
        msgs = c.read_until_closed()
        assert msgs and msgs[-1].type == "ERR"
    alice.wait_event("message", text="with an id")
    with FramedClient(host, int(port)) as c:
        c.send_raw(b"MESSAGE x\n")
        assert c.read_until_closed()[-1].type == "ERR"
    with FramedClient(host, int(port)) as c:
        assert c.request("PING", "still-alive") == Message("PONG", ("still-alive",))
    shown = alice.events("message")
    assert [(e["from"], e["id"], e["text"]) for e in shown] == [
        ("zed", None, "hi from a seed peer"), ("zed", "id-1", "with an id")]


def test_quit_keeps_the_queue_for_the_next_start(cluster):
    bob = cluster.peer("bob")
    assert bob.quit() == 0
    alice = cluster.peer("alice")
    alice.cmd("/msg bob kept across /quit")
    q = alice.wait_event("queued", to="bob")
    assert alice.quit() == 0                  # LEAVE, exit 0, the queue persists
    bob = cluster.peer("bob", register=False)
    alice = cluster.peer("alice", register=False)
    alice.cmd("/pending")
    assert alice.wait_event("pending")["messages"] in (
        [{"to": "bob", "id": q["id"], "text": "kept across /quit"}], [])
    m = bob.wait_event("message", text="kept across /quit")
    assert m["id"] == q["id"]
    alice.wait_event("delivered", to="bob", id=q["id"])


def test_directory_down_at_start_then_the_peer_logs_in_and_binds(cluster):
    alice_reg = cluster.peer("alice")
    assert alice_reg.quit() == 0
    cluster.stop_directory()
    alice = cluster.peer("alice", register=False)
    alice.wait_event("error")
    cluster.restart_directory()
    bob = cluster.peer("bob")
    # alice logged in and BOUND on her own once the directory was up: bob finds her.
    ready = alice.events("ready")[0]
    who = bob.who_until(lambda who: bool(who["users"]), "alice")
    host, port = ready["listen"].rsplit(":", 1)
    assert who["users"] == [{"name": "alice", "address": host, "port": int(port)}]
    bob.cmd("/msg alice found you")
    alice.wait_event("message", text="found you")


def test_idle_connections_are_closed_and_the_pair_reconnects(cluster):
    env = cluster.env(EURECHAT_IDLE_TIMEOUT="0.3")
    alice = cluster.peer("alice", "--log-level", "INFO", env=env)
    bob = cluster.peer("bob")
    host, port = alice.events("ready")[0]["listen"].rsplit(":", 1)
    with FramedClient(host, int(port)) as idle:
        assert idle.request("PING", "x") == Message("PONG", ("x",))
        assert idle.read_until_closed(timeout=20) == []      # closed by alice, not by us
    mark = len(alice.p.err_lines)
    alice.cmd("/msg bob one")
    bob.wait_event("message", text="one")
    alice.p.wait_for_log(r"<conn to bob .*idle for", start=mark)
    alice.cmd("/msg bob two")
    bob.wait_event("message", text="two")
    alice.count("delivered", 2)
    assert texts(bob) == ["one", "two"]


def test_liveness_probes_are_answered_and_the_peers_stay_listed(cluster):
    """The directory's liveness checker probes each peer (``PING 0 <nonce>``
    on the peer's listening port) and keeps those that answer."""
    from support.processes import start_directory, test_env

    d = start_directory("--check-interval", "0.2", "--log-level", "info",
                        data_dir=str(cluster.tmp / "dir2"), env=test_env())
    cluster.procs.append(d)
    cluster.peer("bob", directory=d.hostport)
    alice = cluster.peer("alice", directory=d.hostport)
    d.wait_for_log(r"liveness round \d+: 2 probed, 0 removed")
    mark = len(d.err_lines)
    d.wait_for_log(r"liveness round \d+: 2 probed, 0 removed", start=mark)
    assert "removed" not in " ".join(x for x in d.err_lines if "liveness round" not in x)
    alice.cmd("/who")
    assert [u["name"] for u in alice.wait_event("who")["users"]] == ["alice", "bob"]


def test_a_recipient_back_at_the_address_that_failed_is_dialled_at_once(cluster):
    """Bob is killed; alice's dial to his address fails (its backoff: 60 s
    here).  Once a lookup has shown bob unregistered, his next registration
    is news, even at that very address (a fixed --listen port): alice dials
    at once instead of waiting out the address's backoff."""
    from support.client import closed_port

    env = cluster.env(EURECHAT_RETRY_BASE="60", EURECHAT_RETRY_MAX="60",
                      EURECHAT_LOOKUP_INTERVAL="0.1")
    bob_listen = f"127.0.0.1:{closed_port()}"
    bob = cluster.peer("bob", "--listen", bob_listen)
    alice = cluster.peer("alice", "--log-level", "DEBUG", env=env)
    alice.cmd("/msg bob first")
    bob.wait_event("message", text="first")
    bob.kill9()                     # his registration stays (the checker runs every 30 s)
    mark = len(alice.p.err_lines)
    alice.cmd("/msg bob while you were away")
    alice.p.wait_for_log(r"cannot reach bob: bob at 127\.0\.0\.1:\d+", start=mark)
    with FramedClient("127.0.0.1", cluster.dir_port) as c:    # bob's registration goes
        assert c.request("USER", "bob").type == "ACK"
        assert c.request("PASS", payload=PASSWORD).type == "ACK"
        assert c.request("LEAVE").type == "ACK"
    mark = len(alice.p.err_lines)
    alice.p.wait_for_log(r"cannot reach bob: bob is not online", start=mark)
    bob = cluster.peer("bob", "--listen", bob_listen, register=False)
    m = bob.wait_event("message", text="while you were away", timeout=20)
    alice.wait_event("delivered", to="bob", id=m["id"])


def test_json_event_is_one_line_for_every_reader(cluster):
    """Text with characters some readers split lines on (U+2028, U+2029,
    U+0085) still comes as one line, and decodes to the very text sent."""
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    text = "one\u2028two\u2029three\x85four \u00e9\u4e2d \t tab"
    alice.cmd(f"/msg bob {text}")
    m = bob.wait_event("message", text=text)
    raw = [line for line in bob.lines if m["id"] in line]
    assert len(raw) == 1 and len(raw[0].splitlines()) == 1


def test_a_peer_dropped_by_a_failed_liveness_probe_binds_again(cluster):
    """The directory removes a peer whose probe fails (here: the peer is
    stopped for a while) but keeps its session; the peer notices that it is
    no longer listed and BINDs again on its own, so it can be found."""

    from support.processes import start_directory, test_env

    d = start_directory("--check-interval", "0.2", "--probe-timeout", "0.3",
                        "--log-level", "info", data_dir=str(cluster.tmp / "dir2"),
                        env=test_env())
    cluster.procs.append(d)
    bob = cluster.peer("bob", env=cluster.env(EURECHAT_REBIND_CHECK="0.2"),
                       directory=d.hostport)
    alice = cluster.peer("alice", directory=d.hostport)
    os.kill(bob.p.pid, signal.SIGSTOP)
    try:
        d.wait_for_log(r"removed bob ")
    finally:
        os.kill(bob.p.pid, signal.SIGCONT)
    bob.p.wait_for_log(r"no longer lists us")
    who = alice.who_until(lambda who: bool(who["users"]), "bob")
    assert [u["name"] for u in who["users"]] == ["bob"]
    alice.cmd("/msg bob you are back")
    bob.wait_event("message", text="you are back")


def test_pending_right_after_msg_lists_only_what_is_queued(cluster):
    """``/pending`` typed right after ``/msg`` (same read) answers after that
    message's commit: its ``queued`` event comes first, then the listing."""
    alice = cluster.peer("alice")
    alice.cmd("/msg zoe first for zoe", "/pending")   # zoe: no such user, stays queued
    evs = alice.wait_for(lambda evs: any(e["event"] == "pending" for e in evs), "pending")
    kinds = [e["event"] for e in evs]
    assert kinds.index("queued") < kinds.index("pending"), kinds
    q = alice.events("queued")[0]
    assert alice.events("pending")[0]["messages"] == [
        {"to": "zoe", "id": q["id"], "text": "first for zoe"}]


def test_a_full_directory_is_unavailable_not_a_failed_login(tmp_path):
    """A directory past ``--max-connections`` answers a new connection
    ``ERR max number of clients reached`` (SPEC section 2).  That reply to
    the peer's LOGIN is not a refused password (exit 3, "wrong password?"):
    a full directory is an unavailable one, so the peer starts, runs, and
    logs in once there is room (SPEC section 4)."""
    import socket

    from support.peers import FAST
    from support.processes import run_directory, start_process, useradd

    data = str(tmp_path / "directory")
    useradd(data, "alice", PASSWORD)
    with run_directory("--max-connections", "1", data_dir=data) as d:
        hog = socket.create_connection(d.address, timeout=10)   # takes the only slot
        try:
            hog.sendall(b"PING 0 hog\n")
            assert hog.recv(64) == b"PONG 0 hog\n"      # the directory counts it now
            argv = peer_cmd() + ["--user", "alice", "--json", "--directory", d.hostport,
                                 "--data-dir", str(tmp_path / "alice"), "--log-level", "INFO"]
            alice = start_process(argv, ready=r'"event": "ready"',
                                  env=test_env(EURECHAT_PASSWORD=PASSWORD, **FAST),
                                  stdin=subprocess.PIPE, timeout=30)
        finally:
            hog.close()
        try:
            first = json.loads(alice.lines[0])
            assert first["event"] == "error" and "login" not in first["text"], first
            alice.wait_for_log(r"directory session re-established", timeout=20)
            alice.proc.stdin.write(b"/who\n/quit\n")
            alice.proc.stdin.flush()
            who = alice.wait_for_line(r'"event": "who"')
            assert '"name": "alice"' in who.string
            assert alice.wait(20) == 0
        finally:
            alice.stop()
