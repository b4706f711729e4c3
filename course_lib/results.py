"""``course-results``: run notebooks in full mode and compare what they measure with their targets.

    course-results notebooks/2_deep_learning/01_numpy_network.ipynb        # full mode, this device
    course-results notebooks/4_diffusion/02_ddpm.ipynb -p DATASET=mnist    # a real dataset (GPU)
    course-results notebooks/... --threads 1 --record results/cpu.json     # refresh the record
    course-results --readme                                                # record -> README column

Each notebook runs with papermill (full mode unless ``--smoke``) in a scratch folder: its
``save_run`` writes ``metrics.json`` there (``COURSE_OUTPUT_DIR``), with the targets the notebook
declared beside its numbers (``save_run(..., targets={"recognised": (">=", 0.90)})``). The command
prints one row per target: notebook, metric, target, measured, met, wall time, device.

``--record FILE`` merges the rows into a JSON record (one entry per notebook and parameters, with
date, versions, device, CPU count, threads, wall time and the hash of the notebook's code cells).
``results/cpu.json`` is the reference CPU run; ``tests/test_results_record.py`` fails when one of
its results misses its target, when a recorded notebook's code changed since it was recorded, or
when the README's "Measured" column is not a fresh rendering of it (``course-results --readme``).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from course_lib.artifacts import check_targets

__all__ = ["code_hash", "run_notebook", "NotebookResult", "format_table", "merge_record",
           "render_readme", "main"]

DEFAULT_RECORD = Path("results/cpu.json")
README_BEGIN = "<!-- course-results: the Measured column below is written by `course-results --readme` -->"
README_END = "<!-- /course-results -->"
MEASURED_HEADER = "Measured (full mode, `results/cpu.json`)"
_SHOW_OP = {">=": "≥", "<=": "≤", ">": ">", "<": "<", "==": "="}


# ---------------------------------------------------------------------------------------------
# the notebook's code, and where it sits in the course
# ---------------------------------------------------------------------------------------------

def code_hash(path: Path) -> str:
    """``"sha256:<hex>"`` of the notebook's code cells, in order (markdown, outputs and metadata
    do not count, so a prose edit keeps the hash and a code edit changes it)."""
    import nbformat

    cells = nbformat.read(str(path), as_version=4).cells
    sources = [cell.source for cell in cells if cell.cell_type == "code"]
    return "sha256:" + hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def notebook_key(path: Path) -> str:
    """The notebook's path under the course's ``notebooks/`` folder: ``"4_diffusion/02_ddpm.ipynb"``."""
    parts = path.resolve().parts
    if "notebooks" not in parts:
        return path.name
    last = len(parts) - 1 - parts[::-1].index("notebooks")
    return "/".join(parts[last + 1:])


def record_key(path: Path, params: dict[str, Any]) -> str:
    """One record entry per notebook and parameters: ``"4_diffusion/02_ddpm.ipynb DATASET='mnist'"``."""
    return " ".join([notebook_key(path), *(f"{k}={v!r}" for k, v in sorted(params.items()))])


def parameter_names(path: Path) -> list[str]:
    """The names the notebook's ``parameters`` cell assigns (``SMOKE``, ``SEED``, ``DATASET`` ...)."""
    import nbformat

    for cell in nbformat.read(str(path), as_version=4).cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return [t.id for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)]
    raise ValueError(f"{path} has no cell tagged 'parameters'")


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------

def cpu_count() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: str) -> str:
    """``"cpu (AMD EPYC 7B13, 2 cores)"``, ``"cuda (NVIDIA H100 80GB HBM3)"``, ``"mps (arm64)"``."""
    if device.startswith("cuda"):
        import torch
        name = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else "?"
        return f"{device} ({name})"
    if device == "mps":
        return f"mps ({platform.machine()})"
    return f"{device} ({_cpu_name()}, {cpu_count()} cores)"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# running one notebook
# ---------------------------------------------------------------------------------------------

@dataclass
class NotebookResult:
    """What one notebook run gave: its targets against the measured values."""

    path: Path
    params: dict[str, Any]
    smoke: bool
    threads: int | None
    code_hash: str
    seconds: float = 0.0
    device: str = "?"
    rows: list[dict[str, Any]] = field(default_factory=list)   # run, metric, op, target, measured, met
    error: str | None = None
    load_before: float | None = None          # the 1-minute load average when the run started
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def all_met(self) -> bool:
        return self.error is None and all(row["met"] for row in self.rows)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (the kernel inherits it), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rows_from_outputs(outputs: Path, smoke: bool) -> tuple[list[dict[str, Any]], str]:
    """(rows, device) from every metrics.json that the notebook's ``save_run`` calls wrote."""
    files = sorted((outputs / "runs").glob("*/*/metrics.json"))
    if not files:
        raise RuntimeError("the notebook saved no metrics (no course_lib.artifacts.save_run call ran)")
    rows, device = [], "?"
    for f in files:
        saved = json.loads(f.read_text())
        run = saved.get("run", {})
        if run.get("smoke") is not None and run["smoke"] != smoke:
            raise RuntimeError(f"{run.get('name')} ran in {'smoke' if run['smoke'] else 'full'} mode, not the mode "
                               "asked for: does its set-up cell pass smoke=SMOKE to course_lib.setup?")
        device = run.get("device") or device
        for check in check_targets(saved, saved.get("targets", {})):
            rows.append({"run": run.get("name", f.parent.parent.name), "metric": check.metric, "op": check.op,
                         "target": check.target, "measured": check.measured, "met": check.met})
    return rows, device


def run_notebook(path: Path, *, smoke: bool = False, threads: int | None = None,
                 params: dict[str, Any] | None = None, workdir: Path | None = None,
                 cell_timeout: int | None = None) -> NotebookResult:
    """Execute ``path`` with papermill (full mode unless ``smoke``) and check its targets.

    Outputs and caches go under ``workdir`` (a temporary folder, removed afterwards, when None);
    datasets stay in the usual ``COURSE_DATA_DIR``. ``threads`` sets OMP/MKL threads in the kernel.
    A notebook that fails comes back with ``error`` set rather than raising.
    """
    import papermill

    path = Path(path)
    params = dict(params or {})
    result = NotebookResult(path, params, smoke, threads, code_hash(path), load_before=_load_average())
    scratch = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="course-results-"))
    scratch.mkdir(parents=True, exist_ok=True)
    env = {"COURSE_SMOKE": "1" if smoke else "0", "COURSE_OUTPUT_DIR": str(scratch / "outputs"),
           "COURSE_CACHE_DIR": str(scratch / "cache"), "COURSE_STATIC_WIDGETS": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    try:
        with _environment(env):
            papermill.execute_notebook(str(path), str(scratch / f"executed_{path.name}"),
                                       parameters={"SMOKE": smoke, **params}, cwd=str(path.parent),
                                       kernel_name="python3", language="python", progress_bar=False,
                                       execution_timeout=cell_timeout)
        result.seconds = time.perf_counter() - start
        result.rows, result.device = _rows_from_outputs(scratch / "outputs", smoke)
    except Exception as exc:  # a notebook that fails is reported, and the others still run
        result.seconds = time.perf_counter() - start
        if type(exc).__name__ == "PapermillExecutionError":
            first_line = (exc.source.strip().splitlines() or [""])[0][:50]
            result.error = f"{exc.ename}: {exc.evalue} (in the cell that starts {first_line!r})"
        else:
            result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    if result.device != "?":
        result.device = describe_device(result.device)
    return result


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _wall(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def format_table(results: list[NotebookResult]) -> str:
    """notebook | metric | target | measured | met | wall time | device: one line per target (the
    notebook, wall time and device on its first line); a failed run shows its error instead."""
    header = ["notebook", "metric", "target", "measured", "met", "wall time", "device"]
    lines = []
    for r in results:
        several_runs = len({row["run"] for row in r.rows}) > 1
        if r.error is not None:
            rows = [["FAILED", "", "", "", r.error]]
        elif not r.rows:
            rows = [["(no targets declared)", "", "", "-", r.device]]
        else:
            rows = [[f"{row['run']}:{row['metric']}" if several_runs else row["metric"],
                     f"{row['op']} {_value(row['target'])}", _value(row["measured"]),
                     "yes" if row["met"] else "NO", r.device] for row in r.rows]
        for i, (metric, target, measured, met, device) in enumerate(rows):
            first = i == 0
            lines.append([record_key(r.path, r.params) if first else "", metric, target, measured, met,
                          _wall(r.seconds) if first else "", device if first else ""])
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    show = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([show(header), show(["-" * w for w in widths]), *map(show, lines)])


# ---------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    import torch

    import course_lib
    return {"python": platform.python_version(), "torch": torch.__version__, "course_lib": course_lib.__version__}


def record_entry(r: NotebookResult) -> dict[str, Any]:
    """The JSON entry of one notebook run."""
    return {"date": r.started,
            "mode": "smoke" if r.smoke else "full",
            "parameters": r.params,
            "code_hash": r.code_hash,
            "wall_s": round(r.seconds, 1),
            "device": r.device,
            "cpu_count": cpu_count(),
            "threads": r.threads,
            "load_average_before": r.load_before,
            **_versions(),
            "targets": [{k: row[k] for k in ("run", "metric", "op", "target", "measured", "met")} for row in r.rows]}


def load_record(path: Path) -> dict[str, Any]:
    """``{"about": ..., "notebooks": {key: entry}}``; an empty record when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {"about": "Results of course notebooks, written by course-results --record (CONTRIBUTING.md, "
                         "'Results on record'); one entry per notebook and parameters.", "notebooks": {}}
    return json.loads(path.read_text())


def merge_record(path: Path, results: list[NotebookResult]) -> list[str]:
    """Write the runs that finished into the record at ``path`` (replacing their earlier entries);
    returns the keys written."""
    record = load_record(path)
    written = []
    for r in results:
        if r.error is None:
            key = record_key(r.path, r.params)
            record["notebooks"][key] = record_entry(r)
            written.append(key)
    record["notebooks"] = dict(sorted(record["notebooks"].items()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return written


# ---------------------------------------------------------------------------------------------
# the README's course map
# ---------------------------------------------------------------------------------------------

def measured_cell(entry: dict[str, Any]) -> str:
    """``"test_accuracy 0.9722 ✅ (≥ 0.95) · 41 s"``: a record entry in one table cell."""
    parts = [f"{t['metric']} {_value(t['measured'])} {'✅' if t['met'] else '❌'} "
             f"({_SHOW_OP[t['op']]} {_value(t['target'])})" for t in entry["targets"]]
    return "; ".join(parts or ["no targets"]) + f" · {_wall(entry['wall_s'])}"


def _entry_for_row(record: dict[str, Any], phase: str, stem: str) -> dict[str, Any] | None:
    """The full-mode record of notebook ``stem`` of phase ``phase`` (its default parameters)."""
    for key, entry in record["notebooks"].items():
        folder, _, name = key.rpartition("/")
        same_phase = folder.startswith(f"{phase}_") if folder else phase == "0"
        if name == f"{stem}.ipynb" and same_phase and entry["mode"] == "full":
            return entry
    return None


def render_readme(text: str, record: dict[str, Any]) -> str:
    """``text`` with the course map's last column (between the course-results markers) rewritten
    from ``record``; everything else is kept as it is."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"the README has no course map between {README_BEGIN!r} and {README_END!r}")
    head, rest = text.split(README_BEGIN, 1)
    block, tail = rest.split(README_END, 1)
    lines, phase, width = block.split("\n"), "0", None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if width is None:                        # the header: its columns, less a Measured column
            width = len(cells) - (cells[-1] == MEASURED_HEADER)
            lines[i] = _table_line([*cells[:width], MEASURED_HEADER])
            continue
        cells = cells[:width]                    # its old Measured cell goes; a new row has none yet
        if set("".join(cells)) <= set("-: "):
            lines[i] = "|" + "|".join("---" for _ in range(width + 1)) + "|"
            continue
        if cells[0][:1].isdigit():
            phase = cells[0].split()[0]
        stem = cells[1].strip("`") if cells[1].startswith("`") and cells[1].endswith("`") else None
        entry = _entry_for_row(record, phase, stem) if stem else None
        lines[i] = _table_line([*cells, measured_cell(entry) if entry else ""])
    return head + README_BEGIN + "\n".join(lines) + README_END + tail


def _table_line(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

def _parameter(text: str) -> tuple[str, Any]:
    """``"DATASET=mnist"`` -> ("DATASET", "mnist"); ``"SEED=1"`` -> ("SEED", 1)."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. DATASET=mnist)")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="course-results", description="Run notebooks (full mode unless --smoke) with papermill and print "
        "their declared targets against what they measured; optionally record the results.")
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run, e.g. notebooks/4_diffusion/02_ddpm.ipynb")
    p.add_argument("-p", "--parameter", action="append", type=_parameter, default=[], metavar="NAME=VALUE",
                   help="a notebook parameter, e.g. -p DATASET=mnist (applied where a notebook has it; repeatable)")
    p.add_argument("--smoke", action="store_true", help="smoke mode (seconds; the targets are for full mode)")
    p.add_argument("--threads", type=int, help="CPU threads for each notebook's kernel (OMP/MKL; default: all)")
    p.add_argument("--record", type=Path, nargs="?", const=DEFAULT_RECORD, metavar="FILE",
                   help=f"merge the results into this JSON record (default {DEFAULT_RECORD}); with --readme, "
                        "the record to render")
    p.add_argument("--readme", type=Path, nargs="?", const=Path("README.md"), metavar="README",
                   help="write the record into the README's course map (default README.md) and stop")
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep each run's executed notebook and outputs in DIR")
    p.add_argument("--cell-timeout", type=int, help="seconds per cell (default: none)")
    return p


def _params_for(path: Path, params: dict[str, Any]) -> dict[str, Any]:
    names = parameter_names(path)
    return {k: v for k, v in params.items() if k in names}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.readme is not None:
        record_path = args.record or DEFAULT_RECORD
        text = args.readme.read_text()
        new = render_readme(text, load_record(record_path))
        if new != text:
            args.readme.write_text(new)
        print(f"{args.readme}: the course map's Measured column {'rewritten' if new != text else 'is up to date'} "
              f"from {record_path}")
        return 0
    if not args.notebooks:
        _parser().error("name at least one notebook (or use --readme)")
    params = dict(args.parameter)
    missing = [p for p in args.notebooks if not p.is_file()]
    if missing:
        _parser().error(f"no such notebook: {', '.join(map(str, missing))}")
    unused = [k for k in params if not any(k in parameter_names(p) for p in args.notebooks)]
    if unused:
        _parser().error(f"no chosen notebook has the parameter(s) {unused}")

    results = []
    for path in args.notebooks:
        own = _params_for(path, params)
        skipped = sorted(set(params) - set(own))
        mode = "smoke" if args.smoke else "full"
        print(f"running {notebook_key(path)} ({mode} mode{', ' + str(own) if own else ''}"
              f"{'; it has no ' + ', '.join(skipped) + ' parameter' if skipped else ''}) ...", flush=True)
        workdir = args.keep / path.stem if args.keep else None
        result = run_notebook(path, smoke=args.smoke, threads=args.threads, params=own, workdir=workdir,
                              cell_timeout=args.cell_timeout)
        if result.error:
            print(f"  failed after {_wall(result.seconds)}: {result.error}"
                  f"{'' if args.keep else ' (--keep DIR keeps the executed notebook to look at)'}", flush=True)
        else:
            print(f"  done in {_wall(result.seconds)}", flush=True)
        results.append(result)

    print()
    print(format_table(results))
    if args.smoke:
        print("\nsmoke mode: tiny sizes, so the targets (set for full mode) are usually missed; "
              "this only checks the plumbing")
    if args.record is not None:
        written = merge_record(args.record, results)
        print(f"\nrecorded in {args.record}: {', '.join(written) or 'nothing (every run failed)'}")
    failed = any(r.error for r in results)
    missed = not args.smoke and not all(r.all_met for r in results)
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
