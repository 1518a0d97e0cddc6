"""Stable-Baselines3 / sb3-contrib integration: maskrl encoders as features extractors.

Use maskrl's networks inside sb3-contrib's ``MaskablePPO`` with ``policy_kwargs``::

    from sb3_contrib import MaskablePPO
    from maskrl.agents.sb3 import MinAtarFeatures

    model = MaskablePPO(
        "CnnPolicy", env,
        policy_kwargs=dict(features_extractor_class=MinAtarFeatures,
                           features_extractor_kwargs=dict(features_dim=128),
                           net_arch=[], normalize_images=False),
    )

maskrl's envs answer ``action_masks()``, so ``MaskablePPO`` needs nothing
else. Importing this module imports Stable-Baselines3; nothing else in maskrl
does.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from maskrl.networks import SET_ITEM_KEYS, MinAtarCNN, SetEncoder

__all__ = ["MinAtarFeatures", "SetFeatures"]


class MinAtarFeatures(BaseFeaturesExtractor):
    """:class:`maskrl.networks.MinAtarCNN` (16 3x3 filters, then ``features_dim`` units).

    For ``Box(C, H, W)`` grid observations such as maskrl's MinAtar envs.
    """

    def __init__(
        self, observation_space: spaces.Box, features_dim: int = 128, filters: int = 16
    ) -> None:
        if len(observation_space.shape) != 3:
            raise ValueError(
                f"MinAtarFeatures needs (C, H, W) observations, got shape {observation_space.shape}"
            )
        super().__init__(observation_space, features_dim)
        c, h, w = observation_space.shape
        self.cnn = MinAtarCNN(c, h, w, filters=filters, hidden=features_dim)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.cnn(observations)


class SetFeatures(BaseFeaturesExtractor):
    """Attention-pooled :class:`maskrl.networks.SetEncoder` for ``Dict`` set observations.

    Expects keys ``"item_features"`` (or ``"items"``) ``(N, F)`` and ``"item_mask"`` ``(N,)`` (1 = present);
    every other key is flattened into the global context (e.g. a knapsack's
    remaining capacity). Padded items never influence the features.
    """

    def __init__(
        self, observation_space: spaces.Dict, hidden: int = 64, pool: str = "additive"
    ) -> None:
        keys = set(observation_space.spaces)
        items_key = next((k for k in SET_ITEM_KEYS if k in keys), None)
        if items_key is None or "item_mask" not in keys:
            raise ValueError(
                f"SetFeatures needs 'item_features' and 'item_mask' keys, got {sorted(keys)}"
            )
        ctx_keys = tuple(sorted(keys - {items_key, "item_mask"}))
        ctx_dim = sum(int(torch.tensor(observation_space[k].shape).prod()) for k in ctx_keys)
        item_shape = observation_space[items_key].shape
        assert item_shape is not None
        item_dim = int(item_shape[-1])
        super().__init__(observation_space, hidden + ctx_dim)
        self.ctx_keys, self.items_key = ctx_keys, items_key
        self.encoder = SetEncoder(item_dim, ctx_dim, hidden, pool)

    def forward(self, observations: dict[str, Any]) -> torch.Tensor:
        ctx = (
            torch.cat([observations[k].float().flatten(1) for k in self.ctx_keys], dim=-1)
            if self.ctx_keys
            else None
        )
        return self.encoder(observations[self.items_key], observations["item_mask"] > 0.5, ctx)[1]
