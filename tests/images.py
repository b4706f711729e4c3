"""Image helpers shared by the tests (importable: the tests folder is on the path)."""
import math

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of RGB images (M, 3, H, W), separable, zero padding."""
    r = math.ceil(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    x = F.conv2d(x, k, padding=(0, r), groups=3)                              # rows, then columns
    return F.conv2d(x, k.transpose(-1, -2), padding=(r, 0), groups=3)
