"""The library's shape is checked, not hoped for: ruff (style, unused names, import order) and the
layering contract of pyproject.toml (lint-imports: a layer never imports a layer above it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed; install the dev extra: pip install -e '.[dev]'")
    return str(path)


def _run(args: list[str], cwd: Path, env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = None if env_path is None else {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_ruff_is_clean():
    out = _run([_tool("ruff"), "check", "--no-cache", "."], ROOT)
    assert out.returncode == 0, "ruff found problems (fix them, or `ruff check --fix .`):\n" + out.stdout[-4000:]


def test_layering_contract_holds():
    out = _run([_tool("lint-imports"), "--no-cache"], ROOT)
    assert out.returncode == 0, "an import points up a layer:\n" + out.stdout[-4000:]


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "course_lib", tmp_path / "course_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_catches_an_upward_import(tmp_path):
    """A model that imports the diffusion package (a layer above) breaks the contract."""
    work = _copy_package(tmp_path)
    gpt = work / "course_lib" / "models" / "gpt.py"
    gpt.write_text(gpt.read_text() + "\nfrom course_lib.diffusion import schedule  # noqa: E402,F401\n")
    out = _run([_tool("lint-imports"), "--no-cache"], work, env_path=work)
    assert out.returncode != 0 and "course_lib.models is not allowed to import course_lib.diffusion" in out.stdout


def test_ruff_catches_an_unused_import(tmp_path):
    work = _copy_package(tmp_path)
    (work / "course_lib" / "nn" / "layers.py").write_text(
        (ROOT / "course_lib" / "nn" / "layers.py").read_text() + "\nimport json\n")
    out = _run([_tool("ruff"), "check", "--no-cache", "course_lib/nn/layers.py"], work)
    assert out.returncode != 0 and "F401" in out.stdout
