"""Graded checks of assignment A8 (Phase 4): LoRA and the wiring of a ControlNet.

Each ``check_*`` compares the learner's function with the course reference
(:mod:`course_lib.models.lora`, :mod:`course_lib.models.controlnet` and the U-Net's residual inputs)
on random inputs and raises :class:`course_lib.checks.CheckFailure` when they differ, with a hint
when the answer matches a classic mistake (B random at the start, so that the adapted layer is not
the base; the scaling alpha / r forgotten or upside down; a merge without the scaling or with B A
transposed; the gradient reaching the frozen base; a residual added to the wrong skip; residuals
not scaled by the control strength ...), see :func:`course_lib.grading.graded.hinted_check`. The
defaults are the visible tests of the assignment; the hidden tests (in the instructor's source
notebook only) call the same functions with other seeds, sizes, ranks, dtypes, U-Nets and
strengths.

A fresh LoRA matrix A and a fresh convolution are random, so two checks compare what the answer
returns in words rather than number by number: ``lora_init`` must give a random A of shape
(r, in) inside nn.Linear's bound and a B of zeros of shape (out, r); ``zero_conv`` a 1 x 1
convolution whose weight, bias and output are zeros. The test networks (:class:`AdaptedLinear`,
:class:`LoRANet`, :func:`random_unet`) are module-level, so a check can send them to a grading
sandbox, and nothing they run there is a switched-off reference. Part 6 hands out the course's
own U-Net: its ``encode`` and ``decode`` are the learner's to use, its forward (which can add the
residuals itself) earns nothing.

    >>> check_lora_merge(lora_merge)
    ✅ lora_merge matches the reference on 3 random inputs
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn

from course_lib.grading.a6 import _cycle          # the same test-input cycling as A6 and A7
from course_lib.grading.graded import hinted_check
from course_lib.models import controlnet as _cn
from course_lib.models import lora as _lora
from course_lib.models import unet as _unet

__all__ = ["check_lora_init", "check_lora_forward", "check_lora_merge", "check_lora_unmerge",
           "check_lora_grads", "check_zero_conv", "check_controlled_eps", "AdaptedLinear",
           "LoRANet", "random_unet"]

# An A8 answer may call none of the LoRA and ControlNet references (however it reaches them).
REFERENCES = (_lora.LoRALinear.__init__, _lora.LoRALinear.delta, _lora.LoRALinear.forward,
              _lora.LoRALinear.merge, _lora.LoRALinear.unmerge, _lora.inject_lora,
              _lora.lora_layers, _lora.merge_lora, _lora.unmerge_lora, _cn.zero_conv,
              _cn.ControlNet.forward, _cn.ControlledUNet.forward)
# Part 6 may not let the U-Net's forward add the residuals either; its encode and decode are the
# learner's to use. The forward is refused by the check (in the notebook's run, so the part
# scores 0 and the grader flags the answer that passes only when re-checked), not listed above:
# a listed reference's source is hidden from the grading jobs, and an honest error inside encode
# or decode would then be reported as reading the source of a reference.
_WIRING_FORBID = REFERENCES + (_unet.UNet.forward,)

Sizes = Sequence[tuple]


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)


def _linear(d_in: int, d_out: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """An nn.Linear (d_in -> d_out) whose weight and bias are drawn from ``gen``."""
    layer = nn.Linear(d_in, d_out, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=gen, dtype=dtype) / math.sqrt(d_in))
        layer.bias.copy_(0.5 * torch.randn(d_out, generator=gen, dtype=dtype))
    return layer


def _adapters(gen: torch.Generator, d_in: int, d_out: int, rank: int, dtype: torch.dtype):
    """A (rank, d_in) and B (d_out, rank) as after some training: both random."""
    A = torch.randn(rank, d_in, generator=gen, dtype=dtype) / math.sqrt(d_in)
    B = 0.5 * torch.randn(d_out, rank, generator=gen, dtype=dtype)
    return A, B


# ----------------------------------------------------------------------------- facts in words
_KINDS = {"zeros": "zeros", "constant": "one constant, not random", "nan": "not finite",
          "random": "random", "within": "random within ±1/sqrt(in_features)",
          "beyond": "random beyond ±1/sqrt(in_features)", "none": "None"}


def _fact(kind: str, shape: Sequence[int] = ()) -> str:
    return _KINDS[kind] if kind == "none" else f"{_KINDS[kind]}, shape {tuple(shape)}"


def _describe(m, bound: float | None = None) -> str:
    """What a tensor is, in words: ``"zeros, shape (8, 4)"``, ``"random, shape (4, 16)"`` ...;
    with ``bound``, whether its random values stay within ±bound (nn.Linear's initialisation)."""
    if m is None:
        return _fact("none")
    if not torch.is_tensor(m):
        return f"a {type(m).__name__}, not a tensor"
    m = m.detach()
    if not torch.isfinite(m).all():
        kind = "nan"
    elif (m == 0).all():
        kind = "zeros"
    elif (m == m.flatten()[0]).all():
        kind = "constant"
    elif bound is None:
        kind = "random"
    else:
        kind = "within" if float(m.abs().max()) <= bound * (1 + 1e-5) else "beyond"
    return _fact(kind, m.shape)


# ----------------------------------------------------------------------------- part 1
def _init_facts(pair, base: nn.Linear) -> dict:
    A, B = pair
    return {"A": _describe(A, 1 / math.sqrt(base.in_features)), "B": _describe(B)}


def _ref_lora_init(base, rank):
    layer = _lora.LoRALinear(copy.deepcopy(base), rank)      # a copy: it freezes its base
    return _init_facts((layer.A, layer.B), base)


def _init_mistake(a: str = "within", b: str = "zeros", a_t: bool = False, b_t: bool = False):
    """The facts of a wrong initialisation: A and B of the kinds given, shapes transposed or not."""
    def facts(base, rank):
        a_shape = (base.in_features, rank) if a_t else (rank, base.in_features)
        b_shape = (rank, base.out_features) if b_t else (base.out_features, rank)
        return {"A": _fact(a, a_shape), "B": _fact(b, b_shape)}
    return facts


_B_ZERO_HINT = ("B must start at zero: then B A = 0 and the adapted layer is exactly the base at "
                "step 0 (a random B changes the network before it has learnt anything)")
_A_RANDOM_HINT = ("A must be random (like nn.Linear's weights): with A = 0 and B = 0 both "
                  "gradients are zero (dL/dB = g (A x)^T, dL/dA = B^T g x^T) and nothing ever trains")
_SHAPE_HINT = ("A is (rank, in_features) and B is (out_features, rank), so that B A is "
               "(out_features, in_features), the shape of the base's weight")
_INIT_MISTAKES = [
    (_init_mistake(b="random"), _B_ZERO_HINT),
    (_init_mistake(b="constant"), _B_ZERO_HINT),
    (_init_mistake(a="beyond", b="random"), _B_ZERO_HINT),
    (_init_mistake(a="zeros", b="random"),
     "the other way round: A starts random and B at zero (then B A = 0 and the first gradient "
     "reaches B)"),
    (_init_mistake(a="zeros"), _A_RANDOM_HINT),
    (_init_mistake(a="constant"), _A_RANDOM_HINT),
    (_init_mistake(a="beyond"),
     "draw A as nn.Linear draws its weights, uniform within ±1/sqrt(in_features): "
     "nn.init.kaiming_uniform_(A, a=math.sqrt(5)) (torch.randn is far too large)"),
    (_init_mistake(a_t=True), _SHAPE_HINT),
    (_init_mistake(b_t=True), _SHAPE_HINT),
    (_init_mistake(a_t=True, b_t=True), _SHAPE_HINT),
]


def check_lora_init(fn: Callable, *, seed: int = 0,
                    sizes: Sizes = ((16, 8, 4), (12, 20, 2), (9, 9, 3)), trials: int = 3):
    """``fn(base, rank)`` must return ``(A, B)`` for the frozen ``nn.Linear`` base: A (rank,
    in_features) random within ±1/sqrt(in_features) (Kaiming-uniform, as nn.Linear and `peft`
    draw it), B (out_features, rank) zeros. ``sizes`` = (in_features, out_features, rank) per
    trial; compared in words (A is random), see :func:`_describe`."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            d_in, d_out, rank = _cycle(sizes, next(calls))
            return _linear(d_in, d_out, gen), int(rank)
        return draw

    def answer(base, rank):
        return _init_facts(fn(base, rank), base)

    hinted_check(answer, _ref_lora_init, make_inputs, name="lora_init", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_INIT_MISTAKES, **_tolerance(torch.float32))


# ----------------------------------------------------------------------------- part 2
def _ref_layer(base: nn.Linear, A, B, alpha: float) -> _lora.LoRALinear:
    """The course's LoRALinear around a copy of ``base``, with the given A and B."""
    layer = _lora.LoRALinear(copy.deepcopy(base), int(A.shape[0]), alpha).to(A.dtype)
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B)
    return layer


def _ref_lora_forward(x, base, A, B, alpha):
    with torch.no_grad():
        return _ref_layer(base, A, B, alpha)(x)


_SCALES = {"alpha/r": lambda alpha, r: alpha / r, "one": lambda alpha, r: 1.0,
           "r/alpha": lambda alpha, r: r / alpha, "alpha": lambda alpha, r: alpha,
           "1/r": lambda alpha, r: 1 / r}


def _forward(x, base, A, B, alpha, *, scale="alpha/r", with_base=True, with_bias=True):
    with torch.no_grad():
        update = _SCALES[scale](alpha, A.shape[0]) * (x @ A.T) @ B.T
        if not with_base:
            return update
        return x @ base.weight.T + (base.bias if with_bias else 0.0) + update


_NO_SCALE_HINT = "scale the low-rank update by alpha / r: y = base(x) + (alpha / r) B A x"
_UPSIDE_DOWN_HINT = "the scaling is alpha / r (alpha over the rank), not r / alpha"
_ALPHA_ONLY_HINT = "divide by the rank as well: the scaling is alpha / r, not alpha"
_FORWARD_MISTAKES = [
    (lambda *a: _forward(*a, scale="one"), _NO_SCALE_HINT),
    (lambda *a: _forward(*a, scale="r/alpha"), _UPSIDE_DOWN_HINT),
    (lambda *a: _forward(*a, scale="alpha"), _ALPHA_ONLY_HINT),
    (lambda *a: _forward(*a, scale="1/r"), "multiply by alpha as well: the scaling is alpha / r"),
    (lambda *a: _forward(*a, with_base=False),
     "add the frozen layer's own output: y = base(x) + (alpha / r) B A x (LoRA adds an update "
     "to W, it does not replace it)"),
    (lambda *a: _forward(*a, with_bias=False),
     "the base's output includes its bias: base(x) = x W^T + b"),
]
_MATMUL_HINT = ("A is (r, in_features) and B is (out_features, r): A x is x @ A.T, shape (..., r), "
                "and B (A x) is (x @ A.T) @ B.T, shape (..., out_features)")


def check_lora_forward(fn: Callable, *, seed: int = 0,
                       sizes: Sizes = ((16, 8, 4, 8.0), (6, 10, 2, 1.0), (12, 12, 3, 16.0)),
                       leading: Sequence[tuple[int, ...]] = ((5,), (2, 3)),
                       dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(x, base, A, B, alpha)`` must return ``base(x) + (alpha / r) (x A^T) B^T``, shape
    (..., out_features), with x (..., in_features), A (r, in_features), B (out_features, r);
    ``sizes`` = (in_features, out_features, r, alpha) and ``leading`` = x's leading dims, per trial."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            d_in, d_out, rank, alpha = _cycle(sizes, i)
            base = _linear(d_in, d_out, gen, dtype)
            A, B = _adapters(gen, d_in, d_out, rank, dtype)
            x = torch.randn(*_cycle(leading, i), d_in, generator=gen, dtype=dtype)
            return x, base, A, B, float(alpha)
        return draw

    hinted_check(fn, _ref_lora_forward, make_inputs, name="lora_forward", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_FORWARD_MISTAKES,
                 error_hints=[("cannot be multiplied", _MATMUL_HINT)], **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 3
def _weight_layer(W, A, B, alpha) -> _lora.LoRALinear:
    base = nn.Linear(W.shape[1], W.shape[0], dtype=W.dtype)
    with torch.no_grad():
        base.weight.copy_(W)
    return _ref_layer(base, A, B, alpha)


def _ref_lora_merge(W, A, B, alpha):
    layer = _weight_layer(W, A, B, alpha)
    layer.merge()
    return layer.base.weight.detach().clone()


def _ref_lora_unmerge(W, A, B, alpha):
    layer = _weight_layer(W, A, B, alpha)
    layer.merged = True                                        # W is a merged weight
    layer.unmerge()
    return layer.base.weight.detach().clone()


def _merged(W, A, B, alpha, *, sign=1.0, scale="alpha/r", transpose=False):
    delta = B @ A
    return W + sign * _SCALES[scale](alpha, A.shape[0]) * (delta.T if transpose else delta)


_TRANSPOSE_HINT = ("B A is (out_features, in_features), the shape of W: use B @ A, not its "
                   "transpose A.T @ B.T")
_MERGE_MISTAKES = [
    (lambda *a: _merged(*a, scale="one"),
     "the merged weight carries the same scaling as the forward pass: W + (alpha / r) B A"),
    (lambda *a: _merged(*a, scale="r/alpha"), _UPSIDE_DOWN_HINT),
    (lambda *a: _merged(*a, scale="alpha"), _ALPHA_ONLY_HINT),
    (lambda *a: _merged(*a, transpose=True), _TRANSPOSE_HINT),
    (lambda *a: _merged(*a, sign=-1.0),
     "merge adds the update to the weight: W + (alpha / r) B A"),
]
_UNMERGE_MISTAKES = [
    (lambda *a: _merged(*a, sign=1.0),
     "unmerge undoes merge: subtract the update merge added, W - (alpha / r) B A"),
    (lambda *a: _merged(*a, sign=-1.0, scale="one"),
     "subtract the same scaled update that merge added: W - (alpha / r) B A"),
    (lambda *a: _merged(*a, sign=-1.0, scale="r/alpha"), _UPSIDE_DOWN_HINT),
    (lambda *a: _merged(*a, sign=-1.0, scale="alpha"), _ALPHA_ONLY_HINT),
    (lambda *a: _merged(*a, sign=-1.0, transpose=True), _TRANSPOSE_HINT),
]
_MERGE_ERRORS = [("must match the size of tensor", _TRANSPOSE_HINT),
                 ("cannot be multiplied",
                  "B is (out_features, r) and A is (r, in_features): their product is B @ A")]


def _merge_inputs(sizes: Sizes, dtype: torch.dtype):
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            d_out, d_in, rank, alpha = _cycle(sizes, next(calls))
            W = torch.randn(d_out, d_in, generator=gen, dtype=dtype) / math.sqrt(d_in)
            A, B = _adapters(gen, d_in, d_out, rank, dtype)
            return W, A, B, float(alpha)
        return draw
    return make_inputs


def check_lora_merge(fn: Callable, *, seed: int = 0,
                     sizes: Sizes = ((8, 8, 2, 4.0), (6, 10, 3, 1.5), (12, 5, 1, 2.0)),
                     dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(W, A, B, alpha)`` must return the merged weight ``W + (alpha / r) B A``, (out, in);
    ``sizes`` = (out_features, in_features, r, alpha) per trial (a square W shows a transposed
    update)."""
    hinted_check(fn, _ref_lora_merge, _merge_inputs(sizes, dtype), name="lora_merge", trials=trials,
                 seed=seed, forbid=REFERENCES, mistakes=_MERGE_MISTAKES, error_hints=_MERGE_ERRORS,
                 **_tolerance(dtype))


def check_lora_unmerge(fn: Callable, *, seed: int = 0,
                       sizes: Sizes = ((8, 8, 2, 4.0), (6, 10, 3, 1.5), (12, 5, 1, 2.0)),
                       dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(W, A, B, alpha)`` must return the weight before merging, ``W - (alpha / r) B A``,
    for a merged weight W (out, in); ``sizes`` as for :func:`check_lora_merge`."""
    hinted_check(fn, _ref_lora_unmerge, _merge_inputs(sizes, dtype), name="lora_unmerge",
                 trials=trials, seed=seed, forbid=REFERENCES, mistakes=_UNMERGE_MISTAKES,
                 error_hints=_MERGE_ERRORS, **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 4
class AdaptedLinear(nn.Module):
    """An nn.Linear with a LoRA update, for the test network (the course's LoRALinear is a
    reference, switched off while grading, so the checks bring their own):

        y = base(x) + (alpha / r) (x A^T) B^T,    x (..., in) -> (..., out)

    ``base``, ``A`` (r, in) and ``B`` (out, r) as in the course's LoRALinear; A and B are drawn
    from ``generator`` (B = 0 with ``fresh``, as a new adapter starts)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator,
                 fresh: bool = False):
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, float(alpha)
        self.scaling = self.alpha / rank
        A, B = _adapters(generator, base.in_features, base.out_features, rank, base.weight.dtype)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(torch.zeros_like(B) if fresh else B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T


class LoRANet(nn.Module):
    """A small network being fine-tuned with LoRA, for the checks:

        x (N, d_in) -> fc1 (LoRA) -> tanh -> fc2 (LoRA) -> tanh -> head (a plain Linear) -> (N, d_out)

    Its parameters are ``fc1.base.weight``, ``fc1.base.bias``, ``fc1.A``, ``fc1.B``, the same for
    ``fc2``, then ``head.weight`` and ``head.bias``. ``trainable`` says which arrive with
    requires_grad: ``"all"``, ``"none"``, or ``"built"`` (as a fresh LoRA layer leaves them: the
    bases frozen, A, B and the head trainable; B = 0)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, rank: int, alpha: float,
                 generator: torch.Generator, trainable: str = "all", dtype: torch.dtype = torch.float32):
        super().__init__()
        if trainable not in ("all", "none", "built"):
            raise ValueError(f"trainable must be 'all', 'none' or 'built', got {trainable!r}")
        fresh = trainable == "built"
        self.fc1 = AdaptedLinear(_linear(d_in, d_hidden, generator, dtype), rank, alpha, generator, fresh)
        self.fc2 = AdaptedLinear(_linear(d_hidden, d_hidden, generator, dtype), rank, alpha, generator, fresh)
        self.head = _linear(d_hidden, d_out, generator, dtype)
        self.trainable = trainable
        self.arrive()

    def arrive(self) -> "LoRANet":
        """Set requires_grad as ``trainable`` says and forget any gradient (what an answer gets)."""
        self.zero_grad(set_to_none=True)
        self.requires_grad_(self.trainable != "none")
        if self.trainable == "built":
            self.fc1.base.requires_grad_(False)
            self.fc2.base.requires_grad_(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _grads_of(model: nn.Module, x, target, reduce: str = "mean") -> dict:
    """{name: gradient} of the squared error for the parameters that require a gradient."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    err = (model(x) - target) ** 2
    loss = err.mean() if reduce == "mean" else err.sum()
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return {n: g for (n, _), g in zip(named, grads)}


def _ref_lora_grads(model, x, target):
    """What the course's inject_lora leaves trainable: the A and B of every LoRA layer, nothing else."""
    model = copy.deepcopy(model).arrive()
    model.requires_grad_(False)
    for layer in model.modules():
        if isinstance(layer, AdaptedLinear):
            layer.A.requires_grad_(True)
            layer.B.requires_grad_(True)
    return _grads_of(model, x, target)


def _grads_training(names: Sequence[str] | None, reduce: str = "mean"):
    """A wrong answer: the parameters whose last name part is in ``names`` train (None: all)."""
    def grads(model, x, target):
        model = copy.deepcopy(model).arrive()
        for name, p in model.named_parameters():
            p.requires_grad_(names is None or name.rsplit(".", 1)[-1] in names
                             or (name.startswith("head.") and "head" in names))
        return _grads_of(model, x, target, reduce)
    return grads


_FROZEN_BASE_HINT = ("the gradient flows into the frozen base: freeze the whole model first "
                     "(model.requires_grad_(False)), then let only the LoRA matrices A and B train")
_GRADS_MISTAKES = [
    (_grads_training(None), _FROZEN_BASE_HINT),
    (_grads_training(("A", "B", "head")),
     "every parameter that is not a LoRA matrix stays frozen, the head too: "
     "model.requires_grad_(False) first, then requires_grad on each A and B"),
    (_grads_training(("B",)),
     "A trains as well as B: set requires_grad on both LoRA matrices (at the start B = 0, so "
     "A's gradient is 0, but it is not frozen)"),
    (_grads_training(("A",)), "B trains as well as A: set requires_grad on both LoRA matrices"),
    (_grads_training(("A", "B"), reduce="sum"),
     "the loss is the mean squared error, ((model(x) - target) ** 2).mean(), not the sum"),
]
_GRADS_ERRORS = [
    ("does not require grad",
     "nothing the loss depends on requires a gradient: after freezing the model, turn "
     "requires_grad back on for every A and B"),
]


def check_lora_grads(fn: Callable, *, seed: int = 0,
                     sizes: Sizes = ((6, 8, 3, 2, 4.0), (5, 6, 2, 1, 1.0)),
                     trainable: Sequence[str] = ("all", "none", "built"),
                     dtype: torch.dtype = torch.float32, trials: int = 3):
    """``fn(model, x, target)`` must leave only the LoRA matrices (the parameters named ``A`` and
    ``B``) trainable, backpropagate ``((model(x) - target) ** 2).mean()`` and return
    ``{name: gradient}`` for every parameter that gets one; model: a :class:`LoRANet` whose
    parameters arrive as ``trainable`` says (per trial); ``sizes`` = (d_in, d_hidden, d_out, r,
    alpha) per trial; x (N, d_in), target (N, d_out)."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            d_in, d_hidden, d_out, rank, alpha = _cycle(sizes, i)
            model = LoRANet(d_in, d_hidden, d_out, rank, float(alpha), gen, _cycle(trainable, i), dtype)
            n = 4 + i % 3
            x = torch.randn(n, d_in, generator=gen, dtype=dtype)
            target = torch.randn(n, d_out, generator=gen, dtype=dtype)
            return model, x, target
        return draw

    hinted_check(fn, _ref_lora_grads, make_inputs, name="lora_grads", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_GRADS_MISTAKES, error_hints=_GRADS_ERRORS,
                 **_tolerance(dtype))


# ----------------------------------------------------------------------------- part 5
def _conv_facts(conv, x) -> dict:
    with torch.no_grad():
        out = conv(x)
    return {"weight": _describe(conv.weight), "bias": _describe(conv.bias), "output": _describe(out)}


def _ref_zero_conv(channels, x):
    return _conv_facts(_cn.zero_conv(channels), x)


def _conv_mistake(weight: str = "zeros", bias: str = "zeros", output: str = "zeros", k: int = 1):
    def facts(channels, x):
        return {"weight": _fact(weight, (channels, channels, k, k)),
                "bias": _fact(bias, (channels,)), "output": _fact(output, x.shape)}
    return facts


_ZERO_CONV_MISTAKES = [
    (_conv_mistake(weight="random", output="random"),
     "zero the weight too (nn.init.zeros_(conv.weight)): with a random weight the ControlNet "
     "changes the base model before it has learnt anything"),
    (_conv_mistake(bias="random", output="random"),
     "zero the bias too (nn.init.zeros_(conv.bias)): a zero convolution outputs exactly 0 at the "
     "start"),
    (_conv_mistake(weight="random", bias="random", output="random"),
     "a zero convolution starts at zero: set its weight and its bias to 0 (nn.init.zeros_)"),
    (_conv_mistake(bias="none"),
     "keep the convolution's bias (nn.Conv2d's default) and set it to 0: the ControlNet learns "
     "it too"),
    (_conv_mistake(k=3),
     "a zero convolution is 1 x 1: nn.Conv2d(channels, channels, kernel_size=1)"),
]


def check_zero_conv(fn: Callable, *, seed: int = 0, channels: Sequence[int] = (4, 8, 3),
                    shapes: Sequence[tuple[int, int, int]] = ((2, 5, 5), (1, 4, 6)), trials: int = 3):
    """``fn(channels)`` must return a 1 x 1 ``nn.Conv2d`` (channels -> channels) whose weight and
    bias are zeros, so that it outputs zeros; ``channels`` per trial, its output read on an input
    (B, channels, H, W) with (B, H, W) from ``shapes``. Compared in words, see :func:`_describe`."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            c = int(_cycle(channels, i))
            B, H, W = _cycle(shapes, i)
            return c, torch.randn(B, c, H, W, generator=gen)
        return draw

    def answer(c, x):
        return _conv_facts(fn(c), x)

    hinted_check(answer, _ref_zero_conv, make_inputs, name="zero_conv", trials=trials, seed=seed,
                 forbid=REFERENCES, mistakes=_ZERO_CONV_MISTAKES, **_tolerance(torch.float32))


# ----------------------------------------------------------------------------- part 6
def random_unet(generator: torch.Generator, in_ch: int = 1, base: int = 8,
                mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
                attn_levels: tuple[int, ...] = ()) -> _unet.UNet:
    """The course's U-Net (no labels, no text) with every weight drawn from ``generator``: its
    zero-initialised layers are not zero, so every skip and the middle block reach the output."""
    unet = _unet.UNet(in_ch=in_ch, base=base, mults=tuple(mults), num_res_blocks=num_res_blocks,
                      attn_levels=tuple(attn_levels), num_heads=2)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):                      # GroupNorm / LayerNorm scales
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return unet.eval()


def _residual_shapes(unet: _unet.UNet, x: torch.Tensor):
    """The shapes of the skips ``unet.encode`` hands the way up, and of its middle output."""
    B, _, H, W = x.shape
    shapes = [(B, unet.base, H, W)]
    for block in unet.down:
        if isinstance(block, nn.ModuleList):                   # a ResBlock (+ attention)
            channels = block[0].conv1.out_channels
        else:                                                  # a stride-2 convolution
            channels, H, W = block.out_channels, (H + 1) // 2, (W + 1) // 2
        shapes.append((B, channels, H, W))
    assert tuple(s[1] for s in shapes) == tuple(unet.skip_channels), "the U-Net changed its layout"
    return shapes, (B, unet.mid_channels, H, W)


class _GivenResiduals(nn.Module):
    """Stands in for a ControlNet: hands back the residuals it was given, whatever its input."""

    def __init__(self, down: Sequence[torch.Tensor], mid: torch.Tensor):
        super().__init__()
        self.residuals = (list(down), mid)

    def forward(self, *args, **kwargs):
        return self.residuals


def _ref_controlled_eps(unet, x_t, t, down, mid, scale):
    with torch.no_grad():
        controlled = _cn.ControlledUNet(unet, _GivenResiduals(down, mid), scale)
        return controlled(x_t, t, control=x_t)           # the stand-in does not read the control


def _wired(unet, x, t, down, mid, scale, *, reverse=False, down_scaled=True, mid_scaled=True,
           mid_to=("h",), scale_skips=False):
    """A wrong wiring (or, with the defaults, the right one) through encode and decode."""
    with torch.no_grad():
        h, skips, temb = unet.encode(x, t)
        residuals = list(down)[::-1] if reverse else list(down)
        if scale_skips:
            skips = [scale * (s + r) for s, r in zip(skips, residuals)]
        else:
            skips = [s + (scale if down_scaled else 1.0) * r for s, r in zip(skips, residuals)]
        m = (scale if mid_scaled else 1.0) * mid
        if "h" in mid_to:
            h = h + m
        if "last skip" in mid_to:
            skips[-1] = skips[-1] + m
        return unet.decode(h, skips, temb)


_ORDER_HINT = ("residual i belongs to skip i, in the order encode returns the skips (the first "
               "residual to the first, full-resolution skip): zip(skips, down_residuals); that "
               "decode reads the skips from the end is decode's business")
_STRENGTH_HINT = ("scale the residuals by the control strength: skip_i + scale * residual_i and "
                  "h + scale * mid_residual (scale = 0 gives the base model back)")
_WIRING_MISTAKES = [
    (lambda *a: _wired(*a, reverse=True), _ORDER_HINT),
    (lambda *a: _wired(*a, down_scaled=False, mid_scaled=False), _STRENGTH_HINT),
    (lambda *a: _wired(*a, down_scaled=False),
     "the down residuals are scaled by the strength too: skip_i + scale * residual_i"),
    (lambda *a: _wired(*a, mid_scaled=False),
     "the mid residual is scaled by the strength too: h + scale * mid_residual"),
    (lambda *a: _wired(*a, scale_skips=True),
     "scale the residual only, not the skip: skip_i + scale * residual_i"),
    (lambda *a: _wired(*a, mid_to=()),
     "add the mid residual to the middle block's output before the way up: "
     "h = h + scale * mid_residual"),
    (lambda *a: _wired(*a, mid_to=("last skip",)),
     "the mid residual goes to the middle block's output h (the first thing encode returns), "
     "not to the last skip"),
    (lambda *a: _wired(*a, mid_to=("h", "last skip")),
     "the mid residual goes to h only; the last skip gets the last down residual"),
]
_WIRING_ERRORS = [("must match the size of tensor", _ORDER_HINT),
                  ("zip() argument", _ORDER_HINT)]

UNetConfig = tuple[int, tuple[int, ...], int, tuple[int, ...]]


def check_controlled_eps(fn: Callable, *, seed: int = 0,
                         unets: Sequence[UNetConfig] = ((1, (1,), 2, ()), (2, (1, 2), 1, (1,))),
                         shapes: Sequence[tuple[int, int, int]] = ((2, 8, 8), (3, 4, 4)),
                         scales: Sequence[float] = (0.5, 1.5, 0.0), trials: int = 3):
    """``fn(unet, x_t, t, down_residuals, mid_residual, scale)`` must return the U-Net's noise
    prediction with the control residuals added, as a ControlNet adds them:
    ``h, skips, temb = unet.encode(x_t, t)``; skip i + scale * residual i; h + scale *
    mid_residual; ``unet.decode(h, skips, temb)``. ``unets`` = (in_ch, mults, num_res_blocks,
    attn_levels) and ``shapes`` = (B, H, W) per trial (H, W divisible by 2^(levels - 1)); the
    first U-Net's skips all have one shape, so that a residual added to the wrong skip is not a
    shape error there. An answer that lets ``unet(...)`` add the residuals earns nothing."""
    def make_inputs():
        calls = iter(range(10**6))

        def draw(gen):
            i = next(calls)
            in_ch, mults, blocks, attn = _cycle(unets, i)
            B, H, W = _cycle(shapes, i)
            unet = random_unet(gen, in_ch, 8, mults, blocks, attn)
            x_t = torch.randn(B, in_ch, H, W, generator=gen)
            t = torch.randint(0, 1000, (B,), generator=gen)
            skip_shapes, mid_shape = _residual_shapes(unet, x_t)
            down = [0.5 * torch.randn(s, generator=gen) for s in skip_shapes]
            mid = 0.5 * torch.randn(mid_shape, generator=gen)
            return unet, x_t, t, down, mid, float(_cycle(scales, i))
        return draw

    hinted_check(fn, _ref_controlled_eps, make_inputs, name="controlled_eps", trials=trials,
                 seed=seed, forbid=_WIRING_FORBID, mistakes=_WIRING_MISTAKES, error_hints=_WIRING_ERRORS,
                 **_tolerance(torch.float32))
