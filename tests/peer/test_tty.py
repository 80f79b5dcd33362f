"""The terminal mode: a real pseudo-terminal, prompt_toolkit on the other side.

A message arriving while the user is half-way through a line must not eat
that line: it is printed above the prompt, the typed text is redrawn, and
finishing the line sends exactly what was typed.
"""

from __future__ import annotations

from support.peers import peer_cmd
from support.terminal import Pty


def test_terminal_keeps_the_typed_line_while_messages_arrive(cluster):
    bob = cluster.peer("bob")
    env = cluster.env(TERM="xterm", COLUMNS="100", LINES="30")
    term = Pty(peer_cmd() + ["--user", "alice", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "alice")], env)
    try:
        pos = term.wait_for("you are alice, listening on")
        pos = term.wait_for("alice>", pos)
        term.type("/msg bob first line\r")
        bob.wait_event("message", text="first line")
        term.type("half typed")
        pos = term.wait_for("half typed", pos)
        bob.cmd("/msg alice interrupting you")
        pos = term.wait_for("bob: interrupting you", pos)
        # The prompt and the half-typed line are drawn again below the message.
        pos = term.wait_for("alice> half typed", pos)
        term.type(" and finished\r")
        m = bob.wait_event("message", text="half typed and finished")
        assert m["from"] == "alice"
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()


def test_password_prompt_on_the_terminal(cluster):
    """No EURECHAT_PASSWORD, no --password-file: the peer asks on the terminal
    (without echoing what is typed) and logs in with the answer."""
    env = cluster.env(TERM="xterm", COLUMNS="100", LINES="30")
    del env["EURECHAT_PASSWORD"]
    term = Pty(peer_cmd() + ["--user", "carol", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "carol")], env)
    try:
        pos = term.wait_for("password for carol:")
        term.type("a secret typed here\r")
        pos = term.wait_for("you are carol, listening on", pos)
        assert "a secret typed here" not in term.text()
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()
    # The account was created with the typed password: it logs in with it.
    bob = cluster.peer("carol", register=False,
                       env=cluster.env(EURECHAT_PASSWORD="a secret typed here"))
    assert bob.events("ready")
