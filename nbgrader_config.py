"""nbgrader configuration of the course (read by every ``nbgrader`` command run here and by
``course-grade``). See docs/instructors.md.

Source notebooks (with solutions and hidden tests) live in ``solutions/``; the learner versions
that ``nbgrader generate_assignment`` writes live in ``assignments/`` and are committed. Everything
an instructor accumulates (submissions, autograded notebooks, feedback, the gradebook, the
exchange) lives in a git-ignored workspace: ``./workspace`` or ``$COURSE_GRADING_WORKSPACE``.
"""
import os
from pathlib import Path

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, Execute, GetGrades, LimitOutput,
                                    SaveAutoGrades)

from course_lib.grading.nbgrader_plugins import StderrAsStdout, StripHiddenTests

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

COURSE_ROOT = Path(__file__).resolve().parent
WORKSPACE = Path(os.environ.get("COURSE_GRADING_WORKSPACE") or COURSE_ROOT / "workspace").resolve()
WORKSPACE.mkdir(parents=True, exist_ok=True)

# --- where things live
c.CourseDirectory.root = str(COURSE_ROOT)
c.CourseDirectory.course_id = "zero2research"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = str(WORKSPACE / "submitted")
c.CourseDirectory.autograded_directory = str(WORKSPACE / "autograded")
c.CourseDirectory.feedback_directory = str(WORKSPACE / "feedback")
c.CourseDirectory.solution_directory = str(WORKSPACE / "solution")
c.CourseDirectory.db_url = f"sqlite:///{WORKSPACE / 'gradebook.db'}"
# on JupyterHub, point this at the exchange folder every user server mounts
c.Exchange.root = os.environ.get("COURSE_EXCHANGE_ROOT") or str(WORKSPACE / "exchange")
c.ZipCollectApp.downloaded_directory = str(WORKSPACE / "downloaded")
# LMS downloads name files <student>_[LATE_][<numbers>_]<file>; nbgrader matches this pattern
# against the absolute path of each extracted file, hence the leading ".*/".
c.FileNameCollectorPlugin.named_regexp = (
    r".*/(?P<student_id>[^/_]+)_(?:LATE_)?(?:[0-9]+_)*(?P<file_id>[^/]+\.ipynb)$")

# --- generating the release
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# --- autograding: one kernel name everywhere; a per-cell time limit that applies
#     (Execute.timeout, not ExecutePreprocessor.timeout); deleted test cells are put back;
#     warnings printed by a test cell don't zero it.
c.Execute.kernel_name = "python3"
c.Execute.timeout = 30
c.Execute.interrupt_on_timeout = True
c.OverwriteCells.add_missing_cells = True
c.Autograde.autograde_preprocessors = [Execute, StderrAsStdout, ClearMetadataPreprocessor,
                                       LimitOutput, SaveAutoGrades, AssignLatePenalties,
                                       CheckCellMetadata]

# --- feedback carries no hidden-test source
c.GenerateFeedback.preprocessors = [GetGrades, StripHiddenTests, CSSHTMLHeaderPreprocessor]
