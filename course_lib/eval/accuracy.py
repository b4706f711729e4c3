"""What the judge sees in generated images: "did it draw what I asked?" and the Inception Score.

    attribute_accuracy(images, attrs)   # shapes: right shape / colour / position?
    class_report(images, labels)        # digits: recognisable, confident, every class present?
    inception_score(images, judge="digits")   # exp(E_x KL(p(y|x) || p(y))): confident and varied?

The pieces are public so a notebook can take them apart: ``class_probabilities`` ->
``inception_score_from_probs`` (notebook 3 · 07).

Paper: Salimans et al. 2016 (Inception Score, https://arxiv.org/abs/1606.03498).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from course_lib.eval.judges import _batches, _check_batch, _get_judge, _predict, attribute_classes

__all__ = ["attribute_accuracy", "class_report", "class_probabilities", "kl_to_marginal",
           "inception_score_from_probs", "inception_score"]

_EPS = 1e-12  # keeps log(0) out of 0 * log 0 terms; such terms contribute 0 either way


# --------------------------------------------------------------------------- judges' verdicts
def _attrs_as_tensors(attrs, keys: Sequence[str], n: int) -> dict[str, Tensor]:
    """dict of (N,) LongTensors, or a list of N dicts -> dict of (N,) LongTensors for ``keys``."""
    if isinstance(attrs, Mapping):
        missing = [k for k in keys if k not in attrs]
        if missing:
            raise KeyError(f"attribute_accuracy: attrs has no {missing}; it has {sorted(attrs)}")
        out = {k: torch.as_tensor(attrs[k]).long().flatten().cpu() for k in keys}
    elif isinstance(attrs, Sequence) and all(isinstance(a, Mapping) for a in attrs):
        missing = sorted({k for a in attrs for k in keys if k not in a})
        if missing:
            raise KeyError(f"attribute_accuracy: some attrs dicts lack {missing}")
        out = {k: torch.tensor([int(a[k]) for a in attrs], dtype=torch.long) for k in keys}
    else:
        raise TypeError("attribute_accuracy: attrs must be a dict of LongTensors (N,) or a list of "
                        f"N dicts; got {type(attrs).__name__}")
    for k, v in out.items():
        if v.shape != (n,):
            raise ValueError(f"attribute_accuracy: attrs[{k!r}] has {v.numel()} labels for {n} images")
    return out


def attribute_accuracy(images: Tensor, attrs, judge="shapes",
                       keys: Sequence[str] = ("shape", "colour", "position"),
                       batch_size: int = 256, device=None, min_confidence: float | None = None) -> dict[str, float]:
    """Does each image show the requested attributes? images (N, 3, H, W) in [0, 1].

    ``attrs``: the requested attributes, a dict of (N,) LongTensors as in
    ``render_shapes(...).attrs`` (or a list of N dicts). Returns the accuracy of each key in
    ``keys`` plus ``"all"``: the fraction of images with every listed key right at once.
    A shape verdict counts only at shape confidence >= ``min_confidence`` (below it the judge
    abstains and the shape counts as wrong); None means the judge's own bar
    (``judge.min_confidence`` of a calibrated judge, none for the old ``"shapes"`` judge).
    """
    j = _get_judge(judge, device)
    classes = attribute_classes(j)
    if not classes:
        raise TypeError("attribute_accuracy needs a judge of several attributes such as 'shapes_silhouette'")
    keys = tuple(keys)
    unknown = [k for k in keys if k not in classes]
    if not keys or unknown:
        raise ValueError(f"attribute_accuracy: keys must be among the judge's attributes "
                         f"{list(classes)}; got {list(keys)}")
    images = _check_batch(images, j, "attribute_accuracy")
    wanted = _attrs_as_tensors(attrs, keys, images.shape[0])
    for k in keys:
        k_max = classes[k]
        if wanted[k].min() < 0 or wanted[k].max() >= k_max:
            raise ValueError(f"attribute_accuracy: attrs[{k!r}] must lie in 0..{k_max - 1}; "
                             f"got values {wanted[k].min().item()}..{wanted[k].max().item()}")
    predicted, confidence = _predict(j, images, batch_size)
    correct = {k: predicted[k] == wanted[k] for k in keys}
    bar = getattr(j, "min_confidence", None) if min_confidence is None else min_confidence
    if "shape" in correct and bar:
        correct["shape"] = correct["shape"] & (confidence["shape"] >= bar)
    result = {k: c.float().mean().item() for k, c in correct.items()}
    result["all"] = torch.stack(list(correct.values())).all(dim=0).float().mean().item()
    return result


def class_report(images: Tensor, labels=None, judge="digits", min_confidence: float = 0.9,
                 key: str = "shape", batch_size: int = 256, device=None) -> dict:
    """What the judge sees in a batch of generated images (N, C, H, W) in [0, 1].

    Returns a dict with
    - ``"recognised"``: fraction of images classified with confidence >= min_confidence,
    - ``"mean_confidence"``, ``"class_counts"`` and ``"class_fraction"`` (predicted classes,
      over all N images), ``"min_class_fraction"`` (is every class drawn?),
    - when ``labels`` (N,) are the requested classes: ``"accuracy"`` and
      ``"per_class_accuracy"`` (None for a class never requested).
    For a multi-head judge (``"shapes"``) ``key`` picks the head.

    A usual bar: ``recognised >= 0.8`` and ``min_class_fraction >= 0.05``.
    """
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"class_report: min_confidence must be in [0, 1]; got {min_confidence}")
    j = _get_judge(judge, device)
    images = _check_batch(images, j, "class_report")
    predicted, confidence = _predict(j, images, batch_size)
    if isinstance(predicted, Mapping):
        if key not in predicted:
            raise ValueError(f"class_report: key must be one of {list(predicted)}; got {key!r}")
        predicted, confidence = predicted[key], confidence[key]
        num_classes = j.heads[key].out_features
    else:
        num_classes = j.num_classes
    n = images.shape[0]
    counts = torch.bincount(predicted, minlength=num_classes)
    report = {"n": n,
              "recognised": (confidence >= min_confidence).float().mean().item(),
              "mean_confidence": confidence.mean().item(),
              "class_counts": counts.tolist(),
              "class_fraction": (counts / n).tolist(),
              "min_class_fraction": (counts.min() / n).item()}
    if labels is not None:
        labels = torch.as_tensor(labels).long().flatten().cpu()
        if labels.shape != (n,):
            raise ValueError(f"class_report: labels must have shape ({n},), one per image; "
                             f"got {tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"class_report: labels must lie in 0..{num_classes - 1}")
        right = predicted == labels
        report["accuracy"] = right.float().mean().item()
        report["per_class_accuracy"] = [right[labels == c].float().mean().item()
                                        if (labels == c).any() else None
                                        for c in range(num_classes)]
    return report


# --------------------------------------------------------------------------- Inception Score
def _as_probs(probs, who: str = "inception_score_from_probs") -> Tensor:
    """Check a (N, K) matrix of class probabilities (rows sum to 1) -> float64 CPU tensor."""
    if isinstance(probs, np.ndarray):
        probs = torch.from_numpy(probs)
    if not isinstance(probs, Tensor):
        raise TypeError(f"{who}: probs must be a tensor or array of shape (N, K); "
                        f"got {type(probs).__name__}")
    if probs.dim() != 2 or probs.shape[0] < 1 or probs.shape[1] < 2:
        raise ValueError(f"{who}: probs must have shape (N, K) with N >= 1 and K >= 2 classes; "
                         f"got {tuple(probs.shape)}")
    p = probs.detach().to("cpu", torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError(f"{who}: probs contain NaN or inf values")
    if p.min() < -1e-6 or not torch.allclose(p.sum(dim=1), torch.ones(p.shape[0], dtype=p.dtype),
                                             atol=1e-4):
        raise ValueError(f"{who}: each row of probs must be a probability vector (non-negative, "
                         "summing to 1); got logits? pass logits.softmax(dim=1)")
    return p.clamp(min=0)


def kl_to_marginal(probs) -> Tensor:
    """(N, K) class probabilities p(y|x_i) -> (N,) KL( p(y|x_i) || p(y) ), in nats.

    p(y) = (1/N) sum_i p(y|x_i) is the marginal over the set itself.
    KL(p || q) = sum_y p(y) (log p(y) - log q(y)).
    """
    p = _as_probs(probs, "kl_to_marginal")
    marginal = p.mean(dim=0, keepdim=True)                                   # p(y): (1, K)
    return (p * ((p + _EPS).log() - (marginal + _EPS).log())).sum(dim=1)    # (N,)


def inception_score_from_probs(probs, splits: int = 1) -> tuple[float, float]:
    """Inception Score from class probabilities (N, K); returns (mean, std) over ``splits``.

        IS = exp( E_x KL( p(y|x) || p(y) ) )

    It lies between 1 (every image gets the same prediction) and K (every image is
    classified with certainty, and the classes are used equally often). As in Salimans et
    al. 2016 the N rows are cut into ``splits`` consecutive parts, the score is computed
    on each (with that part's own marginal p(y)) and the mean and (population) std are
    returned; splits=1 gives std 0.
    """
    p = _as_probs(probs)
    if not isinstance(splits, int) or not 1 <= splits <= p.shape[0]:
        raise ValueError(f"inception_score: splits must be an int from 1 to N = {p.shape[0]}; "
                         f"got {splits!r}")
    scores = [kl_to_marginal(part).mean().exp().item()                      # exp(E_x KL)
              for part in torch.tensor_split(p, splits)]
    return float(np.mean(scores)), float(np.std(scores))


@torch.no_grad()
def class_probabilities(images: Tensor, judge="digits", key: str | None = None,
                        batch_size: int = 256, device=None) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, K) the judge's softmax class probabilities (CPU).

    ``key`` picks the head of a multi-head judge ("shapes": "shape", "colour", ...;
    default "shape"). The judge should be in eval mode (``load_judge`` returns it so).
    """
    j = _get_judge(judge, device)
    if not hasattr(j, "logits"):
        raise TypeError("class_probabilities needs a judge with .logits(x) (a classifier), "
                        f"got {type(j).__name__}")
    images = _check_batch(images, j, "class_probabilities")
    parts = []
    for b in _batches(images, batch_size):
        logits = j.logits(b)
        if isinstance(logits, Mapping):
            key = "shape" if key is None else key
            if key not in logits:
                raise ValueError(f"class_probabilities: key must be one of {list(logits)}; "
                                 f"got {key!r}")
            logits = logits[key]
        parts.append(logits.float().softmax(dim=1).cpu())
    return torch.cat(parts)


def inception_score(images: Tensor, judge="digits", splits: int = 10, key: str | None = None,
                    batch_size: int = 256, device=None) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) of images (N, C, H, W) in [0, 1].

    Our judge plays Inception-v3's part: its class probabilities p(y|x) go into
    :func:`inception_score_from_probs`. Higher is better, at most the judge's number of
    classes (10 for digits). It never looks at real images: it cannot see whether the
    images look like the *data*, only whether the judge is sure and the classes are varied.
    """
    probs = class_probabilities(images, judge, key=key, batch_size=batch_size, device=device)
    if probs.shape[0] < splits:
        raise ValueError(f"inception_score: {probs.shape[0]} images cannot be cut into "
                         f"splits={splits} parts; pass fewer splits")
    return inception_score_from_probs(probs, splits=splits)
