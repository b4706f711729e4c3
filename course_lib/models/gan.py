"""Generative adversarial networks: losses, DCGAN and toy MLP networks, one short training loop.

A GAN (Goodfellow et al., 2014) trains two networks against each other. The discriminator D
tells real samples from generated ones; the generator G turns noise z ~ N(0, I) into samples
that D cannot tell apart from the data:

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 − D(G(z)))]

    G, D = Generator(latent_dim=32, out_ch=1, image_size=16), Discriminator(in_ch=1, image_size=16)
    hist = train_gan(G, D, X, steps=5000, loss="nonsaturating", ema_decay=0.999)  # X: (N, 1, 16, 16) in [-1, 1]
    samples = (hist.generator(G.sample_z(64)) + 1) / 2                          # (64, 1, 16, 16) in [0, 1]

Any other GAN (conditional, style-based, pix2pix, CycleGAN: Phase 3 · 03) writes its two losses
and runs on the same loop, :func:`gan_loop`, which ``train_gan`` uses too::

    hist = gan_loop(d_loss, g_loss, batches, opt_d, opt_g, steps=800, G=G, ema_decay=0.99)

Conventions used throughout this module:

* Discriminators return **logits** ℓ (one number per sample, shape ``(B,)``), and
  D(x) = σ(ℓ). Every loss is written with ``binary_cross_entropy_with_logits``, which computes
  log σ(ℓ) and log(1 − σ(ℓ)) = log σ(−ℓ) stably.
* Every loss is a scalar to **minimise** (the optimiser steps downhill).
* Images live in [-1, 1]; the DCGAN generator ends with tanh.
* A Wasserstein critic returns unbounded **scores** ``(B,)`` (no sigmoid).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "d_loss_minimax",
    "d_loss_nonsaturating",
    "g_loss_minimax",
    "g_loss_nonsaturating",
    "wgan_d_loss",
    "wgan_g_loss",
    "gradient_penalty",
    "Generator",
    "Discriminator",
    "MLPGenerator",
    "MLPDiscriminator",
    "add_spectral_norm",
    "has_spectral_norm",
    "GANHistory",
    "gan_loop",
    "train_gan",
    "random_translate",
    "slerp",
    "mode_coverage",
    "LOSSES",
]


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------

def _check_logits(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.dim() == 2 and t.shape[1] == 1:  # (B, 1) → (B,), a common discriminator output
        t = t[:, 0]
    if t.dim() != 1:
        raise ValueError(
            f"{name} must have shape (B,) (one logit/score per sample), got {tuple(t.shape)}; "
            "flatten the discriminator output with .view(-1)")
    return t


def d_loss_minimax(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the original minimax game (scalar to minimise).

    D maximises E[log D(x)] + E[log(1 − D(G(z)))], i.e. minimises binary cross-entropy with
    label 1 for real and label 0 for fake:

        L_D = −mean log σ(ℓ_real) − mean log(1 − σ(ℓ_fake))

    real_logits: (B,), fake_logits: (B',) → scalar. (The discriminator's loss is the same in the
    minimax and non-saturating games; only the generator's loss differs.)
    """
    real_logits = _check_logits("real_logits", real_logits)
    fake_logits = _check_logits("fake_logits", fake_logits)
    loss_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return loss_real + loss_fake  # −E log D(x) − E log(1 − D(G(z)))


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss used with the non-saturating generator loss: the same BCE as
    :func:`d_loss_minimax` (real → 1, fake → 0). real_logits: (B,), fake_logits: (B',) → scalar."""
    return d_loss_minimax(real_logits, fake_logits)


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss of the minimax game (saturating), to minimise:

        L_G = mean log(1 − σ(ℓ_fake)) = −BCE(ℓ_fake, 0)

    When D confidently rejects the fakes (σ(ℓ) ≈ 0, early in training) the gradient
    ∂L_G/∂ℓ = −σ(ℓ) vanishes: the generator gets no signal. fake_logits: (B,) → scalar.
    """
    fake_logits = _check_logits("fake_logits", fake_logits)
    return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (Goodfellow et al., 2014, §3), to minimise:

        L_G = −mean log σ(ℓ_fake) = BCE(ℓ_fake, 1)

    Same fixed point as the minimax loss, but ∂L_G/∂ℓ = σ(ℓ) − 1 ≈ −1 when σ(ℓ) ≈ 0, so the
    generator learns fastest exactly when it is worst. fake_logits: (B,) → scalar.
    """
    fake_logits = _check_logits("fake_logits", fake_logits)
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def wgan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss (Arjovsky et al., 2017), to minimise:

        L_C = mean f(G(z)) − mean f(x)

    −L_C estimates the Wasserstein-1 distance when f is 1-Lipschitz (enforce that with
    :func:`gradient_penalty` or spectral norm). real_scores: (B,), fake_scores: (B',) → scalar.
    """
    real_scores = _check_logits("real_scores", real_scores)
    fake_scores = _check_logits("fake_scores", fake_scores)
    return fake_scores.mean() - real_scores.mean()


def wgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Wasserstein generator loss, to minimise: L_G = −mean f(G(z)). fake_scores: (B,) → scalar."""
    fake_scores = _check_logits("fake_scores", fake_scores)
    return -fake_scores.mean()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP gradient penalty (Gulrajani et al., 2017), a scalar:

        x̂ = α·x_real + (1 − α)·x_fake,   α ~ U[0, 1] per sample
        GP = mean (‖∇_x̂ f(x̂)‖₂ − 1)²

    real, fake: (B, ...) same shape; alpha: (B, 1, ..., 1) (or anything broadcastable), drawn
    uniformly if None. The gradient is taken with ``create_graph=True`` so the penalty itself can
    be back-propagated into the critic's weights. Add ``λ · GP`` (λ = 10 in the paper) to the
    critic's loss.
    """
    if not isinstance(real, torch.Tensor) or not isinstance(fake, torch.Tensor):
        raise TypeError("real and fake must be torch.Tensors of the same shape (B, ...)")
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}; use equal batch sizes")
    if alpha is None:
        alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1),  # drawn on the CPU, then moved
                           dtype=real.dtype).to(real.device)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)  # ∇_x̂ f(x̂): (B, ...)
    grad_norm = grad.flatten(1).norm(2, dim=1)  # ‖∇_x̂ f(x̂)‖₂: (B,)
    return ((grad_norm - 1) ** 2).mean()  # mean (‖∇f‖ − 1)²


LOSSES = ("minimax", "nonsaturating", "wgan-gp")  # the choices of train_gan(loss=...)


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------

def _positive_int(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _levels(image_size: int) -> tuple[int, int]:
    """(L, s0): how many stride-2 steps and the smallest side, image_size = s0 · 2^L.

    Halve while the side is even and the half is still at least 4: 16 → 8 → 4 (L=2, s0=4),
    28 → 14 → 7 (L=2, s0=7), 32 → ... → 4 (L=3), 64 → ... → 4 (L=4).
    """
    _positive_int(image_size, "image_size")
    levels, side = 0, image_size
    while side % 2 == 0 and side // 2 >= 4:
        levels, side = levels + 1, side // 2
    if levels == 0:
        raise ValueError(f"image_size={image_size} cannot be halved even once to a side >= 4; "
                         "use an even size of at least 8 (16, 28, 32, 64 ...)")
    return levels, side


def _channels(width: int, level: int) -> int:
    """Channels at ``level`` halvings from full resolution: width, 2·width, 4·width (at most 8·width)."""
    return width * 2 ** min(level, 3)


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Wrap every Linear/Conv2d weight of ``module`` in spectral normalisation (in place).

        W_SN = W / σ(W),   σ(W) = the largest singular value, estimated by one step of power
                            iteration per forward pass (Miyato et al., 2018)

    Every layer then has Lipschitz constant ≤ 1 and so (with 1-Lipschitz activations such as
    LeakyReLU) has the whole network. Returns ``module``.
    """
    from torch.nn.utils.parametrizations import spectral_norm

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            setattr(module, name, spectral_norm(child))
        else:
            add_spectral_norm(child)
    return module


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether some layer of ``module`` has a spectral-norm parametrization on its weight."""
    from torch.nn.utils import parametrize

    return any(parametrize.is_parametrized(m, "weight") and
               any(type(p).__name__ == "_SpectralNorm" for p in m.parametrizations.weight)
               for m in module.modules())


class _SamplesNoise:
    """``sample_z`` for the generators, which keep their noise size in ``self.latent_dim`` (and,
    with a mixture prior, its component means in the buffer ``prior_means``)."""

    def sample_z(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """n noise vectors (n, latent_dim): z ~ N(0, I), or from the mixture prior
        z = mu_k + prior_std * eps with k uniform over the components and eps ~ N(0, I)."""
        device = device if device is not None else next(self.parameters()).device
        means = getattr(self, "prior_means", None)
        if means is None:
            return torch.randn(n, self.latent_dim, generator=generator).to(device)
        k = torch.randint(0, len(means), (n,), generator=generator)
        eps = torch.randn(n, self.latent_dim, generator=generator)
        return (means.cpu()[k] + self.prior_std * eps).to(device)


class Generator(_SamplesNoise, nn.Module):
    """DCGAN generator (Radford et al., 2015): noise ``z (B, latent_dim)`` → images
    ``(B, out_ch, S, S)`` in **[-1, 1]** (tanh output; map to [0, 1] with (x + 1) / 2).

        z → linear → (8w', s0, s0) → [ConvT 4x4 stride 2 → BatchNorm → ReLU] × L → conv 3x3 → tanh

    with S = s0 · 2^L (s0 = 4 for 16/32/64, 7 for 28) and the channels halving at each step up
    to ``width`` at full resolution. BatchNorm in the generator and no pooling anywhere, as in
    DCGAN.

    prior_components K > 0 replaces the N(0, I) noise by a mixture of K Gaussians with fixed
    random means mu_k ~ N(0, I) (drawn from ``prior_seed``) and standard deviation ``prior_std``:
    z = mu_k + prior_std * eps. On a small data set of a few distinct kinds (digits) the
    generator can give each kind its own components, so fewer samples land between two kinds
    (Gurumurthy et al., 2017, "DeLiGAN", learn the means too).
    """

    def __init__(self, latent_dim: int = 64, out_ch: int = 1, image_size: int = 16,
                 width: int = 32, prior_components: int = 0, prior_std: float = 0.5,
                 prior_seed: int = 0):
        super().__init__()
        for value, name in ((latent_dim, "latent_dim"), (out_ch, "out_ch"), (width, "width")):
            _positive_int(value, name)
        if not isinstance(prior_components, int) or prior_components < 0:
            raise ValueError(f"prior_components must be an int >= 0 (0: z ~ N(0, I)), got {prior_components!r}")
        if not prior_std > 0:
            raise ValueError(f"prior_std must be > 0, got {prior_std!r}")
        if prior_components:
            means = torch.randn(prior_components, latent_dim, generator=torch.Generator().manual_seed(prior_seed))
            self.register_buffer("prior_means", means)                 # (K, latent_dim), saved with the weights
            self.prior_std = float(prior_std)
        levels, side = _levels(image_size)
        self.latent_dim, self.out_ch, self.image_size = latent_dim, out_ch, image_size
        ch = _channels(width, levels)
        self.start_shape = (ch, side, side)
        self.project = nn.Sequential(nn.Linear(latent_dim, ch * side * side, bias=False),
                                     nn.BatchNorm1d(ch * side * side), nn.ReLU())
        layers: list[nn.Module] = []
        for level in reversed(range(levels)):                       # side s → 2s
            out = _channels(width, level)
            layers += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        layers += [nn.Conv2d(ch, out_ch, 3, padding=1), nn.Tanh()]  # images in [-1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) → x: (B, out_ch, S, S) in [-1, 1]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator expects noise (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.net(self.project(z).view(len(z), *self.start_shape))


class Discriminator(nn.Module):
    """DCGAN discriminator / critic: images ``(B, in_ch, S, S)`` in [-1, 1] → logits ``(B,)``.

        x → [conv 4x4 stride 2 → LeakyReLU(0.2)] × L → flatten → linear → ℓ

    Strided convolutions instead of pooling, LeakyReLU, no sigmoid (the losses take logits).
    It has no BatchNorm: a batch statistic would mix the samples of a batch, which breaks
    the per-sample gradient penalty of WGAN-GP. ``spectral_norm=True`` wraps every layer in
    spectral normalisation (Miyato et al., 2018), making D 1-Lipschitz.
    """

    def __init__(self, in_ch: int = 1, image_size: int = 16, width: int = 32,
                 spectral_norm: bool = False):
        super().__init__()
        for value, name in ((in_ch, "in_ch"), (width, "width")):
            _positive_int(value, name)
        levels, side = _levels(image_size)
        self.in_ch, self.image_size = in_ch, image_size
        layers: list[nn.Module] = []
        ch = in_ch
        for level in range(levels):                                 # side 2s → s
            out = _channels(width, level)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch * side * side, 1)                  # ℓ = w · vec(h) + b
        if spectral_norm:
            add_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, S, S) → logits (B,)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_ch, self.image_size, self.image_size):
            raise ValueError(f"Discriminator expects images (B, {self.in_ch}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1)).view(-1)


class MLPGenerator(_SamplesNoise, nn.Module):
    """Generator for 2-D toys: z (B, latent_dim) → points (B, out_dim), no output squashing.

        z → [linear → ReLU] × depth → linear
    """

    def __init__(self, latent_dim: int = 2, out_dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        for value, name in ((latent_dim, "latent_dim"), (out_dim, "out_dim"), (hidden, "hidden"),
                            (depth, "depth")):
            _positive_int(value, name)
        self.latent_dim = latent_dim
        dims = [latent_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) → x: (B, out_dim)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"MLPGenerator expects noise (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """Discriminator / critic for 2-D toys: points (B, in_dim) → logits (B,).

        x → [linear → LeakyReLU(0.2)] × depth → linear;  ``spectral_norm=True`` as in
        :class:`Discriminator`.
    """

    def __init__(self, in_dim: int = 2, hidden: int = 128, depth: int = 3,
                 spectral_norm: bool = False):
        super().__init__()
        for value, name in ((in_dim, "in_dim"), (hidden, "hidden"), (depth, "depth")):
            _positive_int(value, name)
        self.in_dim = in_dim
        dims = [in_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 1))
        if spectral_norm:
            add_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_dim) → logits (B,)."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLPDiscriminator expects points (B, {self.in_dim}), got {tuple(x.shape)}")
        return self.net(x).view(-1)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

@dataclass
class GANHistory:
    """What :func:`gan_loop` and :func:`train_gan` return.

    curves: every logged value, one per generator step, by name ("D loss", "G loss" and the
    terms the loss functions log); d_loss, g_loss, gp: :func:`train_gan`'s curves (the critic's
    loss averaged over its n_critic steps); snapshots: G's output on fixed noise every
    ``snapshot_every`` steps, (T, n_snapshot, ...) stacked on the CPU, at ``snapshot_steps``;
    generator: the model to sample with (the EMA copy when ``ema_decay`` was given, else G).
    """

    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    gp: list[float] = field(default_factory=list)
    snapshot_steps: list[int] = field(default_factory=list)
    snapshots: torch.Tensor | None = None
    generator: nn.Module | None = None
    seconds: float = 0.0
    curves: dict[str, list[float]] = field(default_factory=dict)


def _batches(data: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless random batches of rows of ``data`` (a fresh shuffle every epoch)."""
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - batch_size + 1, batch_size):
            yield data[order[start:start + batch_size]]


def _unpack(out: Any, name: str) -> tuple[torch.Tensor, dict[str, float]]:
    """A loss function's answer: ``loss`` or ``(loss, {"term": value, ...})``."""
    loss, logs = out if isinstance(out, tuple) else (out, {})
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise TypeError(f"the {name} loss function must return a scalar tensor (or (loss, dict of "
                        f"logged terms)), got {type(loss).__name__}"
                        + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
    return loss, {key: float(value) for key, value in logs.items()}


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step downhill: zero the gradients, back-propagate, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def gan_loop(d_loss: Callable[[Any], Any], g_loss: Callable[[Any], Any], batches: Iterable[Any],
             opt_d: torch.optim.Optimizer, opt_g: torch.optim.Optimizer, *, steps: int,
             n_critic: int = 1, g_first: bool = False, G: nn.Module | None = None,
             ema_decay: float | None = None, schedulers: tuple = (),
             on_step: Callable[[int, GANHistory], None] | None = None, desc: str = "GAN",
             progress: bool = True) -> GANHistory:
    """The training loop every GAN of the course shares (Phase 3 · 02 and 03 GANs).

    The notebook keeps what a step *computes*: ``d_loss(batch)`` and ``g_loss(batch)`` return
    the loss to minimise, or ``(loss, {"term": value})`` to log its parts too. The loop does the
    machinery around them, for ``steps`` generator steps:

        repeat n_critic times:  batch = next(batches);  D ← D − lr_d ∇_D d_loss(batch)
        G ← G − lr_g ∇_G g_loss(batch)   (same batch);  EMA of G;  step the LR schedulers

    (``g_first=True`` takes the generator's step before the discriminator's, as CycleGAN does.)
    ``batches`` may carry the generated samples as well (e.g. ``(x, y, G(z, y))``), so that both
    losses see the same fakes; the discriminator's loss must then ``.detach()`` them.

    G, ema_decay: keep an EMA of G's weights (:class:`course_lib.train.EMA`); the history's
    ``generator`` is that copy (else G). on_step(step, history): called after every step
    (1-based), e.g. to take snapshots. The history's ``curves`` hold "D loss" (averaged over
    the critic steps), "G loss" and every logged term, one value per generator step.
    """
    from tqdm.auto import tqdm

    from course_lib.train import EMA

    for value, name in ((steps, "steps"), (n_critic, "n_critic")):
        _positive_int(value, name)
    if g_first and n_critic != 1:
        raise ValueError(f"g_first=True takes one generator step, then one discriminator step on the "
                         f"same batch; n_critic must be 1, got {n_critic}")
    if ema_decay is not None and G is None:
        raise ValueError("ema_decay needs the generator: pass G=... (the model whose weights to average)")
    ema = EMA(G, ema_decay) if ema_decay is not None else None
    history = GANHistory(generator=ema.model if ema is not None else G)
    stream, start = iter(batches), time.perf_counter()

    def next_batch() -> Any:
        try:
            return next(stream)
        except StopIteration:
            raise ValueError(f"batches ran out at generator step {step} of {steps}: pass an endless "
                             "stream (e.g. a generator with `while True:`)") from None

    def d_step(batch: Any) -> dict[str, float]:
        loss, logs = _unpack(d_loss(batch), "discriminator")
        _descend(opt_d, loss)
        return {"D loss": loss.item(), **logs}

    def g_step(batch: Any) -> dict[str, float]:
        loss, logs = _unpack(g_loss(batch), "generator")
        _descend(opt_g, loss)
        if ema is not None:
            ema.update(G)
        return {"G loss": loss.item(), **logs}

    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        if g_first:
            batch = next_batch()
            g_logs = g_step(batch)
            d_logs = d_step(batch)
        else:
            d_logs = {}
            for _ in range(n_critic):                       # the discriminator/critic
                batch = next_batch()
                for key, value in d_step(batch).items():
                    d_logs[key] = d_logs.get(key, 0.0) + value
            d_logs = {key: value / n_critic for key, value in d_logs.items()}
            g_logs = g_step(batch)                          # the generator, on the last batch
        for scheduler in schedulers:
            scheduler.step()
        for key, value in {**d_logs, **g_logs}.items():
            history.curves.setdefault(key, []).append(value)
        if on_step is not None:
            on_step(step, history)
        if step % 50 == 0:
            bar.set_postfix(d=f"{d_logs['D loss']:.3f}", g=f"{g_logs['G loss']:.3f}")
    history.seconds = time.perf_counter() - start
    return history


def _losses(loss: str, D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
            gp_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The discriminator's loss for one batch, and the gradient penalty it logs (0 if unused)."""
    real_out, fake_out = D(real), D(fake)
    if loss == "wgan-gp":
        gp = gradient_penalty(D, real, fake)
        return wgan_d_loss(real_out, fake_out) + gp_weight * gp, {"gp": gp.item()}  # L_C + λ·GP
    if loss == "minimax":
        return d_loss_minimax(real_out, fake_out), {"gp": 0.0}
    return d_loss_nonsaturating(real_out, fake_out), {"gp": 0.0}


_G_LOSSES = {"minimax": g_loss_minimax, "nonsaturating": g_loss_nonsaturating,
             "wgan-gp": wgan_g_loss}


def train_gan(G: nn.Module, D: nn.Module, data: torch.Tensor, *, steps: int,
              loss: str = "nonsaturating", batch_size: int = 64, lr_g: float = 2e-4,
              lr_d: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), n_critic: int = 1,
              gp_weight: float = 10.0, ema_decay: float | None = None,
              augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
              snapshot_every: int = 0, n_snapshot: int = 64, seed: int = 0,
              device: str | torch.device | None = None, progress: bool = True) -> GANHistory:
    """Train the pair (G, D) for ``steps`` generator steps; returns a :class:`GANHistory`.

    G: a module with ``latent_dim`` and ``sample_z(n, generator, device)`` (the classes above).
    D: returns logits/scores (B,). data: real samples (N, ...), in the range G outputs
    ([-1, 1] for images). loss: "minimax", "nonsaturating" or "wgan-gp" (a Wasserstein critic
    with gradient penalty weight ``gp_weight``). n_critic: discriminator steps per generator
    step (5 is usual for WGAN-GP). lr_g, lr_d: two time-scales (TTUR: e.g. lr_d = 4e-4 >
    lr_g = 1e-4). ema_decay: also keep an EMA of G's weights and sample with it.
    augment: a differentiable augmentation applied to real *and* fake images before D sees them
    (e.g. :func:`random_translate`; "DiffAugment", Zhao et al., 2020): it keeps D from
    memorising a small training set.

    One generator step (the two losses below, run by :func:`gan_loop`):
        repeat n_critic times:  x ~ data, z ~ N(0, I);  D ← D − lr_d ∇_D L_D(x, G(z))
        z ~ N(0, I);  G ← G − lr_g ∇_G L_G(G(z));  EMA update
    """
    from course_lib.device import get_device

    if loss not in _G_LOSSES:
        raise ValueError(f"loss must be one of {tuple(_G_LOSSES)}, got {loss!r}")
    if not isinstance(data, torch.Tensor) or len(data) < batch_size:
        raise ValueError(f"data must be a tensor of real samples (N, ...) with N >= batch_size "
                         f"= {batch_size}; stack a dataset first, e.g. course_lib.data.stack_images(ds)")
    for value, name in ((steps, "steps"), (n_critic, "n_critic"), (batch_size, "batch_size")):
        _positive_int(value, name)
    device = get_device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    G.to(device).train()
    D.to(device).train()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas)
    fixed_z = G.sample_z(n_snapshot, generator=g, device=device)
    augment = augment if augment is not None else (lambda x: x)
    frames = []

    def d_loss(real: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        real = real.to(device)
        with torch.no_grad():
            fake = G(G.sample_z(batch_size, generator=g, device=device))
        return _losses(loss, D, augment(real), augment(fake), gp_weight)

    def g_loss(_: torch.Tensor) -> torch.Tensor:
        fake = G(G.sample_z(batch_size, generator=g, device=device))   # fresh noise
        return _G_LOSSES[loss](D(augment(fake)))

    def snapshot(step: int, history: GANHistory) -> None:
        if not snapshot_every or (step % snapshot_every and step != 1):
            return
        sampler = history.generator
        was_training = sampler.training
        sampler.eval()
        with torch.no_grad():
            frames.append(sampler(fixed_z).cpu())
        sampler.train(was_training)
        history.snapshot_steps.append(step)

    history = gan_loop(d_loss, g_loss, _batches(data, batch_size, g), opt_d, opt_g, steps=steps,
                       n_critic=n_critic, G=G, ema_decay=ema_decay, on_step=snapshot,
                       desc=f"GAN ({loss})", progress=progress)
    history.d_loss, history.g_loss = history.curves["D loss"], history.curves["G loss"]
    history.gp = history.curves["gp"]
    G.eval()
    D.eval()
    history.snapshots = torch.stack(frames) if frames else None
    history.generator = history.generator.eval()
    return history


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between noise vectors (Phase 3 · 02; used again in 03).

        ω = arccos(â · b̂),   slerp(a, b; t) = sin((1 − t) ω) / sin ω · a + sin(t ω) / sin ω · b

    a, b: (..., D); t: broadcastable to (..., 1), e.g. (B, 1) for one t per row, or
    (T, 1, 1) with a, b (1, B, D) for a whole path (T, B, D). Unlike a straight line, the path
    keeps |z| near the typical norm √D of z ~ N(0, I), where the generator was trained.
    """
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have the same last dimension D, got {tuple(a.shape)} and {tuple(b.shape)}")
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))  # (..., 1)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def random_translate(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift] along each
    axis, filling with the border value. x: (B, C, H, W) → (B, C, H, W). Differentiable in x
    (it only moves pixels), so gradients flow back into the generator through it.
    """
    if x.dim() != 4:
        raise ValueError(f"random_translate expects images (B, C, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2)).to(x.device)   # drawn on the CPU, then moved
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")          # (B, C, H + 2m, W + 2m)
    rows = (torch.arange(h, device=x.device)[None, :] + max_shift + shift[:, :1])  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] + max_shift + shift[:, 1:])  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# measuring a 2-D toy GAN
# ---------------------------------------------------------------------------------------------

def mode_coverage(samples: torch.Tensor, centres: torch.Tensor, std: float = 0.1,
                  within: float = 3.0, min_fraction: float | None = None) -> dict:
    """How many modes of a Gaussian mixture do generated 2-D points cover?

    samples: (N, 2); centres: (K, 2); std: the mixture components' standard deviation.
    A sample is *high quality* when it lies within ``within`` · std of its nearest centre;
    a mode is *covered* when at least ``min_fraction`` of the samples (default: a quarter of
    its fair share, 1 / (4K)) are high-quality samples of it. Returns
    ``{"modes": covered count, "high_quality": fraction, "counts": per-mode counts}``.
    """
    if samples.dim() != 2 or centres.dim() != 2 or samples.shape[1] != centres.shape[1]:
        raise ValueError(f"samples (N, D) and centres (K, D) must share D; got "
                         f"{tuple(samples.shape)} and {tuple(centres.shape)}")
    k = len(centres)
    min_fraction = 1 / (4 * k) if min_fraction is None else min_fraction
    dist = torch.cdist(samples.float(), centres.float())            # (N, K)
    nearest_dist, nearest = dist.min(dim=1)
    good = nearest_dist <= within * std
    counts = torch.bincount(nearest[good], minlength=k)
    return {"modes": int((counts >= min_fraction * len(samples)).sum()),
            "high_quality": good.float().mean().item(),
            "counts": counts.tolist()}
