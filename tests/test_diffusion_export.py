"""course_lib.diffusion.export: the text-to-image model as a diffusers pipeline folder, reloaded offline."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # loading a local folder must not need the network

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from course_lib.diffusion.export import (CourseTextToImagePipeline, export_pipeline, model_from_pipeline,
                                         pipeline_from_model)
from tiny_models import tiny_text_to_image as tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
PROMPTS = ["a large red circle at the top", "a small blue square at the bottom left"]


def run(pipe, seed=0, steps=5, **kw):
    return pipe(PROMPTS, guidance_scale=2.0, num_inference_steps=steps, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kw).images


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    folder = tmp_path_factory.mktemp("pipe") / "shapes-t2i"
    pipe = export_pipeline(model, folder)
    pipe.set_progress_bar_config(disable=True)
    return model, pipe, folder


def test_folder_layout_and_model_index(exported):
    _, _, folder = exported
    import json
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "CourseTextToImagePipeline"
    assert index["unet"] == ["course_lib.diffusion.export", "CourseUNetModel"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert (folder / "pipeline.py").exists()
    for sub in ("unet", "vae", "text_encoder"):
        assert (folder / sub / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(1.7)


def test_reload_offline_gives_identical_weights_and_samples(exported):
    model, pipe, folder = exported
    loaded = CourseTextToImagePipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder"):      # every weight made the round trip, none dropped
        before, after = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert before.keys() == after.keys(), f"{name}: weights missing after reload"
        for k in before:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=f"{name}.{k} changed")
    assert loaded.text_encoder.tokenizer.itos == model.tokenizer.itos
    torch.testing.assert_close(run(loaded), run(pipe), rtol=0, atol=0)        # same seed -> same images
    assert not torch.allclose(run(loaded, seed=1), run(pipe))                 # ... and the seed matters
    back = model_from_pipeline(loaded)                                        # and back to the course model
    torch.testing.assert_close(back.latent_scale, model.latent_scale)
    torch.testing.assert_close(back.schedule.alphas_cumprod, model.schedule.alphas_cumprod)


def test_generic_diffusion_pipeline_loader(exported):
    from diffusers import DiffusionPipeline
    _, pipe, folder = exported
    generic = DiffusionPipeline.from_pretrained(folder, custom_pipeline=str(folder), trust_remote_code=True)
    generic.set_progress_bar_config(disable=True)
    assert isinstance(generic, CourseTextToImagePipeline)
    torch.testing.assert_close(run(generic, steps=2), run(pipe, steps=2), rtol=0, atol=0)


def test_swapped_scheduler_runs_and_differs(exported):
    _, pipe, _ = exported
    ddim = run(pipe)
    pipe_dpm = CourseTextToImagePipeline(pipe.unet, pipe.vae, pipe.text_encoder,
                                         DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))
    pipe_dpm.set_progress_bar_config(disable=True)
    dpm = run(pipe_dpm)
    assert dpm.shape == ddim.shape == (2, 3, 32, 32) and torch.isfinite(dpm).all()
    assert (dpm - ddim).abs().max() > 1e-3
    assert torch.equal(torch.as_tensor(pipe_dpm.scheduler.betas), torch.as_tensor(pipe.scheduler.betas))


def test_course_sampler_and_pipeline_agree(exported):
    model, pipe, _ = exported
    assert isinstance(pipe.scheduler, DDIMScheduler)
    ours = model.generate(PROMPTS, guidance_scale=2.0, steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(pipe), ours, atol=2e-4, rtol=0)           # course DDIM == diffusers DDIM
    neg = dict(negative_prompt="a red shape")
    torch.testing.assert_close(run(pipe, **neg), model.generate(PROMPTS, guidance_scale=2.0, steps=5, **neg,
                               generator=torch.Generator().manual_seed(0)), atol=2e-4, rtol=0)


def test_output_types_and_errors(exported):
    model, pipe, _ = exported
    out = pipe("a shape", num_inference_steps=2, output_type="pil", generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 1 and out.images[0].size == (32, 32)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a shape", num_inference_steps=2, output_type="latent")
    with pytest.raises(TypeError, match="TextToImage"):
        pipeline_from_model(model.unet)


def test_v_prediction_model_exports_and_agrees(tmp_path):
    model = tiny_model()
    model.prediction = "v"
    pipe = export_pipeline(model, tmp_path / "v")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    reloaded = CourseTextToImagePipeline.from_pretrained(tmp_path / "v")
    reloaded.set_progress_bar_config(disable=True)
    assert model_from_pipeline(reloaded).prediction == "v"
    ours = model.generate(PROMPTS, guidance_scale=2.0, steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(reloaded), ours, atol=2e-4, rtol=0)       # diffusers' own v step == ours
    model.prediction = "eps"
    assert (run(reloaded) - model.generate(PROMPTS, guidance_scale=2.0, steps=5,
                                           generator=torch.Generator().manual_seed(0))).abs().max() > 1e-2
    with pytest.raises(ValueError, match="epsilon"):
        model.generate(PROMPTS, steps=5, sampler=reloaded.scheduler)


def test_eta_one_pipeline_equals_course_ddim_eta_one(exported):
    model, pipe, _ = exported
    ours = model.generate(PROMPTS, guidance_scale=2.0, steps=5, eta=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(pipe, eta=1.0), ours, atol=2e-4, rtol=0)   # same noise, drawn in the same order
    assert (run(pipe, eta=1.0) - run(pipe)).abs().max() > 1e-2                # eta changes the samples
    from course_lib.diffusion.schedulers import SchedulerRule
    with pytest.raises(ValueError, match="eta"):
        SchedulerRule(DPMSolverMultistepScheduler.from_config(pipe.scheduler.config), 5, eta=1.0)
