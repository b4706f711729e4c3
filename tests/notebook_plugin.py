"""How the test suite runs the notebooks: nbval (``--nbval-lax``, the test environment's own
kernel) executes every code cell of every notebook under ``notebooks/`` in smoke mode, and this
plugin adds what the course needs on top:

- the kernel runs in smoke mode, one thread, with its outputs and caches in a temporary folder
  and sliders drawn statically (nobody can move them);
- a notebook's cells stay together on one xdist worker, in order (``--dist loadfile``);
- after each exercise's last check cell, an item ``exercise <id>`` tries the stub and the solution
  in the same kernel (``exercises.py``);
- after the last cell, an item ``smoke budget`` fails when the notebook took over 60 s (kernel
  start included), and the run ends with a table of the slowest notebooks.

Loaded by the repository's ``conftest.py``, so ``pytest --nbval-lax notebooks/...`` gets it too.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

import exercises

SMOKE_BUDGET_S = 60
CELL_TIMEOUT_S = 600
_LOCK = Path(tempfile.gettempdir()) / f"course_tests_{os.getuid()}.lock"   # see tests/conftest.py
_SECONDS: dict[str, float] = {}           # this process: notebook path -> seconds of its cells so far
_TABLE: dict[str, tuple[float, str]] = {}  # the reporting process: notebook -> (seconds, outcome)
_FAILED: set[str] = set()


def _is_notebook_item(item) -> bool:
    return type(item.parent).__name__ == "IPyNbFile"


def kernel_env(workdir: Path) -> dict[str, str]:
    """What a notebook's kernel sees: the course's smoke mode, as CI runs it."""
    return {"COURSE_SMOKE": "1", "COURSE_OUTPUT_DIR": str(workdir / "outputs"),
            "COURSE_CACHE_DIR": str(workdir / "cache"), "COURSE_STATIC_WIDGETS": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def pytest_configure(config):
    config.addinivalue_line("markers", "notebook: executes a notebook")
    if getattr(config.option, "nbval_cell_timeout", None) == 2000:        # nbval's default
        config.option.nbval_cell_timeout = CELL_TIMEOUT_S


class _Budget(pytest.Item):
    """Fails when the notebook's cells (kernel start included) took over the smoke budget."""

    def runtest(self):
        seconds = _SECONDS.get(self.parent.nodeid, 0.0)
        self.user_properties.append(("notebook_seconds", round(seconds, 1)))
        assert seconds <= SMOKE_BUDGET_S, (
            f"{self.parent.name} took {seconds:.1f} s in smoke mode (budget {SMOKE_BUDGET_S} s)")

    def repr_failure(self, excinfo):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, None, f"{self.parent.nodeid}::smoke budget"


def _exercise_item(parent, ex, after):
    """An nbval cell that runs exercises.kernel_source in the notebook's kernel."""
    import copy

    import nbformat
    cell = nbformat.v4.new_code_cell(exercises.kernel_source(parent.path, ex.name))
    return type(after).from_parent(parent, name=f"exercise {ex.name}", cell_num=after.cell_num,
                                   cell=cell, options=copy.copy(after.options))


@pytest.hookimpl(wrapper=True)   # before other plugins see the items (-k, -m)
def pytest_collection_modifyitems(session, config, items):
    out, by_file = [], {}
    for item in items:
        if _is_notebook_item(item):
            by_file.setdefault(item.parent, []).append(item)
    done = set()
    for item in items:
        if not _is_notebook_item(item):
            out.append(item)
            continue
        parent = item.parent
        if parent in done:
            continue
        done.add(parent)
        cells = by_file[parent]
        last_check = {}
        for cell_item in cells:
            tagged = exercises.link(cell_item.cell)
            if tagged and tagged[1] == "check":
                last_check[tagged[0]] = cell_item
        found = exercises.exercises(parent.nb)
        for cell_item in cells:
            out.append(cell_item)
            for name, last in last_check.items():
                ex = found.get(name)
                if last is cell_item and ex is not None and ex.stub is not None and ex.solution is not None:
                    out.append(_exercise_item(parent, ex, cell_item))
        out.append(_Budget.from_parent(parent, name="smoke budget"))
    for item in out:
        if _is_notebook_item(item):
            item.add_marker(pytest.mark.notebook)
            if hasattr(item, "output_timeout"):
                item.output_timeout = 60      # nbval waits 5 s for outputs; a loaded CI machine can be slower
    items[:] = out
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """The notebook's kernel starts in its first cell's set-up: give it the smoke-mode env."""
    parent = item.parent
    if not _is_notebook_item(item) or parent.kernel is not None:
        return (yield)
    factory = getattr(item.config, "_tmp_path_factory", None)
    name = parent.path.stem[:30]
    workdir = factory.mktemp(name) if factory else Path(tempfile.mkdtemp(prefix=name))
    env = kernel_env(workdir)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return (yield)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Notebook cells hold the shared test lock, as every test does (tests/conftest.py)."""
    if not _is_notebook_item(item):
        return (yield)
    with open(_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        try:
            return (yield)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pytest_runtest_logreport(report):
    notebook, _, rest = report.nodeid.partition("::")
    if not notebook.endswith(".ipynb"):
        return
    if rest.startswith("Cell "):   # the notebook's own cells: what the budget counts
        _SECONDS[notebook] = _SECONDS.get(notebook, 0.0) + report.duration
    if report.failed:
        _FAILED.add(notebook)
    for key, value in report.user_properties:
        if key == "notebook_seconds" and report.when == "call":
            _TABLE[notebook] = (value, "failed" if notebook in _FAILED or report.failed else "passed")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    if not _TABLE:
        return
    terminalreporter.section(f"notebook smoke times (slowest first; budget {SMOKE_BUDGET_S} s)")
    for notebook, (seconds, outcome) in sorted(_TABLE.items(), key=lambda kv: -kv[1][0]):
        terminalreporter.write_line(f"{seconds:7.1f} s  {outcome:7s} {notebook}")
