"""Submissions written the way an adversarial learner would, for any assignment.

Each function returns the answer cells (``{grade_id: source}``) of one attack, built from a
:class:`Target`: which function each answer cell defines, and an expression that gets its
result from the course reference instead of doing the work. The reference modules are named
from the imported module objects (``module.__name__``), so they follow the library if it moves.

None of these is flagged by the static read of the cells on its own (no ``import
course_lib.diffusion``, no ``sys._getframe``, no ``os.environ``): the grader has to catch them
at run time.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from types import ModuleType

import torch


@dataclass
class Target:
    """An assignment as seen by an attacker."""
    assignment: str
    grader: ModuleType                      # course_lib.grading.aN (its REFERENCES)
    modules: dict[str, ModuleType]          # short name -> reference module (``ref_<short>``)
    answers: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # grade_id -> (function name, parameters, an expression using the references)


def a6_target() -> Target:
    from course_lib.diffusion import ddpm as _ddpm
    from course_lib.diffusion import schedule as _sched
    from course_lib.grading import a6
    return Target("a6_ddpm", a6, {"schedule": _sched, "ddpm": _ddpm}, {
        "p1_answer": ("to_model_range", "images", "ref_schedule.to_model_range(images)"),
        "p2_answer": ("q_sample", "x0, t, noise, schedule",
                      "ref_schedule.q_sample(x0, t, noise, schedule)"),
        "p3_answer": ("training_loss", "model, images, t, noise, schedule",
                      "torch.nn.functional.mse_loss(model(ref_schedule.q_sample("
                      "ref_schedule.to_model_range(images), t, noise, schedule), t), noise)"),
        "p4_answer": ("reverse_step", "eps, x_t, t, noise, schedule",
                      "ref_ddpm.reverse_step(eps, x_t, t, schedule, noise)"),
    })


def a1_target() -> Target:
    from course_lib.foundations import autograd as _autograd
    from course_lib.foundations import probability as _probability
    from course_lib.grading import a1
    return Target("a1_gradients", a1, {"autograd": _autograd, "probability": _probability}, {
        "p1_answer": ("numerical_gradient", "f, x, eps=1e-6",
                      "ref_autograd.numerical_gradient(f, x, eps)"),
        "p2_answer": ("mlp2_forward_backward", "x, y, W1, b1, W2, b2",
                      "ref_autograd.mlp2_forward_backward(x, y, W1, b1, W2, b2)"),
        "p3_answer": ("kl_normal", "mu_p, sigma_p, mu_q, sigma_q",
                      "ref_probability.kl_normal(mu_p, sigma_p, mu_q, sigma_q)"),
        "p4_answer": ("gradient_descent", "grad_fn, x0, lr, steps",
                      "ref_autograd.gradient_descent(grad_fn, x0, lr, steps)"),
    })


def _reference_names(target: Target) -> str:
    """``ref_<short> = course_lib.<...>`` through attribute access on ``import course_lib``."""
    return "import course_lib\nimport torch\n" + "".join(
        f"ref_{short} = {module.__name__}\n" for short, module in target.modules.items())


def _cells(target: Target, header: str, body) -> dict[str, str]:
    """One answer cell per part; the first one also holds ``header``."""
    cells = {}
    for i, (gid, (name, params, expr)) in enumerate(target.answers.items()):
        lines = body(expr, params).splitlines()
        code = f"def {name}({params}):\n" + "".join(f"    {line}\n" for line in lines)
        cells[gid] = (header + "\n\n" if i == 0 else "") + code
    return cells


def _arg_names(params: str) -> str:
    return ", ".join(p.split("=")[0].strip() for p in params.split(","))


# ----------------------------------------------------------------------------- issue 12, 1
def reference_in_a_thread(target: Target) -> dict[str, str]:
    """Every answer hands the work to the reference, in a worker thread."""
    header = _reference_names(target) + (
        "import concurrent.futures\n"
        "_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)")
    return _cells(target, header, lambda expr, _: f"return _pool.submit(lambda: {expr}).result()")


# ----------------------------------------------------------------------------- issue 12, 2
CARRY = '''
import pathlib

_STORE = pathlib.Path("answers.pt")


def _expected():
    """The value the checker is about to compare with, read off its call stack."""
    try:
        raise RuntimeError
    except RuntimeError as exc:
        frame = getattr(exc.__traceback__, "tb_" + "frame")
    while frame is not None:
        local = getattr(frame, "f_" + "locals")
        if "want" in local and "args" in local:
            return local["want"]
        frame = getattr(frame, "f_" + "back")
    return None


def _answer(*args):
    store = torch.load(_STORE, weights_only=False) if _STORE.exists() else {}
    key, want = _key(args), _expected()
    if want is not None:                 # the notebook run: remember the answer
        store[key] = want
        torch.save(store, _STORE)
        return want
    return store.get(key)                # the re-check: look it up
'''

KEY = '''
def _key(args):
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            d = a.detach().double()
            parts.append((tuple(a.shape), str(a.dtype), round(d.sum().item(), 9), round(d.abs().sum().item(), 9)))
        elif isinstance(a, (int, float, str, bool)):
            parts.append(a)
        else:
            parts.append(getattr(a, "__name__", type(a).__name__))
    return repr(parts)
'''


def answers_carried_over(target: Target) -> dict[str, str]:
    """No real code: the notebook run stores what the checker expects, the re-check reads it."""
    header = "import torch\n" + KEY + CARRY
    return _cells(target, header, lambda _, params: f"return _answer({_arg_names(params)})")


# ----------------------------------------------------------------------------- issue 12, 3
def blinds_the_grader(target: Target) -> dict[str, str]:
    """Wrong at home; under the grader (user nobody, COURSE_GRADING=1) it empties the sets of
    references the watchers look for, then calls the references."""
    header = _reference_names(target) + f'''import os

_graded = os.getuid() == 65534 or os.getenv("COURSE_GRADING") == "1"
if _graded:
    vars({target.grader.__name__}).update(REFERENCES=())
    for _watched in vars(course_lib.grading.kernel).values():   # the watcher's code objects
        if isinstance(_watched, dict) and all(hasattr(v, "co_code") for v in _watched.values()):
            _watched.clear()'''
    return _cells(target, header, lambda expr, _: f"if _graded:\n    return {expr}\nreturn None")


# ----------------------------------------------------------------------------- issue 12, 4
ERASE = '''
import concurrent.futures

try:
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as _pp:
        _pp.submit(abs, -1).result()
except Exception as _exc:
    print("no process:", type(_exc).__name__)


def _frames():
    try:
        raise RuntimeError
    except RuntimeError as exc:
        frame = getattr(exc.__traceback__, "tb_" + "frame")
    while frame is not None:
        yield frame
        frame = getattr(frame, "f_" + "back")


for _frame in _frames():                    # clear every list of audit records in reach
    for _value in list(getattr(_frame, "f_" + "locals").values()):
        if isinstance(_value, list) and _value and isinstance(_value[0], dict) and "kind" in _value[0]:
            _value.clear()
'''


def erases_the_audit_trail(target: Target, correct: dict[str, str]) -> dict[str, str]:
    """Correct answers; the first cell also starts a process, then clears the audit records."""
    answers = dict(correct)
    first = next(iter(target.answers))
    answers[first] = ERASE + "\n\n" + answers[first]
    return answers


# ----------------------------------------------------------------------------- two more
def reference_copied_from_source(target: Target) -> dict[str, str]:
    """The reference modules copied from their source files into the submission's folder, one
    blank line added at the top, and run from there (``runpy``): new functions whose code is
    not the references' code (their line numbers differ)."""
    lines = ["import pathlib, runpy, types", "import course_lib", "import torch"]
    for short, module in target.modules.items():
        lines += [f"_src = pathlib.Path(getattr({module.__name__}, '__fi' + 'le__')).read_text()",
                  f"pathlib.Path('copy_{short}.py').write_text('\\n' + _src)",
                  f"ref_{short} = types.SimpleNamespace(**runpy.run_path('copy_{short}.py'))"]
    return _cells(target, "\n".join(lines), lambda expr, _: f"return {expr}")


def memorised_visible_answers(target: Target, table: dict[str, dict]) -> dict[str, str]:
    """The answers of the visible tests, worked out at home with the reference and pasted in as
    a table (see :func:`record_visible_answers`); anything else gets ``None``."""
    buf = io.BytesIO()
    torch.save(table, buf)
    blob = base64.b64encode(buf.getvalue()).decode()
    header = ("import base64, io\nimport torch\n" + KEY +
              f"\n_TABLE = torch.load(io.BytesIO(base64.b64decode({blob!r})), weights_only=False)")
    cells = {}
    for i, (gid, (name, params, _)) in enumerate(target.answers.items()):
        code = (f"def {name}({params}):\n"
                f"    return _TABLE.get({name!r}, {{}}).get(_key(({_arg_names(params)},)))\n")
        cells[gid] = (header + "\n\n" if i == 0 else "") + code
    return cells


def record_visible_answers(target: Target, correct: dict[str, str], setup: str,
                           visible: dict[str, str]) -> dict[str, dict]:
    """What the learner would paste: the right outputs for the visible tests' inputs, worked
    out by running the visible test cells (``visible``: grade_id -> source) at home."""
    ns: dict = {}
    exec(_imports(setup), ns)
    exec(KEY, ns)
    for source in correct.values():
        exec(source, ns)
    table: dict[str, dict] = {}
    for gid, (name, _, _) in target.answers.items():
        def recorder(*args, _right=ns[name], _name=name):
            value = _right(*args)
            table.setdefault(_name, {})[ns["_key"](args)] = value
            return value
        recorder.__name__ = name
        exec(visible[gid.replace("_answer", "_visible")], dict(ns, **{name: recorder}))
    return table


def _imports(setup: str) -> str:
    """The import lines of a set-up cell (the rest may need Colab)."""
    import ast
    tree = ast.parse(setup)
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
