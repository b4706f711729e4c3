"""A warm process that forks one sandboxed job per submission.

Starting Python and importing torch takes seconds; forking a process that already did takes
milliseconds. The grader starts one zygote (``python -m course_lib.grading.zygote SOCKET``),
which imports what learner code will need, then waits on a Unix socket. For each connection:

    zygote ──fork──▶ supervisor (root): reads the job spec, makes a cgroup, enters new
                     namespaces with the sandbox's mounts (course_lib.grading.sandbox)
                     ──fork──▶ runner: PID 1 of the new PID namespace; fresh /proc, limits,
                               drops to nobody, audit hook, then runs the job
                               (course_lib.grading.kernel) and reports over the socket
                     ◀── waits for the runner, sends its exit status (and whether the memory
                         limit killed it), removes the cgroup

The zygote itself never runs learner code, and every job starts from its pristine state.
The grader's side of this (:class:`Zygote`, :class:`Job`) is at the end of this file.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from course_lib.grading import protocol, sandbox

__all__ = ["Zygote", "Job", "JobFailed"]

PRELOAD = ("numpy", "torch", "IPython.core.interactiveshell", "IPython.core.displayhook",
           "IPython.core.displaypub", "course_lib", "course_lib.checks", "course_lib.grading.a1",
           "course_lib.grading.a2", "course_lib.grading.a3", "course_lib.grading.a4",
           "course_lib.grading.a5", "course_lib.grading.a6", "course_lib.grading.a7",
           "course_lib.grading.kernel", "matplotlib", "matplotlib.pyplot", "matplotlib_inline.backend_inline")


# ----------------------------------------------------------------------------- zygote side
def _preload() -> None:
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional library missing is fine
            print(f"zygote: could not preload {name}: {exc}", file=sys.stderr)
    from course_lib.grading import guard, kernel
    guard.take()
    kernel.capture_reference_codes()


def _job_environment(job_dir: str) -> None:
    keep = {"PATH", "LANG", "LC_ALL", "TZ", "COURSE_SMOKE", "MPLBACKEND"}
    for key in list(os.environ):
        if key not in keep:
            del os.environ[key]
    os.environ.update(HOME=job_dir, TMPDIR="/tmp", IPYTHONDIR=f"{job_dir}/.ipython",
                      MPLCONFIGDIR=f"{job_dir}/.config/matplotlib",
                      XDG_CACHE_HOME=f"{job_dir}/.cache", OMP_NUM_THREADS="1",
                      COURSE_GRADING="1")


def _runner(conn: socket.socket, spec: dict, mode: str, go: int) -> None:
    """PID 1 of the job: lock down, then run learner code."""
    from course_lib.grading import kernel
    os.read(go, 1)                       # wait until the supervisor has reported our PID
    os.close(go)
    plan = sandbox.Plan.from_spec(spec)
    audit: list = []
    sandbox.lock_down_runner(plan, mode)
    _job_environment(plan.job_dir)
    os.chdir(spec.get("cwd", plan.job_dir))
    sandbox.install_audit_hook(plan, block=(mode != "namespaces"), records=audit)
    kernel.run_job(conn, spec, audit)


def _supervise(conn: socket.socket, mode: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    sandbox.die_with_parent()
    _, spec = protocol.recv_frame(conn, deadline=time.monotonic() + 30, allowed=b"J")
    plan = sandbox.Plan.from_spec(spec)
    # the cgroup is the hard ceiling; RLIMIT_DATA (a clean MemoryError) normally strikes first
    cgroup = sandbox.Cgroup(f"course_grade_{os.getpid()}", plan.memory_bytes + 512 * 2 ** 20,
                            plan.max_processes)
    notes = sandbox.enter_namespaces(plan) if mode == "namespaces" else []
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        sandbox.die_with_parent()
        code = 0
        try:
            _runner(conn, spec, mode, go_read)
        except BaseException:
            import traceback
            code = 70
            try:
                protocol.send_json(conn, {"type": "runner_error",
                                          "error": traceback.format_exc()[-3000:]})
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(go_read)
    try:
        cgroup.add(pid)
    except OSError:
        pass
    protocol.send_json(conn, {"type": "started", "runner_pid": pid, "supervisor_pid": os.getpid(),
                              "isolation": mode, "cgroup": cgroup.kind, "notes": notes})
    os.write(go_write, b"g")
    os.close(go_write)
    _, status = os.waitpid(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    try:
        protocol.send_json(conn, {"type": "exit", "code": exit_code,
                                  "oom": cgroup.oom_killed()})
    except OSError:
        pass
    cgroup.remove()


def serve(socket_path: str, mode: str) -> None:
    sandbox.die_with_parent()
    sandbox.Cgroup.remove_stale()
    _preload()
    if threading.active_count() != 1:
        print("zygote: warning: threads are running before fork", file=sys.stderr)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)     # supervisors are reaped automatically
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            code = 0
            try:
                _supervise(conn, mode)
            except BaseException as exc:   # report, never fall back into the accept loop
                try:
                    protocol.send_json(conn, {"type": "supervisor_error", "error": repr(exc)})
                except OSError:
                    pass
                code = 1
            finally:
                os._exit(code)
        conn.close()


# ----------------------------------------------------------------------------- grader side
class JobFailed(Exception):
    """The job could not be started at all."""


class Zygote:
    """Starts the warm process and opens jobs on it."""

    def __init__(self, run_dir: Path, mode: str):
        self.mode = mode
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o700)
        self.socket_path = str(run_dir / "zygote.sock")
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "course_lib.grading.zygote", self.socket_path, mode],
            stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=False)
        self.is_ready = False

    def wait_ready(self) -> None:
        """Block until the zygote has loaded its libraries (it starts loading at once)."""
        if not self.is_ready:
            line = self.proc.stdout.readline().strip()
            if line != "ready":
                self.close()
                raise JobFailed(f"the grading zygote did not start (said {line!r})")
            self.is_ready = True

    def open(self, spec: dict) -> "Job":
        self.wait_ready()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        protocol.send_json(sock, spec)
        return Job(sock)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)


class Job:
    """One running job, seen from the grader."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.runner_pid: int | None = None
        self.exit: dict | None = None
        self.killed_because: str | None = None
        kind, msg = self.recv(time.monotonic() + 60)
        if msg.get("type") != "started":
            raise JobFailed(f"the job did not start: {msg}")
        self.runner_pid = msg["runner_pid"]
        self.info = msg

    def recv(self, deadline: float | None, allowed: bytes = b"JB"):
        kind, payload = protocol.recv_frame(self.sock, deadline, allowed)
        if kind == "J" and isinstance(payload, dict) and payload.get("type") == "exit":
            self.exit = payload
        return kind, payload

    def kill(self, reason: str) -> None:
        """Stop the job now (the whole PID namespace goes with its PID 1)."""
        if self.killed_because is None:
            self.killed_because = reason
        if self.runner_pid and self.exit is None:       # not yet reaped: the PID is still ours
            try:
                os.kill(self.runner_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout: float = 10.0) -> dict:
        """The supervisor's exit report, reading (and dropping) anything still in flight."""
        deadline = time.monotonic() + timeout
        while self.exit is None:
            try:
                self.recv(deadline)
            except (TimeoutError, protocol.FrameError, OSError):
                break
        return self.exit or {"type": "exit", "code": None, "oom": False}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
