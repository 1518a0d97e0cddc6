"""Instance normalisation with float32 moments and a stop-gradient on the mean."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["InstanceNorm"]


class InstanceNorm(nn.Module):
    """Normalise each channel of each sample over its spatial positions.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with ``mean`` and
    the biased ``var`` taken over the spatial dimensions of one sample and
    one channel, and a per-channel ``weight``/``bias`` when ``affine``. The
    same function as ``torch.nn.functional.instance_norm`` without running
    statistics.

    * Moments of float16/bfloat16 inputs are computed in float32 (a sum of
      many half-precision squares loses its digits or overflows at 65504);
      the output is cast back to the input dtype.
    * The mean is detached inside the variance, which leaves every gradient
      unchanged (see the comment in :meth:`forward`).

    Args:
        num_channels: ``C``, the size of dimension 1 of the input.
        eps: Added to the variance for numerical stability.
        affine: Learn a per-channel scale (init 1) and shift (init 0).

    Shapes:
        ``[B, C, H, W]`` (or more generally ``[B, C, *spatial]`` with at least
        one spatial dimension) -> same shape and dtype.

    Example:
        >>> norm = InstanceNorm(3)
        >>> y = norm(torch.randn(2, 3, 8, 8).half())
        >>> y.dtype, y.shape
        (torch.float16, torch.Size([2, 3, 8, 8]))
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``[B, C, *spatial]``; returns the same shape and dtype."""
        if x.dim() < 3 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"x must have shape [B, {self.num_channels}, H, W] (or [B, C, *spatial]), "
                f"got {tuple(x.shape)}"
            )
        compute = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(compute)
        spatial = tuple(range(2, x.dim()))
        mean = xf.mean(dim=spatial, keepdim=True)
        # Stop-gradient on the mean inside the variance: with n spatial
        # positions, d var / d mean = sum_j -2 (x_j - mean) / n = 0, because
        # deviations from the mean sum to zero. The path through the mean thus
        # contributes nothing to the gradient; detaching it changes no
        # gradient (tests check this) and skips its backward computation.
        var = (xf - mean.detach()).square().mean(dim=spatial, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            shape = (1, -1) + (1,) * len(spatial)
            y = y * self.weight.to(compute).view(shape) + self.bias.to(compute).view(shape)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
