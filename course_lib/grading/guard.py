"""Put back library functions that a notebook replaced (monkeypatching), and say which.

A snapshot of the namespaces the graders rely on (``torch``, ``torch.Tensor``, ``numpy``,
``math``, ``builtins``, ``course_lib`` ...) is taken when :mod:`course_lib.grading` is imported by
an assignment's locked set-up cell, before any answer runs. :func:`restore` compares every
watched namespace with it, puts back what was replaced or deleted and returns the names:

    >>> torch.allclose = lambda *a, **k: True      # in an answer cell
    >>> restore()
    ['torch.allclose']

New module attributes are ignored (they cannot change what the grader calls); a new attribute
on ``torch.Tensor`` counts, because it shadows an inherited method.
"""
from __future__ import annotations

import sys
from types import ModuleType

__all__ = ["Snapshot", "restore", "changed"]

WATCHED_MODULES = ("builtins", "math", "torch", "torch.nn.functional", "torch.linalg",
                   "torch.testing", "numpy", "numpy.linalg", "numpy.testing")
WATCHED_PREFIXES = ("course_lib.",)
# builtins that IPython and the interpreter rebind on their own
_IGNORED_BUILTINS = {"_", "__", "___", "get_ipython", "display", "exit", "quit", "copyright",
                     "credits", "license", "help", "__IPYTHON__", "__IPYTHON__active", "dreload",
                     "input"}  # ipykernel swaps input() in on every execution
_MISSING = object()
# The guard must work after a notebook replaced builtins, so it calls them through these.
_isinstance, _vars, _dict, _callable, _type = isinstance, vars, dict, callable, type
_setattr, _delattr = type.__setattr__, type.__delattr__


def _watched_objects() -> dict[str, object]:
    objects: dict[str, object] = {}
    for name in WATCHED_MODULES:
        if name in sys.modules:
            objects[name] = sys.modules[name]
    for name, module in list(sys.modules.items()):
        if name.startswith(WATCHED_PREFIXES) and _isinstance(module, ModuleType):
            objects[name] = module
    torch = sys.modules.get("torch")
    if torch is not None:
        objects["torch.Tensor"] = torch.Tensor
    return objects


def _watched_items(label: str, obj: object) -> dict:
    """What to watch in one namespace: everything in the libraries; the functions, classes and
    modules of ``course_lib`` (its plain data, e.g. caches, may change on its own)."""
    items = _dict(_vars(obj))
    if label.startswith(WATCHED_PREFIXES):
        if label == __name__:
            return {}
        items = {k: v for k, v in items.items() if _callable(v) or _isinstance(v, ModuleType)}
    return items


class Snapshot:
    """The contents of the watched namespaces at one moment."""

    def __init__(self) -> None:
        self.objects = _watched_objects()
        self.contents = {label: _watched_items(label, obj) for label, obj in self.objects.items()}
        self.modules = {name: sys.modules.get(name) for name in self.objects
                        if name != "torch.Tensor"}

    def _differences(self) -> list[tuple[str, object, str, object]]:
        """(label, namespace owner, key, value to put back) for every difference; the value is
        ``_MISSING`` for an attribute added to a class (it shadows an inherited method)."""
        found = []
        for label, obj in self.objects.items():
            before, now = self.contents[label], _vars(obj)
            for key, value in before.items():
                if label == "builtins" and key in _IGNORED_BUILTINS:
                    continue
                if now.get(key, _MISSING) is not value:
                    found.append((label, obj, key, value))
            if _isinstance(obj, _type):
                found += [(label, obj, key, _MISSING) for key in now if key not in before]
        return found

    def changes(self) -> list[str]:
        """Dotted names replaced or deleted since the snapshot (``sys.modules`` included)."""
        found = [f"sys.modules[{name!r}]" for name, module in self.modules.items()
                 if sys.modules.get(name) is not module]
        return found + [f"{label}.{key}" for label, _, key, _ in self._differences()]

    def restore(self) -> list[str]:
        """Put back everything :meth:`changes` lists; return those names."""
        found = self.changes()
        for name, module in self.modules.items():
            if module is not None and sys.modules.get(name) is not module:
                sys.modules[name] = module
        for _, obj, key, value in self._differences():
            _put(obj, key, value)
        return found


def _put(obj: object, key: str, value: object) -> None:
    if value is _MISSING:
        _delattr(obj, key)
    elif _isinstance(obj, ModuleType):
        _vars(obj)[key] = value            # also works when the module defines __setattr__
    else:
        _setattr(obj, key, value)


_SNAPSHOT: Snapshot | None = None


def take() -> Snapshot:
    """Take the reference snapshot (once per process; later calls return the first)."""
    global _SNAPSHOT
    if _SNAPSHOT is None:
        _SNAPSHOT = Snapshot()
    return _SNAPSHOT


def changed() -> list[str]:
    return take().changes()


def restore() -> list[str]:
    return take().restore()

