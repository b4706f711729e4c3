"""``course-grade``: grade an assignment's submissions safely and in parallel.

    course-grade a1_gradients submissions.zip      # an LMS download
    course-grade a1_gradients some/folder/         # <student>/<assignment>/*.ipynb and friends
    course-grade a1_gradients --exchange           # collect from the nbgrader exchange first
    course-grade a1_gradients                      # what is already in submitted/

Each submission is graded in its own sandbox (see docs/instructors.md); the gradebook, the
autograded notebooks and the feedback are nbgrader's own, so ``nbgrader export``, formgrader and
``nbgrader release_feedback`` work as usual. A run that is stopped can be started again: it
grades what is left.
"""
from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
import time
import warnings
import zipfile
from pathlib import Path

__all__ = ["main", "parse_size"]


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"3000000000"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2G or 512M")
    scale = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="course-grade", description="Grade submissions of an nbgrader assignment: in "
        "parallel, each in a sandbox, verdicts re-checked; then feedback and a grades CSV.")
    p.add_argument("assignment", help="assignment name (a folder of solutions/)")
    p.add_argument("source", nargs="?", type=Path,
                   help="an LMS zip download or a folder of submissions (default: what is "
                        "already in the workspace's submitted/)")
    p.add_argument("--exchange", action="store_true",
                   help="collect the newest submissions from the nbgrader exchange first")
    p.add_argument("--course", type=Path, help="the course folder (default: the folder with "
                   "nbgrader_config.py, here or above)")
    p.add_argument("--student", action="append", help="grade only this student (repeatable)")
    p.add_argument("--jobs", type=int, help="submissions graded at once (default: CPU cores)")
    p.add_argument("--cell-timeout", type=float, default=30.0, help="seconds per cell (30)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds per notebook, all cells together (600)")
    p.add_argument("--memory", type=parse_size, default=parse_size("2G"),
                   help="memory per submission (2G)")
    p.add_argument("--regex", default=None,
                   help="pattern for LMS file names, with groups student_id and file_id")
    p.add_argument("--force", action="store_true", help="regrade submissions graded before")
    p.add_argument("--no-feedback", action="store_true", help="skip writing feedback HTML")
    p.add_argument("--csv", type=Path, help="where to write the grades CSV (default: "
                   "<workspace>/grades/<assignment>.csv)")
    p.add_argument("--keep-sandboxes", action="store_true", help="keep each job's folder")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _collect(course, args) -> None:
    from course_lib.grading import collect
    regex = args.regex or collect.LMS_NAME
    if args.exchange:
        found = collect.collect_exchange(course, args.assignment)
        print(f"collected {len(found)} submission(s) from the exchange")
    if args.source is not None:
        if args.source.is_file() and zipfile.is_zipfile(args.source):
            found = collect.collect_zip(course, args.assignment, args.source, regex)
        elif args.source.is_dir():
            found = collect.collect_folder(course, args.assignment, args.source, regex)
        else:
            raise SystemExit(f"course-grade: {args.source} is neither a zip file nor a folder")
        print(f"collected {len(found)} submission(s) from {args.source}")


def generate_feedback(course, assignment: str) -> str | None:
    """nbgrader's feedback (HTML, hidden tests stripped by the course config); an error text."""
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    config = copy.deepcopy(course.config)
    coursedir = CourseDirectory(config=config)
    coursedir.root = str(course.root)
    coursedir.assignment_id = assignment
    converter = GenerateFeedback(coursedir=coursedir, config=config)
    converter.force = True
    converter.log.setLevel(logging.ERROR)
    try:
        converter.start()
    except Exception as exc:           # a broken notebook must not hide the grades
        return f"feedback could not be written for every submission ({exc})"
    return None


INSTALL_HINT = "pip install -e '.[instructor]'   (or: pip install 'course_lib[instructor]')"


def _require_instructor_extra() -> None:
    """Grading needs nbgrader, which a learner's install leaves out: say how to get it."""
    import importlib.util
    missing = [m for m in ("nbgrader", "sqlalchemy") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"course-grade needs the instructor extra ({', '.join(missing)} missing). "
                         f"Install it with:\n    {INSTALL_HINT}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    _require_instructor_extra()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module="nbgrader")        # SQLAlchemy chatter in nbgrader
    warnings.filterwarnings("ignore", module="sqlalchemy")
    from course_lib.grading import report
    from course_lib.grading.course import Course, CourseError
    from course_lib.grading.pipeline import Grader, Settings

    settings = Settings(cell_timeout=args.cell_timeout, total_timeout=args.timeout,
                        memory_bytes=args.memory, force=args.force,
                        keep_sandboxes=args.keep_sandboxes)
    if args.jobs:
        settings.jobs = args.jobs
    grader = None
    try:
        course = Course.load(args.course)
        grader = Grader(course, args.assignment, settings)
        grader.warm_up()                   # torch loads in the zygote while we collect
        _collect(course, args)
        students = args.student or course.students_submitted(args.assignment)
        if not students:
            print(f"course-grade: nothing to grade in {course.path(course.coursedir.submitted_directory)}")
            return 1
        started = time.monotonic()
        outcomes = grader.run(students)
        seconds = time.monotonic() - started
    except CourseError as exc:
        print(f"course-grade: {exc}", file=sys.stderr)
        return 2
    finally:
        if grader is not None:
            grader.close()
    if grader.isolation != "namespaces":
        print(f"WARNING: weaker isolation ({grader.isolation}): {grader.isolation_note}",
              file=sys.stderr)
    feedback_error = None if args.no_feedback else generate_feedback(course, args.assignment)
    parts = [gid for nb in grader.info.notebooks for gid in nb.order if nb.cells[gid].is_grade]
    csv_path = args.csv or course.workspace / "grades" / f"{args.assignment}.csv"
    report.write_csv(csv_path, args.assignment, outcomes, parts)
    print(report.table(outcomes))
    print()
    print(report.summary_line(outcomes, seconds))
    print(f"grades: {csv_path}")
    if not args.no_feedback:
        print(f"feedback: {course.path(course.coursedir.feedback_directory, '.', '.')}"
              + (f" ({feedback_error})" if feedback_error else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
