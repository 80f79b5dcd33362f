"""The systemd units of ``contrib/`` are valid, hardened, and their command lines
work with the installed programs.

There is no systemd to run them under here (no PID 1 systemd in a test), so
each unit is checked three ways: ``systemd-analyze verify`` (and, for the
system unit, ``systemd-analyze security --offline``) when systemd-analyze is
installed (ci/test.sh installs it); the unit parsed here, its ``ExecStart``
pointing at an installed entry point and its hardening present, always; and
its ``ExecStart`` run for real as systemd would run it (specifiers and
``${VAR}`` expanded, ``UMask=`` applied), on loopback: the directory serves a
login and stops cleanly on SIGTERM; the peer takes commands from its FIFO
across several writers, leaves the directory on ``ExecStop``, and does not
get restarted after a refused login.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from typing import Dict, List

from support.client import FramedClient
from support.processes import READY_RE, run_directory, start_process, test_env, useradd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTRIB = os.path.join(ROOT, "contrib")
DIRECTORY_UNIT = os.path.join(CONTRIB, "eurechat-directory.service")
PEER_UNIT = os.path.join(CONTRIB, "eurechat-peer.service")
BIN = os.path.dirname(sys.executable)  # where pip put the entry points


def parse_unit(path: str) -> Dict[str, List[tuple]]:
    """``{section: [(key, value), ...]}`` in file order (keys may repeat)."""
    sections: Dict[str, List[tuple]] = {}
    current = None
    pending = ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = pending + raw.rstrip("\n")
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = line.strip("[]")
                sections[current] = []
                continue
            key, _, value = line.partition("=")
            assert current is not None, f"{path}: {line!r} outside a section"
            sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: Dict[str, List[tuple]], section: str, key: str) -> List[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Dict[str, List[tuple]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def command(line: str, specifiers: Dict[str, str], env: Dict[str, str]) -> List[str]:
    """A command line as systemd runs it: words, specifiers, ``${VAR}``, ``$$``."""
    words = []
    for word in shlex.split(line):
        word = re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else specifiers[m.group(1)],
                      word)
        word = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)
        words.append(word.replace("$$", "$"))
    return words


def analyze(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def installed_copy(path: str, tmp_path, replace: Dict[str, str]) -> str:
    """The unit with its install paths pointing at this test's installation."""
    text = open(path, encoding="utf-8").read()
    for old, new in replace.items():
        text = text.replace(old, new)
    copy = tmp_path / os.path.basename(path)
    copy.write_text(text)
    return str(copy)


# -- the system unit: the directory -------------------------------------------

def test_directory_unit_is_valid_and_hardened(tmp_path):
    unit = parse_unit(DIRECTORY_UNIT)
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    # An installed entry point, addressed by an absolute path (systemd needs one).
    assert os.path.isabs(argv[0]) and os.path.basename(argv[0]) == "eurechat-directory"
    assert os.access(os.path.join(BIN, "eurechat-directory"), os.X_OK)
    # Its data in the unit's own state directory, nowhere else writable.
    assert argv[argv.index("--data-dir") + 1] == "%S/" + one(unit, "Service", "StateDirectory")
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "NoNewPrivileges": "yes", "PrivateTmp": "yes", "UMask": "0077",
                       "StateDirectoryMode": "0700", "KillSignal": "SIGTERM",
                       "CapabilityBoundingSet": ""}.items():
        assert one(unit, "Service", key) == value, key
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]

    if shutil.which("systemd-analyze") is None:
        return  # the checks above are what can be known without systemd
    copy = installed_copy(DIRECTORY_UNIT, tmp_path, {os.path.dirname(argv[0]): BIN})
    res = analyze("verify", copy)
    # verify exits 0 on unknown keys and bad values; it only warns about them.
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr
    # Exposure 0-10 (0 best); 3 is the bound between "OK" and "MEDIUM".
    res = analyze("security", "--offline=true", "--threshold=30", copy)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "OK" in res.stdout.splitlines()[-1], res.stdout.splitlines()[-1]


def test_directory_unit_command_line_serves_and_stops_cleanly(tmp_path):
    unit = parse_unit(DIRECTORY_UNIT)
    state = tmp_path / "var-lib"
    argv = command(one(unit, "Service", "ExecStart"), {"S": str(state)}, {})
    argv[0] = os.path.join(BIN, os.path.basename(argv[0]))
    # Loopback and a free port for the test; every other option as written.
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = "0"
    data_dir = argv[argv.index("--data-dir") + 1]
    os.makedirs(data_dir, mode=0o700)  # StateDirectory=
    # UMask=, for the server and for useradd run as docs/deploy.md says.
    shell = ["/bin/sh", "-c", f'umask {one(unit, "Service", "UMask")}; exec "$0" "$@"']
    subprocess.run(shell + [argv[0], "useradd", "alice", "--password-stdin",
                            "--data-dir", data_dir], input=b"alice-password\n",
                   env=test_env(), check=True, timeout=60)
    with start_process(shell + argv, ready=READY_RE) as proc:
        port = int(proc.wait_for_line(READY_RE).group("port"))
        with FramedClient("127.0.0.1", port) as client:
            client.login("alice", "alice-password")
            assert bytes(client.request("PING", "unit")) == b"PONG 0 unit\n"
        assert proc.stop() == 0, proc.stderr()  # SIGTERM (KillSignal=): a clean exit
    files = os.listdir(data_dir)
    assert files, "the directory kept nothing in its data directory"
    for name in files:
        mode = stat.S_IMODE(os.stat(os.path.join(data_dir, name)).st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others: {oct(mode)}"


# -- the user unit: a headless peer -------------------------------------------

class PeerUnit:
    """The peer unit laid out in a made-up home, as systemd --user would run it."""

    def __init__(self, tmp_path, directory: str, password: str) -> None:
        self.unit = parse_unit(PEER_UNIT)
        home = tmp_path / "home"
        self.spec = {"h": str(home), "E": str(home / ".config"),
                     "S": str(home / ".local" / "state"), "t": str(tmp_path / "run")}
        bin_dir = home / ".local" / "bin"
        bin_dir.mkdir(parents=True)
        os.symlink(os.path.join(BIN, "eurechat-peer"), bin_dir / "eurechat-peer")
        config = home / ".config" / "eurechat"
        config.mkdir(parents=True)
        self.env = {"EURECHAT_USER": "newsbot", "EURECHAT_DIRECTORY": directory,
                    "EURECHAT_LISTEN": "127.0.0.1:0"}
        (config / "peer.env").write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        (config / "peer.password").write_text(password + "\n")
        env_file = command(one(self.unit, "Service", "EnvironmentFile"), self.spec, {})
        assert env_file == [str(config / "peer.env")]
        runtime = os.path.join(self.spec["t"], one(self.unit, "Service", "RuntimeDirectory"))
        os.makedirs(runtime, mode=0o700)  # RuntimeDirectory=
        self.fifo = os.path.join(runtime, "commands")

    def run(self, key: str) -> List[str]:
        return command(one(self.unit, "Service", key), self.spec, self.env)

    def start(self):
        subprocess.run(self.run("ExecStartPre"), check=True, timeout=30)
        assert stat.S_ISFIFO(os.stat(self.fifo).st_mode)
        return start_process(self.run("ExecStart"), env=test_env())

    def write(self, line: str) -> None:
        """One writer: open, write one command, close (as ``echo ... > fifo``)."""
        with open(self.fifo, "w") as f:
            f.write(line + "\n")


def events(proc, start: int = 0) -> List[dict]:
    return [json.loads(line) for line in proc.lines[start:] if line.startswith("{")]


def test_peer_unit_is_valid(tmp_path):
    unit = parse_unit(PEER_UNIT)
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    # sh only redirects stdin and execs the entry point, which pip installs.
    assert argv[:2] == ["/bin/sh", "-c"] and argv[2].startswith("exec ")
    assert argv[3] == "%h/.local/bin/eurechat-peer"
    assert os.access(os.path.join(BIN, "eurechat-peer"), os.X_OK)
    assert "--json" in argv and "--password-file" in argv
    assert set(one(unit, "Service", "RestartPreventExitStatus").split()) == {"2", "3", "4", "5", "7"}
    assert values(unit, "Install", "WantedBy") == ["default.target"]
    if shutil.which("systemd-analyze") is None:
        return
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(runtime))
    res = analyze("--user", "verify", PEER_UNIT, env=env)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_peer_unit_takes_commands_from_its_fifo_and_leaves_on_stop(tmp_path):
    with run_directory(data_dir=str(tmp_path / "directory")) as d:
        useradd(d.data_dir, "newsbot", "newsbot-password")
        useradd(d.data_dir, "watcher", "watcher-password")
        unit = PeerUnit(tmp_path, d.hostport, "newsbot-password")
        with unit.start() as peer:
            peer.wait_for_line(r'"event": "ready"')
            # Two writers one after the other: the first closing is not the end.
            for name in ("newsbot", "nobody"):
                mark = len(peer.lines)
                unit.write(f"/who {name}")
                peer.wait_for_line(r'"event": "who"', start=mark)
            who = [e for e in events(peer) if e["event"] == "who"]
            assert [[u["name"] for u in e["users"]] for e in who] == [["newsbot"], []]
            with FramedClient(d.host, d.port) as client:
                client.login("watcher", "watcher-password")
                assert client.request("QUERY", "newsbot").payload.startswith(b"newsbot,")
                subprocess.run(unit.run("ExecStop"), check=True, timeout=30)
                assert peer.proc.wait(timeout=30) == 0, peer.stderr()
                # /quit sent LEAVE: gone now, not at the next liveness check.
                assert client.request("QUERY", "newsbot").payload == b""


def test_peer_unit_is_not_restarted_after_a_refused_login(tmp_path):
    with run_directory(data_dir=str(tmp_path / "directory")) as d:
        useradd(d.data_dir, "newsbot", "newsbot-password")
        unit = PeerUnit(tmp_path, d.hostport, "not-the-password")
        with unit.start() as peer:
            code = peer.proc.wait(timeout=60)
        prevent = one(unit.unit, "Service", "RestartPreventExitStatus").split()
        assert code != 0 and str(code) in prevent, (code, peer.stderr())
