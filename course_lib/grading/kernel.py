"""The code that runs inside a grading sandbox: a small notebook kernel.

A job is started by forking a warm process (:mod:`course_lib.grading.zygote`) that has already
imported torch, IPython and the course library, so a submission costs milliseconds to start
instead of seconds. The job runs the learner's cells in an IPython shell and talks to the grader
over one socket (:mod:`course_lib.grading.protocol`). Two kinds of job:

``execute``
    Run every code cell in order, as Jupyter would, and send each cell's outputs (streams,
    displays, results, errors) in nbformat shape. These become the autograded notebook and the
    feedback. A cell that runs past its time limit gets a ``CellTimeout`` error.
``serve``
    Switch off the assignment's course references (:func:`course_lib.grading.references.disable`),
    run the learner's cells *except the test cells*, then answer calls: the grader, in its own
    process, runs the test cells with the learner's functions replaced by proxies, so every
    comparison happens where no learner code ever ran (see :mod:`course_lib.grading.remote`).
    A learner's function that reaches a reference, from any thread and under any name, hits a
    tripwire that raises and is reported.

What the job tries (files, network, processes, references) is reported by the sandbox's audit
hook as it happens, on a channel of its own (:mod:`course_lib.grading.sandbox`), not here.

Everything a job sends is untrusted: the grader reads JSON frames and ``torch.load`` blobs with
``weights_only=True`` only.
"""
from __future__ import annotations

import base64
import io
import pickle
import signal
import sys
import time

from course_lib.checks import ReferenceCalled
from course_lib.grading import protocol

__all__ = ["CellTimeout", "run_job"]

MAX_CELL_CHARS = 200_000
# captured while the zygote loads, before any learner code can replace them
_setitimer = signal.setitimer


class CellTimeout(KeyboardInterrupt):
    """A cell (or a call) ran past its time limit. A ``KeyboardInterrupt`` so that
    ``except Exception`` in learner code does not swallow it."""


# ----------------------------------------------------------------------------- outputs
def _json_data(data: dict) -> dict:
    clean = {}
    for mime, value in data.items():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif not isinstance(value, (str, dict, list)):
            value = str(value)
        clean[mime] = value
    return clean


class OutputSink:
    """The outputs of the cell being run, in nbformat v4 shape."""

    def __init__(self, max_chars: int = MAX_CELL_CHARS):
        self.max_chars = max_chars
        self.outputs: list[dict] = []
        self.chars = 0

    def start(self) -> None:
        self.outputs, self.chars = [], 0

    def take(self) -> list[dict]:
        outputs, self.outputs = self.outputs, []
        return outputs

    def _room(self, n: int) -> bool:
        self.chars += n
        if self.chars <= self.max_chars:
            return True
        if self.chars - n <= self.max_chars:
            self.outputs.append({"output_type": "stream", "name": "stdout",
                                 "text": "\n[output truncated by the grader]\n"})
        return False

    def stream(self, name: str, text: str) -> None:
        if not text or not self._room(len(text)):
            return
        last = self.outputs[-1] if self.outputs else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.outputs.append({"output_type": "stream", "name": name, "text": text})

    def display(self, data: dict, metadata: dict | None, count: int | None = None) -> None:
        data = _json_data(data)
        if not self._room(sum(len(str(v)) for v in data.values())):
            return
        out = {"output_type": "display_data" if count is None else "execute_result",
               "data": data, "metadata": metadata or {}}
        if count is not None:
            out["execution_count"] = count
        self.outputs.append(out)

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self._room(len(evalue))
        self.outputs.append({"output_type": "error", "ename": ename, "evalue": evalue[:5000],
                             "traceback": [line[:5000] for line in traceback[-60:]]})

    def clear(self) -> None:
        self.outputs = []


class SinkStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of the job: text goes into the cell's outputs."""

    def __init__(self, sink: OutputSink, name: str):
        self.sink, self.name = sink, name

    def write(self, text) -> int:
        text = str(text)
        self.sink.stream(self.name, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


def make_shell(sink: OutputSink):
    """An IPython shell whose displays, results and tracebacks land in ``sink``."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class SinkPublisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs):
            sink.display(data, metadata)

        def clear_output(self, wait=False):
            sink.clear()

    class SinkDisplayHook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            sink.display(format_dict, md_dict, count=self.shell.execution_count)

        def finish_displayhook(self):
            pass

    class GradingShell(InteractiveShell):
        def _showtraceback(self, etype, evalue, stb):
            sink.error(getattr(etype, "__name__", str(etype)), str(evalue), list(stb))

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    config.InteractiveShell.display_pub_class = SinkPublisher
    config.InteractiveShell.displayhook_class = SinkDisplayHook
    return GradingShell(config=config)


def _on_alarm(signum, frame):
    raise CellTimeout("the time limit ran out")


def _timed_cell(shell, source: str, timeout: float) -> None:
    _setitimer(signal.ITIMER_REAL, max(timeout, 0.01))
    try:
        shell.run_cell(source, store_history=True)
    except CellTimeout:             # raised outside the cell's own code
        shell.showtraceback()
    finally:
        _setitimer(signal.ITIMER_REAL, 0)


# ----------------------------------------------------------------------------- execute
def _execute(conn, spec: dict, shell, sink: OutputSink) -> None:
    for cell in spec["cells"]:
        protocol.send_json(conn, {"type": "cell_start", "index": cell["index"]})
        sink.start()
        started = time.monotonic()
        _timed_cell(shell, cell["source"], cell.get("timeout", spec["cell_timeout"]))
        protocol.send_json(conn, {"type": "cell", "index": cell["index"],
                                  "outputs": sink.take(), "execution_count": shell.execution_count - 1,
                                  "seconds": round(time.monotonic() - started, 3)})
    protocol.send_json(conn, {"type": "done"})


# ----------------------------------------------------------------------------- serve
def _plain(value):
    """``value`` made of plain tensors and containers, or raise ``TypeError``."""
    import numpy as np
    import torch
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).clone()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    if value is None or type(value) in (bool, int, float, str, complex):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (tuple, list):
        return type(value)(_plain(v) for v in value)
    if type(value) is dict and all(type(k) in (str, int) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return value
    raise TypeError(type(value).__name__)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, shell, objects: dict):
        super().__init__(io.BytesIO(data))
        self.shell, self.objects = shell, objects

    def persistent_load(self, pid):
        kind, key = pid
        if kind == "name":
            return self.shell.user_ns[key]
        return self.objects[key]


def _answer(conn, request: dict, shell, objects: dict) -> None:
    import torch
    target = request["target"]
    try:
        fn = shell.user_ns[target[1]] if target[0] == "name" else objects[target[1]]
    except KeyError:
        protocol.send_json(conn, {"type": "raised", "ename": "NameError",
                                  "evalue": f"name {target[1]!r} is not defined"})
        return
    try:
        if request.get("attr"):
            fn = getattr(fn, request["attr"])
    except Exception as exc:
        protocol.send_json(conn, {"type": "raised", "ename": type(exc).__name__,
                                  "evalue": str(exc)[:2000]})
        return
    _setitimer(signal.ITIMER_REAL, max(float(request.get("timeout", 30)), 0.01))
    try:
        value = fn if request.get("get") else fn(*request["args"], **request.get("kwargs", {}))
    except ReferenceCalled as exc:    # a switched-off reference ran (the tripwire's message)
        _setitimer(signal.ITIMER_REAL, 0)
        protocol.send_json(conn, {"type": "reference", "name": str(exc)[:300]})
        return
    except BaseException as exc:      # the learner's error (or a CellTimeout) goes back as text
        _setitimer(signal.ITIMER_REAL, 0)
        protocol.send_json(conn, {"type": "raised", "ename": type(exc).__name__,
                                  "evalue": str(exc)[:2000],
                                  "not_implemented": isinstance(exc, NotImplementedError)})
        return
    _setitimer(signal.ITIMER_REAL, 0)
    try:
        buf = io.BytesIO()
        torch.save(_plain(value), buf)
        blob = buf.getvalue()
        if len(blob) > protocol.MAX_FRAME:
            raise TypeError("a value too large to check")
        protocol.send_json(conn, {"type": "value"})
        protocol.send_bytes(conn, blob)
    except TypeError:
        key = len(objects) + 1
        objects[key] = value
        protocol.send_json(conn, {"type": "handle", "handle": key,
                                  "type_name": type(value).__name__})


def _serve(conn, spec: dict, shell, sink: OutputSink) -> None:
    from course_lib.grading import guard, references
    # before any learner code runs, and said before it runs (so it cannot be edited)
    protocol.send_json(conn, {"type": "switched_off",
                              "failed": references.disable(spec.get("disable", []))})
    errors = []
    for cell in spec["cells"]:
        sink.start()
        _timed_cell(shell, cell["source"], cell.get("timeout", spec["cell_timeout"]))
        errors += [{"index": cell["index"], "ename": o["ename"], "evalue": o["evalue"]}
                   for o in sink.take() if o["output_type"] == "error"]
    protocol.send_json(conn, {"type": "ready", "errors": errors,
                              "monkeypatched": guard.changed()})
    objects: dict[int, object] = {}
    while True:
        try:
            _, payload = protocol.recv_frame(conn, allowed=b"P")
        except protocol.FrameError:
            return
        request = _Unpickler(payload, shell, objects).load()
        if request.get("op") == "bye":
            return
        sink.start()
        _answer(conn, request, shell, objects)


# ----------------------------------------------------------------------------- entry
def run_job(conn, spec: dict) -> None:
    """Run one job (after the sandbox is in place) and report over ``conn``."""
    sink = OutputSink()
    sys.stdout, sys.stderr = SinkStream(sink, "stdout"), SinkStream(sink, "stderr")
    sys.stdin = io.StringIO("")
    signal.signal(signal.SIGALRM, _on_alarm)
    shell = make_shell(sink)
    if spec["kind"] == "execute":
        _execute(conn, spec, shell, sink)
    else:
        _serve(conn, spec, shell, sink)
