"""Execute a notebook the way CI does: a fresh ``python3`` kernel, smoke mode by default."""
from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def inject_parameters(nb: nbformat.NotebookNode, params: dict) -> None:
    """Put a cell assigning ``params`` right after the ``parameters`` cell, as papermill does."""
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    unknown = [k for k in params if f"{k} =" not in nb.cells[index].source]
    if unknown:
        raise ValueError(f"{unknown} are not parameters of this notebook:\n{nb.cells[index].source}")
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def run_notebook(path: Path, workdir: Path, smoke: bool = True, cell_timeout: int = 600,
                 threads: int | None = None, params: dict | None = None,
                 env: dict | None = None) -> tuple[nbformat.NotebookNode, float]:
    """Execute ``path`` with outputs and data going under ``workdir``; returns (notebook, seconds).

    ``params`` override the notebook's parameters cell (e.g. ``{"DATASET": "mnist"}``); ``env``
    adds environment variables for the kernel. Set env ``COURSE_KEEP_EXECUTED=<folder>`` to keep
    the executed copies for a look.
    """
    kernel_env = {
        "COURSE_SMOKE": "1" if smoke else "0",
        "COURSE_OUTPUT_DIR": str(workdir / "outputs"),
        "COURSE_CACHE_DIR": str(workdir / "cache"),
        "COURSE_STATIC_WIDGETS": "1",
    }
    if threads:  # two notebooks run side by side under pytest -n 2: one thread each
        kernel_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    kernel_env.update(env or {})
    nb = nbformat.read(path, as_version=4)
    if params:
        inject_parameters(nb, params)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
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
