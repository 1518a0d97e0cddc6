"""Orthogonal weight initialisation with per-layer gains.

The convention (Saxe et al. 2014; the PPO implementation details of Engstrom
et al. 2020 and Huang et al. 2022):

* hidden layers: gain ``sqrt(2)`` (:data:`HIDDEN_GAIN`), which keeps the
  scale of activations through ReLU layers;
* policy head: gain ``0.01`` (:data:`POLICY_GAIN`), so the initial logits are
  close to equal and the first policy is near-uniform over the *valid*
  actions -- exploration starts unbiased, whatever the mask;
* value head: gain ``1`` (:data:`VALUE_GAIN`).

Biases start at a constant, zero by default.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

__all__ = ["HIDDEN_GAIN", "POLICY_GAIN", "VALUE_GAIN", "layer_init"]

HIDDEN_GAIN: float = math.sqrt(2)
"""Gain for hidden layers followed by ReLU."""
POLICY_GAIN: float = 0.01
"""Gain for the policy (logits) head: near-uniform initial policy."""
VALUE_GAIN: float = 1.0
"""Gain for the value head."""

LayerT = TypeVar("LayerT", bound=nn.Module)


def layer_init(layer: LayerT, std: float = HIDDEN_GAIN, bias_const: float = 0.0) -> LayerT:
    """Initialise ``layer.weight`` orthogonally with gain ``std`` and ``layer.bias`` to a constant.

    Works for any module with a ``weight`` of at least two dimensions
    (``nn.Linear``, ``nn.Conv1d/2d/3d``, ...). A conv weight
    ``[out, in, *kernel]`` is orthogonal as the matrix ``[out, in * prod(kernel)]``:
    its rows are orthogonal with norm ``std`` when ``out <= in * prod(kernel)``,
    otherwise its columns are.

    Args:
        layer: The module to initialise, in place.
        std: The orthogonal gain: :data:`HIDDEN_GAIN` (``sqrt(2)``) for hidden
            layers, :data:`POLICY_GAIN` (``0.01``) for a policy head,
            :data:`VALUE_GAIN` (``1``) for a value head.
        bias_const: The value every bias entry is set to (if there is a bias).

    Returns:
        The same ``layer``, so that calls can be nested in ``nn.Sequential``.

    Raises:
        ValueError: If ``layer`` has no weight tensor of at least two dimensions.

    Example:
        >>> head = layer_init(nn.Linear(64, 6), std=POLICY_GAIN)
        >>> bool((head.bias == 0).all())
        True
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(
            f"layer_init needs a layer with a weight of at least 2 dimensions, got {type(layer).__name__}"
        )
    nn.init.orthogonal_(weight, gain=std)
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        nn.init.constant_(bias, bias_const)
    return layer
