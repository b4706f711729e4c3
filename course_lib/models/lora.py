"""LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): fine-tune a frozen network through
low-rank updates of its linear layers, Phase 4b.

    y = W x + b + (alpha / r) * B A x          W (out, in) frozen; A (r, in), B (out, r) trained

- A starts random (Kaiming-uniform, as `peft`), B starts at zero: at step 0, B A = 0 and the adapted
  network equals the base exactly; the first gradient reaches B (dL/dB = (dL/dy) (A x)^T != 0).
- alpha / r scales the update, so that changing the rank r does not change the size of the first
  steps (the paper: "we simply set alpha to the first r we try and do not tune it").
- merge: W <- W + (alpha / r) B A, after which the layer costs what the base costs; unmerge undoes it.
- Parameters per adapted layer: r (in + out), against in * out for the full matrix.

`peft` names: ``LoraConfig(r=, lora_alpha=, target_modules=)``, its layers' ``lora_A`` / ``lora_B``
(Linear layers holding our A and B), ``merge_and_unload``. Adapter files are safetensors with the
keys ``<module path>.lora_A.weight`` / ``.lora_B.weight``, the keys `diffusers` LoRA files use too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["LoRALinear", "attention_linears", "inject_lora", "lora_layers", "lora_state_dict", "save_lora",
           "load_lora", "merge_lora", "unmerge_lora"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: y = base(x) + (alpha / r) B A x.

    x (..., in) -> (..., out). ``rank`` r >= 1; ``alpha`` defaults to r (scaling 1).
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or not 1 <= rank <= min(base.in_features, base.out_features):
            raise ValueError(f"rank must be an int in 1..{min(base.in_features, base.out_features)}, got {rank!r}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))                  # what nn.Linear and peft do
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.merged = False

    def delta(self) -> Tensor:
        """(alpha / r) B A, the (out, in) update of W."""
        return self.scaling * self.B @ self.A

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scaling * (x @ self.A.T) @ self.B.T                # (alpha / r) B (A x)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"


def attention_linears(name: str, module: nn.Module) -> bool:
    """The default targets: the projections of the U-Net's attention blocks (self-attention ``qkv``,
    ``out``; cross-attention ``q``, ``kv``, ``cross_out``), as Stable Diffusion LoRAs target
    ``to_q``, ``to_k``, ``to_v``, ``to_out``."""
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ("qkv", "out", "q", "kv", "cross_out")


def inject_lora(model: nn.Module, rank: int = 4, alpha: float | None = None,
                target: Callable[[str, nn.Module], bool] = attention_linears) -> list[str]:
    """Freeze ``model`` and replace every Linear that ``target(name, module)`` picks by a LoRALinear
    (in place). Returns the names replaced; only the A and B matrices are left trainable."""
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if n and target(n, m)]
    if not names:
        raise ValueError("inject_lora: the target picked no layer of this model")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters only: ``{"<path>.lora_A.weight": A (r, in), "<path>.lora_B.weight": B (out, r)}``."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = layer.A.detach().cpu().contiguous()
        out[f"{name}.lora_B.weight"] = layer.B.detach().cpu().contiguous()
    return out


def save_lora(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters as safetensors (rank and alpha in its metadata); returns the path."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("save_lora: this model has no LoRA layers (call inject_lora first)")
    first = next(iter(layers.values()))
    path = Path(path)
    save_file(lora_state_dict(model), str(path),
              metadata={"rank": str(first.rank), "alpha": str(first.alpha), "targets": json.dumps(list(layers))})
    return path


def load_lora(model: nn.Module, path: str | Path) -> list[str]:
    """Inject LoRA layers where the file has adapters (if they are not there yet) and load A and B."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    targets = json.loads(meta["targets"])
    if not lora_layers(model):
        wanted = set(targets)
        inject_lora(model, int(meta["rank"]), float(meta["alpha"]), target=lambda n, m: n in wanted)
    layers = lora_layers(model)
    missing = [t for t in targets if t not in layers]
    if missing:
        raise ValueError(f"load_lora: the model has no layer {missing[0]!r} that the file adapts")
    with torch.no_grad():
        for name in targets:
            layers[name].A.copy_(tensors[f"{name}.lora_A.weight"])
            layers[name].B.copy_(tensors[f"{name}.lora_B.weight"])
    return targets


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()
