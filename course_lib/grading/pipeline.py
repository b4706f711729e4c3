"""Grade the submissions of one assignment: in parallel, each in a sandbox, verdicts re-checked.

For each student (``Grader.grade_student``), in a thread of a small pool:

1. **state**: skip a submission already graded with the same files (a killed run resumes);
2. **read**: parse the notebook; corrupt JSON is "failed to run", not a silent 0;
3. **sanitize** with nbgrader's own preprocessors: locked cells (tests, set-up) restored from the
   gradebook with their hidden tests; deleted cells put back (``restore_missing_cells``);
4. **audit** the learner's cells without running them (:mod:`course_lib.grading.audit`);
5. **execute** all cells in a sandboxed job forked from the zygote: outputs for the autograded
   notebook and feedback; per-cell and total time limits, memory limit;
6. **re-check** every test cell in this process against a second sandboxed job that holds only
   the learner's definitions (:mod:`course_lib.grading.remote`). Nothing the notebook run did
   can reach it: it starts from a fresh copy of the submitted files, the checks draw their
   inputs from seeds the notebook run never used (:data:`course_lib.grading.graded.SEED_OFFSET`,
   random per run), and the assignment's references are switched off in that job. A test
   scores only if it passes both in the notebook and here; a test that passed in the notebook
   but fails here scores 0 and is flagged;
7. **save**: scores into nbgrader's gradebook (one transaction), the autograded notebook, then
   the student's state file (written atomically) and a line in the run log.

The outcome of each submission is one of ``graded``, ``needs review`` (with reasons) or
``failed to run`` (with the reason); any of them leaves the other submissions unaffected.
"""
from __future__ import annotations

import fcntl
import hashlib
import secrets
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode
from sqlalchemy.exc import SAWarning

from course_lib.grading import audit, graded, references, remote, sandbox
from course_lib.grading.course import AssignmentInfo, Course, CourseError, NotebookInfo
from course_lib.grading.nbgrader_plugins import StderrAsStdout
from course_lib.grading.zygote import JobFailed, Zygote
from course_lib.grading import protocol

__all__ = ["Settings", "Outcome", "Grader", "GRADED", "REVIEW", "FAILED"]

GRADED, REVIEW, FAILED = "graded", "needs review", "failed to run"
GRACE = 5.0                        # seconds past a cell's limit before the job is killed
log = logging.getLogger("course_grade")


@dataclass
class Settings:
    jobs: int = max(1, os.cpu_count() or 1)
    cell_timeout: float = 30.0
    total_timeout: float = 600.0
    memory_bytes: int = 2 * 1024 ** 3
    force: bool = False
    keep_sandboxes: bool = False


@dataclass
class Outcome:
    student: str
    status: str = GRADED
    score: float = 0.0
    max_score: float = 0.0
    reasons: list[str] = field(default_factory=list)     # why it needs review / failed
    notes: list[str] = field(default_factory=list)       # what the grader fixed on the way
    parts: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False                                # graded by an earlier run

    def flag(self, reason: str, status: str = REVIEW) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
        if status == FAILED or self.status == GRADED:
            self.status = status

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("skipped")
        return data

    @classmethod
    def from_json(cls, data: dict, skipped: bool = False) -> "Outcome":
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields, skipped=skipped)


# ----------------------------------------------------------------------------- notebook helpers
def _is_grade(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade"))


def _is_solution(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _is_test(cell) -> bool:
    return cell.cell_type == "code" and _is_grade(cell) and not _is_solution(cell)


def _error(ename: str, evalue: str) -> NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}"])


_OUTPUT_FIELDS = {"stream": {"name": str, "text": str},
                  "display_data": {"data": dict, "metadata": dict},
                  "execute_result": {"data": dict, "metadata": dict, "execution_count": int},
                  "error": {"ename": str, "evalue": str, "traceback": list}}


def clean_output(raw) -> NotebookNode | None:
    """An output sent by a job (untrusted) as a valid nbformat output, or ``None``."""
    if not isinstance(raw, dict) or raw.get("output_type") not in _OUTPUT_FIELDS:
        return None
    spec = _OUTPUT_FIELDS[raw["output_type"]]
    out = {"output_type": raw["output_type"]}
    for key, kind in spec.items():
        value = raw.get(key)
        if not isinstance(value, kind):
            return None
        out[key] = value
    if out["output_type"] == "stream" and out["name"] not in ("stdout", "stderr"):
        return None
    if "traceback" in out:
        out["traceback"] = [str(line) for line in out["traceback"]]
    if "data" in out:
        out["data"] = {str(k): (v if isinstance(v, (str, dict, list)) else str(v))
                       for k, v in out["data"].items()}
    try:
        node = nbformat.from_dict(out)
        nbformat.validator.validate(node, ref=out["output_type"], version=4, version_minor=5)
    except Exception:
        return None
    return node


def read_notebook(path: Path) -> NotebookNode:
    """The submitted notebook, or :class:`ValueError` saying why it cannot be read."""
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name} is not text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        raise ValueError(f"{path.name} is not a valid notebook ({str(exc).splitlines()[0][:200]})") from exc
    return nb


def restore_missing_cells(nb: NotebookNode, info: NotebookInfo) -> list[str]:
    """Put back graded/locked cells the learner deleted, after the cell that preceded them in
    the source notebook. Returns notes."""
    notes = []
    position = {_grade_id(c): i for i, c in enumerate(nb.cells) if _grade_id(c)}
    for k, gid in enumerate(info.order):
        if gid in position or gid not in info.cells:
            continue
        source = info.cells[gid]
        where = 0
        for previous in reversed(info.order[:k]):
            if previous in position:
                where = position[previous] + 1
                break
        meta = {"grade": source.is_grade, "solution": source.is_solution, "locked": source.locked,
                "task": source.is_task, "grade_id": gid, "checksum": source.checksum,
                "schema_version": 3}
        if source.is_grade:
            meta["points"] = source.max_score
        new = (nbformat.v4.new_code_cell(source.source) if source.cell_type == "code"
               else nbformat.v4.new_markdown_cell(source.source))
        new.metadata["nbgrader"] = meta
        nb.cells.insert(where, new)
        position = {_grade_id(c): i for i, c in enumerate(nb.cells) if _grade_id(c)}
        kind = "test cell" if source.is_test else "answer cell" if source.is_solution else "cell"
        notes.append(f"{kind} {gid} was deleted; the original was put back")
    return notes


def _regular_files(folder: Path) -> list[Path]:
    """The submission's files, never following a symbolic link (a link to the instructor's
    files would otherwise be read with the grader's rights)."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))
                       and d not in (".ipynb_checkpoints", "__pycache__")]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink() and path.is_file():
                found.append(path)
    return sorted(found)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in _regular_files(folder):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _memory_error(output) -> bool:
    text = f"{output.get('ename', '')} {output.get('evalue', '')}"
    return ("MemoryError" in text or "can't allocate memory" in text
            or "Cannot allocate memory" in text or "out of memory" in text.lower())


def _cell_label(cell, index: int) -> str:
    return _grade_id(cell) or f"cell {index + 1}"


def _remove_stale_run_dirs() -> None:
    """Socket folders of graders that were killed (their owner process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob("course-grade-*"):
        try:
            os.kill(int((folder / "owner.pid").read_text()), 0)
            continue                                      # its grader is still running
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            if time.time() - folder.stat().st_mtime > 3600:   # no pid file: only if old
                shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the grader
class Grader:
    """Grades one assignment's submissions; see the module docstring for the steps."""

    def __init__(self, course: Course, assignment: str, settings: Settings | None = None):
        self.course, self.assignment = course, assignment
        self.settings = settings or Settings()
        self.db_lock = threading.Lock()
        self.log_lock = threading.Lock()
        self.run_id = uuid.uuid4().hex[:12]
        self.dir = course.grading_dir(assignment)
        self.info: AssignmentInfo | None = None
        self.zygote: Zygote | None = None
        self.run_dir: Path | None = None
        self.isolation, self.isolation_note = "", ""
        self.hidden = course.hidden_paths()
        self.seed_offset = 1 + secrets.randbelow(2 ** 30)      # the re-check's other seeds

    # -- the run
    def run(self, students: list[str]) -> list[Outcome]:
        warnings.filterwarnings("ignore", category=SAWarning)   # nbgrader's gradebook chatter
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise CourseError(f"another course-grade is grading {self.assignment} "
                                  "right now") from exc
            return self._run_locked(students)

    def warm_up(self) -> None:
        """Start the zygote now (it loads torch while the grader does other things)."""
        if self.zygote is None:
            _remove_stale_run_dirs()
            self.isolation, self.isolation_note = sandbox.detect_isolation()
            # its socket: a short path (AF_UNIX limit), hidden from jobs like the workspace
            self.run_dir = Path(tempfile.mkdtemp(prefix="course-grade-"))
            (self.run_dir / "owner.pid").write_text(str(os.getpid()))
            self.hidden = sorted(set(self.hidden) | {str(self.run_dir)})
            self.zygote = Zygote(self.run_dir, self.isolation)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.zygote = None

    def _run_locked(self, students: list[str]) -> list[Outcome]:
        sandboxes = self.dir / "sandboxes"
        shutil.rmtree(sandboxes, ignore_errors=True)          # left by a killed run
        self.warm_up()
        try:
            self.info = self.course.assignment_info(self.assignment)
            self.zygote.wait_ready()
            with ThreadPoolExecutor(max_workers=self.settings.jobs) as pool:
                return list(pool.map(self.grade_student, students))
        finally:
            self.close()
            if not self.settings.keep_sandboxes:
                shutil.rmtree(sandboxes, ignore_errors=True)

    def grade_student(self, student: str) -> Outcome:
        started = time.monotonic()
        submitted = self.course.submitted(student, self.assignment)
        digest = _digest(submitted) if submitted.is_dir() else ""
        previous = self._load_state(student)
        if previous and previous.get("digest") == digest and not self.settings.force:
            return Outcome.from_json(previous["outcome"], skipped=True)
        outcome = Outcome(student, max_score=self.info.max_score)
        try:
            self._grade(student, submitted, outcome)
        except Exception as exc:           # a bug of ours must not stop the other submissions
            log.error("grading %s failed:\n%s", student, traceback.format_exc())
            outcome.flag(f"the grader itself failed on this submission ({type(exc).__name__}: "
                         f"{exc}); please report it", FAILED)
        outcome.seconds = round(time.monotonic() - started, 2)
        self._save_state(student, digest, outcome)
        return outcome

    def _grade(self, student: str, submitted: Path, outcome: Outcome) -> None:
        timestamp = None
        try:
            timestamp = self.course.coursedir.get_existing_timestamp(str(submitted))
        except Exception:
            outcome.note("its timestamp.txt could not be read; graded without a timestamp")
        with self.db_lock, self.course.gradebook() as gb:
            gb.update_or_create_student(student)
            if timestamp:
                gb.update_or_create_submission(self.assignment, student, timestamp=timestamp)
            else:
                gb.update_or_create_submission(self.assignment, student)
        for info in self.info.notebooks:
            self._grade_notebook(student, info, submitted, outcome)
        with self.db_lock, self.course.gradebook() as gb:
            submission = gb.find_submission(self.assignment, student)
            outcome.score = round(float(submission.score) - float(submission.late_submission_penalty or 0), 4)
            outcome.max_score = float(submission.max_score)
        if not self.settings.keep_sandboxes:
            shutil.rmtree(self.dir / "sandboxes" / student, ignore_errors=True)

    # -- one notebook
    def _grade_notebook(self, student: str, info: NotebookInfo, submitted: Path,
                        outcome: Outcome) -> None:
        path = self._find_notebook(info, submitted, outcome)
        if path is None:
            return self._save_failed(student, info, outcome)
        try:
            nb = read_notebook(path)
        except (ValueError, OSError) as exc:
            outcome.flag(str(exc), FAILED)
            return self._save_failed(student, info, outcome)
        nb = self._sanitize(nb, student, info, outcome)
        self._audit(nb, info, outcome)
        ns = remote.trusted_namespace(info.setup_sources)
        refs = references.of_namespace(ns)
        # each job gets its own fresh copy of the submission: nothing carries over
        not_run = self._execute(nb, self._prepare_job_dir(student, submitted, f"{info.name}.run"),
                                refs, outcome)
        verdicts = self._recheck(nb, info, ns, refs, self._prepare_job_dir(
            student, submitted, f"{info.name}.recheck"), outcome)
        self._decide(nb, info, verdicts, not_run, outcome)
        self._save(nb, student, info, outcome)

    def _find_notebook(self, info: NotebookInfo, submitted: Path, outcome: Outcome) -> Path | None:
        path = submitted / f"{info.name}.ipynb"
        if path.is_symlink():
            outcome.flag(f"{path.name} is a symbolic link, not a notebook", FAILED)
            return None
        if path.exists():
            return path
        others = [p for p in _regular_files(submitted) if p.suffix == ".ipynb" and p.parent == submitted]
        if len(self.info.notebooks) == 1 and len(others) == 1:
            outcome.note(f"graded {others[0].name} as {info.name}.ipynb")
            return others[0]
        outcome.flag(f"no {info.name}.ipynb in the submission", FAILED)
        return None

    def _resources(self, student: str, info: NotebookInfo) -> dict:
        return {"nbgrader": {"notebook": info.name, "assignment": self.assignment,
                             "student": student, "db_url": self.course.db_url}}

    def _preprocess(self, nb, classes, student, info, **traits):
        resources = self._resources(student, info)
        for cls in classes:
            pp = cls(config=self.course.config, **traits.get(cls.__name__, {}))
            pp.log.setLevel(logging.ERROR)
            nb, resources = pp.preprocess(nb, resources)
        return nb

    def _sanitize(self, nb, student: str, info: NotebookInfo, outcome: Outcome):
        from nbgrader.preprocessors import (CheckCellMetadata, ClearOutput, DeduplicateIds,
                                            OverwriteCells, OverwriteKernelspec)
        for cell in nb.cells:
            gid = _grade_id(cell)
            if gid in info.cells and info.cells[gid].is_test and gid in info.release_sources \
                    and cell.source.strip() != info.release_sources[gid].strip():
                outcome.note(f"test cell {gid} was edited; the original was put back")
        with self.db_lock:
            nb = self._preprocess(nb, [ClearOutput, DeduplicateIds, OverwriteKernelspec,
                                       OverwriteCells], student, info,
                                  OverwriteCells={"add_missing_cells": False})
        for note in restore_missing_cells(nb, info):
            outcome.note(note)
        with self.db_lock:
            return self._preprocess(nb, [CheckCellMetadata], student, info)

    def _audit(self, nb, info: NotebookInfo, outcome: Outcome) -> None:
        learner = [(_cell_label(c, i), c.source) for i, c in enumerate(nb.cells)
                   if c.cell_type == "code" and not c.metadata.get("nbgrader", {}).get("locked")]
        helpers = audit.helper_names(info.setup_sources)
        for finding in audit.inspect_cells(learner, helpers):
            outcome.flag(str(finding))

    # -- running
    def _spec(self, kind: str, cells: list[dict], job_dir: Path, refs: tuple) -> dict:
        """A job's spec. The references' source files are hidden from every job (a copy of
        them would be the reference under another name); a re-check job switches them off."""
        return {"kind": kind, "cells": cells, "job_dir": str(job_dir), "cwd": str(job_dir),
                "hidden": self.hidden + references.source_files(refs),
                "disable": [references.name_of(fn) for fn in refs] if kind == "serve" else [],
                "cell_timeout": self.settings.cell_timeout,
                "memory_bytes": self.settings.memory_bytes}

    def _execute(self, nb, job_dir: Path, refs: tuple, outcome: Outcome) -> set[int]:
        """Run all code cells in a sandbox; fill in outputs. Returns indices not run."""
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        spec = self._spec("execute", [{"index": i, "source": nb.cells[i].source} for i in code],
                          job_dir, refs)
        try:
            job = self.zygote.open(spec)
        except (JobFailed, OSError, protocol.FrameError) as exc:
            outcome.flag(f"the sandbox could not start ({exc})", FAILED)
            return set(code)
        if job.info.get("notes"):
            log.debug("sandbox notes: %s", job.info["notes"])
        done: set[int] = set()
        current, cell_started = None, time.monotonic()
        total_deadline = time.monotonic() + self.settings.total_timeout
        stop = None
        while stop is None:
            deadline = total_deadline
            if current is not None:
                deadline = min(deadline, cell_started + self.settings.cell_timeout + GRACE)
            try:
                kind, msg = job.recv(deadline)
            except TimeoutError:
                total = time.monotonic() >= total_deadline
                stop = "total" if total else "cell"
                job.kill(stop)
                break
            except (protocol.FrameError, OSError):
                stop = "died"
                break
            if kind != "J":
                continue
            t = msg.get("type")
            if t == "cell_start" and msg.get("index") in code:
                current, cell_started = msg["index"], time.monotonic()
            elif t == "cell" and msg.get("index") in code:
                cell = nb.cells[msg["index"]]
                cell.outputs = [o for o in map(clean_output, msg.get("outputs", [])) if o]
                if isinstance(msg.get("execution_count"), int):
                    cell.execution_count = msg["execution_count"]
                done.add(msg["index"])
                current = None
            elif t == "done":
                stop = "done"
            elif t in ("exit", "runner_error", "supervisor_error"):
                if t != "exit":
                    log.error("job error: %s", msg.get("error"))
                stop = "died"
        if stop != "done":
            job.kill(stop)                 # whatever it was doing, it stops now
        exit_info = job.wait_exit()
        job.close()
        self._runtime_audit(exit_info["audit"], outcome)
        if stop != "done":
            self._stopped(nb, current, stop, exit_info, outcome)
        not_run = set(code) - done
        for i in sorted(not_run):
            if i != current and _is_test(nb.cells[i]):
                nb.cells[i].outputs = [_error("NotRun", "this test did not run: the notebook "
                                              "stopped earlier")]
        self._scan_errors(nb, outcome)
        return not_run

    def _stopped(self, nb, current, why: str, exit_info: dict, outcome: Outcome) -> None:
        label = _cell_label(nb.cells[current], current) if current is not None else "its set-up"
        limit = self.settings.cell_timeout
        if why == "cell":
            text = f"cell {label} was still running after the {limit:g} s time limit; stopped"
            ename, status = "CellTimeout", REVIEW
        elif why == "total":
            text = (f"the notebook ran past its {self.settings.total_timeout:g} s total time "
                    f"limit (in {label}); stopped")
            ename, status = "CellTimeout", REVIEW
        elif exit_info.get("oom"):
            text = f"cell {label} used more than the {self._gib()} memory limit; the kernel was stopped"
            ename, status = "MemoryError", REVIEW
        else:
            text = (f"the kernel died in {label} (exit code {exit_info.get('code')}), so the "
                    "cells after it did not run")
            ename, status = "DeadKernel", FAILED
        outcome.flag(text, status)
        if current is not None:
            nb.cells[current].setdefault("outputs", []).append(_error(ename, text))

    def _gib(self) -> str:
        return f"{self.settings.memory_bytes / 1024 ** 3:g} GiB"

    def _scan_errors(self, nb, outcome: Outcome) -> None:
        for i, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                if output.get("output_type") != "error":
                    continue
                label = _cell_label(cell, i)
                if output.get("ename") == "CellTimeout":
                    outcome.flag(f"cell {label} ran past the {self.settings.cell_timeout:g} s "
                                 "time limit")
                elif _memory_error(output):
                    outcome.flag(f"cell {label} hit the {self._gib()} memory limit")

    def _runtime_audit(self, records: list, outcome: Outcome) -> None:
        blocked = "blocked"
        sources = {os.path.realpath(p) for p in references.source_files()}
        for r in records if isinstance(records, list) else []:
            kind, detail = str(r.get("kind", "")).replace("audit:", ""), str(r.get("detail", ""))[:200]
            if kind == "read" and detail in sources:
                kind = "reference source"
            text = {"read": f"tried to read {detail}, outside its folder ({blocked})",
                    "reference source": f"tried to read {detail}, the source of a course "
                                        "reference (hidden while grading)",
                    "reference": f"called the course reference {detail}, which is switched off "
                                 "while grading: no points for what needed it",
                    "tampered": f"{detail} (where the sandbox reports what a job does)",
                    "write": f"tried to write {detail}, outside its folder ({blocked})",
                    "network": f"tried to open a network connection to {detail} ({blocked})",
                    "process": f"started a process: {detail}",
                    "signal": f"sent a signal: {detail}"}.get(kind)
            if text:
                outcome.flag(text)

    def _recheck(self, nb, info: NotebookInfo, ns: dict, refs: tuple, job_dir: Path,
                 outcome: Outcome) -> dict:
        """Run every test cell here, on other seeds, against the learner's definitions in a
        fresh sandbox whose references are switched off."""
        learner = [{"index": i, "source": c.source} for i, c in enumerate(nb.cells)
                   if c.cell_type == "code" and not _is_test(c)]
        session = remote.RemoteSession(self.zygote, self._spec("serve", learner, job_dir, refs),
                                       call_timeout=self.settings.cell_timeout)
        verdicts = {}
        seeds = graded.SEED_OFFSET.set(self.seed_offset)
        try:
            for gid in info.test_ids:
                verdicts[gid] = remote.run_test_cell(info.cells[gid].source, ns, session)
        finally:
            graded.SEED_OFFSET.reset(seeds)
            session.close()
        ready = session.ready or {}
        if session.still_on:
            log.error("references not switched off: %s", session.still_on)
            outcome.flag("the grader could not switch off the course references "
                         f"{', '.join(session.still_on[:4])}; please report it")
        if ready.get("monkeypatched"):
            names = ", ".join(ready["monkeypatched"][:6])
            outcome.flag(f"monkeypatches {names} (library functions replaced at run time)")
        for event in session.events:
            if event["kind"] == "reference":
                outcome.flag(f"{event['detail']}: no points for that part")
            elif event["kind"].startswith("audit:"):
                self._runtime_audit([event], outcome)
        return verdicts

    def _decide(self, nb, info: NotebookInfo, verdicts: dict, not_run: set[int],
                outcome: Outcome) -> None:
        """Points only for tests that pass both in the notebook and when re-checked."""
        from nbgrader.utils import determine_grade
        nb = self._stderr_as_stdout(nb)
        for i, cell in enumerate(nb.cells):
            gid = _grade_id(cell)
            if not _is_test(cell) or gid not in verdicts:
                continue
            passed, message = verdicts[gid]
            score, _ = determine_grade(cell)
            if not passed and score:
                cell.outputs.append(_error("GraderRecheckFailed", "when the grader re-ran this "
                                           f"test in a clean process it failed: {message}"))
                outcome.flag(f"{gid} passed in the notebook but fails when re-checked in a clean "
                             f"process ({message[:160]}): 0 points")
            elif passed and not score and i not in not_run:
                outcome.flag(f"{gid} failed in the notebook but passes when re-checked in a "
                             "clean process: 0 points given, please look")

    def _stderr_as_stdout(self, nb):
        pp = StderrAsStdout(config=self.course.config)
        return pp.preprocess(nb, {})[0]

    # -- saving
    def _save(self, nb, student: str, info: NotebookInfo, outcome: Outcome) -> None:
        from nbgrader.preprocessors import AssignLatePenalties, LimitOutput
        nb = self._preprocess(nb, [LimitOutput], student, info)
        self._write_grades(nb, student, info, outcome)
        with self.db_lock:
            self._preprocess(nb, [AssignLatePenalties], student, info)
        dest = self.course.autograded(student, self.assignment)
        dest.mkdir(parents=True, exist_ok=True)
        _atomic_write(dest / f"{info.name}.ipynb", nbformat.writes(nb))
        stamp = self.course.submitted(student, self.assignment) / "timestamp.txt"
        if stamp.exists():
            shutil.copy(stamp, dest / "timestamp.txt")

    def _write_grades(self, nb, student: str, info: NotebookInfo, outcome: Outcome) -> None:
        from nbgrader.utils import compute_checksum, determine_grade
        review = outcome.status != GRADED
        with self.db_lock, self.course.gradebook() as gb:
            for cell in nb.cells:
                gid = _grade_id(cell)
                if gid not in info.cells:
                    continue
                if _is_grade(cell):
                    grade = gb.find_grade(gid, info.name, self.assignment, student)
                    grade.auto_score, _ = determine_grade(cell)
                    grade.needs_manual_grade = bool(review or grade.manual_score is not None
                                                    or grade.auto_score is None)
                    outcome.parts[gid] = float(grade.auto_score or 0.0)
                if _is_solution(cell) or info.cells[gid].is_task:
                    comment = gb.find_comment(gid, info.name, self.assignment, student)
                    unchanged = cell.metadata.nbgrader.get("checksum") == compute_checksum(cell)
                    comment.auto_comment = "No response." if unchanged and not info.cells[gid].is_task else None
            gb.db.commit()

    def _save_failed(self, student: str, info: NotebookInfo, outcome: Outcome) -> None:
        """A notebook that could not be graded: every test 0, flagged for a human."""
        with self.db_lock, self.course.gradebook() as gb:
            for gid, cell in info.cells.items():
                if cell.is_grade:
                    grade = gb.find_grade(gid, info.name, self.assignment, student)
                    grade.auto_score = 0.0
                    grade.needs_manual_grade = True
                    outcome.parts[gid] = 0.0
            gb.db.commit()

    # -- files
    def _prepare_job_dir(self, student: str, submitted: Path, kind: str) -> Path:
        """A fresh copy of the submitted files (and the assignment's data files) for one job;
        the supervisor gives it to the job's own user."""
        job_dir = self.dir / "sandboxes" / student / kind
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True)
        for path in _regular_files(submitted):
            dest = job_dir / path.relative_to(submitted)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        source = self.course.source_dir(self.assignment)
        for path in source.rglob("*"):          # data files the assignment ships (not notebooks)
            if path.is_file() and path.suffix != ".ipynb" and ".ipynb_checkpoints" not in path.parts:
                dest = job_dir / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, dest)
        return job_dir

    def _state_path(self, student: str) -> Path:
        return self.dir / "state" / f"{student}.json"

    def _load_state(self, student: str) -> dict | None:
        try:
            return json.loads(self._state_path(student).read_text())
        except (OSError, ValueError):
            return None

    def _save_state(self, student: str, digest: str, outcome: Outcome) -> None:
        record = {"digest": digest, "run": self.run_id, "outcome": outcome.to_json()}
        _atomic_write(self._state_path(student), json.dumps(record, indent=1))
        with self.log_lock:
            with open(self.dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps({"student": student, "run": self.run_id,
                                     "status": outcome.status, "score": outcome.score,
                                     "time": time.time()}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
