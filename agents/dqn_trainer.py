"""Masked DQN: a replay buffer that stores the next state's mask, a masked target.

:class:`DQN` is maskrl's off-policy trainer (``train.py dqn --env ID``):

* **acting**: masked epsilon-greedy (:func:`~maskrl.agents.masked_epsilon_greedy`):
  the greedy action over the valid actions, or with probability epsilon a
  uniformly random *valid* one; epsilon decays linearly from
  ``exploration_initial_eps`` to ``exploration_final_eps`` over
  ``exploration_steps`` env steps;
* **storing**: :class:`ReplayBuffer` holds ``(obs, action, reward, next_obs,
  terminated, next_mask)``. At an autoreset (Gymnasium's ``same_step`` mode) the
  env returns the *next* episode's first observation and mask; the transition
  stores the finished episode's own last observation (``infos["final_obs"]``)
  and its mask (``infos["final_info"]["action_mask"]``) instead, so a
  truncated transition bootstraps from the right state and mask;
* **env backends** (``env_backend``, ``--env-backend``): ``"numpy"`` steps the
  Python (Gymnasium) vector env and moves each step's arrays to the replay;
  ``"torch"`` (MinAtar ids only) steps the batched torch games on the
  trainer's device, and observations, masks, actions and rewards stay tensors
  there, from the env through acting into the replay (no host round trip per
  step). Its episode statistics and the non-finite-reward check are read back
  once per iteration. Acting, storing and learning are the same code for both;
  only the env side of a vector step differs;
* **learning**: Huber loss between ``Q(s, a)`` and
  :func:`~maskrl.agents.dqn_target` (double DQN by default; the max and
  argmax over the next state's **valid** actions), Adam, gradient-norm
  clipping, a target network copied from the online one every
  ``target_update_interval`` env steps. ``unmasked_target=True`` (``--unmasked-target``)
  is the ablation: the target ranges over all actions.

On the CPU, for the networks it knows exactly (an ``ActorCritic`` over a plain
MinAtar CNN or MLP), acting with up to 16 envs runs the forward pass in NumPy
(:mod:`maskrl.host_forward`), and a gradient step of the plain MinAtar network
writes the loss's gradients by hand instead of through autograd
(:mod:`maskrl.agents.dqn_manual`); both equal torch's to float rounding and
step aside for any other network, hook or quantization-aware layer.

The Q-network is the default network of :func:`~maskrl.agents.build_actor_critic`
for the env (the MinAtar CNN for MinAtar): its policy-head logits are the
Q-values, its value head is unused. So the checkpoint holds an ordinary
:class:`~maskrl.agents.MaskedPolicy`: :func:`~maskrl.agents.load_policy` reads
it, and ``predict(obs, mask, deterministic=True)`` (``train.py eval
--deterministic``) is the greedy masked argmax; the run's own final evaluation
is greedy.

The checkpoint also holds the target network, the optimiser, the generator and
the replay buffer's filled part, so ``--resume`` continues with the same
buffer. The envs are not saved: a resumed run starts new episodes (reseeded
with ``seed + global_step``), as every maskrl trainer does.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn

from maskrl.agents.base import read_trainer_checkpoint
from maskrl.agents.checkpoint import save_checkpoint
from maskrl.agents.config import DQNConfig
from maskrl.agents.dqn import (
    _dqn_target_unchecked,
    _explore_draws,
    _uniform_valid_action,
    masked_argmax,
)
from maskrl.agents.dqn_manual import ManualQStep
from maskrl.agents.policy import MaskedPolicy
from maskrl.agents.rollout import EpisodeStats, is_torch_env, read_masks
from maskrl.agents.trainer import (
    FlatParameters,
    NonFiniteError,
    adam_step,
    check_finite_state,
    make_adam,
    make_training_env,
    resolve_device,
    torch_threads,
)
from maskrl.host_forward import HostLogits
from maskrl.networks import ActorCritic

__all__ = ["DQN", "ReplayBuffer", "linear_epsilon"]

#: Up to this many envs, acting runs the network in NumPy where it can (at a batch
#: of one ~25 us against ~90 us in torch for the MinAtar network; even at 16).
_HOST_MAX_BATCH = 16

#: Module types whose forward ignores ``training`` (maskrl's own networks, checked by
#: module name in :class:`DQN`, are built from these).
_MODE_FREE = (
    nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.Flatten, nn.Identity, nn.Sequential,
    nn.ModuleList, nn.ModuleDict, nn.LayerNorm, nn.Embedding,
)  # fmt: skip


def linear_epsilon(config: DQNConfig, step: int) -> float:
    """Epsilon at env step ``step``: linear from the initial to the final value, then flat."""
    c = config
    if c.exploration_steps == 0 or step >= c.exploration_steps:
        return float(c.exploration_final_eps)
    frac = step / c.exploration_steps
    return float(
        c.exploration_initial_eps + frac * (c.exploration_final_eps - c.exploration_initial_eps)
    )


class ReplayBuffer:
    """A preallocated ring of transitions, as tensors on ``device``.

    Each row: ``obs``, ``action`` (int64), ``reward`` (float32), ``next_obs``,
    ``terminated`` (bool) and ``next_mask`` (bool ``[n_actions]``: the valid
    actions of ``next_obs``). Observations keep the observation space's dtype.

    Args:
        obs_shape: one observation's shape.
        obs_dtype: a NumPy dtype (the observation space's).
        n_actions: the number of actions.
        capacity: rows; the oldest are overwritten once full.
        device: where the tensors live.
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        obs_dtype: Any,
        n_actions: int,
        capacity: int,
        device: torch.device,
    ) -> None:
        dtype = torch.from_numpy(np.zeros((), dtype=obs_dtype)).dtype
        self.capacity, self.device, self.n_actions = int(capacity), device, int(n_actions)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=dtype, device=device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=device)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.next_masks = torch.zeros((capacity, n_actions), dtype=torch.bool, device=device)
        self.pos = 0  # the next row written
        self.size = 0  # rows filled
        # On the CPU, rows are written through NumPy views of the tensors (much cheaper
        # per call than tensor indexing for one vector step).
        self._host: dict[str, np.ndarray] | None = None
        if device.type == "cpu":
            self._host = {k: getattr(self, k).numpy() for k in self._FIELDS}

    _FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated", "next_masks")

    def add(
        self,
        obs: np.ndarray | torch.Tensor,
        actions: np.ndarray | torch.Tensor,
        rewards: np.ndarray | torch.Tensor,
        next_obs: np.ndarray | torch.Tensor,
        terminated: np.ndarray | torch.Tensor,
        next_masks: np.ndarray | torch.Tensor,
    ) -> None:
        """Append one vector step: ``B`` transitions, the rows first.

        NumPy arrays, or tensors (the torch env backend's, on this buffer's device).
        """
        B = actions.shape[0]
        host = self._host
        if host is not None and self.pos + B <= self.capacity and not isinstance(obs, torch.Tensor):
            # The common case on the CPU: NumPy rows that fit before the end of the ring.
            lo, hi = self.pos, self.pos + B
            host["obs"][lo:hi] = obs
            host["next_obs"][lo:hi] = next_obs
            host["actions"][lo:hi] = actions
            host["rewards"][lo:hi] = rewards
            host["terminated"][lo:hi] = terminated
            host["next_masks"][lo:hi] = next_masks
            self.pos = hi % self.capacity
            self.size = min(self.size + B, self.capacity)
            return
        rows = [(self.pos, min(self.pos + B, self.capacity))]
        if rows[0][1] - rows[0][0] < B:  # wraps around the end
            rows.append((0, B - (rows[0][1] - rows[0][0])))
        values: list[tuple[str, Any]] = [
            ("obs", obs), ("next_obs", next_obs), ("actions", actions),
            ("rewards", rewards), ("terminated", terminated), ("next_masks", next_masks),
        ]  # fmt: skip
        if self._host is not None:  # CPU tensors are written through NumPy views too
            values = [(k, v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in values]
        src = 0
        for lo, hi in rows:
            n = hi - lo
            part = slice(src, src + n)
            for name, value in values:
                if self._host is not None:
                    self._host[name][lo:hi] = value[part]
                else:
                    dst: torch.Tensor = getattr(self, name)
                    dst[lo:hi].copy_(torch.as_tensor(value[part]), non_blocking=True)
            src += n
        self.pos = (self.pos + B) % self.capacity
        self.size = min(self.size + B, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` rows drawn uniformly with replacement from the filled ones."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.randint(
            self.size, (batch_size,), generator=generator, device=generator.device
        ).to(self.device)
        # index_select: the same rows as ``tensor[idx]``, several times cheaper on the CPU.
        return {k: getattr(self, k).index_select(0, idx) for k in self._FIELDS}

    def sample_host(self, batch_size: int, generator: torch.Generator) -> dict[str, np.ndarray]:
        """:meth:`sample` as NumPy arrays, for a buffer on the CPU: the same rows from the
        same draw of ``generator`` (a CPU generator), gathered in NumPy."""
        if self._host is None:
            raise ValueError(f"sample_host needs a buffer on the CPU, this one is on {self.device}")
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.randint(self.size, (batch_size,), generator=generator).numpy()
        return {k: np.take(v, idx, axis=0) for k, v in self._host.items()}

    def state_dict(self) -> dict[str, Any]:
        """The filled rows (on the CPU) and the write position."""
        n = self.size
        out: dict[str, Any] = {k: getattr(self, k)[:n].cpu() for k in self._FIELDS}
        out.update(pos=self.pos, size=n, capacity=self.capacity)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s rows (ValueError if the capacity differs)."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"the saved replay buffer holds {state['capacity']} rows, this one {self.capacity}"
            )
        n = int(state["size"])
        # The trainer's target skips dqn_target's checks: refuse, once here, a stored
        # non-terminal row whose next state has no valid action.
        bad = ~state["next_masks"][:n].any(dim=-1) & ~state["terminated"][:n]
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"the saved replay buffer has non-terminal row(s) {rows} whose next mask has "
                "no valid action"
            )
        for k in self._FIELDS:
            getattr(self, k)[:n].copy_(state[k])
        self.pos, self.size = int(state["pos"]), n


class DQN:
    """Masked (double) DQN on one single-game env; see the module docstring.

    It follows the harness side of the trainer contract (``docs/trainers.md``):
    ``FORMAT``, :meth:`learn` with a per-iteration callback, :meth:`save`,
    :meth:`state_dict`, :meth:`load`, :meth:`allocate`, ``policy``,
    ``envs``, ``episode_stats``, ``global_step``, ``steps_per_update`` and
    ``metrics_interval``. It
    does not derive from :class:`~maskrl.agents.OnPolicyTrainer`, whose loop is
    rollout-then-update; an iteration here is ``train_freq`` vector steps then
    ``gradient_steps`` gradient steps.

    Args:
        env: an env id (or a one-element list of one); a ``Discrete`` action space.
        config: the settings (default :class:`~maskrl.agents.config.DQNConfig`).
        data_parallel: must be None (DQN runs in one process).

    Raises:
        ValueError: an invalid config, several env ids, a non-``Discrete``
            action space or a ``Dict`` observation, a data-parallel rank.
    """

    FORMAT = "maskrl.dqn/1"
    #: The harness's final evaluation takes the greedy action (the masked argmax of Q).
    greedy_eval = True

    def __init__(
        self, env: str | list[str], config: DQNConfig | None = None, data_parallel: Any = None
    ) -> None:
        config = config or DQNConfig()
        config.validate()
        if data_parallel is not None:
            raise ValueError("dqn runs in one process: run it without torchrun")
        env_ids = [env] if isinstance(env, str) else list(env)
        if len(env_ids) != 1:
            raise ValueError(f"dqn trains on one env id, got {len(env_ids)}: {','.join(env_ids)}")
        self.config = config
        self.env_ids = env_ids
        self.device = resolve_device(config.device)
        self.data_parallel = None
        self.envs: Any = make_training_env(
            env_ids, config.num_envs, config.seed, config.env_backend, self.device
        )
        #: The torch backend: the env's observations, masks and rewards are tensors on the
        #: trainer's device (see the module docstring).
        self.torch_env = is_torch_env(self.envs)
        try:
            obs_space = self.envs.single_observation_space
            act_space = self.envs.single_action_space
            if not isinstance(act_space, spaces.Discrete):
                raise ValueError(f"dqn needs a Discrete action space, {env_ids[0]} has {act_space}")
            if not isinstance(obs_space, spaces.Box):
                raise ValueError(
                    f"dqn needs a Box observation space, {env_ids[0]} has {type(obs_space).__name__}"
                )
            kwargs: dict[str, Any] = {"obs_layout": "CHW"}
            if config.hidden is not None:
                kwargs["hidden"] = config.hidden
            if config.conv_filters is not None:
                kwargs["conv_filters"] = config.conv_filters
            self.policy = MaskedPolicy.build(
                obs_space, act_space, env_ids, self.device, config.seed, **kwargs
            )
        except BaseException:
            self.envs.close()
            raise
        self.net = self.policy.net
        self.rng = self.policy.rng
        # One flat tensor for the weights and one for the gradients: zeroing, clipping
        # and the Adam step are one kernel each (see FlatParameters); the target network
        # is copied afterwards, so it shares the online network's (faster) layout.
        self.flat = FlatParameters(self.net)
        self.target_net = copy.deepcopy(self.net)
        for p in self.target_net.parameters():
            p.grad = None
        self.target_net.requires_grad_(False)
        self.optimizer = make_adam([self.flat.param], config.learning_rate, config.adam_eps)
        #: Whether the network behaves differently in training and eval mode (dropout,
        #: batch norm, or a module this trainer does not know): then it acts in eval
        #: mode and learns in training mode; otherwise the switch, a walk over every
        #: module twice per iteration, is skipped.
        self._mode_matters = not all(
            isinstance(m, _MODE_FREE) or type(m).__module__ == "maskrl.networks"
            for m in self.net.modules()
        )
        #: A few envs on the CPU: the network's forward pass for acting in NumPy, where
        #: it is several times cheaper at a batch of one (see maskrl.host_forward).
        self._host_logits = HostLogits.build(self.net) if self.device.type == "cpu" else None
        #: Whether it is usable now (checked at the start of each learn() iteration: no
        #: hook, no swapped layer or replaced weight; a callback's change counts from
        #: the next iteration on).
        self._host_ready = False
        #: The MinAtar network on the CPU, with this class's loss: gradient steps compute
        #: the loss's gradients by hand, without autograd (maskrl.agents.dqn_manual),
        #: whenever both networks are usable as built (checked with _host_ready).
        self._manual: ManualQStep | None = None
        if self._host_logits is not None and type(self).loss is DQN.loss:
            self._manual = ManualQStep.build(self.net, self.target_net, self._host_logits)
        self._manual_ready = False
        self.n_actions = int(act_space.n)
        self.global_step = 0
        self.num_updates = 0  # gradient steps taken
        self.last_target_update = 0  # env step of the last copy into the target network
        self.episode_stats = EpisodeStats()
        self.replay: ReplayBuffer | None = None
        # The envs' current observations and masks (tensors with the torch backend).
        self._obs: Any = None
        self._mask: Any = None
        self._ep_return = np.zeros(config.num_envs)  # numpy backend
        self._env_rows = np.arange(config.num_envs)
        self._ep_length = np.zeros(config.num_envs, dtype=np.int64)
        # Torch backend: per vector step of the current iteration, (reward, episode
        # ended, its return, its length) as device tensors, read back once per iteration.
        self._pending: list[tuple[torch.Tensor, ...]] = []

    # ---------------------------------------------------------------- harness
    @property
    def steps_per_update(self) -> int:
        """Env steps per :meth:`learn` iteration: ``num_envs * train_freq``."""
        return self.config.steps_per_iteration

    @property
    def metrics_interval(self) -> int:
        """Env steps between tensorboard points of the training metrics: ``config.log_interval``."""
        return int(self.config.log_interval)

    @property
    def epsilon(self) -> float:
        """Epsilon of the exploration at the current step."""
        return linear_epsilon(self.config, self.global_step)

    def allocate(self) -> ReplayBuffer:
        """Allocate the replay buffer (ValueError naming ``--buffer-size`` if it cannot fit)."""
        if self.replay is None:
            space = self.envs.single_observation_space
            shape, dtype = tuple(space.shape), space.dtype
            row = (2 * int(np.prod(shape)) * np.dtype(dtype).itemsize) + 13 + self.n_actions
            need = row * self.config.buffer_size
            if self.device.type == "cpu":
                import os

                avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            else:
                avail = torch.cuda.mem_get_info(self.device)[0]
            if need > 0.8 * avail:
                raise ValueError(
                    f"a replay buffer of {self.config.buffer_size} transitions needs "
                    f"{need / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB free on "
                    f"{self.device}: lower --buffer-size"
                )
            self.replay = ReplayBuffer(
                shape, dtype, self.n_actions, self.config.buffer_size, self.device
            )
        return self.replay

    # ------------------------------------------------------------------ acting
    def _reset(self) -> None:
        n = self.config.num_envs
        obs, infos = self.envs.reset(seed=self.config.seed + self.global_step)
        if self.torch_env:
            mask = infos["action_mask"]
            empty = ~mask.any(dim=1)
            if bool(empty.any()):
                raise ValueError(
                    f"action mask has no valid action for env index(es) "
                    f"{empty.nonzero().flatten().tolist()}: an environment must always allow "
                    "at least one action"
                )
            # The env writes each step's observations into the same buffer
            # (copy_obs=False), so the trainer keeps its own copy of the current ones.
            self._obs, self._mask = obs.clone(), mask
        else:
            self._obs = np.asarray(obs)
            self._mask = read_masks(infos, n, self.n_actions)
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._pending.clear()

    def _step_envs(self) -> int | torch.Tensor:
        """One vector step under the epsilon-greedy policy; the transitions go to the replay.

        Returns the number of invalid actions taken (0 unless the masks are broken):
        an int, or with the torch backend a device tensor (read once per iteration).
        """
        if self.torch_env:
            return self._step_torch_env()
        return self._step_numpy_env()

    def _step_numpy_env(self) -> int:
        """:meth:`_step_envs` on a numpy (Gymnasium) vector env."""
        assert self._obs is not None and self._mask is not None and self.replay is not None
        n = self.config.num_envs
        obs, mask = self._obs, self._mask
        actions = self._act(obs, mask, self.epsilon)
        invalid = n - int(mask[self._env_rows, actions].sum())
        next_obs, reward, terminated, truncated, infos = self.envs.step(actions)
        next_mask = read_masks(infos, n, self.n_actions)
        reward = np.asarray(reward, dtype=np.float64)
        if not np.isfinite(reward).all():
            i = int(np.flatnonzero(~np.isfinite(reward))[0])
            self._non_finite_reward(i, self.global_step)
        terminated = np.asarray(terminated, dtype=bool)
        done = terminated | np.asarray(truncated, dtype=bool)
        # The transition's next state: the finished episode's own last observation and
        # its mask where an episode ended (same_step autoreset), else the new ones.
        real_next, real_mask = next_obs, next_mask
        ended = np.flatnonzero(done).tolist()
        if ended:
            real_next = np.array(next_obs, copy=True)
            real_mask = next_mask.copy()
            for j in ended:
                real_next[j] = infos["final_obs"][j]
                real_mask[j] = np.asarray(infos["final_info"]["action_mask"][j], dtype=bool)
                if not terminated[j] and not real_mask[j].any():
                    raise ValueError(
                        f"env index {j} was truncated at step {self.global_step} with a final "
                        "action mask that has no valid action: there is no action to bootstrap "
                        "from (an all-invalid mask is an environment bug)"
                    )
        self.replay.add(obs, actions, reward, real_next, terminated, real_mask)
        self._ep_return += reward
        self._ep_length += 1
        if ended:
            self._record_episodes(
                [float(self._ep_return[j]) for j in ended],
                [int(self._ep_length[j]) for j in ended],
            )
            self._ep_return[ended] = 0.0
            self._ep_length[ended] = 0
        self._obs, self._mask = np.asarray(next_obs), next_mask
        self.global_step += n
        return invalid

    def _step_torch_env(self) -> torch.Tensor:
        """:meth:`_step_envs` on a torch-backend env: nothing leaves the device.

        Where an episode ended (same-step autoreset), the stored next observation is
        the env's ``infos["final_obs"]`` (the finished episode's last one, never the
        reset one), ``terminated`` is the env's own flag (a truncated transition
        bootstraps). The next mask is ``infos["action_mask"]``: the batched games'
        masks are fixed per env slot (the game's minimal action set), so the mask of
        a finished episode's final observation is the slot's mask, as after a reset.
        """
        assert self._obs is not None and self._mask is not None and self.replay is not None
        obs, mask = self._obs, self._mask
        actions = self._act_tensor(obs, mask, self.epsilon, sync=self.device.type == "cpu")
        invalid = (~mask.gather(1, actions[:, None])).sum()
        next_obs, reward, terminated, truncated, infos = self.envs.step(actions)
        next_mask = infos["action_mask"]
        done = terminated | truncated
        rows = done.view((-1,) + (1,) * (next_obs.dim() - 1))
        real_next = torch.where(rows, infos["final_obs"], next_obs)
        self.replay.add(obs, actions, reward, real_next, terminated, next_mask)
        self._pending.append((reward, infos["_episode"], infos["episode"]["r"],
                              infos["episode"]["l"]))  # fmt: skip
        self._obs.copy_(next_obs)  # after the replay has stored obs
        self._mask = next_mask
        self.global_step += self.config.num_envs
        return invalid

    def _end_vector_steps(self, start: int) -> None:
        """After an iteration's vector steps (begun at env step ``start``): with the torch
        backend, check its rewards and record its episodes, one read-back each."""
        if not self._pending:
            return
        reward, done, ep_r, ep_l = (torch.stack(x) for x in zip(*self._pending, strict=True))
        self._pending.clear()
        bad = ~torch.isfinite(reward)
        if bool(bad.any()):
            flat = int(bad.reshape(-1).nonzero()[0])
            n = self.config.num_envs
            self._non_finite_reward(flat % n, start + (flat // n) * n)
        if bool(done.any()):  # [steps, envs] in time order, as the numpy backend records
            self._record_episodes(
                [float(x) for x in ep_r[done].tolist()], [int(x) for x in ep_l[done].tolist()]
            )

    @staticmethod
    def _non_finite_reward(env_index: int, step: int) -> None:
        """Raise the NonFiniteError of env ``env_index``'s reward at env step ``step``."""
        raise NonFiniteError(f"env index {env_index} returned a non-finite reward at step {step}")

    def _record_episodes(self, returns: list[float], lengths: list[int]) -> None:
        """Append finished episodes (in the order they ended) to ``episode_stats``."""
        stats = self.episode_stats
        stats.returns.extend(returns)
        stats.lengths.extend(lengths)
        stats.game_ids.extend([0] * len(returns))

    def _act(self, obs: np.ndarray, mask: np.ndarray, epsilon: float) -> np.ndarray:
        """Masked epsilon-greedy actions for the envs' ``obs`` and ``mask`` (NumPy in and out).

        The same actions as :meth:`_act_tensor`. On the CPU the draw and the
        uniform valid action are the same torch operations, while the network's
        Q-values go through NumPy for the masked argmax (a handful of envs: the
        per-call cost of torch operations dominates there); for up to
        ``_HOST_MAX_BATCH`` envs and a network :class:`~maskrl.host_forward.HostLogits`
        knows, the forward pass itself runs in NumPy (the same values up to float
        rounding). Elsewhere, :meth:`_act_tensor` on the arrays moved to the
        trainer's device.
        """
        dev = self.device
        if dev.type != "cpu":
            t_obs = torch.from_numpy(obs).to(dev, non_blocking=True)
            t_mask = torch.from_numpy(mask).to(dev, non_blocking=True)
            return self._act_tensor(t_obs, t_mask, epsilon, sync=True).cpu().numpy()
        # _explore_draws' draw (one float32 uniform per env from the trainer's generator),
        # compared in float32 as torch compares it (NumPy's rule for a Python float too).
        u = torch.rand(mask.shape[:-1], generator=self.rng.device_gen)
        explore = u.numpy() < np.float32(epsilon)
        if explore.all():
            return _uniform_valid_action(u, torch.from_numpy(mask), epsilon).numpy()
        if self._host_ready and len(obs) <= _HOST_MAX_BATCH:
            assert self._host_logits is not None
            q = self._host_logits(obs)
        else:
            with torch.no_grad():
                q = self._q(self.net, self._float(torch.from_numpy(obs))).numpy()
        # masked_argmax in NumPy: invalid entries -inf, ties to the lowest index.
        greedy = np.where(mask, q, -np.inf).argmax(axis=-1)
        if not explore.any():
            return greedy
        uniform = _uniform_valid_action(u, torch.from_numpy(mask), epsilon).numpy()
        return np.where(explore, uniform, greedy)

    @torch.no_grad()
    def _act_tensor(
        self, obs: torch.Tensor, mask: torch.Tensor, epsilon: float, sync: bool
    ) -> torch.Tensor:
        """Masked epsilon-greedy actions (int64 ``[N]``) for ``obs`` and bool ``mask`` on the
        trainer's device.

        The same draw from the trainer's generator as
        :func:`~maskrl.agents.masked_epsilon_greedy` (one uniform per env), so a
        run takes the same actions; the inputs are not re-checked (the masks
        come from :func:`~maskrl.agents.rollout.read_masks`, or from the torch
        backend's env, checked at reset). With ``sync`` (a host read of the
        explore flags), the network is run only if some env acts greedily, and
        the uniform valid action is computed only if some env explores: the
        torch backend on a GPU skips that read and computes both; the actions
        are the same.
        """
        u, explore = _explore_draws(mask, epsilon, self.rng.device_gen)
        if sync:
            n_explore = sum(explore.tolist())
            if n_explore == explore.numel():
                return _uniform_valid_action(u, mask, epsilon)
            if n_explore == 0:
                return masked_argmax(self._q(self.net, self._float(obs)), mask)
        greedy = masked_argmax(self._q(self.net, self._float(obs)), mask)
        return torch.where(explore, _uniform_valid_action(u, mask, epsilon), greedy)

    @staticmethod
    def _float(obs: torch.Tensor) -> torch.Tensor:
        return obs if obs.is_floating_point() else obs.float()

    # ---------------------------------------------------------------- learning
    @staticmethod
    def _q(net: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """The Q-values ``net(obs)[0]``; for an :class:`~maskrl.networks.ActorCritic`, its
        policy head over its features, without the unused value head (the same values)."""
        if type(net) is ActorCritic:
            return net.policy_head(net.features(obs))  # type: ignore[no-any-return]
        return net(obs)[0]  # type: ignore[no-any-return]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Huber loss, target)`` of one batch of transitions (the loss keeps its graph).

        The target is :func:`~maskrl.agents.dqn_target` of the target network's
        (and, double DQN, the online network's) values of ``next_obs`` under
        ``next_masks`` -- or under all-True masks with ``unmasked_target``.
        The online network's values of ``next_obs`` (double DQN) come from a
        forward pass without a graph, so the backward pass covers ``obs``
        only.
        """
        c = self.config

        obs, next_obs = self._float(batch["obs"]), self._float(batch["next_obs"])
        q_all, q_next_online = self._q(self.net, obs), None
        with torch.no_grad():
            if c.double:
                # Q(s') of the online network is only read: its own forward without a
                # graph, so the backward pass runs over the batch, not twice its size.
                q_next_online = self._q(self.net, next_obs)
            q_next_target = self._q(self.target_net, next_obs)
            mask = batch["next_masks"]
            if c.unmasked_target:
                mask = torch.ones_like(mask)
            # The rows were checked when stored (no non-terminal row without a valid
            # next action), so the target skips dqn_target's input checks.
            target = _dqn_target_unchecked(
                q_next_online, q_next_target, mask, batch["rewards"], batch["terminated"],
                float(c.gamma),
            )  # fmt: skip
        q = q_all.gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
        return F.smooth_l1_loss(q, target), target

    def gradient_step(self) -> dict[str, float]:
        """One gradient step on a batch drawn from the replay buffer; returns its metrics."""
        assert self.replay is not None
        c = self.config
        if self._manual_ready:
            assert self._manual is not None
            host_batch = self.replay.sample_host(c.batch_size, self.rng.device_gen)
            loss_v, host_target = self._manual(
                host_batch, float(c.gamma), c.double, c.unmasked_target
            )
            norm_v = self.flat.clip_grad_norm(c.max_grad_norm).item()
            target_mean = float(host_target.mean())
        else:
            batch = self.replay.sample(c.batch_size, self.rng.device_gen)
            loss, target = self.loss(batch)
            self.flat.zero_grad()
            loss.backward()
            norm = self.flat.clip_grad_norm(c.max_grad_norm)
            # The loss, the gradient norm and the target mean: read back in one go from
            # a GPU; on the CPU each read is free and stacking them is not.
            parts = [loss.detach().float(), norm.float(), target.mean().float()]
            if self.device.type == "cpu":
                loss_v, norm_v, target_mean = (x.item() for x in parts)
            else:
                loss_v, norm_v, target_mean = torch.stack(parts).tolist()
        if not math.isfinite(loss_v) or not math.isfinite(norm_v):
            self.flat.zero_grad()
            what = "loss" if not math.isfinite(loss_v) else "gradient"
            raise NonFiniteError(f"the DQN {what} is not finite at step {self.global_step}")
        adam_step(self.optimizer)
        self.num_updates += 1
        return {"loss": loss_v, "q_target_mean": target_mean, "grad_norm": norm_v}

    def update_target(self) -> None:
        """Copy the online network's weights into the target network."""
        self.target_net.load_state_dict(self.net.state_dict())
        self.last_target_update = self.global_step

    def learn(
        self,
        total_timesteps: int,
        callback: Callable[[Any, dict[str, float]], bool | None] | None = None,
    ) -> DQN:
        """Train until ``global_step >= total_timesteps`` (env steps, all envs counted).

        Each iteration: ``train_freq`` vector steps, then (past
        ``learning_starts``) ``gradient_steps`` gradient steps and, when
        ``target_update_interval`` env steps have passed since the last one, a
        target-network copy. ``callback(trainer, metrics)`` runs after each;
        returning ``False`` stops. Calling it again continues.

        Raises:
            NonFiniteError: a non-finite reward, loss or gradient.
        """
        c = self.config
        self.allocate()
        if self._obs is None:
            self._reset()
        with torch_threads(c.torch_threads):
            while self.global_step < total_timesteps:
                t0 = time.perf_counter()
                start = self.global_step
                invalid: int | torch.Tensor = 0
                if self._mode_matters:
                    self.net.eval()
                host = self._host_logits
                self._host_ready = host is not None and host.usable()
                manual = self._manual
                # (its online network's HostLogits is `host`, checked just above)
                self._manual_ready = (
                    manual is not None and self._host_ready and manual.target_host.usable()
                )
                for _ in range(c.train_freq):
                    invalid += self._step_envs()
                self._end_vector_steps(start)
                metrics: dict[str, float] = {}
                if self.global_step >= c.learning_starts:
                    if self._mode_matters:
                        self.net.train()
                    sums: dict[str, float] = {}
                    for _ in range(c.gradient_steps):
                        for k, v in self.gradient_step().items():
                            sums[k] = sums.get(k, 0.0) + v
                    metrics = {k: v / c.gradient_steps for k, v in sums.items()}
                    if self.global_step - self.last_target_update >= c.target_update_interval:
                        self.update_target()
                steps = self.global_step - start
                metrics["SPS"] = steps / (time.perf_counter() - t0)
                metrics["epsilon"] = self.epsilon
                metrics["invalid_actions"] = float(invalid)
                metrics["invalid_action_rate"] = metrics["invalid_actions"] / steps
                metrics["learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
                if callback is not None and callback(self, metrics) is False:
                    break
        return self

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: the policy, target network, optimiser, counters, RNG, replay."""
        return {
            "format": self.FORMAT,
            "config": self.config.to_dict(),
            **self.policy.checkpoint_entries(),
            "target_model": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "last_target_update": self.last_target_update,
            "rng": self.rng.state_dict(),
            "replay": None if self.replay is None else self.replay.state_dict(),
        }

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (ValueError, nothing written, on a non-finite value)."""
        state = self.state_dict()
        bad = check_finite_state(state)
        if bad is not None:
            raise ValueError(f"refusing to save {path}: non-finite value in {bad}")
        save_checkpoint(state, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", data_parallel: Any = None) -> DQN:
        """The trainer saved in ``path`` (with its envs and replay buffer), ready to resume."""
        ckpt = read_trainer_checkpoint(path)
        if ckpt.get("format") != cls.FORMAT:
            raise ValueError(
                f"checkpoint {path} has format {ckpt.get('format')!r}, not {cls.FORMAT!r}"
            )
        try:
            config = DQNConfig.from_dict(dict(ckpt["config"]))
            config.device = device if device != "auto" else config.device
            trainer = cls(list(ckpt["env_ids"]), config, data_parallel)
            try:
                trainer.net.load_state_dict(ckpt["model"])
                trainer.target_net.load_state_dict(ckpt["target_model"])
                # A checkpoint of an earlier version holds Adam's state per parameter.
                trainer.optimizer.load_state_dict(
                    trainer.flat.flatten_optimizer_state(ckpt["optimizer"])
                )
                trainer.global_step = int(ckpt["global_step"])
                trainer.num_updates = int(ckpt["num_updates"])
                trainer.last_target_update = int(ckpt["last_target_update"])
                trainer.rng.load_state_dict(ckpt["rng"])
                if ckpt.get("replay") is not None:
                    trainer.allocate().load_state_dict(ckpt["replay"])
            except BaseException:
                trainer.envs.close()
                raise
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} is not a valid dqn checkpoint: {e}") from e
        return trainer
