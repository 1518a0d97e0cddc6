"""Training algorithms over masked vector environments (installed as ``maskrl.agents``).

* :class:`PPO` -- masked PPO; :class:`RecurrentPPO` -- masked PPO with an
  LSTM policy; :class:`ActorMimic` -- one multi-game student
  distilled from per-game experts (:func:`policy_regression_loss`);
  :class:`MaskedPolicy` / :func:`load_policy` -- a
  trained policy alone (inference, or a teacher);
* the trainer core every trainer shares: the base class
  :class:`OnPolicyTrainer` (the contract a trainer follows), the registry
  (:func:`register_trainer`, :func:`load_trainer` -- any registered trainer's
  checkpoint), :mod:`maskrl.agents.trainer`, :mod:`maskrl.agents.rollout` and
  the run harness :mod:`maskrl.agents.runner` (see ``docs/trainers.md``);
* :func:`build_actor_critic` -- the default network for a pair of spaces;
* masked DQN building blocks (:mod:`maskrl.agents.dqn`): :func:`dqn_target`,
  :func:`masked_epsilon_greedy`, :func:`masked_argmax`.
"""

from maskrl.agents.base import OnPolicyTrainer
from maskrl.agents.config import PRESETS, DQNConfig, PPOConfig
from maskrl.agents.dqn import dqn_target, masked_argmax, masked_epsilon_greedy
from maskrl.agents.dqn_trainer import DQN, ReplayBuffer
from maskrl.agents.evaluation import evaluate
from maskrl.agents.mimic import ActorMimic, MimicConfig, load_experts
from maskrl.agents.mimic_losses import (
    FeatureRegressionHeads,
    feature_regression_loss,
    greedy_agreement,
    policy_regression_loss,
)
from maskrl.agents.networks import build_actor_critic
from maskrl.agents.policy import MaskedPolicy, load_policy
from maskrl.agents.ppo import PPO, compute_gae, ppo_loss
from maskrl.agents.recurrent import RecurrentPPO
from maskrl.agents.registry import (
    RunContext,
    TrainerSpec,
    get_trainer,
    load_trainer,
    register_trainer,
    trainer_names,
    unregister_trainer,
)
from maskrl.agents.rollout import EpisodeStats, RolloutBuffer, collect_rollout, read_masks
from maskrl.agents.trainer import NonFiniteError, TrainerRNG, resolve_device
from maskrl.distributions import MaskedPolicyHead

__all__ = [
    "PPO",
    "RecurrentPPO",
    "ActorMimic",
    "FeatureRegressionHeads",
    "MimicConfig",
    "OnPolicyTrainer",
    "RunContext",
    "TrainerSpec",
    "get_trainer",
    "load_trainer",
    "register_trainer",
    "trainer_names",
    "unregister_trainer",
    "feature_regression_loss",
    "greedy_agreement",
    "load_experts",
    "policy_regression_loss",
    "PRESETS",
    "EpisodeStats",
    "MaskedPolicy",
    "MaskedPolicyHead",
    "NonFiniteError",
    "PPOConfig",
    "RolloutBuffer",
    "TrainerRNG",
    "build_actor_critic",
    "collect_rollout",
    "compute_gae",
    "DQN",
    "DQNConfig",
    "ReplayBuffer",
    "dqn_target",
    "evaluate",
    "load_policy",
    "masked_argmax",
    "masked_epsilon_greedy",
    "ppo_loss",
    "read_masks",
    "resolve_device",
]
