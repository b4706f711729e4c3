"""The silhouette judge: the shape read from the object's outline, the way a person reads it (issue 14).

The two calibrated CNN judges agree with a person's shape on only about 60 % of the eye-read set
(generated images, read by eye; docs/judges.md): trained on renders, they call a lumpy blob a
circle and a four-pointed star a cross, where a person says "unreadable". A person looks at the
outline: does it fit one of the five shapes, and where are its corners? This judge measures
exactly that, with a handful of numbers per image, and learns the person's boundary from them. It
agrees with people more often than the CNN judges on every set of generated images read so far, so
it is what the course reads images with (``judges.SHAPES_JUDGE``)::

    judge = load_judge("shapes_silhouette")
    labels, confidences = judge.predict(images)   # (N, 3, H, W) in [0, 1], like the other judges
    labels["shape"], confidences["shape"]         # read the shape only at judge.min_confidence

How one image is read (at 32 x 32; other sizes are resized first):

1. **The object**: ShapesEval's objects (``find_objects``: connected pixels of one palette colour);
   the largest one is *the* object. Colour = its palette colour, position = the grid cell of its
   centre: exact on renders, 99.7 % on the eye-read set.
2. **Its silhouette** a(p): the object's coverage (``masks.pixel_colours``) in a W x W window
   centred on its centroid.
3. **Template fits**: for every shape k, the best soft IoU with the renderer's own shape drawn at
   every centre within 1.5 px and every half-extent r from 1.5 to 9 px::

       IoU_k = max_{centre, r} sum_p min(a(p), t(p)) / sum_p max(a(p), t(p))

   Size = small or large by the best template's r (``SIZE_SPLIT``, half-way between the renderer's 3
   and 4.5 px).
4. **The outline**: the radial profile rho(theta_j), distance from the centroid to where coverage
   falls below 0.5 at 16 angles, over its mean; the magnitudes of its first six Fourier harmonics
   (3 corners give a 3rd harmonic, 4 corners a 4th) and the phases of the 3rd and 4th (a square's
   corners point diagonally, a diamond's up and down).
5. **Softmax regression** on the standardised numbers f (35 of them, ``FEATURES``)::

       p = softmax(W (f - mu) / sigma + b)   over circle, square, triangle, cross, diamond, unreadable

   As with the calibrated judges, "unreadable" is never the answer itself: the verdict is the most
   likely shape and its confidence that shape's probability, so probability on "unreadable" lowers
   it. Below ``min_confidence`` the judge abstains. No object at all: confidence 0.

W, mu, sigma and b are fitted by ``scripts/train_silhouette_judge.py`` on the eye-read set's 400
images (both readers' shape labels) plus crisp, blurred and autoencoded renders; what that does and
how well it agrees with people on images it never saw is in docs/judges.md. Its features are not an embedding for FID:
``features`` returns the standardised numbers f for completeness only.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from course_lib.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, SIZES

__all__ = ["SilhouetteJudge", "silhouette_features", "silhouettes", "template_fits", "radial_profile",
           "FEATURES", "WINDOW", "SIZE_SPLIT"]

WINDOW = 20          # px: the window the silhouettes are compared in
NATIVE = 32          # px: images are read at this size
SIZE_SPLIT = 3.75    # px: a best-fitting half-extent at least this large reads "large"
FEATURES = ([f"iou_{k}" for k in SHAPE_KINDS] + ["margin", "area", "mean_radius", "profile_std", "one_object"]
            + [f"harmonic_{m}" for m in range(1, 7)] + ["h4_cos", "h4_sin", "h3_cos"]
            + [f"profile_{j}" for j in range(16)])


def _native(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] (or uint8) -> float (N, 3, 32, 32) on the CPU."""
    x = images.detach().cpu()
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if x.shape[-2:] != (NATIVE, NATIVE):
        shrinking = x.shape[-2] > NATIVE or x.shape[-1] > NATIVE
        x = F.interpolate(x, size=(NATIVE, NATIVE), mode="bilinear", align_corners=False,
                          antialias=shrinking).clamp(0, 1)
    return x


def silhouettes(images: Tensor) -> tuple[Tensor, list[dict | None], list[int]]:
    """(N, 3, 32, 32) in [0, 1] -> ((N, W, W) the largest object's coverage centred on its
    centroid, that object per image (``find_objects``' dict, None when there is none), the number
    of objects per image)."""
    from course_lib.eval.masks import pixel_colours
    from course_lib.eval.shapes_eval import find_objects

    colour, coverage = pixel_colours(images)
    maps, mains, counts = [], [], []
    for i in range(len(images)):
        objects, _ = find_objects(images[i], colour=colour[i].numpy(), coverage=coverage[i].numpy())
        counts.append(len(objects))
        if not objects:
            maps.append(torch.zeros(WINDOW, WINDOW))
            mains.append(None)
            continue
        o = max(objects, key=lambda o: o["area"])
        region = ndimage.binary_dilation(o["mask"].numpy(), np.ones((3, 3), bool), iterations=2)
        c = coverage[i].clamp(0, 1) * torch.from_numpy(region & (colour[i].numpy() == o["colour"]))
        ys, xs = torch.nonzero(c > 0, as_tuple=True)
        w = c[ys, xs]
        cx, cy = float((xs + 0.5) @ w / w.sum()), float((ys + 0.5) @ w / w.sum())
        ox, oy = int(round(cx - WINDOW / 2)), int(round(cy - WINDOW / 2))
        padded = F.pad(c, (WINDOW, WINDOW, WINDOW, WINDOW))
        maps.append(padded[oy + WINDOW:oy + 2 * WINDOW, ox + WINDOW:ox + 2 * WINDOW])
        mains.append(o)
    return torch.stack(maps), mains, counts


@lru_cache(maxsize=1)
def _template_bank() -> tuple[Tensor, Tensor, Tensor]:
    """(M, W * W) every grammar shape rendered at every centre (+-1.5 px, step 0.5) and half-extent
    (1.5-9 px, step 0.25) in the window; (M,) its shape index; (M,) its half-extent."""
    from course_lib.data.shapes import shape_coverage

    offsets, radii = np.arange(-1.5, 1.51, 0.5), np.arange(1.5, 9.01, 0.25)
    rows = torch.tensor([(k, WINDOW / 2 + dx, WINDOW / 2 + dy, r) for k in range(len(SHAPE_KINDS))
                         for dx, dy, r in itertools.product(offsets, offsets, radii)], dtype=torch.float32)
    kinds = rows[:, 0].long()
    return shape_coverage(kinds, rows[:, 1:3], rows[:, 3], WINDOW).flatten(1), kinds, rows[:, 3]


def template_fits(maps: Tensor) -> tuple[Tensor, Tensor]:
    """(N, W, W) silhouettes -> ((N, 5) each shape's best soft IoU, (N,) the half-extent in px of
    the best-fitting template of any shape).

    The soft IoU through the L1 distance D = sum_p |a(p) - t(p)| (min(a, t) = (a + t - |a - t|) / 2,
    max likewise with +), one ``cdist`` per batch instead of two (N, M, W * W) tensors::

        IoU = (sum a + sum t - D) / (sum a + sum t + D)
    """
    bank, kinds, radii = _template_bank()
    m = maps.flatten(1)
    fits, best_r = torch.zeros(len(maps), len(SHAPE_KINDS)), torch.zeros(len(maps))
    bank_total = bank.sum(1)                                                    # (M,)
    for s in range(0, len(m), 256):
        a = m[s:s + 256]                                                        # (B, W*W)
        total = a.sum(1, keepdim=True) + bank_total                             # (B, M)
        dist = torch.cdist(a, bank, p=1)                                        # (B, M)
        iou = (total - dist) / (total + dist).clamp(min=1e-6)
        for k in range(len(SHAPE_KINDS)):
            fits[s:s + 256, k] = iou[:, kinds == k].max(1).values
        best_r[s:s + 256] = radii[iou.argmax(1)]
    return fits, best_r


def radial_profile(maps: Tensor, angles: int = 16, steps: int = 40, r_max: float = 9.0) -> tuple[Tensor, Tensor]:
    """(N, W, W) -> ((N, angles) distance from the centroid to where coverage first falls below
    0.5, over its mean; (N,) the mean distance in px)."""
    ys, xs = torch.meshgrid(torch.arange(WINDOW) + 0.5, torch.arange(WINDOW) + 0.5, indexing="ij")
    m = maps.clamp(0, 1)
    total = m.flatten(1).sum(1).clamp(min=1e-6)
    cx, cy = (m * xs).flatten(1).sum(1) / total, (m * ys).flatten(1).sum(1) / total
    theta, r = torch.arange(angles) * 2 * math.pi / angles, torch.linspace(0, r_max, steps)
    px = cx[:, None, None] + r * torch.cos(theta)[:, None]                     # (N, angles, steps)
    py = cy[:, None, None] + r * torch.sin(theta)[:, None]
    grid = torch.stack([px / WINDOW * 2 - 1, py / WINDOW * 2 - 1], -1)
    inside = (F.grid_sample(m[:, None], grid, align_corners=False)[:, 0] >= 0.5).float()
    reach = inside.cumprod(-1).sum(-1).clamp(min=1) * (r_max / (steps - 1))   # the first step outside
    return reach / reach.mean(1, keepdim=True), reach.mean(1)


def silhouette_features(images: Tensor) -> tuple[Tensor, list[dict | None], Tensor]:
    """(N, 3, H, W) in [0, 1] -> ((N, 35) the numbers named in FEATURES, float32; the main object
    of each image (None: no object); (N,) the best template's half-extent in px at 32 x 32)."""
    maps, mains, counts = silhouettes(_native(images))
    fits, best_r = template_fits(maps)
    top = fits.sort(1, descending=True).values
    profile, reach = radial_profile(maps)
    spectrum = torch.fft.rfft(profile, dim=1)
    mag = spectrum[:, 1:7].abs() / profile.shape[1]                          # harmonics 1..6
    phase3, phase4 = spectrum[:, 3].angle(), spectrum[:, 4].angle()
    one = (torch.tensor(counts) == 1).float()
    f = torch.cat([fits, (top[:, 0] - top[:, 1])[:, None], maps.flatten(1).sum(1, keepdim=True), reach[:, None],
                   profile.std(1, keepdim=True), one[:, None], mag, (phase4.cos() * mag[:, 3])[:, None],
                   (phase4.sin() * mag[:, 3])[:, None], (phase3.cos() * mag[:, 2])[:, None], profile], dim=1)
    return f.float(), mains, best_r


class SilhouetteJudge(nn.Module):
    """Shape from the outline (softmax regression on :func:`silhouette_features`); colour, size and
    position of the largest object read exactly. The same ``predict`` as ``ShapesJudge``."""

    in_channels = 3
    kind = "silhouette"

    def __init__(self, min_confidence: float = 0.5):
        super().__init__()
        self.min_confidence = float(min_confidence)
        self.class_names = {"shape": [*SHAPE_KINDS, "unreadable"]}
        self.attributes = {"shape": len(SHAPE_KINDS) + 1, "colour": len(COLOURS), "size": len(SIZES),
                           "position": len(POSITIONS)}   # classes per attribute read, as a ShapesJudge's heads
        n = len(FEATURES)
        self.register_buffer("mean", torch.zeros(n))                 # mu
        self.register_buffer("scale", torch.ones(n))                 # sigma
        self.linear = nn.Linear(n, len(SHAPE_KINDS) + 1)             # W, b

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def config(self) -> dict:
        return {"kind": self.kind, "min_confidence": self.min_confidence}

    def _check(self, x: Tensor) -> Tensor:
        from course_lib.eval.judges import check_images

        return check_images(x, 3, who="SilhouetteJudge input")

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 35) standardised silhouette numbers (f - mu) / sigma."""
        f, _, _ = silhouette_features(self._check(x))
        return (f.to(self.device) - self.mean) / self.scale

    def logits(self, x: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) -> {"shape": (N, 6)} scores over the five shapes and "unreadable"."""
        return {"shape": self.linear(self.features(x))}

    forward = logits

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(N, 3, H, W) -> ({attribute: labels (N,)}, {attribute: confidences (N,)}).

        Shape: the most likely of the five shapes, confidence its probability (0 without an
        object). Colour, size, position: the largest object's, confidence 1 (0 without an object).
        """
        x = self._check(x)
        f, mains, best_r = silhouette_features(x)
        p = self.linear((f.to(self.device) - self.mean) / self.scale).softmax(-1)[:, :-1]
        conf, shape = p.max(-1)
        found = torch.tensor([o is not None for o in mains], device=self.device)
        colour = torch.tensor([o["colour"] if o else 0 for o in mains], device=self.device)
        position = torch.tensor([o["cell"] if o else 0 for o in mains], device=self.device)
        size = (best_r.to(self.device) >= SIZE_SPLIT).long()
        labels = {"shape": shape, "colour": colour, "size": size, "position": position}
        confidences = {"shape": conf * found, **{k: found.float() for k in ("colour", "size", "position")}}
        return labels, confidences

