"""The generative notebooks run unchanged on a real torchvision dataset when their DATASET
parameter names one. CI is offline, so the MNIST files are small stand-ins written in the real
format (course_lib.data.write_standin: digits at 28 x 28); torchvision's own MNIST reader loads
them, and the saved samples must be MNIST-sized."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from course_lib.data import write_standin
from nbrun import ROOT, run_notebook

REAL_DATA_NOTEBOOKS = ["3_generative/01_vae.ipynb", "3_generative/02_gans.ipynb"]


@pytest.mark.notebook
@pytest.mark.parametrize("name", REAL_DATA_NOTEBOOKS)
def test_notebook_runs_on_mnist_files(name, tmp_path):
    data = write_standin("mnist", tmp_path / "data", n_train=600, n_test=100)
    run_notebook(ROOT / "notebooks" / name, tmp_path, smoke=True, threads=1,
                 params={"DATASET": "mnist"}, env={"COURSE_DATA_DIR": str(data)})
    saved = list((tmp_path / "outputs" / "runs").glob("*/*/samples.safetensors"))
    assert saved, "the notebook saved no samples with course_lib.artifacts.save_run"
    images = next(iter(load_file(saved[0]).values()))
    assert tuple(images.shape[-3:]) == (1, 28, 28), \
        f"samples of shape {tuple(images.shape)}: the notebook did not train on the 28 x 28 MNIST files"
