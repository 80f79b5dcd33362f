"""What the user sees and types: event rendering and the two input modes.

Output: with ``--json`` every event is one JSON object per line, written and
flushed the moment it happens (programs and tests read these); otherwise a
short human line.  Input: on a terminal, prompt_toolkit keeps the input line
intact while messages are printed above it; on a pipe or file, stdin is read
line by line from a helper thread (works for pipes *and* regular files, which
the event loop cannot watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import sys
import threading
import time
from typing import AsyncIterator, Callable, Iterator, List, Optional

from .events import IncomingMessage

HELP = """commands:
  /msg NAME[,NAME...] TEXT   send TEXT (queued until each recipient has it)
  TEXT                       send to the peer(s) you last wrote to (before you
                             wrote to anyone: whoever last wrote to you)
  /who [NAME]                who is online
  /ping NAME                 round trip to NAME
  /pending                   messages not yet delivered, per recipient
  /waiting                   per recipient: how long, and when last seen online
  /verify NAME               the safety number of your key and NAME's, to compare
  /trust NAME                accept NAME's new key (after a key change warning)
  /quit                      leave the directory and exit (the queue is kept)"""


PIPE_BUF = 4096
_stderr_at_import = sys.stderr
#: What --json prints: the events of SPEC section 4, plus ``waiting``, the
#: answer to ``/waiting`` (a command beyond the SPEC: a program that only
#: speaks the SPEC never asks for it, so never sees it).
JSON_EVENTS = frozenset(
    ["ready", "message", "queued", "delivered", "who", "pong", "pending", "error",
     "waiting", "keychange", "verify", "sent"])


def ago(seconds: float) -> str:
    """A duration for humans: ``12 s``, ``5 min``, ``3 h 20 min``, ``4 days``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d = s // 86400
    return f"{d} day{'s' if d != 1 else ''}"


def waiting_line(r: dict, now: Optional[float] = None, directory_online: bool = True) -> str:
    """One recipient of ``Peer.waiting()`` for humans.

    ``last_seen`` None says only that this peer never saw the name online
    (listed by the directory, or acknowledging a message).  With the
    directory up, every waiting recipient is looked up every few seconds, so
    it is also not listed now: maybe a typo.  With the directory down, it
    was perhaps never looked up at all: that is all there is to say."""
    now = time.time() if now is None else now
    head = f"* to {r['to']}: {r['queued']} message(s) waiting for {ago(r['waited'])}; "
    if r["connected"]:
        return head + "connected now, delivering"
    if r["last_seen"] is None:
        if not directory_online:
            return head + ("not seen online by this peer so far; the directory is "
                           "unreachable, so it cannot be looked up now")
        return head + ("not listed by the directory, and never seen online by this peer: "
                       "is the name right? (the directory answers alike for a user who is "
                       "away and a name without an account)")
    return head + f"last seen online {ago(now - r['last_seen'])} ago"


def _json_line(event: dict) -> str:
    """One event as one line of JSON.  ``ensure_ascii=False`` keeps text
    readable; the characters that line-splitting readers other than ``\\n``
    treat as line breaks (U+0085, U+2028, U+2029: Python's ``splitlines``,
    JavaScript) are escaped, so one event is one line for every reader."""
    text = json.dumps(event, ensure_ascii=False)
    if "\x85" in text or "\u2028" in text or "\u2029" in text:
        text = text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028") \
            .replace("\u2029", "\\u2029")
    return text


def _wait_writable(fd: int) -> None:
    """Block until ``fd`` takes a write of up to PIPE_BUF bytes without blocking
    (or is broken: the write then fails at once).  Regular files always can."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while not poller.poll():
        pass


def _write_all(data: bytes) -> None:
    fd = sys.stdout.fileno()
    while data:
        n = os.write(fd, data)
        data = data[n:]


class Output:
    """Renders events.  ``json_mode``: the exact SPEC section 4 events."""

    def __init__(self, json_mode: bool, tty: bool = False) -> None:
        self.json_mode = json_mode
        self.tty = tty
        #: called with an inbox seq next to the write of that message to stdout
        #: (``rewind=True``: move the mark back, the write failed)
        self.mark: Callable[..., None] = lambda seq, rewind=False: None
        #: called once when stdout is gone (broken pipe)
        self.on_gone: Callable[[], None] = lambda: None
        self.gone = False

    def _write(self, line: str) -> None:
        if self.gone:
            return
        try:
            out = sys.stdout
            out.write(line + "\n")
            out.flush()
        except OSError:
            self._stdout_gone()

    def _stdout_gone(self) -> None:
        """Whoever read our stdout is gone (EPIPE): stop writing, tell the app."""
        if not self.gone:
            self.gone = True
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())   # no noise at exit
                os.close(devnull)
            except (OSError, ValueError):
                pass
            self.on_gone()

    def event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "message":
            return  # shown through show_messages (which also advances the cursor)
        if self.json_mode:
            if kind in JSON_EVENTS:
                self._write(_json_line(event))
            return
        text = self.render(event)
        if text is not None:
            self._write(text)

    def format_message(self, m: IncomingMessage) -> str:
        if self.json_mode:
            return _json_line({"event": "message", "from": m.sender, "id": m.msgid,
                               "text": m.text, "verified": m.verified})
        return f"{m.sender}: {m.text}"

    def show_messages(self, msgs: List[IncomingMessage]) -> None:
        """Show messages, advancing the display cursor just before each write.

        "Shown exactly once" across a ``kill -9`` hinges on the gap between
        the cursor update and the write to stdout; two system calls cannot be
        made atomic, so we choose the order and make the gap as small as we
        can:

        * The chunk (at most PIPE_BUF bytes, whole lines) is encoded first,
          then we wait until stdout can take it *without blocking* (poll
          POLLOUT: a pipe then has room for PIPE_BUF bytes), then ``pwrite``
          the cursor, then ``os.write`` the chunk.  The gap is two adjacent
          system calls, the second one known not to block.  Waiting before
          the mark matters: a reader that falls behind fills the pipe, and a
          write that blocks *after* the mark would leave a whole chunk marked
          but unshown for as long as the reader stalls (a kill then loses
          its display for good).  A kill while we wait loses nothing: the
          chunk is neither marked nor written, and comes at the next start.
        * The cursor goes before the write, not after, because whoever reads
          our output (and might kill us on seeing it) is woken by the write:
          by then the cursor is already consistent, so what it saw is never
          shown again.  The residual risk is a kill landing exactly between
          the two calls, which loses the display (never the message: it stays
          in the inbox).

        On a terminal (prompt_toolkit owns the screen) each message is written
        through it, then marked (a human does not kill within microseconds).
        """
        if self.gone:
            return
        if self.tty:
            for m in msgs:
                self._write(self.format_message(m))
                if self.gone:
                    return
                self.mark(m.seq)
            return
        sys.stdout.flush()
        chunk: List[bytes] = []
        size = 0
        first = last = 0
        for m in msgs:
            line = (self.format_message(m) + "\n").encode("utf-8")
            if chunk and size + len(line) > PIPE_BUF:
                if not self._emit_chunk(b"".join(chunk), first, last):
                    return
                chunk, size = [], 0
            if not chunk:
                first = m.seq
            chunk.append(line)
            size += len(line)
            last = m.seq
        if chunk:
            self._emit_chunk(b"".join(chunk), first, last)

    def _emit_chunk(self, data: bytes, first: int, last: int) -> bool:
        try:
            fd = sys.stdout.fileno()
            _wait_writable(fd)
        except (OSError, ValueError):
            self._stdout_gone()
            return False
        self.mark(last)
        try:
            _write_all(data)
        except OSError:
            self.mark(first - 1, rewind=True)   # not shown after all: again next time
            self._stdout_gone()
            return False
        return True

    def render(self, e: dict) -> Optional[str]:
        kind = e["event"]
        if kind == "ready":
            return (f"* you are {e['user']}, listening on {e['listen']}. "
                    "Type /help for commands.")
        if kind == "queued":
            return None  # every message is queued; "delivered" is the news
        if kind == "delivered":
            return f"  (delivered to {e['to']})"
        if kind == "who":
            if not e["users"]:
                return f"* {e['name']} is not online" if e.get("name") else "* nobody is online"
            return "\n".join(f"* {u['name']} at {u['address']}:{u['port']}" for u in e["users"])
        if kind == "pong":
            return f"* pong from {e['from']}: {e['ms']:.1f} ms"
        if kind == "pending":
            if not e["messages"]:
                return "* nothing pending"
            if "recipients" not in e:   # (text mode adds them; JSON stays as in the SPEC)
                return "\n".join(f"* to {m['to']} [{m['id']}]: {m['text']}"
                                 for m in e["messages"])
            lines = []
            for r in e["recipients"]:
                lines.append(waiting_line(r, directory_online=e.get("directory_online", True)))
                lines.extend(f"    [{m['id']}] {m['text']}" for m in e["messages"]
                             if m["to"] == r["to"])
            return "\n".join(lines)
        if kind == "waiting":
            if not e["recipients"]:
                return "* nothing waiting"
            online = e.get("directory_online", True)
            return "\n".join(waiting_line(r, directory_online=online) for r in e["recipients"])
        if kind == "unreachable":
            reason = e.get("reason", "")
            if reason == f"{e['to']} is not online" and e.get("last_seen") is None:
                return (f"  ({e['to']} is not listed by the directory and was never seen "
                        f"online by this peer: is the name right? {e['queued']} message(s) "
                        "queued, delivered if they appear)")
            if "directory" in reason:   # no lookup: the directory is unreachable
                return (f"  ({e['to']} cannot be looked up now: the directory is unreachable; "
                        f"{e['queued']} message(s) queued, delivered when both are back)")
            return (f"  ({e['to']} is not reachable now; {e['queued']} message(s) queued, "
                    "delivered when they are back)")
        if kind == "error":
            return f"! {e['text']}"
        if kind == "keychange":
            return (f"! WARNING: {e['name']}'s key changed: {e['old']} -> {e['new']}. "
                    f"It is a new device or a reset, or someone else; compare safety "
                    f"numbers (/verify {e['name']}) and then /trust {e['name']}")
        if kind == "verify":
            return (f"* safety number with {e['name']}: {e['number']}\n"
                    f"  (yours {e['own']}, theirs {e['theirs']}; the same on both sides "
                    "when nobody is in between)")
        if kind == "trusted":
            return f"* {e['name']}'s key {e['fingerprint']} is trusted"
        if kind == "help":
            return HELP
        return json.dumps(e, ensure_ascii=False)


async def piped_lines() -> AsyncIterator[str]:
    """Lines of stdin (pipe or file), read in a daemon thread; ends at EOF."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def reader() -> None:
        # Raw os.read, not sys.stdin: a daemon thread blocked inside a buffered
        # reader would abort the interpreter at exit (it holds the buffer lock).
        tail = b""
        try:
            while True:
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                tail += chunk
                *lines, tail = tail.split(b"\n")
                for raw in lines:
                    loop.call_soon_threadsafe(q.put_nowait, raw.decode("utf-8", "replace"))
            if tail:
                loop.call_soon_threadsafe(q.put_nowait, tail.decode("utf-8", "replace"))
        except (OSError, RuntimeError):
            pass
        finally:
            try:
                loop.call_soon_threadsafe(q.put_nowait, None)
            except RuntimeError:  # the loop is already closed: we are exiting anyway
                pass

    threading.Thread(target=reader, name="eurechat-stdin", daemon=True).start()
    while True:
        line = await q.get()
        if line is None:
            return
        yield line.rstrip("\r\n")


@contextlib.contextmanager
def _logs_above_the_prompt() -> Iterator[None]:
    """Point the logging handlers that write to stderr at the current
    ``sys.stderr``: inside ``patch_stdout`` that is prompt_toolkit's proxy,
    which prints above the input line.  A handler keeps the stream it was
    given (the real stderr, at ``basicConfig``), so without this a log line
    is written into the middle of the line being typed."""
    moved = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and \
                handler.stream in (sys.__stderr__, _stderr_at_import):
            moved.append((handler, handler.setStream(sys.stderr)))
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


async def terminal_lines(prompt: str) -> AsyncIterator[str]:
    """Lines typed at a terminal; printing (messages, notices, log lines)
    meanwhile keeps the input line intact."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession = PromptSession()
    with patch_stdout(raw=True), _logs_above_the_prompt():
        while True:
            try:
                line = await session.prompt_async(prompt)
            except (EOFError, KeyboardInterrupt):
                return
            yield line
