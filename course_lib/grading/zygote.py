"""A warm process that forks one sandboxed job per submission.

Starting Python and importing torch takes seconds; forking a process that already did takes
milliseconds. The grader starts one zygote (``python -m course_lib.grading.zygote SOCKET``),
which imports what learner code will need, then waits on a Unix socket. For each connection:

    zygote ──fork──▶ supervisor (root): reads the job spec, opens the job's report file, makes
                     a cgroup, gives the job's folder to the job's own user, enters new
                     namespaces with the sandbox's mounts (course_lib.grading.sandbox)
                     ──fork──▶ runner: PID 1 of the new PID namespace; fresh /proc, limits,
                               drops to the job's user, audit hook, then runs the job
                               (course_lib.grading.kernel) and talks to the grader over the socket
                     ◀── reads the audit records the runner's hook writes on a pipe, as they
                         come; waits for the runner; writes the report file (exit status,
                         memory limit hit, audit records, tampering) and removes the cgroup

The report travels in a file the runner never had open, so nothing the learner's code does
(clearing lists, writing on the socket) can change it; the grader reads it once the job's
socket has closed.

The zygote itself never runs learner code, and every job starts from its pristine state.
The grader's side of this (:class:`Zygote`, :class:`Job`) is at the end of this file.
"""
from __future__ import annotations

import itertools
import json
import os
import select
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
           "course_lib.grading.a8", "course_lib.grading.kernel", "course_lib.grading.references",
           "matplotlib", "matplotlib.pyplot", "matplotlib_inline.backend_inline")


# ----------------------------------------------------------------------------- zygote side
def _preload() -> None:
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional library missing is fine
            print(f"zygote: could not preload {name}: {exc}", file=sys.stderr)
    from course_lib.grading import guard
    guard.take()


def _job_environment(job_dir: str) -> None:
    keep = {"PATH", "LANG", "LC_ALL", "TZ", "COURSE_SMOKE", "MPLBACKEND"}
    for key in list(os.environ):
        if key not in keep:
            del os.environ[key]
    os.environ.update(HOME=job_dir, TMPDIR="/tmp", IPYTHONDIR=f"{job_dir}/.ipython",
                      MPLCONFIGDIR=f"{job_dir}/.config/matplotlib",
                      XDG_CACHE_HOME=f"{job_dir}/.cache", OMP_NUM_THREADS="1",
                      COURSE_GRADING="1")


def _runner(conn: socket.socket, spec: dict, mode: str, go: int, channel: int, uid: int) -> None:
    """PID 1 of the job: lock down, then run learner code."""
    from course_lib.grading import kernel
    os.read(go, 1)                       # wait until the supervisor has reported our PID
    os.close(go)
    plan = sandbox.Plan.from_spec(spec)
    sandbox.lock_down_runner(plan, mode, uid)
    _job_environment(plan.job_dir)
    os.chdir(spec.get("cwd", plan.job_dir))
    sandbox.install_audit_hook(plan, block=(mode != "namespaces"), channel=channel)
    kernel.run_job(conn, spec)


class _AuditReader:
    """The supervisor's side of the audit pipe: collects the runner's records as they come.
    (No thread: a process that has unshared its PID namespace may not start one.)"""

    def __init__(self, fd: int, limit: int = 200):
        self.fd, self.limit = fd, limit
        self.records: list[dict] = []
        self.buffer = b""
        self.closed = False

    def _add(self, record: dict) -> None:
        if len(self.records) < self.limit:
            self.records.append(record)

    def read(self) -> None:
        """Read what is there (the pipe is readable); parse the complete lines."""
        chunk = os.read(self.fd, 65536)
        self.closed = not chunk
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        for line in lines:
            try:
                record = json.loads(line)
                assert isinstance(record, dict) and set(record) == {"kind", "detail"}
                self._add({"kind": str(record["kind"]), "detail": str(record["detail"])[:300]})
            except (ValueError, AssertionError):
                self._add({"kind": "tampered", "detail": "wrote on the grader's audit channel"})

    def follow(self, runner: int) -> int:
        """Collect records until the runner exits; its wait status. The channel closing while
        the runner goes on running means learner code closed it (and the hook stops the job at
        its next record, see :func:`course_lib.grading.sandbox.install_audit_hook`)."""
        done = os.pidfd_open(runner)
        while True:
            ready, _, _ = select.select([done] + ([] if self.closed else [self.fd]), [], [])
            if self.fd in ready:
                self.read()
                # an exiting runner closes its end a moment before it is done: give it 2 s
                if self.closed and not select.select([done], [], [], 2)[0]:
                    self._add({"kind": "tampered", "detail": "closed the grader's audit channel"})
            if done in ready:
                break
        os.close(done)
        _, status = os.waitpid(runner, 0)
        # what is still in the pipe (processes of the job die with it: EOF comes quickly)
        while not self.closed and select.select([self.fd], [], [], 2)[0]:
            self.read()
        return status


def _supervise(conn: socket.socket, mode: str, run_dir: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    sandbox.die_with_parent()
    _, spec = protocol.recv_frame(conn, deadline=time.monotonic() + 30, allowed=b"J")
    plan = sandbox.Plan.from_spec(spec)
    # the report file: named by the grader, in the zygote's own folder (hidden from the job)
    # (written as .part, renamed when complete: the grader waits for the final name)
    name = f"report-{int(spec['report_id']):d}.json"
    folder = os.open(run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    report = os.open(name + ".part", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=folder)
    uid = sandbox.job_uid(os.getpid())
    if os.geteuid() == 0:
        sandbox.give_to(plan.job_dir, uid)
    # the cgroup is the hard ceiling; RLIMIT_DATA (a clean MemoryError) normally strikes first
    cgroup = sandbox.Cgroup(f"course_grade_{os.getpid()}", plan.memory_bytes + 512 * 2 ** 20,
                            plan.max_processes)
    notes = sandbox.enter_namespaces(plan) if mode == "namespaces" else []
    go_read, go_write = os.pipe()
    audit_read, audit_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.close(audit_read)
        os.close(report)
        os.close(folder)
        sandbox.die_with_parent()
        code = 0
        try:
            _runner(conn, spec, mode, go_read, audit_write, uid)
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
    os.close(audit_write)
    reader = _AuditReader(audit_read)
    try:
        cgroup.add(pid)
    except OSError:
        pass
    protocol.send_json(conn, {"type": "started", "runner_pid": pid, "supervisor_pid": os.getpid(),
                              "isolation": mode, "cgroup": cgroup.kind, "notes": notes})
    os.write(go_write, b"g")
    os.close(go_write)
    exit_code = os.waitstatus_to_exitcode(reader.follow(pid))
    records = list(reader.records)
    if exit_code == sandbox.TAMPERED:
        records.append({"kind": "tampered", "detail": "replaced the grader's audit channel"})
    os.write(report, json.dumps({"code": exit_code, "oom": cgroup.oom_killed(), "uid": uid,
                                 "audit": records}).encode())
    os.close(report)
    os.rename(name + ".part", name, src_dir_fd=folder, dst_dir_fd=folder)
    cgroup.remove()


def serve(socket_path: str, mode: str) -> None:
    run_dir = os.path.dirname(socket_path)
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
                _supervise(conn, mode, run_dir)
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
        self.run_dir = str(run_dir)
        self.ids = itertools.count(1)

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
        report_id = next(self.ids)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        protocol.send_json(sock, dict(spec, report_id=report_id))
        return Job(sock, os.path.join(self.run_dir, f"report-{report_id}.json"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)


class Job:
    """One running job, seen from the grader."""

    def __init__(self, sock: socket.socket, report: str):
        self.sock, self.report = sock, report
        self.runner_pid: int | None = None
        self.exit: dict | None = None
        self.killed_because: str | None = None
        kind, msg = self.recv(time.monotonic() + 60)
        if msg.get("type") != "started":
            raise JobFailed(f"the job did not start: {msg}")
        self.runner_pid = msg["runner_pid"]
        self.info = msg

    def recv(self, deadline: float | None, allowed: bytes = b"JB"):
        return protocol.recv_frame(self.sock, deadline, allowed)

    def kill(self, reason: str) -> None:
        """Stop the job now (the whole PID namespace goes with its PID 1)."""
        if self.killed_because is None:
            self.killed_because = reason
        if self.runner_pid and not os.path.exists(self.report):   # not yet reaped: still ours
            try:
                os.kill(self.runner_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout: float = 10.0) -> dict:
        """The supervisor's report (exit code, memory limit, audit records), once the job has
        closed its socket; anything still in flight on the socket is dropped."""
        if self.exit is not None:
            return self.exit
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.recv(deadline)
            except (TimeoutError, protocol.FrameError, OSError):
                break
        while not os.path.exists(self.report) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            with open(self.report) as fh:
                report = json.load(fh)
            os.unlink(self.report)
        except (OSError, ValueError):
            report = {}
        self.exit = {"type": "exit", "code": report.get("code"), "oom": bool(report.get("oom")),
                     "uid": report.get("uid"),
                     "audit": [r for r in report.get("audit", []) if isinstance(r, dict)]}
        return self.exit

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
