"""Fixtures of the directory tests: a running directory with two accounts."""

from __future__ import annotations

import pytest

from support.processes import run_directory, useradd

PASSWORDS = {"corrado": "corrado-password", "bob": "bob-password-1"}


@pytest.fixture(scope="module")
def passwords():
    return dict(PASSWORDS)


@pytest.fixture(scope="module")
def accounts_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("directory-data"))
    for name, password in PASSWORDS.items():
        useradd(data_dir, name, password)
    return data_dir


@pytest.fixture(scope="module")
def directory(accounts_dir):
    """One single-worker directory shared by a module's tests (bind policy own).
    The throttle limit is raised so wrong-password tests do not lock out the
    loopback address for the rest of the module."""
    with run_directory("--check-interval", "3600", "--throttle-limit", "1000",
                       data_dir=accounts_dir) as d:
        yield d
