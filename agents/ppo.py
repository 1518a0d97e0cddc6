"""Masked proximal policy optimisation over Gymnasium vector envs.

Read top to bottom, one update is: :func:`~maskrl.agents.rollout.collect_rollout`
(actions sampled under each step's action mask, masks stored with the rollout)
-> :func:`compute_gae` (bootstrapping from the final observation of truncated
episodes only) -> epochs x minibatches of :func:`ppo_loss` (log-probs and
entropy recomputed under the *stored* masks) -> log.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskrl.agents.base import (
    OnPolicyTrainer,
    local_env_seed,
    local_num_envs,
    read_trainer_checkpoint,
)
from maskrl.agents.config import PPOConfig
from maskrl.agents.distributed import DataParallel
from maskrl.agents.networks import obs_layout_of
from maskrl.agents.policy import MaskedPolicy, policy_from_checkpoint
from maskrl.agents.quantize import prepare_for_qat
from maskrl.agents.rollout import Obs, RolloutBuffer, flatten_obs, index_obs
from maskrl.agents.trainer import (
    linear_schedule,
    make_adam,
    make_training_env,
    optimize_minibatches,
    resolve_device,
    trainable_parameters,
    value_head_parameters,
)
from maskrl.distributions import MaskedPolicyHead
from maskrl.networks import MultiGameActorCritic

__all__ = ["PPO", "compute_gae", "ppo_loss"]


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with correct time-limit handling.

    All inputs are ``[T, N]`` except ``next_value`` ``[N]``, the value of the
    observation after the last step. For step ``t``:

    * the episode goes on: ``delta = r + gamma * V(s_{t+1}) - V(s_t)``;
    * it was **terminated**: ``delta = r - V(s_t)`` (no future);
    * it was **truncated** (time limit): ``delta = r + gamma * V(final_obs) - V(s_t)``,
      ``final_values[t]`` holding ``V(final_obs)`` -- the future exists but is cut
      off, so we bootstrap from it rather than treat it as an end.

    The advantage recursion ``A_t = delta_t + gamma * lambda * A_{t+1}`` stops at
    any episode end. Returns ``(advantages, returns = advantages + values)``.
    """
    T = rewards.shape[0]
    not_done = 1.0 - torch.clamp(terminated + truncated, max=1.0)
    next_values = torch.cat([values[1:], next_value.unsqueeze(0)], dim=0)
    # Every delta at once; only the recursion below is sequential.
    deltas = rewards + gamma * (not_done * next_values + truncated * final_values) - values
    decay = gamma * gae_lambda * not_done
    if deltas.device.type == "cpu":
        # On a CPU the T-step recursion is ~10x cheaper in NumPy than as T rounds
        # of tiny torch ops (in place on the tensors' memory).
        d, k = deltas.detach().numpy(), decay.detach().numpy()
        adv_np = np.empty_like(d)
        last_np = np.zeros_like(d[0])
        for t in range(T - 1, -1, -1):
            last_np = d[t] + k[t] * last_np
            adv_np[t] = last_np
        advantages = torch.from_numpy(adv_np)
    else:
        advantages = torch.empty_like(deltas)
        last = torch.zeros_like(next_value)
        for t in range(T - 1, -1, -1):
            last = deltas[t] + decay[t] * last
            advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    net: nn.Module,
    head: MaskedPolicyHead,
    obs: Obs,
    masks: torch.Tensor,
    actions: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    config: PPOConfig,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ent_coef: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO objective on one minibatch; returns ``(loss, aux)``.

    ``loss = policy_loss - ent_coef * entropy + vf_coef * value_loss`` with the
    value loss the mean squared error (Stable-Baselines3's scaling, so
    ``vf_coef`` means the same in both libraries).

    Log-probabilities and entropy use ``masks``, the masks the actions were
    sampled under, so the ratio compares like with like.

    ``normalize`` replaces the advantage normalisation over this minibatch
    (``config.norm_adv``): a data-parallel rank normalises over every rank's
    minibatch (:meth:`~maskrl.agents.distributed.DataParallel.normalize_advantages`).
    ``ent_coef`` replaces ``config.ent_coef`` (the trainer's scheduled value,
    :meth:`PPO.current_ent_coef`).
    """
    if ent_coef is None:
        ent_coef = config.ent_coef
    logits, values = net(obs)
    logp, entropy = head.evaluate(logits, masks, actions)
    log_ratio = logp - old_logprobs
    ratio = log_ratio.exp()
    if config.norm_adv and normalize is not None:
        advantages = normalize(advantages)
    elif config.norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - config.clip_coef, 1 + config.clip_coef)
    policy_loss = torch.max(pg1, pg2).mean()
    if config.clip_vloss:
        v_clipped = old_values + torch.clamp(
            values - old_values, -config.clip_coef, config.clip_coef
        )
        value_loss = torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        value_loss = ((values - returns) ** 2).mean()
    entropy_mean = entropy.mean()
    loss = policy_loss - ent_coef * entropy_mean + config.vf_coef * value_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > config.clip_coef).float().mean()
    aux = {
        "policy": policy_loss.detach(),
        "value": value_loss.detach(),
        "entropy": entropy_mean.detach(),
        "approx_kl": approx_kl,
        "clipfrac": clipfrac,
    }
    return loss, aux


class PPO(OnPolicyTrainer):
    """Masked PPO on a Gymnasium vector env whose infos carry ``action_mask``.

    Args:
        env: a Gymnasium vector env (same-step autoreset; see
            :func:`maskrl.envs.make_vec`), or a registered env id / a list of ids
            (several ids: the multi-game vector env), built with
            ``config.num_envs`` slots; ``None`` for an agent that only acts
            (then pass ``observation_space`` and ``action_space``).
        config: hyperparameters (:class:`PPOConfig`); defaults if None.
        network: your own ``nn.Module`` mapping observations to
            ``(logits [B, n], value [B])``; by default one is picked from the
            observation space (:func:`maskrl.agents.build_actor_critic`).
        network_kwargs: extra keyword arguments for the default network.
        data_parallel: this process's rank in a torchrun job
            (:class:`~maskrl.agents.distributed.DataParallel`; None: one process).
            ``config.num_envs`` is then the job's: this rank builds its share,
            seeded after the other ranks' envs, and every update averages the
            ranks' gradients.

    The agent owns its randomness: its network is initialised, its actions are
    sampled and its minibatches shuffled from generators seeded with
    ``config.seed`` (:class:`~maskrl.agents.trainer.TrainerRNG`), saved and
    restored with its checkpoint; torch's global generator is never touched.

    Example::

        from maskrl.agents import PPO, PPOConfig
        agent = PPO("maskrl/MinAtar-Breakout-v0", PPOConfig(num_envs=8))
        agent.learn(100_000)
        action = agent.predict(obs, action_mask)
    """

    #: The ``format`` of the checkpoints :meth:`save` writes.
    FORMAT = "maskrl.ppo/2"
    #: Whether the class runs a recurrent policy (:class:`~maskrl.agents.RecurrentPPO`).
    _recurrent = False

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
        config = config or PPOConfig()
        config.validate()
        if config.recurrent and not self._recurrent:
            raise ValueError(
                "config.recurrent=True: PPO is feedforward; build maskrl.agents.RecurrentPPO"
            )
        if data_parallel is not None:
            data_parallel.check_config(config)  # a whole share of envs and of minibatches
        device = resolve_device(config.device)
        num_envs = local_num_envs(config, data_parallel)
        self.env_ids: list[str] | None = None
        if isinstance(env, str | list | tuple):
            self.env_ids = [env] if isinstance(env, str) else list(env)
            # A multi-game network reads {"obs", "game_id"} even when it plays one
            # game (a one-expert Actor-Mimic student being fine-tuned).
            env = make_training_env(
                self.env_ids, num_envs, local_env_seed(config, data_parallel),
                config.env_backend, device,
                multigame=isinstance(network, MultiGameActorCritic),
                invalid_actions=config.invalid_actions, invalid_penalty=config.penalty_reward,
                flicker=config.flicker,
            )  # fmt: skip
        if env is not None:
            _check_autoreset(env)
            observation_space = env.single_observation_space
            action_space = env.single_action_space
            obs_layout = obs_layout_of(env)
            if env.num_envs != num_envs:
                share = "" if data_parallel is None else f" (this rank's share, {num_envs})"
                raise ValueError(
                    f"the vector env has {env.num_envs} envs but config.num_envs={config.num_envs}"
                    + share
                )
        if observation_space is None or action_space is None:
            raise ValueError("PPO needs an env, or observation_space and action_space")
        if network is None:
            kwargs = {"obs_layout": obs_layout or "CHW", **(network_kwargs or {})}
            if config.attention_layers:  # recorded in network_kwargs, so checkpoints rebuild it
                kwargs.setdefault("attention_layers", config.attention_layers)
                kwargs.setdefault("attention_heads", config.attention_heads)
            if config.hidden is not None:
                kwargs.setdefault("hidden", config.hidden)
            if config.conv_filters is not None:
                kwargs.setdefault("conv_filters", config.conv_filters)
            policy = MaskedPolicy.build(
                observation_space, action_space, self.env_ids, device, config.seed, **kwargs
            )
        else:
            # network_kwargs with a network: it is a default network built with them
            # (e.g. an Actor-Mimic student fine-tuned by PPO), so checkpoints rebuild it.
            policy = MaskedPolicy(
                network, observation_space, action_space, self.env_ids, network_kwargs,
                device, config.seed,
            )  # fmt: skip
        if config.qat:  # before the optimizer: learned ranges add parameters
            prepare_for_qat(policy.net, config.qat_bits, config.qat_start_after)
        if config.critic_warmup and not value_head_parameters(policy.net):
            raise ValueError(
                f"critic_warmup (--critic-warmup) trains the value head alone, and "
                f"{type(policy.net).__name__} has no 'value_head' module: set it to 0"
            )
        optimizer = make_adam(policy.net.parameters(), config.learning_rate, config.adam_eps)
        super().__init__(
            config, policy, optimizer, env, device, data_parallel,
            # penalty / none sample under all-valid masks: count from the env's reports.
            invalid_from_infos=config.invalid_actions != "mask",
        )  # fmt: skip
        self.config: PPOConfig = config
        self.observation_space, self.action_space = observation_space, action_space
        self.action_shape = self.policy.action_shape
        self.n_logits = self.policy.n_logits

    # ------------------------------------------------------------------ acting
    def predict(self, obs: Any, action_mask: Any, deterministic: bool = False) -> np.ndarray:
        """Choose actions for a single observation or a batch (see :meth:`MaskedPolicy.predict`).

        ``action_mask`` is required: a policy is only defined together with the
        actions that are valid. Never returns a masked action.

        Raises:
            ValueError: a mask of the wrong shape or dtype, a row with no valid
                action, or an observation of the wrong shape.
        """
        return self.policy.predict(obs, action_mask, deterministic)

    # ---------------------------------------------------------------- training
    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One PPO update (epochs x minibatches) on a filled buffer; returns logged scalars."""
        c = self.config
        T, N = c.num_steps, self.num_envs_local
        dp = self.data_parallel
        rewards = buffer.rewards if c.reward_scale == 1.0 else buffer.rewards * c.reward_scale
        advantages, returns = compute_gae(
            rewards, buffer.values, buffer.terminated, buffer.truncated,
            buffer.final_values, buffer.next_value, c.gamma, c.gae_lambda,
        )  # fmt: skip
        B = T * N
        b_obs = flatten_obs(index_obs(buffer.obs, slice(0, T)), B)
        b_masks = buffer.masks[:T].reshape(B, -1)
        b_actions = buffer.actions.reshape((B,) + self.action_shape)
        # The per-sample scalars in one [B, 4] tensor: one gather per minibatch, not four.
        b_scalars = torch.stack(
            [
                buffer.logprobs.reshape(B),
                advantages.reshape(B),
                returns.reshape(B),
                buffer.values.reshape(B),
            ],
            dim=1,
        )
        b_ret, b_values = b_scalars[:, 2], b_scalars[:, 3]
        ent_coef = self.current_ent_coef()

        def loss_fn(mb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            sc = b_scalars[mb]
            return ppo_loss(
                self.net, self.head, index_obs(b_obs, mb), b_masks[mb], b_actions[mb],
                sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 3], c,
                None if dp is None else dp.normalize_advantages, ent_coef,
            )  # fmt: skip

        target_kl = c.target_kl
        warmup = self.in_critic_warmup()
        with trainable_parameters(self.net, critic_only=warmup) as params:
            out = optimize_minibatches(
                loss_fn,
                self.optimizer,
                params,
                B,
                c.num_minibatches,
                c.num_epochs,
                c.max_grad_norm,
                self.rng.device_gen,
                self.device,
                stop_after_epoch=(
                    (lambda m: m["approx_kl"] > target_kl) if target_kl and not warmup else None
                ),
                data_parallel=dp,
            )
        return self._update_metrics(out, b_ret, b_values, ent_coef, warmup)

    def _update_metrics(
        self,
        out: dict[str, float],
        returns: torch.Tensor,
        values: torch.Tensor,
        ent_coef: float,
        warmup: bool,
    ) -> dict[str, float]:
        """An update's logged scalars, completed from the minibatch loop's ``out``
        (shared by :class:`PPO` and :class:`~maskrl.agents.RecurrentPPO`)."""
        c = self.config
        var_y = returns.var()
        out["explained_variance"] = (
            float("nan") if var_y == 0 else float(1 - (returns - values).var() / var_y)
        )
        out["early_stop"] = float(out.pop("epochs") < c.num_epochs)
        if c.ent_coef_final is not None:
            out["ent_coef"] = ent_coef
        if c.critic_warmup:
            out["critic_warmup"] = float(warmup)
        return out

    def in_critic_warmup(self) -> bool:
        """Whether the next update trains the value head alone (``config.critic_warmup``).

        True while the update's rollout began before ``critic_warmup`` env steps
        (``global_step`` counts the steps before it), so a resumed run keeps to
        the same updates.
        """
        return self.global_step < self.config.critic_warmup

    def current_ent_coef(self) -> float:
        """The entropy bonus of the next update.

        ``config.ent_coef``, or with ``config.ent_coef_final`` set, the linear
        interpolation from ``ent_coef`` at step 0 to ``ent_coef_final`` at the
        current :meth:`learn` call's ``total_timesteps`` (held there after it).
        Like the learning rate's annealing, it follows ``global_step``, so a
        resumed run continues the schedule where it stopped.
        """
        c = self.config
        if c.ent_coef_final is None or not self.schedule_total:
            return float(c.ent_coef)
        # The learning rate's schedule, shifted to end at ent_coef_final.
        start, end = c.ent_coef, c.ent_coef_final
        return float(end + linear_schedule(start - end, self.global_step, self.schedule_total))

    # ----------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, counters, the agent's RNG, spaces."""
        return {
            "format": self.FORMAT,
            "config": self.config.to_dict(),
            **self.policy.checkpoint_entries(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "rng": self.rng.state_dict(),
        }

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        env: Any = None,
        network: nn.Module | None = None,
        data_parallel: DataParallel | None = None,
    ) -> PPO:
        """Load a checkpoint written by :meth:`save` (``torch.load(weights_only=True)``).

        Restores the weights, optimiser, counters and the agent's own generators;
        torch's global generator is untouched. For inference or a teacher,
        :func:`maskrl.agents.load_policy` is lighter (no optimizer).

        Args:
            path: the checkpoint file.
            device: where to put the network.
            env: a vector env to continue training on (optional; ``predict``
                needs none).
            network: required if the agent was trained with a custom network.
            data_parallel: this process's rank, to continue a run as one rank of a
                torchrun job (:mod:`maskrl.agents.distributed`).

        Raises:
            ValueError: a missing, corrupt, unknown-format, non-finite or
                incompatible checkpoint.
        """
        ckpt = read_trainer_checkpoint(path)  # refuses non-finite state anywhere in it
        fmt = ckpt.get("format")
        if fmt not in ("maskrl.ppo/1", cls.FORMAT):
            raise ValueError(
                f"checkpoint {path} has format {fmt!r}; PPO.load reads maskrl.ppo/1 and {cls.FORMAT} "
                "(for a student or any policy, use maskrl.agents.load_policy)"
            )
        try:
            config = PPOConfig.from_dict(dict(ckpt["config"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"checkpoint {path} is not a valid maskrl PPO checkpoint: {e}") from e
        config.device = device
        if config.recurrent != cls._recurrent:
            if cls._recurrent:
                raise ValueError(f"checkpoint {path} is of feedforward PPO: load it with PPO.load")
            from maskrl.agents.recurrent import RecurrentPPO

            return RecurrentPPO.load(path, device, env, network, data_parallel)
        policy = policy_from_checkpoint(ckpt, path, device, network, config.seed)
        try:
            agent = cls(
                env, config, policy.net,
                observation_space=policy.observation_space,
                action_space=policy.action_space, data_parallel=data_parallel,
            )  # fmt: skip
            agent.policy.network_kwargs = policy.network_kwargs
            agent.env_ids = agent.policy.env_ids = ckpt.get("env_ids")
            agent.optimizer.load_state_dict(ckpt["optimizer"])
            agent.global_step = int(ckpt["global_step"])
            agent.num_updates = int(ckpt["num_updates"])
            if fmt == cls.FORMAT:
                agent.rng.load_state_dict(ckpt["rng"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} is not a valid maskrl PPO checkpoint: {e}") from e
        for what, saved, given in (
            ("observation", policy.observation_space, agent.observation_space),
            ("action", policy.action_space, agent.action_space),
        ):
            if saved != given:
                raise ValueError(
                    f"checkpoint {path} was trained with the {what} space {saved}; the env given "
                    f"to load has {given}"
                )
        return agent


def _check_autoreset(env: Any) -> None:
    """The trainer needs Gymnasium's same-step autoreset (see ``maskrl.agents.rollout``)."""
    from gymnasium.vector import AutoresetMode

    mode = getattr(env, "metadata", {}).get("autoreset_mode")
    if mode is not None and mode != AutoresetMode.SAME_STEP:
        raise ValueError(
            f"the vector env uses autoreset mode {getattr(mode, 'value', mode)!r}; maskrl's trainers need "
            "same-step autoreset (build it with maskrl.envs.make_vec, or pass "
            "autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)"
        )
