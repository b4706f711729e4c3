"""Shared test plumbing.

- ``@pytest.mark.exclusive``: the test runs with no other test running beside it (for
  throughput measurements under ``pytest -n 2``). Every test holds a shared lock on one file;
  an exclusive test takes it exclusively, so it waits for the running tests to end and the
  other worker waits for it.

The notebooks' own plumbing (nbval, smoke mode, exercise trials, the budget and the table of slow
notebooks) is tests/notebook_plugin.py, loaded by the repository's conftest.py.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LOCK = Path(tempfile.gettempdir()) / f"course_tests_{os.getuid()}.lock"


def pytest_configure(config):
    config.addinivalue_line("markers", "exclusive: run with no other test running at the same time")


@pytest.fixture(autouse=True)
def _exclusive_lock(request):
    mode = fcntl.LOCK_EX if request.node.get_closest_marker("exclusive") else fcntl.LOCK_SH
    with open(_LOCK, "a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
