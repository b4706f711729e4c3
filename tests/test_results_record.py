"""Results on record: ``results/cpu.json`` (written by ``course-results --record``) must meet every
target it records, must belong to the notebooks' current code, and must be what the README's course
map shows. Plus the pieces: the target evaluator, the code-cell hash, the README rendering, and the
command end to end (smoke mode on the fastest notebook, and on small notebooks written here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib.artifacts import check_targets, list_runs, load_run, save_run
from course_lib.config import Config
from course_lib.results import (MEASURED_HEADER, README_BEGIN, README_END, code_hash, load_record, main,
                                render_readme)

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "cpu.json"
RECORDED = sorted(load_record(RECORD)["notebooks"].items())
BIN = Path(sys.executable).parent
FASTEST = ROOT / "notebooks" / "2_deep_learning" / "01_numpy_network.ipynb"   # about 7 s in smoke mode
REFRESH = ".venv/bin/course-results {} --threads 1 --record results/cpu.json && .venv/bin/course-results --readme"


def _notebook_of(key: str) -> Path:
    """The notebook of a record key such as ``"4_diffusion/02_ddpm.ipynb DATASET='mnist'"``."""
    return ROOT / "notebooks" / key.split(" ")[0]


# ---------------------------------------------------------------------------------------------
# the record itself
# ---------------------------------------------------------------------------------------------

def test_the_record_holds_full_mode_runs():
    assert RECORDED, f"{RECORD} records no notebook"
    for key, entry in RECORDED:
        assert entry["mode"] == "full", f"{key} is recorded in {entry['mode']} mode; results/cpu.json keeps full mode"
        for field in ("date", "code_hash", "wall_s", "device", "cpu_count", "threads", "python", "torch", "targets"):
            assert field in entry, f"{key}'s record has no {field!r}"


@pytest.mark.parametrize("key, entry", RECORDED, ids=[k for k, _ in RECORDED])
def test_recorded_results_meet_their_targets(key, entry):
    """Re-evaluated here from the recorded numbers, not taken from the recorded "met"."""
    missed = []
    for t in entry["targets"]:
        check, = check_targets({t["metric"]: t["measured"]}, {t["metric"]: (t["op"], t["target"])})
        assert check.met == t["met"], f"{key}: {t['metric']} is recorded as met={t['met']}, but {check}"
        if not check.met:
            missed.append(str(check))
    assert not missed, f"{key} misses its declared target(s) in the recorded full-mode run: {missed}"


@pytest.mark.parametrize("key, entry", RECORDED, ids=[k for k, _ in RECORDED])
def test_recorded_notebooks_code_is_unchanged(key, entry):
    path = _notebook_of(key)
    assert path.is_file(), f"{key} is recorded in {RECORD.name} but {path} does not exist"
    assert code_hash(path) == entry["code_hash"], (
        f"the code cells of {key} changed since its result was recorded ({entry['date']}); "
        f"re-run it and refresh the record: {REFRESH.format(path.relative_to(ROOT))}")


def test_readme_shows_the_record():
    text = (ROOT / "README.md").read_text()
    assert render_readme(text, load_record(RECORD)) == text, (
        "the README's Measured column is not a fresh rendering of results/cpu.json: "
        "run .venv/bin/course-results --readme")


# ---------------------------------------------------------------------------------------------
# the target evaluator, and save_run(targets=...)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op, target, met", [(">=", 0.9, True), (">=", 0.95, True), (">=", 0.96, False),
                                             ("<=", 0.95, True), ("<=", 0.9, False), (">", 0.95, False),
                                             (">", 0.9, True), ("<", 1, True), ("<", 0.95, False),
                                             ("==", 0.95, True), ("==", 0.9, False)])
def test_check_targets_ops(op, target, met):
    check, = check_targets({"acc": 0.95}, {"acc": (op, target)})
    assert (check.metric, check.op, check.target, check.measured, check.met) == ("acc", op, target, 0.95, met)


def test_check_targets_bools_strings_and_json_pairs():
    metrics = {"rises": True, "dataset": "digits", "count": 11}
    checks = check_targets(metrics, {"rises": ["==", True], "dataset": ("==", "mnist"), "count": ("==", 11)})
    assert [c.met for c in checks] == [True, False, True]
    assert str(checks[0]) == "rises True == True: met" and str(checks[1]).endswith("MISSED")


@pytest.mark.parametrize("targets, message", [
    ({"acc": ("=>", 0.9)}, r"unknown op '=>'; use one of >=, <=, >, <, =="),
    ({"accs": (">=", 0.9)}, r"names the metric 'accs', which is not among the metrics; did you mean 'acc'"),
    ({"loss": (">=", 0.9)}, r"names the metric 'loss', which is not among the metrics \(metrics: \['acc', "),
    ({"run": (">=", 0.9)}, r"names the metric 'run', which is not among the metrics"),
    ({"acc": ">= 0.9"}, r"must be a pair \(op, value\)"),
    ({"acc": (">=", 0.9, 1.0)}, r"must be a pair \(op, value\)"),
    ({"acc": (">=", "0.9")}, r"needs a number after '>='"),
    ({"acc": (">=", True)}, r"needs a number after '>='"),
    ({"dataset": (">=", 1)}, r"orders numbers, but the metric is 'digits'; compare it with '==' instead"),
    ({"rises": ("==", 1)}, r"compares a number with the metric's bool True"),
])
def test_check_targets_clear_errors(targets, message):
    with pytest.raises(ValueError, match=message):
        check_targets({"acc": 0.95, "dataset": "digits", "rises": True, "run": {}}, targets)


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUT_DIR", str(tmp_path))
    return tmp_path


def test_save_run_keeps_targets_beside_the_metrics(outputs):
    import numpy as np

    cfg = Config(smoke=False, seed=0, device=torch.device("cpu"))
    folder = save_run("r", metrics={"acc": np.float32(0.5), "ok": True}, cfg=cfg,
                      targets={"acc": (">=", np.float64(0.25)), "ok": ("==", True)})
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["targets"] == {"acc": [">=", 0.25], "ok": ["==", True]}
    assert [c.met for c in check_targets(saved, saved["targets"])] == [True, True]
    assert list_runs("r")[0]["metrics"] == {"acc": 0.5, "ok": True}      # targets are not a metric
    assert load_run("r")[1]["targets"] == saved["targets"]
    with pytest.raises(ValueError, match="may not be called"):
        save_run("r", metrics={"targets": 1})
    with pytest.raises(ValueError, match="did you mean 'acc'"):
        save_run("bad", metrics={"acc": 0.5}, targets={"acc_": (">=", 0.9)})
    assert not (outputs / "runs" / "bad").exists()                        # nothing written


# ---------------------------------------------------------------------------------------------
# the code-cell hash
# ---------------------------------------------------------------------------------------------

def _write(path: Path, cells) -> Path:
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": kernel}), str(path))
    return path


def test_code_hash_follows_code_cells_only(tmp_path):
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    base = code_hash(_write(tmp_path / "a.ipynb", [md("# Title"), code("x = 1"), md("prose"), code("print(x)")]))
    assert base.startswith("sha256:") and len(base) == len("sha256:") + 64
    prose = _write(tmp_path / "b.ipynb", [md("# A new title"), code("x = 1"), md("other prose"), md("more"),
                                          code("print(x)")])
    assert code_hash(prose) == base, "a markdown edit changed the hash"
    ran = nbformat.read(str(tmp_path / "a.ipynb"), as_version=4)
    ran.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    ran.cells[1].execution_count = 3
    ran.cells[1].metadata["tags"] = ["x"]
    nbformat.write(ran, str(tmp_path / "c.ipynb"))
    assert code_hash(tmp_path / "c.ipynb") == base, "outputs or metadata changed the hash"
    assert code_hash(_write(tmp_path / "d.ipynb", [code("x = 2"), code("print(x)")])) != base
    assert code_hash(_write(tmp_path / "e.ipynb", [code("print(x)"), code("x = 1")])) != base   # order counts
    assert code_hash(_write(tmp_path / "f.ipynb", [code("x = 1\nprint(x)")])) != base          # so do cell bounds


# ---------------------------------------------------------------------------------------------
# the README column
# ---------------------------------------------------------------------------------------------

README = f"""# Course

{README_BEGIN}
| Phase | Notebook | What you do | Time |
|---|---|---|---|
| 0 | `00_start_here` | start | 15 min |
| 2 Deep learning | `01_numpy_network` | NumPy | 3 h |
| | **A2** `assignments/a2_backprop` | graded | 2 h |
| 4 Diffusion | `01_forward_process` | schedules | 2 h |
| | `02_ddpm` | a DDPM | 4 h |
{README_END}

After the table.
"""


def _entry(targets, wall_s=41.2, mode="full"):
    return {"mode": mode, "wall_s": wall_s, "targets": targets}


def test_render_readme_adds_the_measured_column():
    record = {"notebooks": {
        "2_deep_learning/01_numpy_network.ipynb": _entry([
            {"metric": "test_accuracy", "op": ">=", "target": 0.95, "measured": 0.9667, "met": True}]),
        "4_diffusion/02_ddpm.ipynb": _entry([
            {"metric": "recognised", "op": ">=", "target": 0.9, "measured": 0.914, "met": True},
            {"metric": "fid_ratio", "op": "<=", "target": 3, "measured": 3.5, "met": False}], wall_s=456),
        "4_diffusion/02_ddpm.ipynb DATASET='mnist'": _entry([], wall_s=1),
        "3_generative/01_forward_process.ipynb": _entry([], wall_s=1),        # same name, another phase
        "4_diffusion/01_forward_process.ipynb": _entry([], mode="smoke"),     # smoke runs are not shown
    }}
    out = render_readme(README, record)
    rows = out.split(README_BEGIN)[1].split(README_END)[0].strip().splitlines()
    assert rows[0] == f"| Phase | Notebook | What you do | Time | {MEASURED_HEADER} |"
    assert rows[1] == "|---|---|---|---|---|"
    assert rows[2] == "| 0 | `00_start_here` | start | 15 min | |"
    assert rows[3] == "| 2 Deep learning | `01_numpy_network` | NumPy | 3 h | test_accuracy 0.9667 ✅ (≥ 0.95) · 41 s |"
    assert rows[4] == "| | **A2** `assignments/a2_backprop` | graded | 2 h | |"
    assert rows[5] == "| 4 Diffusion | `01_forward_process` | schedules | 2 h | |"
    assert rows[6] == "| | `02_ddpm` | a DDPM | 4 h | recognised 0.914 ✅ (≥ 0.9); fid_ratio 3.5 ❌ (≤ 3) · 7.6 min |"
    assert out.startswith("# Course\n\n") and out.endswith(f"{README_END}\n\nAfter the table.\n")
    assert render_readme(out, record) == out                                  # rendering again changes nothing
    assert render_readme(out, {"notebooks": {}}) == render_readme(README, {"notebooks": {}})
    added = out.replace("| | `02_ddpm` |", "| | `03_new` | new | 1 h |\n| | `02_ddpm` |")
    assert "| | `03_new` | new | 1 h | |" in render_readme(added, record)   # a new row gets its cell
    with pytest.raises(ValueError, match="no course map between"):
        render_readme("# no markers\n", record)


def test_course_results_readme_writes_the_column(tmp_path, capsys):
    readme, record = tmp_path / "README.md", tmp_path / "record.json"
    readme.write_text(README)
    record.write_text(json.dumps({"notebooks": {"4_diffusion/02_ddpm.ipynb": _entry([])}}))
    assert main(["--readme", str(readme), "--record", str(record)]) == 0
    assert "| | `02_ddpm` | a DDPM | 4 h | no targets · 41 s |" in readme.read_text()
    assert "rewritten from" in capsys.readouterr().out
    assert main(["--readme", str(readme), "--record", str(record)]) == 0
    assert "is up to date" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the command, end to end
# ---------------------------------------------------------------------------------------------

def _course_results(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "course-results"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.notebook
def test_course_results_smoke_end_to_end(tmp_path):
    """The fastest notebook in smoke mode: the table, and a record with its code hash."""
    record = tmp_path / "record.json"
    out = _course_results(FASTEST, "--smoke", "--threads", "1", "--record", record)
    assert out.returncode == 0, out.stdout + out.stderr      # smoke mode: a missed target is no failure
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("notebook"))
    assert header.split() == ["notebook", "metric", "target", "measured", "met", "wall", "time", "device"]
    row = next(line for line in lines if line.startswith("2_deep_learning/01_numpy_network.ipynb"))
    assert row.split()[1:4] == ["test_accuracy", ">=", "0.95"] and row.split()[5] in ("yes", "NO")
    assert "cpu (" in row and "cores)" in row
    entry = json.loads(record.read_text())["notebooks"]["2_deep_learning/01_numpy_network.ipynb"]
    assert entry["mode"] == "smoke" and entry["threads"] == 1 and entry["parameters"] == {}
    assert entry["code_hash"] == code_hash(FASTEST)
    assert 0 < entry["wall_s"] < 60 and entry["cpu_count"] >= 1 and entry["torch"] == torch.__version__
    assert entry["device"].startswith("cpu (")
    target, = entry["targets"]
    assert (target["metric"], target["op"], target["target"]) == ("test_accuracy", ">=", 0.95)
    assert 0 <= target["measured"] <= 1 and target["met"] == (target["measured"] >= 0.95)


SMALL = """import course_lib
from course_lib.artifacts import save_run
cfg = course_lib.setup(smoke=SMOKE, seed=SEED)
save_run("small", metrics={"score": cfg.pick(smoke=0.1, full=SCORE), "label": "x"}, cfg=cfg,
         targets={"score": (">=", 0.5), "label": ("==", "x")})
"""


def _small_notebook(path: Path, body: str) -> Path:
    cells = [nbformat.v4.new_code_cell("SMOKE = None\nSEED = 0\nSCORE = 0.9", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell(body)]
    return _write(path, cells)


@pytest.mark.notebook
def test_course_results_full_mode_parameters_misses_and_failures(tmp_path):
    """A parameter reaches the notebook; a missed target (full mode) and a failing notebook (any mode)
    exit with 1; only the notebooks that ran are recorded."""
    good = _small_notebook(tmp_path / "good.ipynb", SMALL)
    broken = _small_notebook(tmp_path / "broken.ipynb", "raise RuntimeError('boom')")
    record = tmp_path / "record.json"
    ok = _course_results(good, "--record", record, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missed = _course_results(good, "-p", "SCORE=0.25", "--record", record, cwd=tmp_path)
    assert missed.returncode == 1, missed.stdout + missed.stderr        # a missed target, in full mode
    rows = [line.split() for line in missed.stdout.splitlines()]
    assert ["good.ipynb", "SCORE=0.25", "score", ">=", "0.5", "0.25", "NO"] in [r[:7] for r in rows]
    assert ["label", "==", "x", "x", "yes"] in rows
    failed = _course_results(broken, "--smoke", "--record", record, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr        # a failure counts in smoke mode too
    assert any(r[:2] == ["broken.ipynb", "FAILED"]
               and "RuntimeError: boom (in the cell that starts \"raise RuntimeError('boom')\")" in " ".join(r)
               for r in (line.split() for line in failed.stdout.splitlines()))
    saved = json.loads(record.read_text())["notebooks"]
    assert sorted(saved) == ["good.ipynb", "good.ipynb SCORE=0.25"]       # the failed run is not recorded
    assert saved["good.ipynb"]["mode"] == "full" and saved["good.ipynb"]["targets"][0]["measured"] == 0.9
    assert saved["good.ipynb SCORE=0.25"]["parameters"] == {"SCORE": 0.25}


def test_course_results_refuses_unknown_parameters(capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(FASTEST), "-p", "DATASET=mnist"])
    assert stop.value.code == 2 and "no chosen notebook has the parameter(s) ['DATASET']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(FASTEST), "-p", "not a parameter"])
