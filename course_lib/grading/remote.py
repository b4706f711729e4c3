"""Re-checking a submission from a clean process.

Code in a notebook can change anything in the process it runs in: replace ``torch.allclose``,
rebind the name of a test helper, install a hook that swallows errors. So the grader does not
only trust what the notebook's test cells printed. It runs each test cell again **in its own
process, where no learner code ever ran**, with every name the test cell does not import
replaced by a proxy: calling ``numerical_gradient(f, x)`` sends ``f`` and ``x`` to a sandboxed
job that has run the learner's cells (except the tests) and sends back the result, a plain
tensor, which the grader compares with the reference itself::

    session = RemoteSession(zygote, spec)             # the learner's cells, in a sandbox
    ns = trusted_namespace(["from course_lib.grading.a1 import check_kl_normal"])
    run_test_cell("check_kl_normal(kl_normal)", ns, session)   # -> (passed, message)

Monkeypatching inside the job can only change what the learner's function returns, and that is
exactly what is being checked. The job switches the assignment's course references off before
any learner code runs (an answer that calls one fails, from whatever thread), and restarts if
a call kills it or runs past its time limit. What the job tried (the audit records) comes from
its supervisor's report when the job ends, never from the job itself.
"""
from __future__ import annotations

import ast
import builtins
import io
import pickle
import sys
import threading
import time

from course_lib.checks import ReferenceCalled, RemoteCallable
from course_lib.grading import protocol
from course_lib.grading.zygote import Job, JobFailed, Zygote

__all__ = ["RemoteSession", "RemoteFunction", "RemoteError", "trusted_namespace",
           "run_test_cell", "quiet"]


class RemoteError(Exception):
    """An error raised by the learner's code inside the job; its class name is the learner's."""


def _remote_error(ename: str, evalue: str) -> RemoteError:
    cls = type(ename if ename.isidentifier() else "RemoteError", (RemoteError,), {})
    return cls(evalue)


# ----------------------------------------------------------------------------- output
class _ThreadQuietStdout(io.TextIOBase):
    """``sys.stdout`` that swallows text written by threads running trusted test cells."""

    def __init__(self, real):
        self.real = real
        self.local = threading.local()

    def write(self, text):
        if getattr(self.local, "quiet", False):
            return len(text)
        return self.real.write(text)

    def flush(self):
        self.real.flush()


_STDOUT_LOCK = threading.Lock()
_QUIET_USERS = [0]


class quiet:
    """Within ``with quiet():`` this thread's prints are dropped (other threads still print).
    The filtering ``sys.stdout`` is in place only while some thread is inside the block."""

    def __enter__(self):
        with _STDOUT_LOCK:
            if _QUIET_USERS[0] == 0:
                sys.stdout = _ThreadQuietStdout(sys.stdout)
            _QUIET_USERS[0] += 1
            self.proxy = sys.stdout
        self.proxy.local.quiet = True
        return self

    def __exit__(self, *exc):
        self.proxy.local.quiet = False
        with _STDOUT_LOCK:
            _QUIET_USERS[0] -= 1
            if _QUIET_USERS[0] == 0 and isinstance(sys.stdout, _ThreadQuietStdout):
                sys.stdout = sys.stdout.real


# ----------------------------------------------------------------------------- proxies
class RemoteFunction(RemoteCallable):
    """Stands for a name defined by the learner's cells inside the job."""

    def __init__(self, name: str, session: "RemoteSession"):
        self.__name__ = self.name = name
        self.session = session

    def __call__(self, *args, **kwargs):
        return self.session.call(("name", self.name), args, kwargs)

    def call_forbidding(self, args: tuple, forbid: tuple):
        """Used by :func:`course_lib.checks.check`. The references in ``forbid`` are already
        switched off inside the job (the session's spec names them), so this is a plain call."""
        return self.session.call(("name", self.name), args, {})

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self.session.call(("name", self.name), (), {}, attr=attr, get=True)

    def __repr__(self):
        return f"<learner's {self.name}>"


class RemoteObject:
    """A value the job could not send back (a model, a generator ...), used by handle."""

    def __init__(self, handle: int, type_name: str, session: "RemoteSession"):
        self.handle, self.type_name, self.session = handle, type_name, session

    def __call__(self, *args, **kwargs):
        return self.session.call(("handle", self.handle), args, kwargs)

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self.session.call(("handle", self.handle), (), {}, attr=attr, get=True)

    def __repr__(self):
        return f"<learner's {self.type_name} object>"


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, RemoteFunction):
            return ("name", obj.name)
        if isinstance(obj, RemoteObject):
            return ("handle", obj.handle)
        return None


# ----------------------------------------------------------------------------- session
class RemoteSession:
    """A sandboxed ``serve`` job holding the learner's definitions, restarted when it dies."""

    def __init__(self, zygote: Zygote, spec: dict, call_timeout: float, max_starts: int = 3):
        self.zygote, self.spec, self.call_timeout = zygote, dict(spec, kind="serve"), call_timeout
        self.max_starts = max_starts
        self.starts = 0
        self.job: Job | None = None
        self.events: list[dict] = []       # deaths, timeouts, reference calls, audit records
        self.ready: dict | None = None     # the first job's report after running the cells
        self.broken: str | None = None     # why no job can be had
        self.still_on: list[str] = []      # references the job could not switch off

    # -- lifecycle
    def _start(self) -> None:
        if self.starts >= self.max_starts:
            raise _remote_error("KernelDied", self.broken or "the grading job kept dying")
        self.starts += 1
        budget = sum(c.get("timeout", self.spec["cell_timeout"]) for c in self.spec["cells"])
        deadline = time.monotonic() + budget + 30
        try:
            job = self.zygote.open(self.spec)
        except (JobFailed, OSError) as exc:
            self.broken = f"the grading job could not start: {exc}"
            raise _remote_error("KernelDied", self.broken) from exc
        try:
            while True:
                kind, msg = job.recv(deadline)
                if kind == "J" and msg.get("type") == "switched_off" and not self.still_on:
                    self.still_on = [str(n) for n in msg.get("failed", [])][:10]
                if kind == "J" and msg.get("type") == "ready":
                    break
        except TimeoutError:
            job.kill("time")
            self._lost(job, "running the notebook's cells took too long")
        except (protocol.FrameError, OSError):
            self._lost(job, "the kernel died while running the notebook's cells")
        self.job = job
        if self.ready is None:
            self.ready = msg

    def _finished(self, job: Job, timeout: float = 10.0) -> dict:
        """The ended job's report; its audit records become events."""
        exit_info = job.wait_exit(timeout)
        job.close()
        self.events += [dict(e, kind="audit:" + str(e.get("kind"))) for e in exit_info["audit"]]
        return exit_info

    def _lost(self, job: Job, why: str) -> None:
        job.kill(why)
        exit_info = self._finished(job)
        self.job = None
        detail = f"{why} (exit code {exit_info.get('code')})" + (
            ", memory limit" if exit_info.get("oom") else "")
        self.events.append({"kind": "died", "detail": detail})
        self.broken = detail
        raise _remote_error("KernelDied", detail)

    def close(self) -> None:
        if self.job is not None:
            try:
                protocol.send_pickle(self.job.sock, pickle.dumps({"op": "bye"}))
            except OSError:
                pass
            self._finished(self.job, 5)
            self.job = None

    # -- calls
    def call(self, target, args, kwargs, attr=None, get=False):
        if self.job is None:
            self._start()
        buf = io.BytesIO()
        _Pickler(buf).dump({"op": "call", "target": target, "args": tuple(args),
                            "kwargs": dict(kwargs), "attr": attr,
                            "get": get, "timeout": self.call_timeout})
        job = self.job
        try:
            protocol.send_pickle(job.sock, buf.getvalue())
            return self._reply(job, target)
        except TimeoutError:
            job.kill("time")
            self.events.append({"kind": "timeout", "detail": f"{target[1]} ran past "
                                f"{self.call_timeout:g} s"})
            self._lost(job, f"{target[1]} did not finish within {self.call_timeout:g} s")
        except (protocol.FrameError, OSError):
            self._lost(job, f"the kernel died while running {target[1]}")

    def _reply(self, job: Job, target):
        deadline = time.monotonic() + self.call_timeout + 5
        while True:
            kind, msg = job.recv(deadline)
            if kind != "J":
                raise protocol.FrameError("a value without its header")
            t = msg.get("type")
            if t == "value":
                _, blob = job.recv(deadline, allowed=b"B")
                return _load_value(blob)
            elif t == "handle":
                return RemoteObject(msg["handle"], msg["type_name"], self)
            elif t == "reference":
                self.events.append({"kind": "reference", "detail": f"{target[1]} calls the "
                                    f"course reference {msg['name']}"})
                raise ReferenceCalled(f"it calls the course reference {msg['name']}; "
                                      "write your own code")
            elif t == "raised":
                if msg.get("not_implemented"):
                    raise NotImplementedError(msg["evalue"])
                if msg["ename"] == "CellTimeout":
                    self.events.append({"kind": "timeout", "detail": f"{target[1]} ran past "
                                        f"{self.call_timeout:g} s"})
                raise _remote_error(msg["ename"], msg["evalue"])


def _load_value(blob: bytes):
    import torch
    try:
        return torch.load(io.BytesIO(blob), weights_only=True)
    except Exception as exc:
        raise _remote_error("TypeError", f"returned a value the grader cannot read ({exc})")


# ----------------------------------------------------------------------------- test cells
def trusted_namespace(setup_sources: list[str]) -> dict:
    """A namespace holding what the locked set-up cells *import* (their other code is not run)."""
    ns: dict = {"__builtins__": builtins, "__name__": "__grading__"}
    for source in setup_sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        if imports:
            exec(compile(ast.Module(body=imports, type_ignores=[]), "<set-up imports>", "exec"), ns)
    return ns


class _LearnerNames(dict):
    """Local names of a test cell: anything the trusted namespace lacks is the learner's."""

    def __init__(self, ns: dict, session: RemoteSession):
        super().__init__()
        self.ns, self.session = ns, session

    def __missing__(self, name: str):
        if name in self.ns or hasattr(builtins, name):
            raise KeyError(name)
        value = self[name] = RemoteFunction(name, self.session)
        return value


def run_test_cell(source: str, ns: dict, session: RemoteSession) -> tuple[bool, str]:
    """Run a test cell in the grader's process against the learner's job."""
    try:
        code = compile(source, "<test cell>", "exec")
        with quiet():
            exec(code, ns, _LearnerNames(ns, session))
    except Exception as exc:
        name = type(exc).__name__
        return False, str(exc) if name in ("CheckFailure", "AssertionError") else f"{name}: {exc}"
    return True, ""
