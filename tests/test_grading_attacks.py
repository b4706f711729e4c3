"""A6 graded end to end with `course-grade` on the attacks of issue 12 and two more, beside a
correct control submission:

1. the reference called from a worker thread;
2. answers carried from the notebook run into the re-check (read off the checker's stack, kept
   in a file of the submission's folder);
3. grader detection and blinding (empties the watched sets, then calls the references);
4. erasing the audit trail (starts a process, then clears the in-process audit records);
5. the reference modules copied from their source files and run from there (``runpy``), so
   their functions are new (the old monitor knew the references by their code objects);
6. the visible tests' answers memorised at home and pasted in as a table;
7. a submission that starts hundreds of threads, graded beside a correct one that needs threads.

None earns a point it did not deserve; each one an instructor should look at says why; the
control keeps 12/12 and "graded"."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from course_lib.grading import cli
from grading import attacks
from grading.crafted import (Expect, locked_sources, notebook, solution_answers,
                             verdict_problems, write_submissions)

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "a6_ddpm"
FULL = 12
VISIBLE = 1 + 2 + 2 + 2

HOG = '''
import concurrent.futures, time

concurrent.futures.thread.threading.stack_size(64 * 1024)     # small stacks: many threads
_hog = concurrent.futures.ThreadPoolExecutor(max_workers=2000)
_started = 0
try:
    for _ in range(2000):
        _hog.submit(time.sleep, 30)
        _started += 1
except RuntimeError:
    pass
print("threads started:", _started)
time.sleep(8)
'''

NEEDS_THREADS = '''
import concurrent.futures, time

time.sleep(1.5)             # it starts its work a moment after its neighbour


def _in_a_thread(fn, *args):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()
'''


def _threaded(correct: dict[str, str]) -> dict[str, str]:
    """Correct answers that do their work in a new worker thread on every call."""
    out = {}
    for gid, source in correct.items():
        name = source.split("def ", 1)[1].split("(", 1)[0]
        params = source.split("(", 1)[1].split(")", 1)[0]
        out[gid] = (source.replace(f"def {name}(", f"def _{name}_work(", 1) +
                    f"\n\ndef {name}({params}):\n    return _in_a_thread(_{name}_work, {params})\n")
    first = next(iter(out))
    out[first] = NEEDS_THREADS + "\n\n" + out[first]
    return out


def submissions() -> dict[str, tuple[str, Expect]]:
    target, correct = attacks.a6_target(), solution_answers(ASSIGNMENT)
    locked = locked_sources(ASSIGNMENT)
    table = attacks.record_visible_answers(target, correct, locked["setup"], locked)
    nb = lambda answers: notebook(answers, assignment=ASSIGNMENT)   # noqa: E731
    return {
        "correct": (nb(None), Expect(FULL, "graded")),
        "thread_reference": (nb(attacks.reference_in_a_thread(target)),
                             Expect(0, "needs review", "calls the course reference")),
        "carried_answers": (nb(attacks.answers_carried_over(target)),
                            Expect(0, "needs review", "fails when re-checked")),
        "blinds_grader": (nb(attacks.blinds_the_grader(target)),
                          Expect(0, "needs review", "calls the course reference")),
        "erases_audit": (nb(attacks.erases_the_audit_trail(target, correct)),
                         Expect(FULL, "needs review", "started a process")),
        "reference_copied": (nb(attacks.reference_copied_from_source(target)),
                             Expect(0, "needs review", "source of a course reference")),
        "memorised": (nb(attacks.memorised_visible_answers(target, table)),
                      Expect(0, "needs review", "fails when re-checked")),
    }


def neighbours() -> dict[str, tuple[str, Expect]]:
    """Graded at the same time: hundreds of threads, and a correct answer that needs threads."""
    correct = solution_answers(ASSIGNMENT)
    hog = dict(correct)
    hog["p1_answer"] = HOG + "\n\n" + hog["p1_answer"]
    nb = lambda answers: notebook(answers, assignment=ASSIGNMENT)   # noqa: E731
    return {"thread_hog": (nb(hog), Expect(FULL, "graded")),
            "needs_threads": (nb(_threaded(correct)), Expect(FULL, "graded"))}


def _grade(tmp_path: Path, monkeypatch, subs: dict) -> None:
    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(tmp_path / "workspace"))
    write_submissions(tmp_path / "downloads", subs, ASSIGNMENT)
    code = cli.main([ASSIGNMENT, str(tmp_path / "downloads"), "--course", str(ROOT),
                     "--cell-timeout", "12", "--memory", "1G", "--jobs", "2", "--no-feedback"])
    assert code == 0
    with open(tmp_path / "workspace" / "grades" / f"{ASSIGNMENT}.csv") as fh:
        rows = {row["student_id"]: row for row in csv.DictReader(fh)}
    wrong = verdict_problems(rows, subs)
    assert not wrong, "\n".join(wrong)


@pytest.mark.exclusive
@pytest.mark.parametrize("isolation", ["namespaces", "audit-hook"])
def test_attacks_on_a6_earn_nothing(tmp_path, monkeypatch, isolation):
    """In both isolation modes: the namespaces (root on Linux) and the audit-hook fallback."""
    from course_lib.grading import sandbox
    if isolation == "namespaces" and sandbox.detect_isolation()[0] != "namespaces":
        pytest.skip("namespaces need Linux and root")
    monkeypatch.setattr(sandbox, "detect_isolation", lambda: (isolation, "chosen by the test"))
    _grade(tmp_path, monkeypatch, submissions())


@pytest.mark.exclusive
def test_a_thread_hog_does_not_starve_its_neighbour(tmp_path, monkeypatch):
    _grade(tmp_path, monkeypatch, neighbours())
