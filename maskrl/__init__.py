"""maskrl: reinforcement learning with action masking.

Every mask in maskrl is boolean with ``True = valid / present``.
"""

from maskrl.attention import AttentionPool
from maskrl.distributions import MaskedCategorical, MaskedMultiCategorical
from maskrl.init import HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN, layer_init
from maskrl.masking import as_bool_mask, masked_log_softmax, masked_softmax
from maskrl.norm import InstanceNorm

__version__ = "0.1.0"

__all__ = [
    "AttentionPool",
    "HIDDEN_GAIN",
    "InstanceNorm",
    "MaskedCategorical",
    "MaskedMultiCategorical",
    "POLICY_GAIN",
    "VALUE_GAIN",
    "__version__",
    "as_bool_mask",
    "layer_init",
    "masked_log_softmax",
    "masked_softmax",
]
