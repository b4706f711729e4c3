"""Bring submissions into nbgrader's ``submitted/<student>/<assignment>/`` folder.

Three sources:

- an **LMS zip download** (Canvas, Moodle, Blackboard ...): every ``.ipynb`` in it whose name
  matches :data:`LMS_NAME` (``<student>_[LATE_][<numbers>_]<file>.ipynb``, matched against the
  file name, not the whole path) or that sits in a per-student folder;
- a **folder**: ``<student>/<assignment>/*.ipynb`` (nbgrader's own layout),
  ``<student>/*.ipynb``, or LMS-style file names side by side;
- the **nbgrader exchange** (JupyterHub): the newest submission of each learner, like
  ``nbgrader collect`` but without following symbolic links.

A submitted notebook whose name does not match the assignment's notebook is accepted when the
assignment has a single notebook and the student handed in a single notebook.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from course_lib.grading.course import Course, CourseError

__all__ = ["LMS_NAME", "collect_folder", "collect_zip", "collect_exchange"]

LMS_NAME = r"^(?P<student_id>[^/_]+)_(?:LATE_)?(?:[0-9]+_)*(?P<file_id>[^/]+\.ipynb)$"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
MAX_UNZIPPED = 2 * 1024 ** 3


def _check_id(student: str) -> str:
    if not _SAFE_ID.match(student) or student in (".", ".."):
        raise CourseError(f"{student!r} is not a usable student id")
    return student


def _notebook_name(file_name: str, notebooks: list[str]) -> str:
    stem = Path(file_name).stem
    for name in notebooks:
        if stem == name or stem.endswith(name):
            return f"{name}.ipynb"
    return f"{notebooks[0]}.ipynb" if len(notebooks) == 1 else file_name


def _gather(folder: Path, assignment: str, notebooks: list[str], regex: str) -> dict[str, list[Path]]:
    """student -> files of their submission, for the layouts in the module docstring."""
    found: dict[str, list[Path]] = {}
    pattern = re.compile(regex)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "__MACOSX")) or entry.is_symlink():
            continue
        if entry.is_dir():
            inner = entry / assignment if (entry / assignment).is_dir() else entry
            files = _regular_files(inner)
            if any(p.suffix == ".ipynb" for p in files):
                found.setdefault(_check_id(entry.name), []).extend(files)
        elif entry.suffix == ".ipynb":
            match = pattern.match(entry.name)
            if match:
                found.setdefault(_check_id(match.group("student_id")), []).append(entry)
    return found


def _install(course: Course, assignment: str, student: str, files: list[Path],
             notebooks: list[str]) -> None:
    dest = course.submitted(student, assignment)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    single = len([f for f in files if f.suffix == ".ipynb"]) == 1
    for f in files:
        name = f.name
        if f.suffix == ".ipynb":
            match = re.match(LMS_NAME, name)
            name = _notebook_name(match.group("file_id") if match else name, notebooks) \
                if single or match else name
        shutil.copy(f, dest / name)


def collect_folder(course: Course, assignment: str, folder: Path, regex: str = LMS_NAME) -> list[str]:
    notebooks = [nb.name for nb in course.assignment_info(assignment).notebooks]
    found = _gather(folder, assignment, notebooks, regex)
    if not found:
        raise CourseError(f"no submissions found in {folder}")
    for student, files in found.items():
        _install(course, assignment, student, files, notebooks)
    return sorted(found)


def _safe_extract(archive: zipfile.ZipFile, target: Path) -> None:
    total = 0
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts:
            raise CourseError(f"the zip holds an unsafe path: {info.filename}")
        total += info.file_size
        if total > MAX_UNZIPPED:
            raise CourseError("the zip unpacks to more than 2 GiB")
    archive.extractall(target)


def collect_zip(course: Course, assignment: str, zip_path: Path, regex: str = LMS_NAME) -> list[str]:
    target = course.workspace / "downloaded" / assignment / "extracted"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            _safe_extract(archive, target)
    except zipfile.BadZipFile as exc:
        raise CourseError(f"{zip_path} is not a zip file ({exc})") from exc
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() and not any(
        p.suffix == ".ipynb" for p in entries[0].iterdir() if p.is_file()) else target
    return collect_folder(course, assignment, root, regex)


def _regular_files(folder: Path) -> list[Path]:
    """Files under ``folder``, never following a symbolic link (a learner could point one at
    the instructor's files, which this process may read)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))
                       and d != ".ipynb_checkpoints"]
        found += [Path(dirpath) / f for f in filenames
                  if not os.path.islink(os.path.join(dirpath, f))]
    return sorted(found)


def collect_exchange(course: Course, assignment: str) -> list[str]:
    """The newest submission of each learner from the nbgrader exchange, as ``nbgrader
    collect`` would take it (``<root>/<course>/inbound/<student>+<assignment>+<time>[+...]``),
    except that symbolic links are skipped, not followed."""
    from nbgrader.utils import parse_utc
    root = course.exchange_root
    if not root:
        raise CourseError("no Exchange.root in nbgrader_config.py")
    inbound = Path(root) / course.coursedir.course_id / "inbound"
    if not inbound.is_dir():
        raise CourseError(f"no exchange inbox at {inbound}: was the assignment released?")
    newest: dict[str, tuple] = {}
    for entry in inbound.iterdir():
        parts = entry.name.rsplit("+", 3)
        if entry.is_symlink() or not entry.is_dir() or len(parts) < 3 or parts[1] != assignment:
            continue
        try:
            stamp = parse_utc(parts[2])
        except ValueError:
            continue
        student = _check_id(parts[0])
        if student not in newest or stamp > newest[student][0]:
            newest[student] = (stamp, entry)
    for student, (_, entry) in newest.items():
        dest = course.submitted(student, assignment)
        shutil.rmtree(dest, ignore_errors=True)
        for path in _regular_files(entry):
            target = dest / path.relative_to(entry)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return sorted(newest)
