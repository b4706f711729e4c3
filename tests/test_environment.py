"""environment.yml (conda) and pyproject.toml (pip) must agree on every dependency."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return re.sub(r"[-_.]+", "-", name.lower()), spec.replace(" ", "")


def pip_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [r for r in extra if not r.startswith(project["name"] + "[")]  # an extra naming another
    return dict(_split(r) for r in reqs)


def conda_requirements(text: str) -> dict[str, str]:
    deps = yaml.safe_load(text)["dependencies"]
    out = {}
    for dep in deps:
        if isinstance(dep, str):
            name, spec = _split(dep)
            if name not in ("python", "pip"):
                out[CONDA_TO_PIP.get(name, name)] = spec
    return out


def disagreements(pip: dict[str, str], conda: dict[str, str]) -> list[str]:
    problems = [f"{n} is in pyproject.toml but not in environment.yml" for n in pip.keys() - conda.keys()]
    problems += [f"{n} is in environment.yml but not in pyproject.toml" for n in conda.keys() - pip.keys()]
    problems += [f"{n}: pyproject.toml says {pip[n]!r}, environment.yml says {conda[n]!r}"
                 for n in pip.keys() & conda.keys() if pip[n] != conda[n]]
    return problems


def test_environment_yml_matches_pyproject():
    problems = disagreements(pip_requirements(), conda_requirements((ROOT / "environment.yml").read_text()))
    assert not problems, "environment.yml and pyproject.toml disagree:\n" + "\n".join(problems)


def test_a_disagreement_is_caught():
    text = (ROOT / "environment.yml").read_text()
    assert disagreements(pip_requirements(), conda_requirements(text.replace("numpy>=1.26", "numpy>=1.20")))
    assert disagreements(pip_requirements(), conda_requirements(text.replace("  - scipy>=1.11\n", "")))


def test_python_version_agrees():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    assert f"python{project['requires-python']}" in conda
