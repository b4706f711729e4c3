"""The JupyterHub flow through nbgrader's exchange: the instructor releases A1 with the plain
``nbgrader`` command, two learners (simulated by folders) fetch and submit it, and
``course-grade --exchange`` collects and grades their work."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from traitlets.config import Config

from course_lib.grading import cli
from grading.crafted import ASSIGNMENT, FULL, SUBTLY_WRONG_NG, solution_answers

ROOT = Path(__file__).resolve().parents[1]
COURSE_ID = "zero2research"


def _learner(name: str, home: Path, exchange: Path):
    """What a learner's own nbgrader uses: their folder, the shared exchange, their id."""
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    config = Config()
    config.CourseDirectory.course_id = COURSE_ID
    config.CourseDirectory.student_id = name
    config.Exchange.root = str(exchange)
    config.Exchange.assignment_dir = str(home)
    config.Exchange.cache = str(home / ".nbgrader_cache")
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = ASSIGNMENT
    return coursedir, Authenticator(config=config), config


def _fetch_work_submit(name: str, home: Path, exchange: Path, answers: dict[str, str]) -> None:
    from nbgrader.exchange.default import ExchangeFetchAssignment, ExchangeSubmit
    home.mkdir(parents=True)
    coursedir, auth, config = _learner(name, home, exchange)
    ExchangeFetchAssignment(coursedir=coursedir, authenticator=auth, config=config).start()
    path = home / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    nbformat.write(nb, path)
    ExchangeSubmit(coursedir=coursedir, authenticator=auth, config=config).start()


def test_release_fetch_submit_collect_grade(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    exchange = workspace / "exchange"              # where nbgrader_config.py puts it
    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(workspace))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    released = subprocess.run([sys.executable, "-m", "nbgrader", "release_assignment", ASSIGNMENT],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    assert released.returncode == 0, released.stderr
    assert (exchange / COURSE_ID / "outbound" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").exists()

    answers = solution_answers()
    _fetch_work_submit("alice", tmp_path / "home" / "alice", exchange, answers)
    _fetch_work_submit("bob", tmp_path / "home" / "bob", exchange,
                       dict(answers, p1_answer=SUBTLY_WRONG_NG))
    inbound = sorted((exchange / COURSE_ID / "inbound").iterdir())
    assert [p.name.split("+")[0] for p in inbound] == ["alice", "bob"]
    # a learner plants a link to the instructor's files in their submission
    (inbound[1] / "stolen.ipynb").symlink_to(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")

    assert cli.main([ASSIGNMENT, "--exchange", "--course", str(ROOT), "--jobs", "2"]) == 0
    with open(workspace / "grades" / f"{ASSIGNMENT}.csv") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert (float(rows["alice"]["score"]), rows["alice"]["status"]) == (FULL, "graded")
    assert (float(rows["bob"]["score"]), rows["bob"]["status"]) == (FULL - 2, "graded")
    assert not (workspace / "submitted" / "bob" / ASSIGNMENT / "stolen.ipynb").exists()
    for student in ("alice", "bob"):
        assert (workspace / "submitted" / student / ASSIGNMENT / "timestamp.txt").exists()
        assert (workspace / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").exists()
