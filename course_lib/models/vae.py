"""Variational autoencoders (Kingma & Welling, 2013): an autoencoder whose code is a distribution.

    model = VAE(in_ch=1, image_size=16, latent_dim=16, width=32, levels=2)
    out = model(x)                       # x: (B, 1, 16, 16) in [0, 1]
    out["logits"], out["mu"], out["logvar"], out["z"]
    losses = elbo_loss(out["logits"], x, out["mu"], out["logvar"], beta=1.0)
    losses["loss"].backward()            # scalar: mean over the batch of  nll + beta * kl
    images = model.sample(64)            # (64, 1, 16, 16) in [0, 1], z ~ N(0, I)

The encoder q(z | x) = N(mu(x), diag exp(logvar(x))) and the decoder p(x | z) = Bernoulli(
sigmoid(logits(z))) per pixel. Training maximises the evidence lower bound (ELBO)

    log p(x) >= E_{q(z|x)}[ log p(x | z) ]  -  KL( q(z | x) || p(z) ),     p(z) = N(0, I),

i.e. minimises  loss = nll + beta · kl  with

    nll = -log p(x | z),  z = mu + sigma · eps, eps ~ N(0, I)     (one-sample estimate)
    kl  = ½ Σ_d (mu_d² + sigma_d² - log sigma_d² - 1)              (closed form)

beta = 1 is the plain VAE; beta > 1 is the beta-VAE (Higgins et al., 2017), which pushes the
code towards the prior and so towards independent ("disentangled") latent factors.

Every per-example function returns a (B,) tensor: one number per image, summed over the
pixels or the latent dimensions, so nats are comparable between image sizes.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.device import upcast
from course_lib.models.autoencoder import ConvDecoder, ConvEncoder

__all__ = ["reparameterize", "gaussian_kl", "gaussian_kl_per_dim", "bernoulli_nll",
           "gaussian_nll", "elbo_loss", "ELBOLoss", "VAE"]


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def _check_tensor(name: str, t: Any, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; "
                        f"wrap it with torch.as_tensor(...)")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}; "
                        f"use {name}.float()")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (B, D), got shape {tuple(t.shape)}")
    return t


def _check_latents(mu: Any, logvar: Any) -> None:
    _check_tensor("mu", mu, ndim=2)
    _check_tensor("logvar", logvar, ndim=2)
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape (B, D), got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}")


def _check_images(logits_name: str, logits: Any, x: Any) -> None:
    _check_tensor(logits_name, logits)
    _check_tensor("x", x)
    if logits.shape != x.shape:
        raise ValueError(f"{logits_name} and x must have the same shape, got {tuple(logits.shape)} "
                         f"and {tuple(x.shape)}")
    if logits.ndim < 2:
        raise ValueError(f"expected a batch (B, ...) with a batch dimension first, got shape "
                         f"{tuple(logits.shape)}")


# ---------------------------------------------------------------------------------------------
# the pieces of the ELBO
# ---------------------------------------------------------------------------------------------

def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    """A sample z ~ N(mu, diag exp(logvar)) written so that gradients reach mu and logvar.

    mu, logvar: (B, D); eps: (B, D) standard normal noise (drawn here when None).
    Returns z: (B, D) = mu + sigma · eps with sigma = exp(½ logvar). The randomness sits in
    eps, which does not depend on the parameters, so dz/dmu = 1 and dz/dlogvar = ½ sigma eps.
    """
    _check_latents(mu, logvar)
    if eps is None:
        eps = torch.randn(mu.shape, dtype=mu.dtype).to(mu.device)        # eps ~ N(0, I), drawn on the CPU
    elif not isinstance(eps, torch.Tensor) or eps.shape != mu.shape:
        got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"eps must be a tensor shaped like mu {tuple(mu.shape)}, got {got}")
    return mu + torch.exp(0.5 * logvar) * eps                            # z = mu + sigma · eps


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu_d, sigma_d²) || N(0, 1) ) for every latent dimension: (B, D) -> (B, D) nats.

        KL_d = ½ (mu_d² + sigma_d² - log sigma_d² - 1),    sigma_d² = exp(logvar_d)
    """
    _check_latents(mu, logvar)
    mu, logvar = upcast(mu, logvar)                      # float32 by design (autocast may give bf16)
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag exp(logvar)) || N(0, I) ) per example: mu, logvar (B, D) -> (B,) nats.

        KL = ½ Σ_d (mu_d² + exp(logvar_d) - logvar_d - 1)      (0 exactly when mu=0, logvar=0)
    """
    return gaussian_kl_per_dim(mu, logvar).sum(dim=1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) for independent Bernoulli pixels with p = sigmoid(logits): (B, ...) -> (B,).

        nll = Σ_pixels [ -x log sigmoid(l) - (1 - x) log(1 - sigmoid(l)) ]

    i.e. binary cross-entropy with logits, summed over every pixel of each image. x must lie
    in [0, 1] (grey values are allowed: the "continuous Bernoulli" normaliser is ignored, as
    in most VAE code). Computed from the logits, which is numerically stable.
    """
    _check_images("logits", logits, x)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must be images in [0, 1] for a Bernoulli likelihood, got values in "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]; rescale, e.g. (x + 1) / 2")
    bce = F.binary_cross_entropy_with_logits(*upcast(logits, x), reduction="none")  # float32 by design
    return bce.flatten(1).sum(dim=1)


def gaussian_nll(x_hat: torch.Tensor, x: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    """-log p(x | z) for independent Gaussian pixels N(x_hat, sigma²): (B, ...) -> (B,).

        nll = Σ_pixels [ (x - x_hat)² / (2 sigma²) + ½ log(2 pi sigma²) ]

    sigma: the fixed pixel noise scale (> 0); a small sigma weighs reconstruction more
    heavily against the KL term, like a beta < 1.
    """
    _check_images("x_hat", x_hat, x)
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    x, x_hat = upcast(x, x_hat)                          # float32 by design (autocast may give bf16)
    per_pixel = (x - x_hat).pow(2) / (2 * sigma ** 2) + 0.5 * math.log(2 * math.pi * sigma ** 2)
    return per_pixel.flatten(1).sum(dim=1)


def elbo_loss(recon_logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
              logvar: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """The negative ELBO with a Bernoulli decoder, averaged over the batch.

    recon_logits, x: (B, C, H, W); mu, logvar: (B, D); beta >= 0 weighs the KL term.
    Returns dict(loss=scalar, nll=(B,), kl=(B,)) with

        loss = mean_b( nll_b + beta · kl_b )       (= -ELBO per image when beta = 1)
    """
    _check_latents(mu, logvar)
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    if recon_logits.shape[0] != mu.shape[0]:
        raise ValueError(f"the batch sizes differ: recon_logits has {recon_logits.shape[0]} "
                         f"images, mu has {mu.shape[0]} codes")
    nll = bernoulli_nll(recon_logits, x)                                 # -log p(x | z)
    kl = gaussian_kl(mu, logvar)                                         # KL(q(z|x) || p(z))
    return {"loss": (nll + beta * kl).mean(), "nll": nll, "kl": kl}


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

def _images_of(batch: Any) -> torch.Tensor:
    """The images of a batch: ``x`` itself, or the first item of ``(x, y)``."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class VAE(nn.Module):
    """A convolutional VAE on :class:`ConvEncoder` / :class:`ConvDecoder`.

    in_ch: image channels (1 digits, 3 shapes); image_size: side S of the square images
    (divisible by 2**levels); latent_dim: D, the size of z; width, levels: as in
    :mod:`course_lib.models.autoencoder`; beta: the KL weight :meth:`loss` uses.

        encode   x (B, C, S, S) -> ConvEncoder -> (B, 2D) -> split -> mu (B, D), logvar (B, D)
        z        mu + exp(½ logvar) · eps                                    (B, D)
        decode   z (B, D) -> ConvDecoder(output="none") -> logits (B, C, S, S)
        p(x|z)   Bernoulli(sigmoid(logits)) per pixel; the image we show is sigmoid(logits)
    """

    def __init__(self, in_ch: int = 1, image_size: int = 16, latent_dim: int = 16,
                 width: int = 32, levels: int = 2, beta: float = 1.0):
        super().__init__()
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        self.in_ch, self.image_size, self.latent_dim, self.beta = in_ch, image_size, latent_dim, beta
        # the encoder outputs 2D numbers per image: D means and D log-variances
        self.encoder = ConvEncoder(in_ch, 2 * latent_dim, image_size, width, levels)
        self.decoder = ConvDecoder(latent_dim, in_ch, image_size, width, levels, output="none")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, S, S) in [0, 1] -> (mu, logvar), each (B, D): q(z|x) = N(mu, diag e^logvar)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D) -> logits (B, C, S, S); the pixel probabilities are sigmoid(logits)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x: (B, C, S, S) -> dict(logits (B, C, S, S), mu (B, D), logvar (B, D), z (B, D)).

        z is one reparameterised sample from q(z|x) (``eps`` fixes its noise, (B, D))."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, eps)                              # z = mu + sigma · eps
        return {"logits": self.decode(z), "mu": mu, "logvar": logvar, "z": z}

    def loss(self, batch: Any, beta: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The negative ELBO of a batch, in the form :func:`course_lib.train.fit` wants.

        batch: images (B, C, S, S) or a pair (images, labels). Returns (loss, logs) with
        loss = mean(nll + beta · kl) and logs {"nll": ..., "kl": ...} (batch means, nats per
        image); beta defaults to ``self.beta``. Because fit calls ``loss_fn(model, batch)``,
        the unbound method works directly:  ``fit(model, VAE.loss, dataset, ...)``.
        """
        x = _images_of(batch)
        out = self(x)
        losses = elbo_loss(out["logits"], x, out["mu"], out["logvar"],
                           beta=self.beta if beta is None else beta)
        return losses["loss"], {"nll": losses["nll"].mean().item(), "kl": losses["kl"].mean().item()}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, S, S) -> sigmoid(decode(mu)) (B, C, S, S) in [0, 1], the mean code's image."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """n images from the model: z ~ N(0, temperature² I), x = sigmoid(decode(z)).

        Returns (n, C, S, S) in [0, 1] (the pixel probabilities, not binary draws).
        generator: a CPU torch.Generator for reproducible codes. temperature < 1 draws codes
        nearer the prior's centre (cleaner, less varied images); 1 is the model as trained.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator)            # z ~ N(0, I), on CPU
        return torch.sigmoid(self.decode(temperature * z.to(device)))


class ELBOLoss:
    """A loss for :func:`course_lib.train.fit` with a KL warm-up: ``fit(model, ELBOLoss(...), ...)``.

        beta_t = beta · min(1, (t + 1) / warmup_steps)       t = training calls so far

    Starting with a small KL weight lets the decoder learn to use the code before the KL
    term pulls every q(z|x) onto the prior (the "posterior collapse" of Bowman et al., 2016).
    The step counter lives in this object and only counts calls made in training mode; a
    run resumed from a checkpoint needs ``start_step=`` (e.g. the step it resumes from).
    """

    def __init__(self, beta: float = 1.0, warmup_steps: int = 0, start_step: int = 0):
        if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.beta, self.warmup_steps, self.step = beta, warmup_steps, start_step

    def current_beta(self) -> float:
        """The KL weight of the next training call."""
        if self.warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, (self.step + 1) / self.warmup_steps)

    def __call__(self, model: VAE, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.current_beta()
        loss, logs = VAE.loss(model, batch, beta=beta)
        if model.training:
            self.step += 1
        return loss, {**logs, "beta": beta}
