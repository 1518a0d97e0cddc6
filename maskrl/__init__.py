"""maskrl: reinforcement learning with action masking.

Every mask in maskrl is boolean with ``True = valid / present``.

The torch building blocks below are imported on first use (PEP 562), so that
``import maskrl.envs`` -- Gymnasium environments that need no torch -- does not
pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionPool": "maskrl.attention",
    "SelfAttentionBlock": "maskrl.attention",
    "MaskedCategorical": "maskrl.distributions",
    "MaskedMultiCategorical": "maskrl.distributions",
    "HIDDEN_GAIN": "maskrl.init",
    "POLICY_GAIN": "maskrl.init",
    "VALUE_GAIN": "maskrl.init",
    "layer_init": "maskrl.init",
    "as_bool_mask": "maskrl.masking",
    "masked_log_softmax": "maskrl.masking",
    "masked_softmax": "maskrl.masking",
    "InstanceNorm": "maskrl.norm",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # static type checkers see the real names
    # ruff: noqa: F401
    from maskrl.attention import AttentionPool, SelfAttentionBlock
    from maskrl.distributions import MaskedCategorical, MaskedMultiCategorical
    from maskrl.init import HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN, layer_init
    from maskrl.masking import as_bool_mask, masked_log_softmax, masked_softmax
    from maskrl.norm import InstanceNorm


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maskrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
