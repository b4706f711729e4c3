"""The course as nbgrader sees it: its config, folders, gradebook and assignments.

``Course.load()`` reads ``nbgrader_config.py`` (found in the given folder or above the current
one), so ``course-grade`` and the plain ``nbgrader`` commands always agree on where things are.
The *workspace* is the folder that holds ``submitted/`` (``./workspace`` by default, or
``$COURSE_GRADING_WORKSPACE``): everything the grader writes goes inside it.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

__all__ = ["Course", "AssignmentInfo", "NotebookInfo", "SourceCell", "CourseError"]

log = logging.getLogger("course_grade")


class CourseError(Exception):
    """The course or the assignment is not set up as the grader needs."""


@dataclass
class SourceCell:
    grade_id: str
    cell_type: str
    source: str
    locked: bool
    checksum: str | None
    is_grade: bool = False
    is_solution: bool = False
    is_task: bool = False
    max_score: float = 0.0

    @property
    def is_test(self) -> bool:
        return self.is_grade and not self.is_solution and self.cell_type == "code"


@dataclass
class NotebookInfo:
    name: str
    cells: dict[str, SourceCell]                # from the gradebook (hidden tests included)
    order: list[str]                            # grade_ids in the source notebook's order
    release_sources: dict[str, str] = field(default_factory=dict)   # what learners got

    @property
    def test_ids(self) -> list[str]:
        return [g for g in self.order if g in self.cells and self.cells[g].is_test]

    @property
    def setup_sources(self) -> list[str]:
        """Locked code cells that are not tests: the assignment's set-up."""
        return [self.cells[g].source for g in self.order if g in self.cells
                and self.cells[g].locked and self.cells[g].cell_type == "code"
                and not self.cells[g].is_grade]

    @property
    def max_score(self) -> float:
        return sum(c.max_score for c in self.cells.values() if c.is_grade)


@dataclass
class AssignmentInfo:
    name: str
    notebooks: list[NotebookInfo]

    @property
    def max_score(self) -> float:
        return sum(nb.max_score for nb in self.notebooks)


def _quiet_nbgrader() -> None:
    for name in ("traitlets", "nbgrader", "NbGrader", "GenerateAssignment"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Course:
    def __init__(self, root: Path, config: Config):
        from nbgrader.coursedir import CourseDirectory
        self.root = root
        self.config = config
        self.coursedir = CourseDirectory(config=config)
        self.coursedir.root = str(root)
        self.workspace = Path(self.path(self.coursedir.submitted_directory)).parent

    # -- loading
    @classmethod
    def load(cls, root: str | Path | None = None) -> "Course":
        root = Path(root).resolve() if root else cls.find_root(Path.cwd())
        if not (root / "nbgrader_config.py").exists():
            raise CourseError(f"no nbgrader_config.py in {root}")
        # nbgrader starts `alembic` by name when it creates a gradebook
        bindir = str(Path(sys.executable).parent)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        _quiet_nbgrader()
        config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
        return cls(root, config)

    @staticmethod
    def find_root(start: Path) -> Path:
        for folder in [start, *start.parents]:
            if (folder / "nbgrader_config.py").exists():
                return folder
        raise CourseError(f"no nbgrader_config.py in {start} or above: run course-grade in the "
                          "course folder or pass --course")

    # -- paths
    def path(self, step: str, student: str = ".", assignment: str = ".") -> Path:
        return Path(os.path.normpath(self.coursedir.format_path(step, student, assignment)))

    def submitted(self, student: str, assignment: str) -> Path:
        return self.path(self.coursedir.submitted_directory, student, assignment)

    def autograded(self, student: str, assignment: str) -> Path:
        return self.path(self.coursedir.autograded_directory, student, assignment)

    def source_dir(self, assignment: str) -> Path:
        return self.path(self.coursedir.source_directory, ".", assignment)

    def release_dir(self, assignment: str) -> Path:
        return self.path(self.coursedir.release_directory, ".", assignment)

    @property
    def db_url(self) -> str:
        return self.coursedir.db_url

    @property
    def exchange_root(self) -> str | None:
        try:
            return str(self.config.Exchange.root) if "root" in self.config.Exchange else None
        except AttributeError:
            return None

    def hidden_paths(self) -> list[str]:
        """What a learner's code must not see: sources, workspace, exchange, history."""
        paths = [self.path(self.coursedir.source_directory), self.workspace, self.root / ".git"]
        if self.exchange_root:
            paths.append(Path(self.exchange_root))
        if self.db_url.startswith("sqlite:///"):
            paths.append(Path(self.db_url[len("sqlite:///"):]))
        return sorted({str(Path(p).resolve()) for p in paths})

    def grading_dir(self, assignment: str) -> Path:
        return self.workspace / "grading" / assignment

    # -- gradebook
    def gradebook(self):
        from nbgrader.api import Gradebook
        return Gradebook(self.db_url, self.coursedir.course_id)

    def ensure_assignment(self, assignment: str) -> None:
        """Put the assignment in the gradebook (as ``generate_assignment`` does) if missing,
        generating into a scratch folder so the committed release is left alone."""
        from nbgrader.api import MissingEntry
        if not self.source_dir(assignment).is_dir():
            raise CourseError(f"no assignment {assignment!r} in {self.path(self.coursedir.source_directory)}")
        with self.gradebook() as gb:
            try:
                if gb.find_assignment(assignment).notebooks:
                    return
            except MissingEntry:
                pass
        self.generate_release(assignment, self.grading_dir(assignment) / "release")

    def generate_release(self, assignment: str, release_dir: Path) -> Path:
        """Run ``generate_assignment`` into ``release_dir`` (it also records the assignment in
        the gradebook); returns the generated assignment folder."""
        from nbgrader.converters import GenerateAssignment
        from nbgrader.coursedir import CourseDirectory
        config = copy.deepcopy(self.config)
        config.CourseDirectory.release_directory = str(release_dir)
        coursedir = CourseDirectory(config=config)
        coursedir.root = str(self.root)
        coursedir.assignment_id = assignment
        converter = GenerateAssignment(coursedir=coursedir, config=config)
        converter.force = True
        converter.log.setLevel(logging.ERROR)
        converter.start()
        return Path(release_dir) / assignment

    def assignment_info(self, assignment: str) -> AssignmentInfo:
        """The assignment's notebooks and graded cells, as the gradebook has them."""
        self.ensure_assignment(assignment)
        notebooks = []
        with self.gradebook() as gb:
            for nb in gb.find_assignment(assignment).notebooks:
                grades = {c.name: c for c in nb.grade_cells}
                solutions = {c.name for c in nb.solution_cells}
                tasks = {c.name for c in nb.task_cells}
                cells = {}
                for sc in nb.source_cells:
                    graded = sc.name in grades
                    cells[sc.name] = SourceCell(
                        sc.name, sc.cell_type, sc.source, bool(sc.locked), sc.checksum,
                        is_grade=graded, is_solution=sc.name in solutions, is_task=sc.name in tasks,
                        max_score=float(grades[sc.name].max_score) if graded else 0.0)
                notebooks.append(NotebookInfo(nb.name, cells, self._order(assignment, nb.name, cells),
                                              self._release_sources(assignment, nb.name)))
        if not notebooks:
            raise CourseError(f"assignment {assignment!r} has no notebooks in the gradebook")
        return AssignmentInfo(assignment, sorted(notebooks, key=lambda n: n.name))

    def _order(self, assignment: str, name: str, cells: dict) -> list[str]:
        path = self.source_dir(assignment) / f"{name}.ipynb"
        order = []
        if path.exists():
            for cell in nbformat.read(path, as_version=4).cells:
                gid = cell.metadata.get("nbgrader", {}).get("grade_id")
                if gid in cells:
                    order.append(gid)
        return order + sorted(set(cells) - set(order))

    def _release_sources(self, assignment: str, name: str) -> dict[str, str]:
        path = self.release_dir(assignment) / f"{name}.ipynb"
        if not path.exists():
            return {}
        return {c.metadata["nbgrader"]["grade_id"]: c.source
                for c in nbformat.read(path, as_version=4).cells
                if "grade_id" in c.metadata.get("nbgrader", {})}

    def students_submitted(self, assignment: str) -> list[str]:
        base = self.path(self.coursedir.submitted_directory)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / assignment).is_dir())
