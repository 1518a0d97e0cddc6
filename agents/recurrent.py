"""Masked recurrent PPO: an LSTM between the encoder and the heads, masks on every logit.

:class:`RecurrentPPO` is :class:`~maskrl.agents.PPO` with a
:class:`~maskrl.networks.RecurrentActorCritic` and the trainer hooks of a
per-env policy state (``docs/trainers.md``):

* acting (:meth:`RecurrentPPO.act`): one LSTM step per env step; the shared
  rollout (:func:`~maskrl.agents.rollout.collect_rollout`) keeps each env's
  ``(h, c)`` at the start of the rollout in ``buffer.policy_state`` and zeroes
  the state of an env whose episode ended;
* the update (:meth:`RecurrentPPO.update`): minibatches of *envs*, each
  replayed over the whole rollout from its stored start state, the state zeroed
  before every step that begins an episode, so the first epoch recomputes the
  rollout's own log-probabilities (ratio 1). Every recomputed log-probability
  and entropy uses the mask stored with its step. The loss is PPO's
  (:func:`~maskrl.agents.ppo.ppo_loss`), the advantages PPO's GAE, the loop
  :func:`~maskrl.agents.trainer.optimize_minibatches`.

Build it with ``RecurrentPPO(env, PPOConfig(recurrent=True, lstm_hidden=128))``
or ``train.py ppo --recurrent [--lstm-hidden N]``; ``PPO(env,
PPOConfig(recurrent=True))`` is refused (``PPO`` is feedforward), and
``PPO.load`` of a recurrent checkpoint gives a :class:`RecurrentPPO`.
Checkpoints have PPO's format; their config records ``recurrent`` and
``lstm_hidden``, their ``network_kwargs`` the LSTM's size, so
:func:`~maskrl.agents.load_policy` rebuilds the recurrent policy (act with
:meth:`~maskrl.agents.MaskedPolicy.predict_recurrent`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from maskrl.agents.config import DEFAULT_LSTM_HIDDEN, PPOConfig
from maskrl.agents.distributed import DataParallel
from maskrl.agents.ppo import PPO, compute_gae, ppo_loss
from maskrl.agents.rollout import (
    Obs,
    PolicyState,
    RolloutBuffer,
    index_obs,
    select_state_rows,
)
from maskrl.agents.trainer import optimize_minibatches, trainable_parameters

__all__ = ["RecurrentPPO", "episode_starts"]


def episode_starts(terminated: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """``[T, N]`` bool: step ``t`` of env ``i`` begins an episode (its state was zeroed before it).

    Step 0 never does within a rollout: the rollout's start state already
    holds any reset (it was zeroed when the previous rollout's episode ended).
    """
    done = (terminated + truncated) > 0
    starts = torch.zeros_like(done)
    starts[1:] = done[:-1]
    return starts


class _Precomputed:
    """Stands in for the network in :func:`ppo_loss`: the logits and values of a replay."""

    def __init__(self, logits: torch.Tensor, values: torch.Tensor) -> None:
        self.logits, self.values = logits, values

    def __call__(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits, self.values


class RecurrentPPO(PPO):
    """Masked PPO with an LSTM policy (see the module docstring).

    Args as :class:`~maskrl.agents.PPO`. ``config.recurrent`` must be True (the
    default config here is ``PPOConfig(recurrent=True)``); ``config.lstm_hidden``
    None means :data:`~maskrl.agents.config.DEFAULT_LSTM_HIDDEN` units (the
    agent's config records the number). A custom ``network`` must be a
    :class:`~maskrl.networks.RecurrentActorCritic`.

    Acting outside training carries the state explicitly::

        agent = RecurrentPPO("maskrl/Recall-v0", PPOConfig(recurrent=True))
        agent.learn(50_000)
        state = None  # the start of an episode
        action, state = agent.predict_recurrent(obs, info["action_mask"], state)

    Raises:
        ValueError: ``config.recurrent`` False, a data-parallel rank (recurrent
            PPO runs in one process), a network that is not recurrent, and
            what :class:`~maskrl.agents.PPO` refuses.
    """

    _recurrent = True

    def __init__(
        self,
        env: Any,
        config: PPOConfig | None = None,
        network: nn.Module | None = None,
        *,
        observation_space: Any = None,
        action_space: Any = None,
        obs_layout: str | None = None,
        network_kwargs: dict[str, Any] | None = None,
        data_parallel: DataParallel | None = None,
    ) -> None:
        config = config or PPOConfig(recurrent=True)
        if not config.recurrent:
            raise ValueError(
                "RecurrentPPO needs config.recurrent=True (PPOConfig(recurrent=True)); "
                "feedforward PPO is maskrl.agents.PPO"
            )
        if data_parallel is not None:
            raise ValueError(
                "recurrent PPO (--recurrent) runs in one process, not as a rank of a torchrun job"
            )
        if config.lstm_hidden is None:  # recorded, so the checkpoint says how big it is
            config = dataclasses.replace(config, lstm_hidden=DEFAULT_LSTM_HIDDEN)
        if network is None:
            network_kwargs = {**(network_kwargs or {}), "lstm_hidden": config.lstm_hidden}
        elif not getattr(network, "is_recurrent", False):
            raise ValueError(
                "RecurrentPPO's network must be recurrent (a maskrl.networks.RecurrentActorCritic), "
                f"got {type(network).__name__}"
            )
        super().__init__(
            env, config, network,
            observation_space=observation_space, action_space=action_space,
            obs_layout=obs_layout, network_kwargs=network_kwargs, data_parallel=data_parallel,
        )  # fmt: skip

    # ------------------------------------------------------------------ acting
    @property
    def is_recurrent(self) -> bool:
        """Always True: act with :meth:`predict_recurrent` (what :func:`~maskrl.agents.evaluate` reads)."""
        return True

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros ``(h, c)`` for ``batch`` envs: the state at the start of an episode."""
        return cast(tuple[torch.Tensor, torch.Tensor], self.policy.initial_state(batch))

    def predict(self, obs: Any, action_mask: Any, deterministic: bool = False) -> np.ndarray:
        """Refused: a recurrent policy needs its state (use :meth:`predict_recurrent`)."""
        return self.policy.predict(obs, action_mask, deterministic)  # raises, naming the fix

    def predict_recurrent(
        self,
        obs: Any,
        action_mask: Any,
        state: Any = None,
        deterministic: bool = False,
        episode_start: Any = None,
    ) -> tuple[np.ndarray, Any]:
        """``(actions, next_state)``; see :meth:`maskrl.agents.MaskedPolicy.predict_recurrent`."""
        return self.policy.predict_recurrent(obs, action_mask, state, deterministic, episode_start)

    def initial_policy_state(self, num_envs: int) -> PolicyState:
        """Zeros ``(h, c)``, each ``[num_envs, lstm_hidden]``, on the training device."""
        return self.initial_state(num_envs)

    def act(
        self, obs: Obs, mask: torch.Tensor, policy_state: PolicyState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PolicyState]:
        """One LSTM step per env: ``(action, log_prob, value, next (h, c))`` under ``mask``."""
        logits, value, nxt = self.net(obs, policy_state)
        action, logp = self.head.sample(logits, mask, generator=self.rng.device_gen)
        return action, logp, value, nxt

    def value(self, obs: Obs, policy_state: PolicyState) -> torch.Tensor:
        """The value of ``obs`` after one LSTM step from ``policy_state``."""
        return cast(torch.Tensor, self.net(obs, policy_state)[1])

    # ---------------------------------------------------------------- training
    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One recurrent PPO update: epochs x minibatches of envs, each replayed over the rollout."""
        c = self.config
        T, N = c.num_steps, self.num_envs_local
        if buffer.policy_state is None:
            raise ValueError("the rollout buffer holds no policy state to replay from")
        rewards = buffer.rewards if c.reward_scale == 1.0 else buffer.rewards * c.reward_scale
        advantages, returns = compute_gae(
            rewards, buffer.values, buffer.terminated, buffer.truncated,
            buffer.final_values, buffer.next_value, c.gamma, c.gae_lambda,
        )  # fmt: skip
        starts = episode_starts(buffer.terminated, buffer.truncated)
        obs = index_obs(buffer.obs, slice(0, T))
        masks = buffer.masks[:T]
        # [T, N, 4]: old log-prob, advantage, return, old value.
        scalars = torch.stack([buffer.logprobs, advantages, returns, buffer.values], dim=2)
        net = self.net
        start_state = buffer.policy_state
        ent_coef = self.current_ent_coef()

        def loss_fn(envs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            M = T * envs.numel()
            logits, values = net.forward_sequence(  # type: ignore[operator]
                index_obs(obs, (slice(None), envs)),
                select_state_rows(start_state, envs),
                starts[:, envs],
            )
            sc = scalars[:, envs].reshape(M, 4)
            return ppo_loss(
                cast(nn.Module, _Precomputed(logits.reshape(M, -1), values.reshape(M))),
                self.head, None, masks[:, envs].reshape(M, -1),  # type: ignore[arg-type]
                buffer.actions[:, envs].reshape((M,) + self.action_shape),
                sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 3], c, ent_coef=ent_coef,
            )  # fmt: skip

        target_kl = c.target_kl
        warmup = self.in_critic_warmup()
        with trainable_parameters(net, critic_only=warmup) as params:
            out = optimize_minibatches(
                loss_fn,
                self.optimizer,
                params,
                N,  # minibatches of whole env sequences
                c.num_minibatches,
                c.num_epochs,
                c.max_grad_norm,
                self.rng.device_gen,
                self.device,
                stop_after_epoch=(
                    (lambda m: m["approx_kl"] > target_kl) if target_kl and not warmup else None
                ),
            )
        return self._update_metrics(
            out, returns.reshape(-1), buffer.values.reshape(-1), ent_coef, warmup
        )
