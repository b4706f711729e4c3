"""Shared test plumbing.

- ``@pytest.mark.exclusive``: the test runs with no other test running beside it (for
  throughput measurements under ``pytest -n 2``). Every test holds a shared lock on one file;
  an exclusive test takes it exclusively, so it waits for the running tests to end and the
  other worker waits for it.
- Notebook timings recorded with ``record_property("notebook_seconds", s)`` are printed as a
  table, slowest first, at the end of the run.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LOCK = Path(tempfile.gettempdir()) / f"course_tests_{os.getuid()}.lock"
_NOTEBOOK_TIMES: dict[str, tuple[float, str]] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "exclusive: run with no other test running at the same time")
    config.addinivalue_line("markers", "notebook: executes a notebook")


@pytest.fixture(autouse=True)
def _exclusive_lock(request):
    mode = fcntl.LOCK_EX if request.node.get_closest_marker("exclusive") else fcntl.LOCK_SH
    with open(_LOCK, "a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == "notebook_seconds":
            _NOTEBOOK_TIMES[report.nodeid] = (value, report.outcome)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    times = _NOTEBOOK_TIMES
    if not times:
        return
    terminalreporter.section("notebook smoke times (slowest first; budget 60 s)")
    for nodeid, (seconds, outcome) in sorted(times.items(), key=lambda kv: -kv[1][0]):
        terminalreporter.write_line(f"{seconds:7.1f} s  {outcome:7s} {nodeid.split('::')[-1]}")
