"""Guidance for diffusion models: steer a sampler toward a class (Phase 4 · 06).

Two ways to make ``p(x | y)`` samples from a diffusion model, both in the phase's convention
(x0 in [-1, 1], integer t in [0, T), the model predicts eps):

- **classifier guidance** (Dhariwal & Nichol, 2021): a classifier trained on *noisy* images,
  ``p_phi(y | x_t, t)``, pushes each step along its gradient,
  ``eps' = eps - s * sqrt(1 - a_bar_t) * grad_x log p_phi(y | x_t, t)``
  (``course_lib.diffusion.ddpm.classifier_guided_eps``). Here: :class:`NoiseAwareClassifier`,
  :func:`noisy_classifier_loss` to train it, :func:`classifier_log_prob` and
  :func:`classifier_guidance_fn` to plug it into ``sample(eps_fn=...)``.
- **classifier-free guidance** (Ho & Salimans, 2022): one network learns both ``eps(x_t, t, y)``
  and ``eps(x_t, t, null)`` because the label is replaced by the null label with probability p
  during training (:func:`drop_condition`, :func:`cfg_loss`); at sampling time
  ``eps = eps_u + s * (eps_c - eps_u)`` (``ddpm.guided_eps``; :func:`cfg_sample` wraps it).

Scale convention (the phase's, and ``diffusers``' ``guidance_scale``): s = 0 unconditional,
s = 1 the plain conditional model, s > 1 guided. Ho & Salimans write the same mix as
``(1 + w) eps_c - w eps_u``, so w = s - 1. :func:`guidance_convention_report` tells the two apart.

To measure a sweep: :func:`class_labels` (a rows-are-classes batch of requests),
:func:`within_class_spread` (diversity among samples of one requested class, in judge features)
and :func:`guidance_sweep` (accuracy and diversity for each scale).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.diffusion.ddpm import cfg_combine, classifier_guided_eps, ddpm_loss, sample
from course_lib.diffusion.schedule import NoiseSchedule, q_sample
from course_lib.models.unet import ResBlock
from course_lib.nn.embeddings import timestep_embedding

__all__ = ["drop_condition", "cfg_loss", "cfg_sample", "NoiseAwareClassifier", "noisy_classifier_loss",
           "classifier_log_prob", "classifier_guidance_fn", "cfg_combine", "guidance_convention_report",
           "class_labels", "within_class_spread", "guidance_sweep"]


# --------------------------------------------------------------------------- classifier-free guidance
def drop_condition(y: Tensor, p: float, null_label: int, u: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Condition dropout: each label becomes ``null_label`` with probability p.   y: (B,) -> (B,).

    u: (B,) uniform numbers in [0, 1) deciding the drops (label i is dropped when u_i < p); drawn
    from ``generator`` when None. The result is a new tensor; y is not modified.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p (the probability of dropping a label) must be in [0, 1], got {p!r}")
    y = torch.as_tensor(y)
    if y.is_floating_point():
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if u is None:
        u = torch.rand(y.shape, generator=generator).to(y.device)
    if u.shape != y.shape:
        raise ValueError(f"u has shape {tuple(u.shape)} but y has {tuple(y.shape)}: give one number per label")
    return torch.where(u < p, torch.full_like(y, null_label), y)       # y_i -> null with probability p


def cfg_loss(model: nn.Module, x0: Tensor, y: Tensor, schedule: NoiseSchedule, p_uncond: float = 0.15,
             generator: torch.Generator | None = None, prediction: str = "eps") -> Tensor:
    """The DDPM loss of a label-conditioned U-Net with condition dropout (a scalar).

    x0: (B, C, H, W) in [-1, 1]; y: (B,) labels in [0, num_classes). A fraction p_uncond of the
    labels is replaced by ``model.null_label``, so the same network also learns eps(x_t, t, null).
    prediction: "eps" or "v" (see ``ddpm_loss``).
    """
    null = model.null_label
    y = torch.as_tensor(y, device=x0.device).long()
    if y.shape != (x0.shape[0],):
        raise ValueError(f"y must be (B,) = ({x0.shape[0]},) labels, got {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= null:
        raise ValueError(f"labels must be in [0, {null - 1}] (label {null} is the null label)")
    y = drop_condition(y, p_uncond, null, generator=generator)
    return ddpm_loss(model, x0, schedule, cond={"y": y}, generator=generator, prediction=prediction)


@torch.no_grad()
def cfg_sample(model: nn.Module, labels: Tensor, schedule: NoiseSchedule, guidance_scale: float,
               steps: int | None = 25, shape: Sequence[int] | None = None,
               generator: torch.Generator | None = None, progress: bool = False, **kwargs) -> Tensor:
    """Sample one image per requested label with classifier-free guidance.   labels: (B,) -> (B, C, H, W) in [-1, 1].

    eps = eps_u + s (eps_c - eps_u) with s = guidance_scale (s = 1: no guidance, s = 0: ignore
    the labels); DDIM with ``steps`` steps (None: the full ancestral chain). ``shape`` is
    (C, H, W); by default (model.in_ch, 16, 16). Other keyword arguments go to ``sample``.
    """
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels).long().to(device)
    C, H, W = shape if shape is not None else (model.in_ch, 16, 16)
    uncond = {"y": torch.full_like(labels, model.null_label)}
    return sample(model, (labels.shape[0], C, H, W), schedule, steps=steps, cond={"y": labels},
                  uncond=uncond, guidance_scale=guidance_scale, generator=generator,
                  progress=progress, **kwargs)


def guidance_convention_report(fn: Callable[[Tensor, Tensor, float], Tensor]) -> str:
    """Diagnose a learner's ``fn(eps_u, eps_c, s)``: the right convention, the paper's w, or neither.

    Returns a one-line message starting with ✅, ❌ or ⏳ (never raises).
    """
    g = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    try:
        got = {s: fn(eps_u.clone(), eps_c.clone(), s) for s in (0.0, 1.0, 3.0)}
    except NotImplementedError:
        return "⏳ not attempted yet"
    except Exception as e:  # noqa: BLE001  (a diagnosis, not a crash)
        return f"❌ it raised {type(e).__name__}: {e}"
    close = lambda a, b: isinstance(a, Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-5)  # noqa: E731
    if all(close(got[s], cfg_combine(eps_u, eps_c, s)) for s in got):
        return "✅ s = 0 gives eps_u, s = 1 gives eps_c, s = 3 extrapolates: the diffusers convention"
    if all(close(got[s], cfg_combine(eps_u, eps_c, s + 1)) for s in got):
        return ("❌ this is the paper's convention (1 + w) eps_c - w eps_u with w = s: at s = 1 it already "
                "guides (2 eps_c - eps_u). Here s = 1 must return eps_c, i.e. use w = s - 1")
    if close(got[1.0], eps_u) and close(got[0.0], eps_c):
        return "❌ eps_u and eps_c are swapped: s = 0 must give eps_u (unconditional), s = 1 eps_c"
    if not close(got[1.0], eps_c):
        return "❌ at s = 1 the result must be exactly eps_c, the plain conditional prediction"
    return "❌ s = 1 is right but other scales are not: eps = eps_u + s * (eps_c - eps_u)"


# --------------------------------------------------------------------------- classifier guidance
class NoiseAwareClassifier(nn.Module):
    """p_phi(y | x_t, t): a small time-conditioned CNN that reads *noisy* images.

    x_t (B, C, H, W) in the model range, t (B,) integer steps -> logits (B, num_classes).
    conv -> [ResBlock(+t), downsample] per level -> GroupNorm, SiLU, global average pool -> linear.
    The step enters every ResBlock the way it enters the U-Net (sinusoidal embedding + MLP), so
    the classifier knows how much noise to see through: the encoder half of a U-Net, as in
    Dhariwal & Nichol.
    """

    def __init__(self, in_ch: int = 1, num_classes: int = 10, base: int = 16,
                 mults: Sequence[int] = (1, 2, 2)):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.in_ch, self.num_classes, self.base = in_ch, num_classes, base
        temb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_ch, base, 3, padding=1)
        self.blocks, self.downs = nn.ModuleList(), nn.ModuleList()
        ch = base
        for i, m in enumerate(mults):
            self.blocks.append(ResBlock(ch, base * m, temb_dim))
            ch = base * m
            last = i == len(mults) - 1
            self.downs.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.norm = nn.GroupNorm(min(8, ch), ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: (B, C, H, W); t: (B,) steps -> (B, num_classes) logits."""
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"x must be (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],) or t.is_floating_point():
            raise ValueError(f"t must be ({x.shape[0]},) integer steps, got {tuple(t.shape)} {t.dtype}")
        temb = self.time_mlp(timestep_embedding(t, self.base))
        h = self.conv_in(x)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, temb))
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))        # global average pool


def noisy_classifier_loss(classifier: nn.Module, x0: Tensor, y: Tensor, schedule: NoiseSchedule,
                          generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Cross-entropy of a noise-aware classifier on x_t ~ q(x_t | x0), t uniform in [0, T).

    x0: (B, C, H, W) in [-1, 1]; y: (B,) labels. Returns (loss, {"acc": accuracy on this batch}),
    the form ``course_lib.train.fit`` logs.
    """
    B = x0.shape[0]
    t = torch.randint(0, schedule.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    logits = classifier(q_sample(x0, t, noise, schedule), t)
    y = torch.as_tensor(y, device=x0.device).long()
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}


def classifier_log_prob(logits_fn: Callable[[Tensor, Tensor], Tensor], y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """log_prob_fn(x_t, t) -> (B,) log p(y_i | x_t_i, t_i), for ``classifier_guided_eps``.

    logits_fn(x_t, t) -> (B, K): a noise-aware classifier, or any classifier wrapped to ignore t.
    """
    y = torch.as_tensor(y).long()

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        logp = F.log_softmax(logits_fn(x, t), dim=-1)                   # (B, K)
        return logp.gather(1, y.to(x.device)[:, None]).squeeze(1)       # (B,)
    return log_prob


def classifier_guidance_fn(model: Callable, log_prob_fn: Callable[[Tensor, Tensor], Tensor],
                           schedule: NoiseSchedule, scale: float,
                           model_kwargs: Mapping | None = None, t_min: int = 0) -> Callable[[Tensor, Tensor], Tensor]:
    """An ``eps_fn(x, t)`` for ``sample``: the model's eps shifted by the classifier's gradient.

        eps' = eps_theta(x_t, t, **model_kwargs) - s * sqrt(1 - a_bar_t) * grad_x log p(y | x_t, t)

    model_kwargs: e.g. ``{"y": null_labels}`` to guide the unconditional mode of a CFG U-Net.
    t_min: guide only at steps t >= t_min (the noisier part of the chain); below it the
    model's own eps is used. 0 (the default) guides every step.
    """
    kwargs = dict(model_kwargs or {})

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        eps = model(x, t, **kwargs)
        use = t >= t_min                                                # (B,) which samples to guide
        if not bool(use.any()):
            return eps
        guided = classifier_guided_eps(eps, x, t, schedule, log_prob_fn, scale)
        return torch.where(use.reshape(-1, *([1] * (x.dim() - 1))), guided, eps)
    return eps_fn


# --------------------------------------------------------------------------- measuring a sweep
def class_labels(n_per_class: int, num_classes: int = 10) -> Tensor:
    """Requests 0, 0, ..., 1, 1, ...: (num_classes * n_per_class,); a grid with nrow=n_per_class has one class per row."""
    if n_per_class < 1 or num_classes < 1:
        raise ValueError("n_per_class and num_classes must be positive")
    return torch.arange(num_classes).repeat_interleave(n_per_class)


def within_class_spread(features: Tensor, labels: Tensor) -> dict:
    """Diversity among samples that asked for the same class: mean pairwise distance of their features.

    features: (N, D); labels: (N,) the *requested* classes. For each class c with at least two
    samples, spread_c = mean over pairs i != j of ||f_i - f_j||. Returns {"per_class": {c: spread_c},
    "mean": average over classes}. Identical samples give 0; more varied ones a larger number.
    """
    features, labels = torch.as_tensor(features).float(), torch.as_tensor(labels).long().flatten()
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be (N, D) with N = len(labels) = {labels.shape[0]}, "
                         f"got {tuple(features.shape)}")
    per_class = {}
    for c in labels.unique().tolist():
        f = features[labels == c]
        n = f.shape[0]
        if n < 2:
            continue
        d = torch.cdist(f, f)                                           # (n, n), zero diagonal
        per_class[c] = (d.sum() / (n * (n - 1))).item()                 # mean over the n(n-1) pairs
    if not per_class:
        raise ValueError("within_class_spread needs at least two samples of some class")
    return {"per_class": per_class, "mean": sum(per_class.values()) / len(per_class)}


def guidance_sweep(generate: Callable[[float], Tensor], scales: Sequence[float], labels: Tensor,
                   judge="digits", real_spread: float | None = None, progress: bool = True) -> tuple[list, dict]:
    """Sample at every scale and measure accuracy and diversity with a judge.

    generate(scale) -> images (N, C, H, W) in [0, 1], image i requested ``labels[i]``.
    Returns (rows, images): rows[k] = {"scale", "accuracy", "recognised", "spread" (and
    "relative_spread" = spread / real_spread when given)}; images[scale] = the samples.
    judge=None: no measurements (rows hold only the scale), for data no judge knows.
    """
    from tqdm.auto import tqdm

    from course_lib.eval import class_report, extract_features

    rows, images = [], {}
    for s in tqdm(list(scales), desc="guidance sweep", disable=not progress):
        x = generate(s)
        images[s] = x
        if judge is None:
            rows.append({"scale": s})
            continue
        report = class_report(x, labels, judge=judge)
        spread = within_class_spread(extract_features(x, judge), labels)["mean"]
        row = {"scale": s, "accuracy": report["accuracy"], "recognised": report["recognised"], "spread": spread}
        if real_spread:
            row["relative_spread"] = spread / real_spread
        rows.append(row)
    return rows, images
