"""Every course reference a check compares against is covered by the grader's blocker, wherever
the library keeps it: each reference listed by an assignment can be switched off in a job, its
source is among the files hidden from jobs, importing its module is flagged, and a check's
comparison never enters the course library through a function that is not listed."""
from __future__ import annotations

import os
import sys

import pytest

from course_lib.grading import audit, references
from grading import call_with_references_off


def _grading_module(code) -> bool:
    """Code of the grader itself or of the test that drives it (not the course library)."""
    name = code.co_filename
    return "course_lib/grading/" in name or "course_lib/checks.py" in name or "/tests/" in name


def _library_entries(check, answer) -> set:
    """The course-library functions that the check's reference computations enter directly
    from the grader's own code (the first library frame of each call chain)."""
    entries = set()

    def watch(frame, event, arg):
        if event != "call":
            return
        code, caller = frame.f_code, frame.f_back
        library = "course_lib/" in code.co_filename and not _grading_module(code)
        if library and caller is not None and _grading_module(caller.f_code):
            entries.add(code)

    sys.setprofile(watch)
    try:
        check(answer)
    except Exception:                      # noqa: BLE001 (only the calls matter)
        pass
    finally:
        sys.setprofile(None)
    return entries


def _blocked_codes(checks) -> dict:
    import inspect
    return {inspect.unwrap(fn).__code__: references.name_of(fn) for fn in checks.REFERENCES}


@pytest.mark.parametrize("checks", references.ASSIGNMENT_CHECKS, ids=lambda m: m.__name__)
def test_every_reference_can_be_switched_off_and_is_hidden(checks):
    names = [references.name_of(fn) for fn in checks.REFERENCES]
    assert names, f"{checks.__name__} lists no references"
    hidden = {os.path.realpath(p) for p in references.source_files(checks.REFERENCES)}
    for fn in checks.REFERENCES:
        assert references.resolve(references.name_of(fn)) is fn
        assert os.path.realpath(sys.modules[fn.__module__].__file__) in hidden
        assert fn.__module__ in audit.REFERENCE_PACKAGES
        findings = audit.inspect_cells([("a", f"from {fn.__module__} import {fn.__qualname__.split('.')[0]}")])
        assert any(f.kind == "reference" for f in findings), findings
    # switched off in a forked process: calling any of them is stopped and named
    for fn in checks.REFERENCES:
        hit = call_with_references_off(checks.REFERENCES, _call_anyhow, (fn,))
        assert hit == references.name_of(fn).replace(":", "."), (fn, hit)


def _call_anyhow(fn):
    import inspect
    inspect.unwrap(fn)(*[None] * fn.__code__.co_argcount)


@pytest.mark.parametrize("checks", references.ASSIGNMENT_CHECKS, ids=lambda m: m.__name__)
def test_checks_compare_only_against_listed_references(checks):
    """Run each check (with an answer that fails at once) and look at the course-library
    functions its reference side enters: every one must be listed in REFERENCES, or a learner
    could call the unlisted one and pass. Library code reached only to build inputs (a noise
    schedule, a test function) is allowed when the check does not compare against it."""
    blocked = _blocked_codes(checks)
    unlisted = set()
    for name in checks.__all__:
        check = getattr(checks, name)
        if not name.startswith("check_"):
            continue
        for code in _library_entries(check, _fails):
            if code not in blocked and not _builds_inputs(code):
                unlisted.add(f"{name}: {code.co_filename.split('course_lib/')[-1]}:{code.co_qualname}")
    assert not unlisted, "compared against, but not switched off in the re-check:\n" + "\n".join(sorted(unlisted))


def _fails(*args):
    raise ValueError("not an answer")


# library code a check may use to build its inputs (never what an answer is compared with):
# constructors (the work is in the listed methods), and the noise schedules handed to answers
INPUT_BUILDERS = ("NoiseSchedule.make", "linear_betas", "cosine_betas", "_check_T",
                  "NoiseSchedule.at", "NoiseSchedule.check_t")


def _builds_inputs(code) -> bool:
    return code.co_qualname in INPUT_BUILDERS or code.co_name in ("__init__", "__post_init__")
