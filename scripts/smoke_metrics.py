"""Record every notebook's smoke-mode metrics, or compare two records.

A refactor of ``course_lib`` must not change what the notebooks measure. Run this before and
after, with the same seed, and compare::

    python scripts/smoke_metrics.py record before.json          # all notebooks, one thread each
    python scripts/smoke_metrics.py record after.json
    python scripts/smoke_metrics.py compare before.json after.json

``record`` executes each notebook in smoke mode (as the tests do) and keeps what ``save_run``
wrote to ``metrics.json``, minus the ``run`` block (time stamps, versions) and the keys that
measure wall-clock speed (their names contain one of ``TIMING_WORDS``); the temporary
folder's path reads ``<workdir>``. ``compare`` prints every
notebook whose numbers differ and exits with 1 if any do.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from nbrun import NOTEBOOKS, run_notebook  # noqa: E402

TIMING_WORDS = ("seconds", "_s", "per_s", "per_second", "time", "throughput", "wall")


def _is_timing(key: str) -> bool:
    return any(word in key.lower() for word in TIMING_WORDS)


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [_drop_timings(v) for v in value]
    return value


def record(out: Path, only: list[str]) -> None:
    results = {}
    for path in NOTEBOOKS:
        name = str(path.relative_to(ROOT / "notebooks"))
        if only and not any(word in name for word in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            _, seconds = run_notebook(path, work, smoke=True, threads=1)
            runs = sorted((work / "outputs" / "runs").glob("*/*/metrics.json"))
            metrics = {}
            for f in runs:
                saved = json.loads(f.read_text())
                saved.pop("run", None)
                saved = json.loads(json.dumps(saved).replace(str(work), "<workdir>"))  # temp paths
                metrics[str(f.parent.relative_to(work / "outputs" / "runs"))] = _drop_timings(saved)
        results[name] = metrics
        print(f"{name:55s} {seconds:6.1f} s  {len(metrics)} run(s)", flush=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def compare(a: Path, b: Path) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    differ = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for name in differ:
        print(f"DIFFERS {name}\n  before: {before.get(name)}\n  after:  {after.get(name)}")
    same = len(set(before) & set(after)) - len([k for k in differ if k in before and k in after])
    print(f"{same} notebooks identical, {len(differ)} differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--only", nargs="*", default=[], help="substrings of notebook paths")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "record":
        record(args.out, args.only)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
