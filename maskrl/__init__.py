"""maskrl: reinforcement learning with action masking.

Every mask in maskrl is boolean with ``True = valid / present``.
"""

__version__ = "0.1.0"
