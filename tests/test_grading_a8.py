"""A8 (LoRA and ControlNet wiring): the graded checks accept right answers, reject the classic
mistakes with a specific hint (B random at the start, the scaling alpha / r forgotten or upside
down, a merge without the scaling or transposed, the gradient reaching the frozen base, a residual
added to the wrong skip, residuals not scaled by the control strength ...), refuse answers that
call course_lib.models.lora, course_lib.models.controlnet or the U-Net's own residual inputs, the
grader's sandboxed re-check catches a reference call too, and the feedback shows no hidden test."""
from __future__ import annotations

import html
import math
import pickle
import re

import nbformat
import pytest
import torch
from torch import nn

from course_lib.checks import CheckFailure
from course_lib.grading import a8
from course_lib.models import controlnet as cn
from course_lib.models import lora as ref
from grading import (ROOT, assert_check_fails, assert_stub_not_attempted,
                     call_with_references_off, grade_edited_solution)

ASSIGNMENT = "a8_lora_controlnet"


# ----------------------------------------------------------------------------- answers: LoRA
def lora_init(base, rank):
    bound = 1 / math.sqrt(base.in_features)                 # Kaiming-uniform, written out
    A = nn.Parameter((torch.rand(rank, base.in_features) * 2 - 1) * bound)
    return A, nn.Parameter(torch.zeros(base.out_features, rank))


def lora_init_b_random(base, rank):
    A = nn.init.kaiming_uniform_(torch.empty(rank, base.in_features), a=math.sqrt(5))
    B = nn.init.kaiming_uniform_(torch.empty(base.out_features, rank), a=math.sqrt(5))
    return nn.Parameter(A), nn.Parameter(B)


def lora_init_b_ones(base, rank):
    return lora_init(base, rank)[0], nn.Parameter(torch.ones(base.out_features, rank))


def lora_init_both_zero(base, rank):
    return torch.zeros(rank, base.in_features), torch.zeros(base.out_features, rank)


def lora_init_swapped(base, rank):
    return torch.zeros(rank, base.in_features), lora_init_b_random(base, rank)[1]


def lora_init_randn(base, rank):
    return torch.randn(rank, base.in_features), torch.zeros(base.out_features, rank)


def lora_init_transposed(base, rank):
    A, B = lora_init(base, rank)
    return A.T, B.T


def lora_init_calls_reference(base, rank):
    layer = ref.LoRALinear(base, rank)
    return layer.A, layer.B


def lora_forward(x, base, A, B, alpha):
    return nn.functional.linear(x, base.weight, base.bias) + alpha / A.shape[0] * ((x @ A.T) @ B.T)


def lora_forward_no_scaling(x, base, A, B, alpha):
    return base(x) + (x @ A.T) @ B.T


def lora_forward_r_over_alpha(x, base, A, B, alpha):
    return base(x) + (A.shape[0] / alpha) * (x @ A.T) @ B.T


def lora_forward_alpha_only(x, base, A, B, alpha):
    return base(x) + alpha * (x @ A.T) @ B.T


def lora_forward_without_base(x, base, A, B, alpha):
    return alpha / A.shape[0] * (x @ A.T) @ B.T


def lora_forward_without_bias(x, base, A, B, alpha):
    return x @ base.weight.T + alpha / A.shape[0] * (x @ A.T) @ B.T


def lora_forward_wrong_products(x, base, A, B, alpha):
    return base(x) + alpha / A.shape[0] * (x @ B) @ A


def lora_forward_calls_reference(x, base, A, B, alpha):
    layer = ref.LoRALinear(base, A.shape[0], alpha)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
    return layer(x)


def lora_merge(W, A, B, alpha):
    W = W.clone()
    W += (alpha / A.shape[0]) * B @ A                      # in place on a copy: fine
    return W


def lora_unmerge(W, A, B, alpha):
    return W - alpha / A.shape[0] * torch.einsum("or,ri->oi", B, A)


def lora_merge_no_scaling(W, A, B, alpha):
    return W + B @ A


def lora_merge_transposed(W, A, B, alpha):
    return W + alpha / A.shape[0] * (A.T @ B.T)


def lora_merge_calls_reference(W, A, B, alpha):
    base = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        base.weight.copy_(W)
    layer = ref.LoRALinear(base, A.shape[0], alpha)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
    layer.merge()
    return layer.base.weight.detach()


def lora_unmerge_adds(W, A, B, alpha):
    return lora_merge(W, A, B, alpha)


def lora_unmerge_no_scaling(W, A, B, alpha):
    return W - B @ A


def lora_grads(model, x, target):
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith((".A", ".B")))
    loss = nn.functional.mse_loss(model(x), target)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if p.requires_grad])
    return dict(zip(names, grads))


def _backward(model, x, target, reduce="mean"):
    err = (model(x) - target) ** 2
    (err.mean() if reduce == "mean" else err.sum()).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def lora_grads_nothing_frozen(model, x, target):
    return _backward(model.requires_grad_(True), x, target)


def lora_grads_head_trainable(model, x, target):
    for name, p in model.named_parameters():
        if ".base." in name:
            p.requires_grad_(False)
    return _backward(model, x, target)


def lora_grads_only_b(model, x, target):
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(".B"))
    return _backward(model, x, target)


def lora_grads_sum(model, x, target):
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith((".A", ".B")))
    return _backward(model, x, target, reduce="sum")


def lora_grads_everything_frozen(model, x, target):
    model.requires_grad_(False)
    return _backward(model, x, target)


# ----------------------------------------------------------------------------- answers: ControlNet
def zero_conv(channels):
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    return conv


def zero_conv_weight_random(channels):
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.bias)
    return conv


def zero_conv_bias_random(channels):
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    return conv


def zero_conv_three_by_three(channels):
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def zero_conv_without_bias(channels):
    conv = nn.Conv2d(channels, channels, 1, bias=False)
    nn.init.zeros_(conv.weight)
    return conv


def zero_conv_calls_reference(channels):
    return cn.zero_conv(channels)


def controlled_eps(unet, x_t, t, down_residuals, mid_residual, scale):
    h, skips, temb = unet.encode(x_t, t)
    for i, r in enumerate(down_residuals):
        skips[i] = skips[i] + r * scale
    return unet.decode(h + mid_residual * scale, skips, temb)


def _wire(unet, x_t, t, down, mid, down_scale, mid_scale, order=slice(None), mid_to_h=True):
    h, skips, temb = unet.encode(x_t, t)
    skips = [s + down_scale * r for s, r in zip(skips, list(down)[order])]
    if mid_to_h:
        h = h + mid_scale * mid
    else:
        skips[-1] = skips[-1] + mid_scale * mid
    return unet.decode(h, skips, temb)


def controlled_eps_reversed(unet, x_t, t, down, mid, scale):
    return _wire(unet, x_t, t, down, mid, scale, scale, order=slice(None, None, -1))


def controlled_eps_unscaled(unet, x_t, t, down, mid, scale):
    return _wire(unet, x_t, t, down, mid, 1.0, 1.0)


def controlled_eps_mid_unscaled(unet, x_t, t, down, mid, scale):
    return _wire(unet, x_t, t, down, mid, scale, 1.0)


def controlled_eps_no_mid(unet, x_t, t, down, mid, scale):
    return _wire(unet, x_t, t, down, mid, scale, 0.0)


def controlled_eps_mid_to_last_skip(unet, x_t, t, down, mid, scale):
    return _wire(unet, x_t, t, down, mid, scale, scale, mid_to_h=False)


def controlled_eps_through_forward(unet, x_t, t, down, mid, scale):
    return unet(x_t, t, down_residuals=[scale * r for r in down], mid_residual=scale * mid)


class _Given(nn.Module):
    def __init__(self, down, mid):
        super().__init__()
        self.out = (down, mid)

    def forward(self, *args):
        return self.out


def controlled_eps_calls_reference(unet, x_t, t, down, mid, scale):
    return cn.ControlledUNet(unet, _Given(down, mid), scale)(x_t, t, control=x_t)


# ----------------------------------------------------------------------------- checks
def test_right_answers_pass_visible_and_hidden_settings(capsys):
    a8.check_lora_init(lora_init)
    a8.check_lora_init(lora_init, seed=81, sizes=[(64, 32, 8), (10, 3, 1), (7, 40, 5), (128, 128, 16)], trials=4)
    a8.check_lora_forward(lora_forward)
    a8.check_lora_forward(lora_forward, sizes=[(7, 3, 1, 1.0), (20, 30, 5, 10.0)], leading=[(1,), (2, 2, 3)],
                          dtype=torch.float64)
    a8.check_lora_merge(lora_merge)
    a8.check_lora_unmerge(lora_unmerge)
    a8.check_lora_merge(lora_merge, sizes=[(16, 16, 4, 4.0), (3, 30, 1, 8.0)], dtype=torch.float64)
    a8.check_lora_unmerge(lora_unmerge, sizes=[(40, 7, 6, 0.5)], dtype=torch.float64)
    a8.check_lora_grads(lora_grads)
    a8.check_lora_grads(lora_grads, sizes=[(4, 5, 2, 1, 2.0), (3, 4, 6, 2, 0.5)], trainable=["built", "none"],
                        dtype=torch.float64)
    a8.check_zero_conv(zero_conv)
    a8.check_zero_conv(zero_conv, channels=[1, 16], shapes=[(1, 3, 3), (3, 7, 2)])
    a8.check_controlled_eps(controlled_eps)
    a8.check_controlled_eps(controlled_eps, unets=[(3, (1, 2, 2), 1, (1, 2)), (2, (1,), 1, (0,))],
                            shapes=[(1, 8, 8), (4, 4, 8)], scales=[1.0, 0.3, 2.0])
    assert capsys.readouterr().out.count("✅") == 14


_SKIPS_DIFFER = {"unets": [(2, (1, 2), 1, (1,))], "shapes": [(2, 4, 4)]}


@pytest.mark.parametrize("check, fn, kwargs, words", [
    # Part 1: the start
    (a8.check_lora_init, lora_init_b_random, {}, ["lora_init", "output['B']", "B must start at zero",
                                                  "exactly the base at step 0"]),
    (a8.check_lora_init, lora_init_b_ones, {}, ["B must start at zero"]),
    (a8.check_lora_init, lora_init_both_zero, {}, ["A must be random", "nothing ever trains"]),
    (a8.check_lora_init, lora_init_swapped, {}, ["the other way round"]),
    (a8.check_lora_init, lora_init_randn, {}, ["beyond ±1/sqrt(in_features)", "kaiming_uniform_"]),
    (a8.check_lora_init, lora_init_transposed, {}, ["A is (rank, in_features)"]),
    # Part 2: the scaling
    (a8.check_lora_forward, lora_forward_no_scaling, {}, ["lora_forward", "scale the low-rank update by alpha / r"]),
    (a8.check_lora_forward, lora_forward_r_over_alpha, {}, ["not r / alpha"]),
    (a8.check_lora_forward, lora_forward_alpha_only, {}, ["divide by the rank"]),
    (a8.check_lora_forward, lora_forward_without_base, {}, ["add the frozen layer's own output"]),
    (a8.check_lora_forward, lora_forward_without_bias, {}, ["includes its bias"]),
    (a8.check_lora_forward, lora_forward_wrong_products, {}, ["raised", "(x @ A.T) @ B.T"]),
    # Part 3: merge and unmerge
    (a8.check_lora_merge, lora_merge_no_scaling, {}, ["lora_merge", "same scaling as the forward pass"]),
    (a8.check_lora_merge, lora_merge_transposed, {}, ["values differ", "not its transpose A.T @ B.T"]),
    (a8.check_lora_merge, lora_merge_transposed, {"sizes": [(6, 10, 3, 1.5)]}, ["raised", "not its transpose"]),
    (a8.check_lora_unmerge, lora_unmerge_adds, {}, ["lora_unmerge", "unmerge undoes merge"]),
    (a8.check_lora_unmerge, lora_unmerge_no_scaling, {}, ["the same scaled update"]),
    # Part 4: where the gradient goes
    (a8.check_lora_grads, lora_grads_nothing_frozen, {}, ["lora_grads", "flows into the frozen base"]),
    (a8.check_lora_grads, lora_grads_head_trainable, {}, ["the head too"]),
    (a8.check_lora_grads, lora_grads_only_b, {}, ["A trains as well as B"]),
    (a8.check_lora_grads, lora_grads_sum, {}, ["not the sum"]),
    (a8.check_lora_grads, lora_grads_everything_frozen, {}, ["raised", "turn requires_grad back on"]),
    # Part 5: the zero convolution
    (a8.check_zero_conv, zero_conv_weight_random, {}, ["zero_conv", "zero the weight too"]),
    (a8.check_zero_conv, zero_conv_bias_random, {}, ["zero the bias too"]),
    (a8.check_zero_conv, zero_conv_three_by_three, {}, ["is 1 x 1"]),
    (a8.check_zero_conv, zero_conv_without_bias, {}, ["keep the convolution's bias"]),
    # Part 6: the wiring
    (a8.check_controlled_eps, controlled_eps_reversed, {}, ["controlled_eps", "values differ",
                                                            "residual i belongs to skip i"]),
    (a8.check_controlled_eps, controlled_eps_reversed, _SKIPS_DIFFER, ["raised", "residual i belongs to skip i"]),
    (a8.check_controlled_eps, controlled_eps_unscaled, {}, ["scale the residuals by the control strength"]),
    (a8.check_controlled_eps, controlled_eps_mid_unscaled, {}, ["mid residual is scaled by the strength too"]),
    (a8.check_controlled_eps, controlled_eps_no_mid, {}, ["add the mid residual to the middle block's output"]),
    (a8.check_controlled_eps, controlled_eps_mid_to_last_skip, {}, ["not to the last skip"]),
    # the references, however reached
    (a8.check_lora_init, lora_init_calls_reference, {}, ["earns nothing",
                                                         "course_lib.models.lora.LoRALinear.__init__"]),
    (a8.check_lora_forward, lora_forward_calls_reference, {}, ["earns nothing", "course_lib.models.lora.LoRALinear"]),
    (a8.check_lora_merge, lora_merge_calls_reference, {}, ["earns nothing", "course_lib.models.lora.LoRALinear"]),
    (a8.check_zero_conv, zero_conv_calls_reference, {}, ["earns nothing", "course_lib.models.controlnet.zero_conv"]),
    (a8.check_controlled_eps, controlled_eps_through_forward, {}, ["earns nothing",
                                                                   "course_lib.models.unet.UNet.forward"]),
    (a8.check_controlled_eps, controlled_eps_calls_reference, {}, ["earns nothing",
                                                                   "course_lib.models.controlnet.ControlledUNet"]),
])
def test_wrong_answers_fail_with_a_specific_message(check, fn, kwargs, words):
    assert_check_fails(check, fn, words, **kwargs)


def test_the_hint_is_printed_as_well_as_raised(capsys):
    with pytest.raises(CheckFailure) as info:
        a8.check_lora_forward(lora_forward_no_scaling)
    out = capsys.readouterr().out
    assert out.startswith("❌ lora_forward") and "💡 Hint: scale the low-rank update" in out, out
    assert str(info.value).endswith(out.splitlines()[-1]), (str(info.value), out)


def test_an_unrecognised_mistake_fails_without_a_hint():
    def lora_merge_off_by_a_bit(W, A, B, alpha):
        return lora_merge(W, A, B, alpha) * 1.01
    with pytest.raises(CheckFailure) as info:
        a8.check_lora_merge(lora_merge_off_by_a_bit)
    assert "differ" in str(info.value) and "Hint" not in str(info.value)


@pytest.mark.parametrize("check", [a8.check_lora_init, a8.check_lora_forward, a8.check_lora_merge,
                                   a8.check_lora_unmerge, a8.check_lora_grads, a8.check_zero_conv,
                                   a8.check_controlled_eps])
def test_a_stub_is_not_attempted_and_scores_nothing(check):
    assert_stub_not_attempted(check)


# ----------------------------------------------------------------------------- the test inputs
def test_the_init_is_judged_by_what_a_and_b_are():
    """Kaiming-uniform A passes whatever it draws; torch.randn does not stay inside nn.Linear's
    bound; the course's LoRALinear starts exactly at its base."""
    base = nn.Linear(16, 8)
    for _ in range(20):
        assert a8._init_facts(lora_init(base, 4), base) == {"A": "random within ±1/sqrt(in_features), shape (4, 16)",
                                                            "B": "zeros, shape (8, 4)"}
    assert a8._describe(torch.randn(4, 16), 0.25).startswith("random beyond")
    layer, x = ref.LoRALinear(nn.Linear(16, 8), 4, alpha=8.0), torch.randn(5, 16)
    assert torch.equal(layer(x), layer.base(x))
    A, B = lora_init(base, 4)
    assert torch.equal(lora_forward(x, base, A, B, 8.0), base(x))


def test_the_test_network_arrives_as_told_and_survives_pickling():
    gen = torch.Generator().manual_seed(0)
    model = a8.LoRANet(5, 6, 2, 2, 4.0, gen, trainable="built")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc1.A", "fc1.B", "fc2.A", "fc2.B", "head.weight", "head.bias"}
    assert not model.fc1.B.any() and model.fc1.A.abs().sum() > 0
    copy = pickle.loads(pickle.dumps(model))
    x = torch.randn(3, 5)
    torch.testing.assert_close(copy(x), model(x))
    assert {n for n, p in copy.named_parameters() if p.requires_grad} == trainable
    frozen = a8.LoRANet(5, 6, 2, 2, 4.0, gen, trainable="none")
    assert not any(p.requires_grad for p in frozen.parameters())
    # its LoRA layers compute what the course's LoRALinear computes
    layer = ref.LoRALinear(model.fc2.base, 2, 4.0)
    with torch.no_grad():
        layer.A.copy_(model.fc2.A)
        layer.B.copy_(torch.randn_like(layer.B))
        model.fc2.B.copy_(layer.B)
    h = torch.randn(3, 6)
    torch.testing.assert_close(model.fc2(h), layer(h))


def test_every_residual_reaches_the_output_and_the_first_unet_has_one_skip_shape():
    """A wiring that drops any residual, or adds it elsewhere, changes the output; in the first
    visible U-Net every skip and the middle have one shape, so a reversed order is a wrong value
    (a hint), not a shape error."""
    gen = torch.Generator().manual_seed(3)
    in_ch, mults, blocks, attn = a8.check_controlled_eps.__kwdefaults__["unets"][0]
    unet = a8.random_unet(gen, in_ch, 8, mults, blocks, attn)
    x, t = torch.randn(2, in_ch, 8, 8), torch.tensor([3, 900])
    skips, mid = a8._residual_shapes(unet, x)
    assert len(set(skips)) == 1 and mid == skips[0] and len(skips) >= 3
    h, real_skips, _ = unet.encode(x, t)
    assert [tuple(s.shape) for s in real_skips] == skips and tuple(h.shape) == mid
    down, m = [torch.randn(s, generator=gen) for s in skips], torch.randn(mid, generator=gen)
    want = controlled_eps(unet, x, t, down, m, 1.0)
    for i in range(len(down)):
        dropped = [torch.zeros_like(r) if j == i else r for j, r in enumerate(down)]
        assert not torch.allclose(controlled_eps(unet, x, t, dropped, m, 1.0), want, atol=1e-4)
    assert not torch.allclose(controlled_eps(unet, x, t, down, 0 * m, 1.0), want, atol=1e-4)


def test_the_reference_of_the_wiring_is_the_unets_own_residual_inputs():
    gen = torch.Generator().manual_seed(4)
    unet = a8.random_unet(gen, 2, 8, (1, 2), 1, (1,))
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([0, 10, 999])
    skips, mid = a8._residual_shapes(unet, x)
    down, m = [torch.randn(s, generator=gen) for s in skips], torch.randn(mid, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(a8._ref_controlled_eps(unet, x, t, down, m, 0.7),
                                   unet(x, t, down_residuals=[0.7 * r for r in down], mid_residual=0.7 * m))
        torch.testing.assert_close(a8._ref_controlled_eps(unet, x, t, down, m, 0.0), unet(x, t))


# ----------------------------------------------------------------------------- the grader's re-check
class _WithSuper(nn.Module):
    """A method that calls super() has a free variable (__class__)."""

    def __init__(self):
        super().__init__()

    def forward(self, x):
        return x


def _make_with_super():
    _WithSuper()


def test_a_method_that_calls_super_can_be_switched_off():
    assert _WithSuper.__init__.__code__.co_freevars == ("__class__",)
    assert call_with_references_off((_WithSuper.__init__,), _make_with_super, ()) \
        == f"{__name__}._WithSuper.__init__"
    _make_with_super()                                  # untouched here, in the parent


def test_sandbox_side_knows_the_lora_and_controlnet_references():
    """In the re-check job the references are switched off: an answer that reaches one is
    stopped, a right answer (the test networks included) is not."""
    from course_lib.grading import zygote
    assert "course_lib.grading.a8" in zygote.PRELOAD
    gen = torch.Generator().manual_seed(1)
    base = nn.Linear(6, 4)
    assert call_with_references_off(a8.REFERENCES, lora_init_calls_reference, (base, 2)) \
        == "course_lib.models.lora.LoRALinear.__init__"
    assert call_with_references_off(a8.REFERENCES, lora_init, (base, 2)) is None
    assert call_with_references_off(a8.REFERENCES, zero_conv_calls_reference, (3,)) \
        == "course_lib.models.controlnet.zero_conv"
    model, x = a8.LoRANet(3, 4, 2, 1, 2.0, gen), torch.randn(2, 3)
    assert call_with_references_off(a8.REFERENCES, lora_grads, (model, x, torch.randn(2, 2))) is None
    unet = a8.random_unet(gen)
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([1, 2])
    skips, mid = a8._residual_shapes(unet, x)
    args = (unet, x, t, [torch.randn(s) for s in skips], torch.randn(mid), 0.5)
    assert call_with_references_off(a8.REFERENCES, controlled_eps_calls_reference, args) \
        == "course_lib.models.controlnet.ControlledUNet.forward"
    assert call_with_references_off(a8.REFERENCES, controlled_eps, args) is None


def test_the_unets_source_stays_readable_in_the_grading_jobs():
    """The U-Net's forward is refused by the check, not switched off in the job: its file is not
    hidden, so an honest error inside encode or decode is not reported as reading a reference."""
    from course_lib.grading import references
    from course_lib.models import unet
    assert unet.UNet.forward not in a8.REFERENCES and unet.UNet.forward in a8._WIRING_FORBID
    assert unet.__file__ not in references.source_files()


def test_static_audit_flags_importing_lora_and_controlnet():
    from course_lib.grading import audit
    for source in ("from course_lib.models.lora import LoRALinear",
                   "import course_lib.models.controlnet as helpers"):
        findings = audit.inspect_cells([("p1_answer", source)], set())
        assert any(f.kind == "reference" for f in findings), findings


def test_sandboxed_recheck_catches_a_call_to_the_lora_reference(tmp_path, monkeypatch):
    """Part 1 builds the course's LoRALinear (through an alias) and hands back its matrices: the
    re-check must notice, so Part 1 scores 0 and the submission is flagged; the other parts,
    which do not use lora_init, keep their points."""
    from course_lib.grading.pipeline import REVIEW

    source = ("import course_lib.models.lora as helpers\n\n"
              "def lora_init(base, rank):\n"
              "    layer = helpers.LoRALinear(base, rank)\n"
              "    return layer.A, layer.B\n")
    outcome = grade_edited_solution(ASSIGNMENT, "p1_answer", source, tmp_path, monkeypatch)
    assert outcome.parts["p1_visible"] == 0 and outcome.parts["p1_hidden"] == 0, outcome.parts
    assert outcome.score == outcome.max_score - 2, outcome.parts
    assert outcome.status == REVIEW
    assert any("lora_init calls the course reference course_lib.models.lora.LoRALinear.__init__" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("could not switch off" in r for r in outcome.reasons), outcome.reasons


def _hidden_test_lines() -> list[str]:
    lines, inside = [], False
    for cell in nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4).cells:
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and len(line.strip()) > 20:
                lines.append(line.strip())
    return lines


def _grade_edited(answers: dict[str, str], tmp_path, monkeypatch):
    """The solution with several answer cells replaced, graded as the sole submission of
    "cheater"; returns the outcome and the course (for its feedback)."""
    from course_lib.grading.course import Course
    from course_lib.grading.pipeline import Grader, Settings

    monkeypatch.setenv("COURSE_GRADING_WORKSPACE", str(tmp_path / "workspace"))
    course = Course.load(ROOT)
    nb = nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        cell.source = answers.get(gid, cell.source)
    dest = course.submitted("cheater", ASSIGNMENT)
    dest.mkdir(parents=True)
    nbformat.write(nb, dest / f"{ASSIGNMENT}.ipynb")
    (outcome,) = Grader(course, ASSIGNMENT, Settings(jobs=1)).run(["cheater"])
    return outcome, course


def test_mistakes_lose_points_with_hints_in_the_feedback_and_no_hidden_test(tmp_path, monkeypatch):
    """Part 2 forgets the scaling (a classic mistake): 0 points, the hint in the feedback.
    Part 6 lets the U-Net's forward add the residuals: refused in the notebook's run, so it
    scores 0, and the grader flags an answer that passes only when re-checked; a try of it that
    fails inside the U-Net is no "read a reference's source" (unet.py is not hidden). The
    feedback shows both but none of the hidden tests."""
    from course_lib.grading.cli import generate_feedback
    from course_lib.grading.pipeline import REVIEW

    answers = {
        "p2_answer": ("def lora_forward(x, base, A, B, alpha):\n"
                      "    return base(x) + (x @ A.T) @ B.T\n"),
        "p6_answer": ("def controlled_eps(unet, x_t, t, down_residuals, mid_residual, scale):\n"
                      "    return unet(x_t, t, down_residuals=[scale * r for r in down_residuals],\n"
                      "                mid_residual=scale * mid_residual)\n\n"
                      "controlled_eps(unet, torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), [], torch.zeros(1), 1.0)\n"),
    }
    outcome, course = _grade_edited(answers, tmp_path, monkeypatch)
    lost = {gid for gid, points in outcome.parts.items() if points == 0}
    assert lost == {"p2_visible", "p2_hidden", "p6_visible", "p6_hidden"}, outcome.parts
    assert outcome.score == outcome.max_score - 4 and outcome.status == REVIEW
    assert any("p6_visible failed in the notebook but passes when re-checked" in r
               for r in outcome.reasons), outcome.reasons
    assert not any("tried to read" in r or "p2_" in r for r in outcome.reasons), outcome.reasons
    assert generate_feedback(course, ASSIGNMENT) is None
    page = (tmp_path / "workspace" / "feedback" / "cheater" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))            # as a reader sees it
    hidden = _hidden_test_lines()
    assert len(hidden) >= 6
    assert not [line for line in hidden if line in text]
    assert "seed=8" not in text and "seed=9" not in text
    assert "hidden tests: not shown in feedback" in text
    assert "scale the low-rank update by alpha / r" in text and "earns nothing" in text
