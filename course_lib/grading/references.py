"""The course references that graded answers may not use, and how a grading job disables them.

Every assignment's checks module (``course_lib.grading.aN``) lists its references in
``REFERENCES``: the function objects themselves, imported from the course library. Everything
here is derived from those objects (``fn.__module__``, ``fn.__qualname__``), never from a
hand-written dotted name, so the references stay covered wherever the library moves them.

Inside the sandboxed job that the grader re-checks against, the references are **switched
off** before any learner code runs (:func:`disable`): each one's code is replaced by a tripwire
that records the call and raises. The grader compares results with the references in its own
process, so the learner's code never needs them there; no thread, alias, wrapper or emptied
watch list can make them work again, because the working code is no longer in that process.
Their source files are hidden from the job too, so they cannot be loaded afresh.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from types import FunctionType, ModuleType
from typing import Callable, Iterable

from course_lib.grading import a1, a2, a3, a4, a5, a6, a7, a8

__all__ = ["ASSIGNMENT_CHECKS", "all_references", "of_namespace", "name_of", "resolve",
           "module_names", "source_files", "disable", "AUDIT_EVENT"]

ASSIGNMENT_CHECKS: tuple[ModuleType, ...] = (a1, a2, a3, a4, a5, a6, a7, a8)
AUDIT_EVENT = "course_grade.reference"


def all_references() -> tuple[Callable, ...]:
    """Every assignment's references, once each."""
    found: dict[int, Callable] = {}
    for checks in ASSIGNMENT_CHECKS:
        for fn in checks.REFERENCES:
            found.setdefault(id(fn), fn)
    return tuple(found.values())


def of_namespace(ns: dict) -> tuple[Callable, ...]:
    """The references of the checks a test cell's namespace holds (the set-up cell imports
    them from ``course_lib.grading.aN``)."""
    refs: dict[int, Callable] = {}
    for value in ns.values():
        module = sys.modules.get(getattr(value, "__module__", None) or "")
        for fn in getattr(module, "REFERENCES", ()) if module in ASSIGNMENT_CHECKS else ():
            refs.setdefault(id(fn), fn)
    return tuple(refs.values())


def name_of(fn: Callable) -> str:
    """``module:qualname``, from the function object."""
    return f"{fn.__module__}:{fn.__qualname__}"


def resolve(name: str) -> Callable:
    """The function :func:`name_of` named, looked up in the loaded modules."""
    module, _, qualname = name.partition(":")
    obj = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part) if not isinstance(obj, type) else vars(obj)[part]
    return obj


def module_names(refs: Iterable[Callable] | None = None) -> tuple[str, ...]:
    """The dotted names of the modules the references live in."""
    return tuple(sorted({fn.__module__ for fn in (all_references() if refs is None else refs)}))


def source_files(refs: Iterable[Callable] | None = None) -> list[str]:
    """The references' source files and their cached bytecode, as they are on disk."""
    files = []
    for name in module_names(refs):
        path = getattr(sys.modules[name], "__file__", None)
        if not path:
            continue
        files.append(path)
        try:
            files.append(importlib.util.cache_from_source(path))
        except (NotImplementedError, ValueError):
            pass
    return files


# ----------------------------------------------------------------------------- in the job
def _tripwire(name: str, freevars: tuple[str, ...] = ()):
    """Code that records a call to ``name`` with an audit event, then raises. It can only
    raise: whatever learner code did to the names it looks up, the ``raise`` ends it.

    ``freevars``: the free variables of the function it replaces (a method that calls
    ``super()`` has one, ``__class__``). A function's code can only be swapped for code with
    the same free variables, so the tripwire names them too, in code that never runs."""
    dotted = name.replace(":", ".")
    keep = "".join(f"    {v} = None\n" for v in freevars)
    touch = f"        if False:\n            ({', '.join(freevars)},)\n" if freevars else ""
    source = ("def outer():\n" + keep
              + "    def tripwire(*_args, **_kwargs):\n" + touch
              + f"        __import__('sys').audit({AUDIT_EVENT!r}, {dotted!r})\n"
              f"        raise __import__('course_lib.checks', fromlist=['x']).ReferenceCalled({dotted!r})\n"
              "    return tripwire\n")
    ns: dict = {}
    exec(compile(source, f"<{dotted}: switched off while grading>", "exec"), ns)
    return ns["outer"]().__code__


def disable(names: Iterable[str]) -> list[str]:
    """Switch off the named references in this process (a grading job, before learner code
    runs). Returns the names that could not be found or switched off."""
    failed = []
    for name in names:
        try:
            fn = inspect.unwrap(resolve(name))
            if not isinstance(fn, FunctionType):
                raise TypeError(type(fn).__name__)
            code = _tripwire(name, fn.__code__.co_freevars)
            if code.co_freevars != fn.__code__.co_freevars:
                raise TypeError(f"free variables {fn.__code__.co_freevars}")
            fn.__code__ = code.replace(co_name=fn.__code__.co_name,
                                       co_qualname=fn.__code__.co_qualname)
        except Exception:               # noqa: BLE001 (reported to the grader)
            failed.append(name)
    return failed
