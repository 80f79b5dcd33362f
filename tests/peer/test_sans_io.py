"""The peer's rules stay without I/O: no event loop, no sockets, no threads
in the modules that decide, and they import only each other (and the
framing layer), never an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import eurechat.peer

PEER = Path(eurechat.peer.__file__).parent
RULES = ["outbox", "dialing", "pairing", "liveness", "addresses", "commit", "settings",
         "events", "protocol"]
IO = {"asyncio", "socket", "selectors", "threading", "ssl", "subprocess", "sqlite3"}


def imports(module: str):
    tree = ast.parse((PEER / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or ""


@pytest.mark.parametrize("module", RULES)
def test_a_rule_module_imports_no_io(module):
    absolute = {name.split(".")[0] for level, name in imports(module) if level == 0}
    assert not absolute & IO, f"{module}.py imports {sorted(absolute & IO)}"


@pytest.mark.parametrize("module", RULES)
def test_a_rule_module_imports_only_rules_and_framing(module):
    for level, name in imports(module):
        if level == 1:
            assert name in RULES, f"{module}.py imports .{name}"
        elif level == 2:
            assert name in {"framing", "errors", "message", "names", "rules"}, (
                f"{module}.py imports ..{name}")
