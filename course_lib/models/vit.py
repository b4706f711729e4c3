"""The vision transformer (ViT): an image read as a sentence of patches.

    model = ViT(image_size=32, patch_size=4, in_ch=3, dim=64, depth=4, num_heads=4,
                heads={"shape": 5, "colour": 6})
    logits = model(x)                  # x: (B, 3, 32, 32) -> {"shape": (B, 5), "colour": (B, 6)}
    maps = model.attention_maps(x)     # depth x (B, H, T, T), T = 1 + (32 / 4)² = 65 tokens

The pipeline (Dosovitskiy et al., 2020):

1. **Patches.** Cut the (C, S, S) image into N = (S/p)² squares of p x p pixels and flatten
   each into a vector of C·p² numbers (:func:`patchify`; row-major order, so patch n sits at
   row n // (S/p), column n % (S/p)).
2. **Patch embedding.** One shared linear map sends each patch vector to ``dim`` numbers. A
   convolution with kernel = stride = p computes exactly the same thing (:class:`PatchEmbed`).
3. **CLS token and positions.** Prepend a learned ``[CLS]`` vector (it has no pixels of its
   own; it gathers a summary of the image through attention) and add a learned position
   vector to every token: (B, 1 + N, dim).
4. **Transformer.** A stack of pre-LN :class:`~course_lib.nn.attention.TransformerBlock`\\ s,
   then a final LayerNorm.
5. **Heads.** A linear classifier reads the CLS token; with ``heads={"shape": 5, ...}`` one
   linear head per attribute reads the same CLS token (multi-task).

:func:`attention_rollout` (Abnar & Zuidema, 2020) multiplies the attention of all layers
through the residual connections, and :func:`cls_attention` turns the CLS row of an attention
map into a (grid x grid) picture to lay over the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.nn.attention import TransformerBlock

__all__ = ["patchify", "unpatchify", "PatchEmbed", "ViT", "attention_rollout", "cls_attention"]


def _check_patching(image_size: int, patch_size: int) -> None:
    for name, value in (("image_size", image_size), ("patch_size", patch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if image_size % patch_size:
        divisors = [p for p in range(1, image_size + 1) if image_size % p == 0]
        raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}; "
                         f"the patches must tile the image exactly (pick one of {divisors})")


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened non-overlapping patches.

    x: (B, C, H, W) with H, W divisible by p = patch_size  ->  (B, N, C·p·p), N = (H/p)·(W/p).
    Patches are in row-major order; inside a patch the numbers are ordered (channel, row,
    column), the order of a ``Conv2d(C, dim, p, stride=p)`` weight flattened to (dim, C·p·p).
    """
    if x.ndim != 4:
        raise ValueError(f"patchify expects images (B, C, H, W), got shape {tuple(x.shape)}")
    _check_patching(x.shape[-2], patch_size)
    _check_patching(x.shape[-1], patch_size)
    return F.unfold(x, kernel_size=patch_size, stride=patch_size).transpose(1, 2)  # (B, N, C·p²)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size: int) -> torch.Tensor:
    """The inverse of :func:`patchify` for square images.

    patches: (B, N, C·p·p) with N = (image_size / p)²  ->  (B, C, image_size, image_size).
    """
    _check_patching(image_size, patch_size)
    B, N, D = patches.shape
    grid = image_size // patch_size
    if N != grid * grid or D % (patch_size * patch_size):
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not make a {image_size} x "
                         f"{image_size} image of {patch_size} x {patch_size} patches "
                         f"(expected (B, {grid * grid}, C·{patch_size * patch_size}))")
    return F.fold(patches.transpose(1, 2), output_size=image_size, kernel_size=patch_size,
                  stride=patch_size)


class PatchEmbed(nn.Module):
    """Images to patch tokens: ``(B, C, S, S) -> (B, N, dim)``, N = (S / p)².

    token_n = W · patch_n + b with one (dim, C·p²) matrix W shared by all patches. It is stored
    as the weight of ``Conv2d(C, dim, kernel_size=p, stride=p)``; ``method="conv"`` runs that
    convolution, ``method="unfold"`` runs :func:`patchify` and a matrix product with the same
    weights. The two give the same tokens (up to float rounding).
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_ch: int = 3, dim: int = 64,
                 method: str = "conv"):
        super().__init__()
        _check_patching(image_size, patch_size)
        if method not in ("conv", "unfold"):
            raise ValueError(f"method must be 'conv' or 'unfold', got {method!r}")
        self.image_size, self.patch_size, self.in_ch, self.method = image_size, patch_size, in_ch, method
        self.grid = image_size // patch_size              # patches per side
        self.num_patches = self.grid ** 2                 # N
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, S, S) -> tokens (B, N, dim)."""
        expected = (self.in_ch, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"PatchEmbed expects images (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        if self.method == "conv":
            return self.proj(x).flatten(2).transpose(1, 2)             # (B, dim, g, g) -> (B, N, dim)
        weight = self.proj.weight.flatten(1)                           # (dim, C·p²)
        return patchify(x, self.patch_size) @ weight.T + self.proj.bias  # W·patch + b

    def extra_repr(self) -> str:
        return f"grid={self.grid}x{self.grid}, num_patches={self.num_patches}, method={self.method!r}"


class ViT(nn.Module):
    """A vision transformer classifier.

    Args:
        image_size, patch_size, in_ch: square images (B, in_ch, image_size, image_size) cut into
            (image_size / patch_size)² patches.
        dim, depth, num_heads, mlp_ratio, dropout: the transformer (``depth`` blocks of width
            ``dim``).
        num_classes: one head with this many classes (``forward`` returns a tensor), or
        heads: {name: classes}, one head per name (``forward`` returns a dict of tensors).
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_ch: int = 3, dim: int = 64,
                 depth: int = 4, num_heads: int = 4, num_classes: int | None = None,
                 heads: dict[str, int] | None = None, dropout: float = 0.0, mlp_ratio: float = 4.0):
        super().__init__()
        if (num_classes is None) == (heads is None):
            raise ValueError("give exactly one of num_classes=K (one head) or heads={'name': K, ...} "
                             f"(several heads); got num_classes={num_classes!r}, heads={heads!r}")
        if heads is not None and (not isinstance(heads, dict) or not heads or not all(
                isinstance(k, str) and isinstance(v, int) and v >= 1 for k, v in heads.items())):
            raise ValueError(f"heads must be a non-empty dict {{name: number of classes}}, got {heads!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.patch_embed = PatchEmbed(image_size, patch_size, in_ch, dim)
        self.num_tokens = 1 + self.patch_embed.num_patches                    # T = 1 + N
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))                  # [CLS]
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))   # one vector per position
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio=mlp_ratio,
                                                     dropout=dropout, causal=False)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.multi_head = heads is not None
        self.heads = nn.ModuleDict({name: nn.Linear(dim, k) for name, k in heads.items()}) \
            if heads is not None else None
        self.head = nn.Linear(dim, num_classes) if num_classes is not None else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's input: x (B, C, S, S) -> tokens (B, T, dim) = [CLS; patches] + positions."""
        tokens = self.patch_embed(x)                                           # (B, N, dim)
        cls = self.cls_token.expand(len(x), -1, -1)                            # (B, 1, dim)
        return self.drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)     # z₀ = [cls; E·x_p] + pos

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block and the final LayerNorm: (B, T, dim); token 0 is CLS."""
        z = self.embed(x)
        for block in self.blocks:
            z = block(z)
        return self.norm(z)

    def classify(self, cls: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The head(s) applied to the CLS features (B, dim)."""
        if self.multi_head:
            return {name: head(cls) for name, head in self.heads.items()}
        return self.head(cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """x: (B, C, S, S) -> logits (B, num_classes), or {name: (B, classes)} with ``heads``."""
        return self.classify(self.encode(x)[:, 0])

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The attention weights of every block: a list of ``depth`` tensors (B, H, T, T).

        ``maps[l][b, h, i, j]`` is how much token i attends to token j in head h of block l
        (each row sums to 1). Token 0 is CLS; token 1 + n is patch n (row-major).
        """
        z = self.embed(x)
        maps = []
        for block in self.blocks:
            z, weights = block(z, return_weights=True)
            maps.append(weights)
        return maps


def attention_rollout(maps: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into each
    output token through all layers.

    maps: list of (B, H, T, T) per layer (e.g. :meth:`ViT.attention_maps`). Each layer's heads
    are averaged, the skip connection is added as identity, and rows are renormalised:
        Â_l = (1 − r)·mean_h A_l + r·I,      R = Â_L · … · Â_2 · Â_1
    Returns R: (B, T, T); row 0 says how much of each token ended up in the CLS output.
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one attention map")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual!r}")
    B, _, T, _ = maps[0].shape
    eye = torch.eye(T, device=maps[0].device, dtype=maps[0].dtype)
    rollout = eye.expand(B, T, T)
    for weights in maps:
        a = (1 - residual) * weights.mean(dim=1) + residual * eye          # Â = (1 − r)·A + r·I
        a = a / a.sum(dim=-1, keepdim=True)                                # rows sum to 1
        rollout = a @ rollout                                              # R ← Â_l · R
    return rollout


def cls_attention(weights: torch.Tensor) -> torch.Tensor:
    """What the CLS token looks at, as a picture over the patch grid.

    weights: (B, H, T, T) one layer's attention (averaged over heads) or (B, T, T) (e.g. a
    rollout), with T = 1 + grid². Returns (B, grid, grid): the CLS row without the CLS column,
    renormalised to sum to 1 over the patches.
    """
    if weights.ndim == 4:
        weights = weights.mean(dim=1)
    if weights.ndim != 3 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"expected attention weights (B, H, T, T) or (B, T, T), got {tuple(weights.shape)}")
    n = weights.shape[-1] - 1
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise ValueError(f"T = {n + 1} tokens is not 1 CLS + a square grid of patches")
    row = weights[:, 0, 1:]                                               # (B, N): CLS -> patches
    row = row / row.sum(dim=-1, keepdim=True)
    return row.reshape(-1, grid, grid)
