"""course_lib.diffusion.dreambooth: the prior-preservation loss on known answers, and one DreamBooth loss
computed by hand."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.diffusion.dreambooth import dreambooth_loss, prior_preservation_loss
from course_lib.diffusion.path import DiffusionPath
from tiny_models import tiny_text_to_image


def test_prior_preservation_loss_weighs_each_part_by_its_own_mean():
    target = torch.zeros(5, 1, 2, 2)
    pred = torch.cat([torch.full((2, 1, 2, 2), 1.0), torch.full((3, 1, 2, 2), 2.0)])   # instance 1, prior 4
    assert prior_preservation_loss(pred, target, n_instance=2, prior_weight=0.5).item() == pytest.approx(1 + 0.5 * 4)
    assert prior_preservation_loss(pred, target, n_instance=2, prior_weight=0.0).item() == pytest.approx(1)
    assert prior_preservation_loss(pred[:2], target[:2], n_instance=2).item() == pytest.approx(1)   # no prior rows
    one_mean = F.mse_loss(pred, target).item()                                            # the classic bug
    assert prior_preservation_loss(pred, target, 2, 1.0).item() != pytest.approx(one_mean)
    with pytest.raises(ValueError, match="n_instance"):
        prior_preservation_loss(pred, target, n_instance=0)
    with pytest.raises(ValueError, match="shape"):
        prior_preservation_loss(pred, target[:4], n_instance=1)


def two_instance_rows_and_four_prior_rows():
    """A tiny model, latents (6, ...) and their prompts: two instance rows, then four prior rows."""
    model = tiny_text_to_image()
    latents = torch.randn(6, *model.latent_shape(16))
    context, mask = model.encode_prompt(["a sks circle at the top"] * 2 + ["a circle at the top"] * 4)
    return model, latents, context, mask


def noised_by_hand(model, latents, seed):
    """What dreambooth_loss draws from a generator seeded ``seed``: t, then the noise; -> (t, noise, x_t)."""
    g = torch.Generator().manual_seed(seed)
    path = DiffusionPath(model.schedule, "eps")
    t = path.sample_t(len(latents), g)
    noise = torch.randn(latents.shape, generator=g)
    return t, noise, path.sample(latents, noise, t).x_t


def test_dreambooth_loss_is_one_noising_and_one_call_split_in_two():
    model, latents, context, mask = two_instance_rows_and_four_prior_rows()
    got = dreambooth_loss(model.unet, model.schedule, latents, context, mask, n_instance=2, prior_weight=0.7,
                          generator=torch.Generator().manual_seed(3))
    t, noise, x_t = noised_by_hand(model, latents, 3)
    pred = model.unet(x_t, t, context=context, context_mask=mask)
    want = F.mse_loss(pred[:2], noise[:2]) + 0.7 * F.mse_loss(pred[2:], noise[2:])
    torch.testing.assert_close(got, want)


def test_dreambooth_loss_with_a_teacher_regresses_the_prior_rows_on_its_prediction():
    model, latents, context, mask = two_instance_rows_and_four_prior_rows()
    frozen = tiny_text_to_image(seed=1)
    got = dreambooth_loss(model.unet, model.schedule, latents, context, mask, n_instance=2, prior_weight=0.7,
                          generator=torch.Generator().manual_seed(3), teacher=frozen.unet)
    t, noise, x_t = noised_by_hand(model, latents, 3)
    pred = model.unet(x_t, t, context=context, context_mask=mask)
    taught = frozen.unet(x_t[2:], t[2:], context=context[2:], context_mask=mask[2:])
    want = F.mse_loss(pred[:2], noise[:2]) + 0.7 * F.mse_loss(pred[2:], taught)
    torch.testing.assert_close(got, want)
    # the student as its own teacher: the prior half is zero, only the instance half is left
    alone = dreambooth_loss(model.unet, model.schedule, latents, context, mask, n_instance=2, prior_weight=0.7,
                            generator=torch.Generator().manual_seed(3), teacher=model.unet)
    torch.testing.assert_close(alone, F.mse_loss(pred[:2], noise[:2]))
    got.backward()                                              # no gradient reaches the teacher
    assert all(p.grad is None for p in frozen.unet.parameters())
