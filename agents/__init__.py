"""Training algorithms over masked vector environments (installed as ``maskrl.agents``)."""

from maskrl.agents.config import PPOConfig
from maskrl.agents.evaluate import evaluate
from maskrl.agents.networks import build_actor_critic
from maskrl.agents.ppo import PPO, MaskedPolicyHead, compute_gae, ppo_loss, resolve_device
from maskrl.agents.rollout import EpisodeStats, RolloutBuffer, collect_rollout, read_masks

__all__ = [
    "PPO",
    "EpisodeStats",
    "MaskedPolicyHead",
    "PPOConfig",
    "RolloutBuffer",
    "collect_rollout",
    "compute_gae",
    "build_actor_critic",
    "evaluate",
    "ppo_loss",
    "read_masks",
    "resolve_device",
]
