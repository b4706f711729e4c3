"""A cohort with real Unix accounts (run as root; skipped otherwise): an instructor and two learners.

The exchange is set up as docs/instructors.md says (a shared folder with ``chmod 777``, the
learners' nbgrader config naming the course and the exchange, the instructor's
``COURSE_EXCHANGE_ROOT`` and a private ``COURSE_GRADING_WORKSPACE``). The instructor releases A1
with ``nbgrader release_assignment``; each learner fetches it, answers it (one right, one with a
subtle mistake) and submits it as themselves; a learner cannot list the exchange's inbox, nor read
the other learner's work or the instructor's ``solutions/`` and workspace; the instructor collects
and grades with ``course-grade --exchange``. The accounts are removed afterwards, also on failure.
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from grading.crafted import ASSIGNMENT, FULL, SUBTLY_WRONG_NG, solution_answers

ROOT = Path(__file__).resolve().parents[1]
COURSE_ID = "zero2research"
BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to create Unix accounts"),
    pytest.mark.skipif(not (shutil.which("useradd") and shutil.which("userdel") and shutil.which("runuser")),
                       reason="needs useradd, userdel and runuser"),
]

# what a learner runs in their notebook server: fill in the answer cells of the fetched notebook
FILL_IN = """
import json, sys, nbformat
path, answers = sys.argv[1], json.load(open(sys.argv[2]))
nb = nbformat.read(path, as_version=4)
for cell in nb.cells:
    gid = cell.metadata.get("nbgrader", {}).get("grade_id")
    if gid in answers:
        cell.source = answers[gid]
nbformat.write(nb, path)
"""


def _as(user: str, home: Path, args: list[str], cwd: Path, env: dict | None = None, check: bool = True):
    """Run ``args`` as ``user`` (runuser), with that user's HOME, USER and LOGNAME."""
    # this checkout's course_lib, where PYTHONPATH names it
    env = dict(env or {}, **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ})
    cmd = ["runuser", "-u", user, "--", "env", f"HOME={home}", f"USER={user}", f"LOGNAME={user}",
           f"PATH={BIN}:/usr/bin:/bin", *(f"{k}={v}" for k, v in env.items()), *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"{' '.join(args)} as {user} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _cannot_read(user: str, home: Path, path: Path) -> bool:
    probe = ("import os, sys\ntry:\n    os.listdir(sys.argv[1]) if os.path.isdir(sys.argv[1]) "
             "else open(sys.argv[1]).read()\nexcept PermissionError:\n    sys.exit(3)\n")
    return _as(user, home, [sys.executable, "-c", probe, str(path)], home, check=False).returncode == 3


def _let_others_through(paths: list[Path]) -> list[tuple[Path, int]]:
    """Give the accounts the right to traverse to the course's Python and library (o+x on each
    folder above them that lacks it, e.g. /root for a pyenv Python); returns what to put back."""
    changed = []
    for path in paths:
        for folder in [path, *path.parents]:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                changed.append((folder, mode))
                folder.chmod(mode | stat.S_IXOTH)
    return changed


@pytest.fixture
def accounts():
    """Two learners and an instructor, each with a private home under one base folder."""
    tag = secrets.token_hex(3)
    names = {"learner1": f"c2rlearner1{tag}", "learner2": f"c2rlearner2{tag}", "instructor": f"c2rinstructor{tag}"}
    base = Path(tempfile.mkdtemp(prefix="cohort-"))
    base.chmod(0o755)
    restore = _let_others_through([Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve(), ROOT])
    made = []
    try:
        homes = {}
        for role, user in names.items():
            home = base / "home" / user
            home.parent.mkdir(exist_ok=True, mode=0o755)
            subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", user],
                           check=True, capture_output=True)
            made.append(user)
            home.chmod(0o700)
            homes[role] = home
        yield names, homes, base
    finally:
        for user in made:
            if subprocess.run(["userdel", "--remove", user], capture_output=True).returncode != 0:
                subprocess.run(["userdel", "--force", "--remove", user], capture_output=True)
        for folder, mode in reversed(restore):
            folder.chmod(mode)
        shutil.rmtree(base, ignore_errors=True)


def test_a_cohort_with_real_accounts(accounts):
    names, homes, base = accounts
    learners = ["learner1", "learner2"]
    # the shared exchange, as the guide sets it up
    exchange = base / "exchange"
    exchange.mkdir()
    exchange.chmod(0o777)
    # the instructor's clone of the course (only what grading needs) and private workspace
    teacher, t_home = names["instructor"], homes["instructor"]
    course = t_home / "course"
    for part in ("solutions", "assignments"):
        shutil.copytree(ROOT / part, course / part)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    subprocess.run(["chown", "-R", f"{teacher}:{teacher}", str(t_home)], check=True)
    t_env = {"COURSE_EXCHANGE_ROOT": str(exchange), "COURSE_GRADING_WORKSPACE": str(t_home / "workspace")}
    _as(teacher, t_home, [sys.executable, "-m", "nbgrader", "release_assignment", ASSIGNMENT], course, t_env)

    # each learner: the guide's learner config, fetch, answer, submit, as themselves
    answers = solution_answers()
    work = {"learner1": answers, "learner2": dict(answers, p1_answer=SUBTLY_WRONG_NG)}
    for role in learners:
        user, home = names[role], homes[role]
        (home / ".jupyter").mkdir()
        (home / ".jupyter" / "nbgrader_config.py").write_text(
            f'c = get_config()\nc.CourseDirectory.course_id = "{COURSE_ID}"\nc.Exchange.root = "{exchange}"\n')
        (home / "answers.json").write_text(json.dumps(work[role]))
        subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)
        _as(user, home, [sys.executable, "-m", "nbgrader", "fetch_assignment", ASSIGNMENT], home)
        notebook = home / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        _as(user, home, [sys.executable, "-c", FILL_IN, str(notebook), str(home / "answers.json")], home)
        _as(user, home, [sys.executable, "-m", "nbgrader", "submit", ASSIGNMENT], home)

    inbound = exchange / COURSE_ID / "inbound"
    submissions = sorted(inbound.iterdir())
    assert sorted(p.name.split("+")[0] for p in submissions) == sorted(names[r] for r in learners)
    for p in submissions:       # nbgrader names each submission <student>+<assignment>+<time>+<random>
        assert len(p.name.split("+")) == 4, f"{p.name}: no random part, so another learner could guess it"
    # what one learner cannot see of the others
    l2, l2_home = names["learner2"], homes["learner2"]
    assert _cannot_read(l2, l2_home, inbound), "a learner can list the exchange's inbox"
    assert _cannot_read(l2, l2_home, homes["learner1"] / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"), \
        "a learner can read another learner's work"
    for role in learners:
        user, home = names[role], homes[role]
        assert _cannot_read(user, home, course / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"), \
            "a learner can read the instructor's solutions/"
        assert _cannot_read(user, home, t_home / "workspace"), "a learner can read the instructor's workspace"

    # the instructor collects and grades
    _as(teacher, t_home, [str(BIN / "course-grade"), ASSIGNMENT, "--exchange", "--course", str(course),
                          "--jobs", "2"], course, t_env)
    with open(t_home / "workspace" / "grades" / f"{ASSIGNMENT}.csv") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh)}
    assert (float(rows[names["learner1"]]["score"]), rows[names["learner1"]]["status"]) == (FULL, "graded")
    assert (float(rows[names["learner2"]]["score"]), rows[names["learner2"]]["status"]) == (FULL - 2, "graded")
