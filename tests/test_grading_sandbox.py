"""The sandbox of one grading job, driven directly through the zygote: what learner code can
and cannot do, in both isolation modes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from course_lib.grading import sandbox
from course_lib.grading.protocol import FrameError
from course_lib.grading.zygote import Zygote

ROOT = Path(__file__).resolve().parents[1]
PROBE = '''
import json, os, socket, pathlib
report = {"uid": os.getuid()}
try:
    report["read_hidden"] = pathlib.Path(SECRET).read_text()
except Exception as exc:
    report["read_hidden"] = type(exc).__name__
try:
    pathlib.Path(OUTSIDE).write_text("x")
    report["write_outside"] = "written"
except Exception as exc:
    report["write_outside"] = type(exc).__name__
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    report["network"] = "connected"
except Exception as exc:
    report["network"] = type(exc).__name__
pathlib.Path("mine.txt").write_text("mine")
report["write_own"] = pathlib.Path("mine.txt").read_text()
print(json.dumps(report))
'''


def _run(zygote: Zygote, job_dir: Path, cells: list[str], hidden: list[str], timeout=10,
         memory=1024 ** 3) -> tuple[list[dict], dict]:
    job_dir.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "execute", "job_dir": str(job_dir), "cwd": str(job_dir), "hidden": hidden,
            "cell_timeout": timeout, "memory_bytes": memory,
            "cells": [{"index": i, "source": s} for i, s in enumerate(cells)]}
    job = zygote.open(spec)
    cells_out = []
    while True:
        try:
            _, msg = job.recv(time.monotonic() + 60)
        except FrameError:                      # the job died
            break
        if msg["type"] == "cell":
            cells_out.append(msg)
        if msg["type"] == "done":
            break
    return cells_out, job.wait_exit()


@pytest.fixture(scope="module", params=["namespaces", "audit-hook"])
def zygote(request, tmp_path_factory):
    mode = request.param
    if mode == "namespaces" and sandbox.detect_isolation()[0] != "namespaces":
        pytest.skip("namespaces need Linux and root")
    z = Zygote(tmp_path_factory.mktemp("zygote"), mode)
    yield z
    z.close()


def test_job_sees_only_its_folder_and_no_network(zygote, tmp_path):
    secret = tmp_path / "secret" / "answers.txt"
    secret.parent.mkdir()
    secret.write_text("the solutions")
    outside = ROOT / "WRITTEN_BY_SANDBOX_TEST.txt"
    job_dir = tmp_path / "job"
    probe = PROBE.replace("SECRET", repr(str(secret))).replace("OUTSIDE", repr(str(outside)))
    out, exit_info = _run(zygote, job_dir, [probe],
                          hidden=[str(secret.parent)])
    text = out[0]["outputs"][0]["text"]
    report = json.loads(text)
    assert report["read_hidden"] in ("FileNotFoundError", "PermissionError")
    assert report["write_outside"] in ("OSError", "PermissionError")
    assert report["network"] in ("OSError", "PermissionError", "TimeoutError", "gaierror")
    assert report["write_own"] == "mine"
    assert not outside.exists()
    assert (job_dir / "mine.txt").read_text() == "mine"
    kinds = {r["kind"] for r in exit_info["audit"]}
    assert {"read", "write", "network"} <= kinds, exit_info["audit"]
    if zygote.mode == "namespaces":
        assert report["uid"] >= sandbox.JOB_UID_BASE
    assert exit_info["code"] == 0


def test_memory_limit_is_a_clean_error_and_the_job_goes_on(zygote, tmp_path):
    cells = ["import torch\nhog = [torch.ones(50_000_000) for _ in range(100)]", "print('still here')"]
    out, exit_info = _run(zygote, tmp_path / "job", cells, hidden=[], memory=512 * 1024 ** 2)
    error = out[0]["outputs"][-1]
    assert error["output_type"] == "error"
    assert "MemoryError" in error["ename"] or "allocate memory" in error["evalue"], error
    assert out[1]["outputs"][0]["text"] == "still here\n"
    assert exit_info["code"] == 0


def test_time_limit_interrupts_a_cell(zygote, tmp_path):
    out, _ = _run(zygote, tmp_path / "job", ["while True:\n    pass", "print('next')"],
                  hidden=[], timeout=1)
    assert out[0]["outputs"][-1]["ename"] == "CellTimeout"
    assert out[1]["outputs"][0]["text"] == "next\n"


def test_a_stubborn_loop_is_killed_with_its_children(zygote, tmp_path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    stubborn = ("import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
                "    except BaseException:\n        pass")
    spec = {"kind": "execute", "job_dir": str(job_dir), "cwd": str(job_dir), "hidden": [],
            "cell_timeout": 0.5, "memory_bytes": 1024 ** 3, "cells": [{"index": 0, "source": stubborn}]}
    job = zygote.open(spec)
    with pytest.raises(TimeoutError):
        while True:
            job.recv(time.monotonic() + 3)
    job.kill("time")
    assert job.wait_exit()["code"] == -9


CLEAR_RECORDS = """
import socket, sys
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
except Exception:
    pass
try:
    raise RuntimeError
except RuntimeError as exc:
    frame = exc.__traceback__.tb_frame
cleared = 0
while frame is not None:                   # every list in reach that looks like audit records
    for value in list(frame.f_locals.values()):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value.clear()
            cleared += 1
    frame = frame.f_back
print("cleared", cleared)
"""


def test_audit_records_leave_the_job_as_they_happen(zygote, tmp_path):
    """A record cannot be taken back: clearing lists in the job changes nothing."""
    _, exit_info = _run(zygote, tmp_path / "job", [CLEAR_RECORDS], hidden=[])
    assert [r["kind"] for r in exit_info["audit"]] == ["network"], exit_info


CLOSE_CHANNEL = """
import os, stat
for fd in range(3, 64):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
    except OSError:
        pass
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
except Exception:
    pass
print("closed")
"""

REPLACE_CHANNEL = """
import os, stat
for fd in range(3, 64):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and os.fstat(fd).st_mode:
            os.dup(fd)                       # keep the pipe open, then put /dev/null in its place
            os.dup2(os.open("/dev/null", os.O_WRONLY), fd)
    except OSError:
        pass
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
except Exception:
    pass
print("replaced")
"""


def test_tampering_with_the_audit_channel_is_reported(zygote, tmp_path):
    """Closing the channel, or putting something else in its place, and then doing something
    the hook reports: the job stops there, and the supervisor says why."""
    _, closed = _run(zygote, tmp_path / "closed", [CLOSE_CHANNEL], hidden=[])
    assert closed["code"] == sandbox.TAMPERED, closed
    assert any(r["kind"] == "tampered" for r in closed["audit"]), closed
    _, replaced = _run(zygote, tmp_path / "replaced", [REPLACE_CHANNEL], hidden=[])
    assert replaced["code"] == sandbox.TAMPERED, replaced
    assert any(r["kind"] == "tampered" for r in replaced["audit"]), replaced


def test_each_job_runs_as_a_user_of_its_own(zygote, tmp_path):
    if zygote.mode != "namespaces":
        pytest.skip("a user per job is part of the namespaces mode (root)")
    uids = []
    for name in ("one", "two"):
        out, exit_info = _run(zygote, tmp_path / name, ["import os\nprint(os.getuid())"], hidden=[])
        uids.append(int(out[0]["outputs"][0]["text"]))
        assert uids[-1] == exit_info["uid"] >= sandbox.JOB_UID_BASE
    assert uids[0] != uids[1] and sandbox.NOBODY not in uids


def test_a_reference_that_cannot_be_switched_off_is_reported(zygote, tmp_path):
    """The re-check job says, before any learner code runs, which references it could not
    switch off; the ones it could are stopped from any thread."""
    from course_lib.grading import a6, references
    from course_lib.grading.remote import RemoteSession
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    cell = ("import concurrent.futures\nimport course_lib\n"
            "def go(x):\n"
            "    with concurrent.futures.ThreadPoolExecutor(1) as pool:\n"
            "        return pool.submit(course_lib.diffusion.schedule.to_model_range, x).result()\n")
    spec = {"job_dir": str(job_dir), "cwd": str(job_dir), "hidden": [], "cell_timeout": 10,
            "memory_bytes": 1024 ** 3, "cells": [{"index": 0, "source": cell}],
            "disable": [references.name_of(f) for f in a6.REFERENCES] + ["course_lib.nowhere:f"]}
    session = RemoteSession(zygote, spec, call_timeout=10)
    try:
        with pytest.raises(Exception, match="course_lib.diffusion.schedule.to_model_range"):
            session.call(("name", "go"), (1.0,), {})
    finally:
        session.close()
    assert session.still_on == ["course_lib.nowhere:f"]
    assert any(e["kind"] == "audit:reference" for e in session.events), session.events
