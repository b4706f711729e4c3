"""Read the learner's cells (without running them) for code a grader should look at.

Nothing here changes a score by itself: each finding becomes a "needs review" reason next to the
score, so an instructor looks before the grade goes out. Checked:

- importing a module of the course references (``course_lib.foundations.autograd``, named
  from the reference functions themselves) or the grader's internals;
- monkeypatching: assigning or deleting attributes of imported modules (``torch.allclose = ...``,
  ``torch.Tensor.abs = ...``), ``setattr``/``delattr`` on a module, ``sys.modules``,
  ``__dict__`` / ``vars()`` / ``globals()`` edits;
- rebinding a name the test cells use (``check_kl_normal = lambda *a: None``);
- ways around the rules: dynamic imports, ``exec``/``eval``, frame and code introspection,
  trace/profile/audit hooks, IPython hooks (``get_ipython()``), ``ctypes``, ``gc``, threads,
  processes and signals, ``os._exit`` and low-level file descriptors;
- paths that point at the instructor's files (``solutions/``, the gradebook).

IPython syntax (magics, ``!cmd``) is translated to Python first.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from course_lib.grading import references

__all__ = ["Finding", "inspect_cells", "helper_names"]

RISKY_MODULES = {"ctypes", "gc", "inspect", "importlib", "builtins", "threading", "_thread",
                 "multiprocessing", "subprocess", "socket", "signal", "atexit", "marshal",
                 "pty", "resource", "faulthandler", "sysconfig", "site"}
# the modules of the references (named from the function objects the checks compare against)
REFERENCE_PACKAGES = references.module_names()
GRADER_PACKAGES = ("course_lib.grading", "course_lib.checks")


def _is_reference(module: str) -> bool:
    """A reference module, a name inside one, or a package that holds one (``course_lib.foundations``
    re-exports its references); ``course_lib`` itself is every notebook's import."""
    return module != "course_lib" and any(module == r or module.startswith(r + ".") or r.startswith(module + ".")
                                          for r in REFERENCE_PACKAGES)
KNOWN_MODULE_NAMES = {"torch", "np", "numpy", "math", "builtins", "sys", "os", "course_lib",
                      "F", "nn", "random", "warnings"}
RISKY_CALLS = {"exec", "eval", "compile", "__import__", "get_ipython", "globals", "breakpoint"}
# what IPython syntax turns into: %magics and !commands are fine
MAGIC_CALLS = {"run_line_magic", "run_cell_magic", "system", "getoutput"}
RISKY_ATTRS = {
    "sys": {"modules", "settrace", "setprofile", "addaudithook", "_getframe", "exit",
            "setrecursionlimit", "displayhook", "excepthook", "meta_path", "path_hooks"},
    "os": {"_exit", "kill", "killpg", "system", "fork", "forkpty", "execv", "execve", "execl",
           "execlp", "execvp", "popen", "write", "dup", "dup2", "open", "fdopen", "spawnv",
           "posix_spawn", "setsid", "chdir"},
}
INTROSPECTION_ATTRS = {"__code__", "__globals__", "__closure__", "__wrapped__", "__subclasses__",
                       "__dict__", "__builtins__", "f_back", "f_globals", "f_locals", "tb_frame",
                       "gi_frame", "__file__", "__loader__", "__spec__"}
PATH_HINTS = ("solutions/", "/solutions", "gradebook", "autograded/", "submitted/", "/exchange")


@dataclass(frozen=True)
class Finding:
    cell: str        # the answer cell's grade_id, or "cell N"
    kind: str        # reference | grader | monkeypatch | helper | risky | path | syntax
    message: str

    def __str__(self) -> str:
        return f"{self.cell}: {self.message}"


def _python_source(source: str) -> str:
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except Exception:
        return source


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return None


def helper_names(setup_sources: list[str]) -> set[str]:
    """Names the locked set-up cells import from the grader (test cells rely on them)."""
    names: set[str] = set()
    for source in setup_sources:
        try:
            tree = ast.parse(_python_source(source))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(GRADER_PACKAGES):
                names.update(a.asname or a.name for a in node.names)
    return names


class _Visitor(ast.NodeVisitor):
    def __init__(self, label: str, helpers: set[str]):
        self.label, self.helpers = label, helpers
        self.modules = set(KNOWN_MODULE_NAMES)         # names bound to modules
        self.found: list[Finding] = []
        self.magic_calls: set[int] = set()            # get_ipython() calls that run a magic

    def flag(self, kind: str, message: str) -> None:
        finding = Finding(self.label, kind, message)
        if finding not in self.found:
            self.found.append(finding)

    # -- imports
    def _imported(self, module: str, bound: str) -> None:
        if _is_reference(module):
            self.flag("reference", f"imports the course reference {module}")
        elif module.startswith(GRADER_PACKAGES):
            self.flag("grader", f"imports the grader's {module}")
        head, _, attr = module.rpartition(".")
        if module.split(".")[0] in RISKY_MODULES or attr in RISKY_ATTRS.get(head, ()):
            self.flag("risky", f"imports {module}")
        self.modules.add(bound)          # a name bound to something from a library
        self._binds(bound)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._imported(a.name, a.asname or a.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        for a in node.names:
            self._imported(f"{base}.{a.name}" if base else a.name, a.asname or a.name)

    # -- names the tests need
    def _binds(self, name: str) -> None:
        if name in self.helpers:
            self.flag("helper", f"redefines {name}, which the test cells use")

    def visit_FunctionDef(self, node) -> None:
        self._binds(node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def _target(self, target: ast.AST, verb: str) -> None:
        if isinstance(target, ast.Name):
            self._binds(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._target(t, verb)
        elif isinstance(target, ast.Attribute):
            dotted = _dotted(target)
            if dotted and dotted.split(".")[0] in self.modules:
                self.flag("monkeypatch", f"monkeypatches {dotted} ({verb} a library attribute)")
        elif isinstance(target, ast.Subscript):
            owner = target.value
            dotted = _dotted(owner) or ""
            if dotted.endswith("__dict__") or dotted == "sys.modules" or (
                    isinstance(owner, ast.Call) and _dotted(owner.func) in ("vars", "globals")):
                self.flag("monkeypatch", f"edits {dotted or ast.unparse(owner)} directly")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._target(t, "replaces")
        self.generic_visit(node)

    def visit_AugAssign(self, node) -> None:
        self._target(node.target, "changes")
        self.generic_visit(node)

    visit_AnnAssign = visit_AugAssign

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._target(t, "deletes")
        self.generic_visit(node)

    # -- calls and attributes
    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        if name in ("setattr", "delattr") and node.args:
            owner = _dotted(node.args[0]) or ""
            if owner.split(".")[0] in self.modules or not isinstance(node.args[0], ast.Name):
                self.flag("monkeypatch", f"calls {name}() on {owner or 'an object'}")
        elif name in RISKY_CALLS and id(node) not in self.magic_calls:
            self.flag("risky", f"calls {name}()")
        elif name and "." in name:
            head, _, attr = name.rpartition(".")
            if attr in RISKY_ATTRS.get(head, ()):
                self.flag("risky", f"calls {name}()")
            if name in ("importlib.import_module", "importlib.reload"):
                self.flag("risky", f"calls {name}()")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Call) and _dotted(node.value.func) == "get_ipython" \
                and node.attr in MAGIC_CALLS:
            self.magic_calls.add(id(node.value))
        dotted = _dotted(node) or ""
        if node.attr in INTROSPECTION_ATTRS:
            self.flag("risky", f"uses {dotted or node.attr} (introspection)")
        elif dotted in ("sys.modules", "sys.meta_path", "os.environ"):
            self.flag("risky", f"uses {dotted}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and any(h in node.value for h in PATH_HINTS):
            self.flag("path", f"refers to the instructor's files ({node.value[:60]!r})")


def inspect_cells(cells: list[tuple[str, str]], helpers: set[str] = frozenset()) -> list[Finding]:
    """Findings for learner cells given as ``(label, source)``."""
    found: list[Finding] = []
    for label, source in cells:
        try:
            tree = ast.parse(_python_source(source))
        except SyntaxError:
            continue                   # it fails when run, and scores accordingly
        visitor = _Visitor(label, set(helpers))
        visitor.visit(tree)
        found += [f for f in visitor.found if f not in found]
    return found
