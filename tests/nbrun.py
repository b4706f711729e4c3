"""Execute a notebook the way CI does: a fresh ``python3`` kernel, smoke mode by default."""
from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def run_notebook(path: Path, workdir: Path, smoke: bool = True, cell_timeout: int = 600,
                 threads: int | None = None) -> tuple[nbformat.NotebookNode, float]:
    """Execute ``path`` with outputs and data going under ``workdir``; returns (notebook, seconds).

    Set env ``COURSE_KEEP_EXECUTED=<folder>`` to keep the executed copies for a look.
    """
    env = {
        "COURSE_SMOKE": "1" if smoke else "0",
        "COURSE_OUTPUT_DIR": str(workdir / "outputs"),
        "COURSE_CACHE_DIR": str(workdir / "cache"),
        "COURSE_STATIC_WIDGETS": "1",
    }
    if threads:  # two notebooks run side by side under pytest -n 2: one thread each
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - start
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        keep = os.environ.get("COURSE_KEEP_EXECUTED")
        if keep:
            out = Path(keep) / path.relative_to(ROOT / "notebooks")
            out.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out)
    return nb, seconds
