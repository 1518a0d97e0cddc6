"""Masked proximal policy optimisation over Gymnasium vector envs.

Read top to bottom, one update is: :func:`~maskrl.agents.rollout.collect_rollout`
(actions sampled under each step's action mask, masks stored with the rollout)
-> :func:`compute_gae` (bootstrapping from the final observation of truncated
episodes only) -> epochs x minibatches of :func:`ppo_loss` (log-probs and
entropy recomputed under the *stored* masks) -> log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskrl.agents.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    space_from_dict,
    space_to_dict,
)
from maskrl.agents.config import PPOConfig
from maskrl.agents.rollout import (
    EpisodeStats,
    Obs,
    RolloutBuffer,
    RolloutState,
    _empty_message,
    _space_spec,
    collect_rollout,
    empty_mask_rows,
    flatten_obs,
    index_obs,
    obs_to_tensor,
    start_rollouts,
)
from maskrl.masking import masked_log_softmax
from maskrl.agents.networks import build_actor_critic, obs_layout_of

__all__ = ["PPO", "MaskedPolicyHead", "compute_gae", "ppo_loss", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return dev


class MaskedPolicyHead:
    """Masked action sampling and evaluation for ``Discrete`` and ``MultiDiscrete`` actions.

    Works on raw logits ``[B, sum(nvec)]`` and a boolean mask of the same shape
    (True = valid; per-dimension masks concatenated for ``MultiDiscrete``). One
    :func:`maskrl.masked_log_softmax` per dimension gives log-probabilities in
    which masked actions have probability exactly 0, so sampling never picks
    them and the entropy counts valid actions only. This is the functional
    equivalent of :class:`maskrl.MaskedMultiCategorical`, without building a
    distribution object on every step of the hot loop.
    """

    def __init__(self, nvec: Sequence[int]) -> None:
        self.nvec = [int(n) for n in nvec]
        self.multi = len(self.nvec) > 1

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,) if not self.multi else torch.split(x, self.nvec, dim=-1)

    def log_probs(self, logits: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        return [
            masked_log_softmax(lg, m)
            for lg, m in zip(self._split(logits), self._split(mask), strict=False)
        ]

    def sample(
        self, logits: torch.Tensor, mask: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(action, log_prob)``: action ``[B]`` (Discrete) or ``[B, len(nvec)]``.

        Every row (and, for ``MultiDiscrete``, every dimension of every row) must
        have a valid action -- the rollout checks this when it reads the masks,
        and :meth:`PPO.predict` before it calls this. That makes ``-inf`` a
        provably safe fill here: ``logsumexp`` of a row with at least one finite
        entry is finite, and a masked action, at ``-inf``, can never win the
        argmax. This is the hot path of every rollout step, so it uses fewer
        operations than a normalised :func:`maskrl.masked_log_softmax`; the
        update recomputes log-probabilities with that function, and
        ``tests/test_ppo.py`` checks that the two agree.
        """
        actions, logps = [], []
        for lg, m in zip(self._split(logits), self._split(mask), strict=True):
            x = lg.float().masked_fill(~m, float("-inf"))
            if deterministic:
                a = x.argmax(-1)
            else:
                # Gumbel-max: argmax(x - log E), E ~ Exp(1), draws from softmax(x);
                # cheaper than multinomial for small batches.
                a = (x - torch.empty_like(x).exponential_().log()).argmax(-1)
            actions.append(a)
            logps.append(x.gather(-1, a.unsqueeze(-1)).squeeze(-1) - x.logsumexp(-1))
        if not self.multi:
            return actions[0], logps[0]
        return torch.stack(actions, -1), torch.stack(logps, -1).sum(-1)

    def evaluate(
        self, logits: torch.Tensor, mask: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(log_prob [B], entropy [B])`` of ``action`` under ``mask``."""
        logp = torch.zeros(logits.shape[0], device=logits.device)
        ent = torch.zeros_like(logp)
        acts = action.unsqueeze(-1) if not self.multi else action
        for d, (lp, m) in enumerate(
            zip(self.log_probs(logits, mask), self._split(mask), strict=False)
        ):
            logp = logp + lp.gather(-1, acts[:, d : d + 1].long()).squeeze(-1)
            # where() before the product: 0 * (-inf or finfo.min) never reaches the
            # sum or its gradient, so masked actions contribute exactly nothing.
            safe = torch.where(m, lp, torch.zeros_like(lp))
            ent = ent - (safe.exp() * safe).masked_fill(~m, 0.0).sum(-1)
        return logp, ent


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped PPO objective on one minibatch; returns ``(loss, aux)``.

    ``loss = policy_loss - ent_coef * entropy + vf_coef * value_loss`` with the
    value loss the mean squared error (Stable-Baselines3's scaling, so
    ``vf_coef`` means the same in both libraries).

    Log-probabilities and entropy use ``masks``, the masks the actions were
    sampled under, so the ratio compares like with like.
    """
    logits, values = net(obs)
    logp, entropy = head.evaluate(logits, masks, actions)
    log_ratio = logp - old_logprobs
    ratio = log_ratio.exp()
    if config.norm_adv and advantages.numel() > 1:
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
    loss = policy_loss - config.ent_coef * entropy_mean + config.vf_coef * value_loss
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


class PPO:
    """Masked PPO on a Gymnasium vector env whose infos carry ``action_mask``.

    Args:
        env: a Gymnasium vector env (same-step autoreset; see
            :func:`maskrl.envs.make_vec`), or a registered env id / a list of ids
            (several ids: the multi-game vector env), built with
            ``config.num_envs`` slots.
        config: hyperparameters (:class:`PPOConfig`); defaults if None.
        network: your own ``nn.Module`` mapping observations to
            ``(logits [B, n], value [B])``; by default one is picked from the
            observation space (:func:`maskrl.agents.build_actor_critic`).

    Example::

        from maskrl.agents import PPO, PPOConfig
        agent = PPO("maskrl/MinAtar-Breakout-v0", PPOConfig(num_envs=8))
        agent.learn(100_000)
        action = agent.predict(obs, action_mask)
    """

    def __init__(
        self,
        env: Any,
        config: PPOConfig | None = None,
        network: nn.Module | None = None,
        *,
        observation_space: Any = None,
        action_space: Any = None,
        obs_layout: str | None = None,
    ) -> None:
        self.config = config = config or PPOConfig()
        config.validate()
        self.device = resolve_device(config.device)
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.env_ids: list[str] | None = None
        if isinstance(env, str | list | tuple):
            from maskrl.envs import make_multigame_vec, make_vec

            ids = [env] if isinstance(env, str) else list(env)
            self.env_ids = ids
            env = (
                make_vec(ids[0], config.num_envs, seed=config.seed)
                if len(ids) == 1
                else make_multigame_vec(ids, config.num_envs, seed=config.seed)
            )
        self.envs = env
        if env is not None:
            _check_autoreset(env)
            observation_space = env.single_observation_space
            action_space = env.single_action_space
            obs_layout = obs_layout_of(env)
            if env.num_envs != config.num_envs:
                raise ValueError(
                    f"the vector env has {env.num_envs} envs but config.num_envs={config.num_envs}"
                )
        if observation_space is None or action_space is None:
            raise ValueError("PPO needs an env, or observation_space and action_space")
        self.observation_space, self.action_space = observation_space, action_space
        self._obs_spec = _space_spec(observation_space)  # shapes/dtypes, for predict
        from gymnasium import spaces

        if isinstance(action_space, spaces.Discrete | spaces.MultiDiscrete) and np.any(
            np.asarray(action_space.start) != 0
        ):
            raise ValueError(
                f"action space {action_space} does not start at 0: mask index k must be action k "
                "(wrap the env with gymnasium.wrappers.TransformAction to shift it)"
            )
        if isinstance(action_space, spaces.Discrete):
            nvec = [int(action_space.n)]
            self.action_shape: tuple[int, ...] = ()
        elif isinstance(action_space, spaces.MultiDiscrete):
            nvec = [int(n) for n in np.asarray(action_space.nvec).ravel()]
            self.action_shape = (len(nvec),)
        else:
            raise ValueError(f"PPO supports Discrete and MultiDiscrete actions, got {action_space}")
        self.n_logits = sum(nvec)
        self.head = MaskedPolicyHead(nvec)
        self.custom_network = network is not None
        # Seed before building the network so that its initial weights follow the seed.
        self._seed_everything(config.seed)
        self.obs_layout = obs_layout or "CHW"
        self.net = (
            network or build_actor_critic(observation_space, action_space, self.obs_layout)
        ).to(self.device)
        self.optimizer = _adam(self.net, config.learning_rate, config.adam_eps)
        self.global_step = 0
        self.num_updates = 0
        self.episode_stats = EpisodeStats()
        self._buffer: RolloutBuffer | None = None
        self._state: RolloutState | None = None

    # ------------------------------------------------------------------ acting
    def _seed_everything(self, seed: int) -> None:
        # The trainer draws only from torch's generator (sampling, minibatch
        # permutations); environments use their own seeded generators.
        torch.manual_seed(seed)

    def _act(self, obs: Obs, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, value = self.net(obs)
        action, logp = self.head.sample(logits, mask)
        return action, logp, value

    def _value(self, obs: Obs) -> torch.Tensor:
        return self.net(obs)[1]

    @contextlib.contextmanager
    def _rollout_mode(self) -> Iterator[None]:
        """Settings for the rollout's many small forward passes on a CPU.

        With a batch of ``num_envs`` observations, per-call overhead dominates:
        oneDNN (mkldnn) convolutions and a multi-threaded pool cost more than
        they save at that size (measured on the MinAtar CNN: about 100 vs 170 us
        a step with oneDNN off), while the update's minibatches of hundreds of
        samples gain from both. So the rollout runs single-threaded without oneDNN,
        and the update with the configured settings. GPU rollouts are unchanged.
        """
        if self.device.type != "cpu" or not self.config.cpu_rollout_tuning:
            yield
            return
        threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
        torch.set_num_threads(1)
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = mkldnn
            torch.set_num_threads(threads)

    def predict(self, obs: Any, action_mask: Any, deterministic: bool = False) -> np.ndarray:
        """Choose actions for a single observation or a batch.

        ``action_mask`` is required: a policy is only defined together with the
        actions that are valid. Shapes: ``obs`` as the env's observation (or with
        a leading batch dim), ``action_mask`` ``(n,)`` or ``(B, n)``. Returns an
        action (numpy) per observation; never a masked one.

        Raises:
            ValueError: mask of the wrong shape, or a row with no valid action.
        """
        mask = np.asarray(action_mask)
        single = mask.ndim == 1
        if single:
            mask = mask[None]
            obs = (
                {k: np.asarray(v)[None] for k, v in obs.items()}
                if isinstance(obs, dict)
                else np.asarray(obs)[None]
            )
        if mask.ndim != 2 or mask.shape[1] != self.n_logits:
            raise ValueError(
                f"action_mask has shape {np.asarray(action_mask).shape}, expected (n,) or (B, n) with n={self.n_logits}"
            )
        if mask.dtype != np.bool_:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError(
                    f"action_mask must be boolean or 0/1, got values of dtype {mask.dtype}"
                )
            mask = mask.astype(bool)
        empty = empty_mask_rows(mask, self.head.nvec)
        if empty:
            raise ValueError(_empty_message(empty, "row(s)", self.head.multi))
        with torch.inference_mode():
            t_obs = obs_to_tensor(obs, self.device, self._obs_spec)
            logits, _ = self.net(t_obs)
            action, _ = self.head.sample(
                logits, torch.as_tensor(mask, device=self.device), deterministic
            )
        out = action.cpu().numpy()
        return out[0] if single else out

    # ---------------------------------------------------------------- training
    def _ensure_rollout_state(self) -> tuple[RolloutBuffer, RolloutState]:
        if self.envs is None:
            raise ValueError(
                "this agent has no env to train on; pass one to PPO(...) or PPO.load(..., env=...)"
            )
        if self._buffer is None:
            c = self.config
            self._buffer = RolloutBuffer(
                self.observation_space,
                self.n_logits,
                self.action_shape,
                c.num_steps,
                c.num_envs,
                self.device,
                self.head.nvec,
            )
        if self._state is None:
            # Seeds differ after a resume so a resumed run does not replay its first episodes.
            self._state = start_rollouts(
                self.envs, self._buffer, seed=self.config.seed + self.global_step
            )
        return self._buffer, self._state

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One PPO update (epochs x minibatches) on a filled buffer; returns logged scalars."""
        c = self.config
        T, N = c.num_steps, c.num_envs
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
        params = [p for p in self.net.parameters() if p.requires_grad]
        mb_size = c.minibatch_size
        sums: dict[str, torch.Tensor] = {}
        count = 0
        stop = False
        for _epoch in range(c.num_epochs):
            perm = torch.randperm(B, device=self.device)
            epoch_kl = torch.zeros((), device=self.device)
            for start in range(0, B, mb_size):
                mb = perm[start : start + mb_size]
                sc = b_scalars[mb]
                loss, aux = ppo_loss(
                    self.net, self.head, index_obs(b_obs, mb), b_masks[mb], b_actions[mb],
                    sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 3], c,
                )  # fmt: skip
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                self.optimizer.step()
                for k, v in aux.items():
                    sums[k] = sums.get(k, 0) + v
                count += 1
                epoch_kl = epoch_kl + aux["approx_kl"]
            if c.target_kl is not None and float(epoch_kl) / (B // mb_size) > c.target_kl:
                stop = True
                break
        out = {k: float(v) / count for k, v in sums.items()}
        var_y = b_ret.var()
        out["explained_variance"] = (
            float("nan") if var_y == 0 else float(1 - (b_ret - b_values).var() / var_y)
        )
        out["early_stop"] = float(stop)
        return out

    def learn(
        self,
        total_timesteps: int,
        callback: Callable[[PPO, dict[str, float]], bool | None] | None = None,
    ) -> PPO:
        """Train until ``global_step >= total_timesteps`` (env steps, all envs counted).

        ``callback(agent, metrics)`` runs after every update; returning ``False``
        stops training. ``metrics`` holds the update's losses, ``SPS``, and the
        number of invalid actions taken (always 0 unless the network or mask
        plumbing is broken). Training resumes where it stopped when called again.
        """
        c = self.config
        buffer, state = self._ensure_rollout_state()
        while self.global_step < total_timesteps:
            if c.anneal_lr:
                frac = max(0.0, 1.0 - self.global_step / total_timesteps)
                for g in self.optimizer.param_groups:
                    g["lr"] = frac * c.learning_rate
            t0 = time.perf_counter()
            invalid_before = state.invalid_actions
            self.net.eval()
            with self._rollout_mode():
                collect_rollout(
                    self.envs, buffer, state, self._act, self._value, self.episode_stats
                )
            self.net.train()
            metrics = self.update(buffer)
            buffer.roll_over()
            self.global_step += c.batch_size
            self.num_updates += 1
            dt = time.perf_counter() - t0
            metrics["SPS"] = c.batch_size / dt
            metrics["invalid_actions"] = float(state.invalid_actions - invalid_before)
            metrics["invalid_action_rate"] = metrics["invalid_actions"] / c.batch_size
            metrics["learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
            if callback is not None and callback(self, metrics) is False:
                break
        return self

    # ----------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, counters, RNG states, spaces."""
        return {
            "format": "maskrl.ppo/1",
            "config": self.config.to_dict(),
            "env_ids": self.env_ids,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "custom_network": self.custom_network,
            "obs_layout": self.obs_layout,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "rng": {
                "torch": torch.get_rng_state(),
                # Only the training device's generator: a checkpoint must load on a
                # machine with fewer GPUs (or none).
                "cuda": [torch.cuda.get_rng_state(self.device)]
                if self.device.type == "cuda"
                else [],
            },
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (temporary file, then rename)."""
        save_checkpoint(self.state_dict(), path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        env: Any = None,
        network: nn.Module | None = None,
    ) -> PPO:
        """Load a checkpoint written by :meth:`save` (``torch.load(weights_only=True)``).

        Args:
            path: the checkpoint file.
            device: where to put the network.
            env: a vector env to continue training on (optional; ``predict``
                needs none).
            network: required if the agent was trained with a custom network.

        Raises:
            ValueError: a missing, corrupt or incompatible checkpoint.
        """
        ckpt = load_checkpoint(path)
        try:
            config = PPOConfig.from_dict(dict(ckpt["config"]))
            config.device = device
            if ckpt.get("custom_network") and network is None:
                raise ValueError(
                    f"checkpoint {path} was trained with a custom network; pass network="
                )
            agent = cls(
                env, config, network,
                observation_space=space_from_dict(ckpt["observation_space"]),
                action_space=space_from_dict(ckpt["action_space"]),
                obs_layout=ckpt.get("obs_layout", "CHW"),
            )  # fmt: skip
            agent.env_ids = ckpt.get("env_ids")
            agent.net.load_state_dict(ckpt["model"])
            agent.optimizer.load_state_dict(ckpt["optimizer"])
            agent.global_step = int(ckpt["global_step"])
            agent.num_updates = int(ckpt["num_updates"])
            rng = ckpt["rng"]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and agent.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"][0], agent.device)
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} is not a valid maskrl PPO checkpoint: {e}") from e
        return agent


def _adam(net: nn.Module, lr: float, eps: float) -> torch.optim.Optimizer:
    """Adam, using the fused kernel where this torch build has one for the device."""
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(net.parameters(), lr=lr, eps=eps)


def _check_autoreset(env: Any) -> None:
    """The trainer needs Gymnasium's same-step autoreset (see ``maskrl.agents.rollout``)."""
    from gymnasium.vector import AutoresetMode

    mode = getattr(env, "metadata", {}).get("autoreset_mode")
    if mode is not None and mode != AutoresetMode.SAME_STEP:
        raise ValueError(
            f"the vector env uses autoreset mode {getattr(mode, 'value', mode)!r}; maskrl's PPO needs "
            "same-step autoreset (build it with maskrl.envs.make_vec, or pass "
            "autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP)"
        )
