"""The skeleton every on-policy trainer shares (PPO, Actor-Mimic, ...).

:class:`OnPolicyTrainer` owns the loop of :meth:`~OnPolicyTrainer.learn` --
learning-rate schedule, the QAT delay, a rollout under the CPU rollout
settings, the trainer's own labelling hook, the update, counters and the
metrics every trainer reports -- plus the rollout buffer, the default masked
action sampling and the checkpoint writing that refuses non-finite state. A
trainer subclasses it and supplies :meth:`update` (its loss, through
:func:`~maskrl.agents.trainer.optimize_minibatches`), :meth:`state_dict`, and,
if it needs one, :meth:`after_rollout` (Actor-Mimic labels the rollout with
its experts there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskrl.agents.checkpoint import load_checkpoint, save_checkpoint
from maskrl.agents.distributed import DataParallel
from maskrl.agents.policy import MaskedPolicy, action_layout
from maskrl.agents.rollout import (
    EpisodeStats,
    Obs,
    RolloutBuffer,
    RolloutState,
    _check_fits,
    _space_spec,
    buffer_bytes,
    collect_rollout,
    start_rollouts,
)
from maskrl.agents.trainer import (
    TrainerRNG,
    check_finite_state,
    cpu_rollout_mode,
    linear_schedule,
    set_learning_rate,
    torch_threads,
)
from maskrl.distributions import MaskedPolicyHead
from maskrl.quant import set_qat_step

__all__ = ["OnPolicyTrainer", "check_rollout_fits", "read_trainer_checkpoint"]


def read_trainer_checkpoint(path: str | Path) -> dict[str, Any]:
    """A trainer checkpoint to resume from: :func:`load_checkpoint` plus a finite check
    of the whole state (weights, optimiser moments, any head a trainer adds).

    Every trainer's ``load`` reads through here, so a file holding NaN or inf
    anywhere is refused before any of it reaches a network -- the same rule
    :meth:`OnPolicyTrainer.save` applies when writing.

    Raises:
        ValueError: missing, corrupt, or holding a non-finite value (named by its key path).
    """
    state = load_checkpoint(path)
    bad = check_finite_state(state)
    if bad is not None:
        raise ValueError(
            f"checkpoint {path} holds a non-finite value in {bad}; it cannot be resumed"
        )
    return state


def check_rollout_fits(
    env_ids: list[str],
    num_envs: int,
    num_steps: int,
    device: torch.device,
    backend: str = "numpy",
    multigame: bool = False,
) -> None:
    """Refuse, before any of the ``num_envs`` envs is built, a rollout buffer that cannot fit.

    One env per game is built to read the spaces (``multigame``: as
    :func:`~maskrl.envs.make_multigame_vec` lays them out even for one game), then
    the buffer's size is checked against the memory free on ``device``, as
    :class:`~maskrl.agents.rollout.RolloutBuffer` itself does -- but without
    first spending minutes and gigabytes on an impossible number of envs.

    Raises:
        ValueError: the buffer would not fit (lower ``--num-steps`` or ``--num-envs``).
    """
    from maskrl.agents.trainer import make_training_env
    from maskrl.envs import make_multigame_vec

    k = len(env_ids)
    if multigame:
        probe = make_multigame_vec(env_ids, k, seed=0)
    else:
        probe = make_training_env(env_ids, k, 0, backend, device)
    try:
        obs_space, act_space = probe.single_observation_space, probe.single_action_space
    finally:
        probe.close()
    nvec, action_shape = action_layout(act_space)
    need = buffer_bytes(_space_spec(obs_space), sum(nvec), action_shape, num_steps, num_envs)
    _check_fits(need, device, num_steps, num_envs)


class OnPolicyTrainer:
    """Rollout -> (hook) -> update, repeated; see the module docstring.

    Subclasses set, in their constructor: ``config`` (with ``num_envs``,
    ``num_steps``, ``batch_size``, ``learning_rate``, ``anneal_lr``, ``seed``,
    ``cpu_rollout_tuning``, ``torch_threads``, ``qat``), ``device``, ``envs``,
    ``policy``, ``optimizer``, and ``data_parallel`` for a rank of a torchrun
    job (:mod:`maskrl.agents.distributed`; its envs are then
    :attr:`num_envs_local`, seeded from :attr:`env_seed`); then call
    :meth:`_init_state`.
    """

    config: Any
    device: torch.device
    envs: Any
    policy: MaskedPolicy
    optimizer: torch.optim.Optimizer
    #: This process's rank in a data-parallel job (None: one process, the default).
    data_parallel: DataParallel | None = None
    #: Count invalid actions from the infos' ``"invalid_action"`` instead of the
    #: stored masks (the masking ablation: the masks the agent sampled under are all-valid).
    invalid_from_infos: bool = False

    def _init_state(self) -> None:
        self.net: nn.Module = self.policy.net
        self.head: MaskedPolicyHead = self.policy.head
        self.rng: TrainerRNG = self.policy.rng
        self.global_step = 0
        self.num_updates = 0
        self.episode_stats = EpisodeStats()
        self._buffer: RolloutBuffer | None = None
        self._state: RolloutState | None = None
        self._ranks_started = False

    @property
    def steps_per_update(self) -> int:
        """Env steps per update (``num_envs * num_steps``; a data-parallel job's, all ranks)."""
        return int(self.config.batch_size)

    @property
    def num_envs_local(self) -> int:
        """The envs this process steps: ``num_envs``, or its rank's share of them."""
        n = int(self.config.num_envs)
        return n if self.data_parallel is None else n // self.data_parallel.world_size

    @property
    def env_seed(self) -> int:
        """Seed of this process's first env (``seed``, plus the rank's offset in a job)."""
        dp = self.data_parallel
        offset = 0 if dp is None else dp.env_seed_offset(int(self.config.num_envs))
        return int(self.config.seed) + offset

    # ------------------------------------------------------------------ acting
    def _act(self, obs: Obs, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, value = self.net(obs)
        action, logp = self.head.sample(logits, mask, generator=self.rng.device_gen)
        return action, logp, value

    def _value(self, obs: Obs) -> torch.Tensor:
        return self.net(obs)[1]

    # ------------------------------------------------------------------ buffer
    def allocate(self) -> RolloutBuffer:
        """Allocate the rollout buffer (ValueError if it cannot fit in memory)."""
        if self._buffer is None:
            c = self.config
            self._buffer = RolloutBuffer(
                self.envs.single_observation_space, self.policy.n_logits,
                self.policy.action_shape, c.num_steps, self.num_envs_local, self.device,
                self.head.nvec,
            )  # fmt: skip
        return self._buffer

    def _ensure_rollout_state(self) -> tuple[RolloutBuffer, RolloutState]:
        if self.envs is None:
            raise ValueError(
                "this agent has no env to train on; pass one to the constructor (or to load)"
            )
        buffer = self.allocate()
        if self._state is None:
            # Seeds differ after a resume so a resumed run does not replay its first episodes.
            self._state = start_rollouts(self.envs, buffer, seed=self.env_seed + self.global_step)
        return buffer, self._state

    def _start_ranks(self) -> None:
        """Once, before a data-parallel rank trains: rank 0's weights everywhere, own generators."""
        dp = self.data_parallel
        if dp is None or self._ranks_started:
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        seen = {id(p) for p in params}
        tensors = params + [b for b in self.net.buffers() if id(b) not in seen]
        dp.start(tensors)
        if dp.rank:  # rank 0 keeps the run's own stream (the one its checkpoint saves)
            self.rng.reseed(dp.rank_seed(int(self.config.seed), self.global_step))
        self._ranks_started = True

    # ---------------------------------------------------------------- training
    def after_rollout(self, buffer: RolloutBuffer) -> None:
        """Hook between the rollout and the update (default: nothing)."""

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One update on a filled buffer; returns the metrics to report."""
        raise NotImplementedError

    def learn(
        self,
        total_timesteps: int,
        callback: Callable[[Any, dict[str, float]], bool | None] | None = None,
    ) -> Any:
        """Train until ``global_step >= total_timesteps`` (env steps, all envs counted).

        ``callback(trainer, metrics)`` runs after every update; returning ``False``
        stops training. ``metrics`` holds the update's losses, ``SPS``,
        ``learning_rate`` and the number of invalid actions taken (always 0
        unless the network or mask plumbing is broken, or the masking ablation's
        ``invalid_from_infos`` lets the agent sample over all actions). Training resumes where it
        stopped when called again.

        A data-parallel rank (``data_parallel``) first takes rank 0's weights; its
        updates average the ranks' gradients, and after each one ``metrics`` and
        :attr:`episode_stats` are the whole job's (losses averaged over ranks,
        every rank's episodes), so every rank calls ``callback`` alike.

        Raises:
            NonFiniteError: a non-finite reward, observation, loss or gradient
                (named, with the env index and step); the weights are left as
                they were before it.
        """
        c = self.config
        buffer, state = self._ensure_rollout_state()
        dp = self.data_parallel
        self._start_ranks()
        with torch_threads(c.torch_threads):
            while self.global_step < total_timesteps:
                if c.anneal_lr:
                    set_learning_rate(
                        self.optimizer,
                        linear_schedule(c.learning_rate, self.global_step, total_timesteps),
                    )
                t0 = time.perf_counter()
                invalid_before = state.invalid_actions
                episodes_before = len(self.episode_stats.returns)
                if c.qat:
                    set_qat_step(self.net, self.global_step)
                self.net.eval()
                with cpu_rollout_mode(self.device, c.cpu_rollout_tuning):
                    collect_rollout(
                        self.envs, buffer, state, self._act, self._value, self.episode_stats,
                        self.invalid_from_infos,
                    )  # fmt: skip
                self.after_rollout(buffer)
                self.net.train()
                metrics = self.update(buffer)
                buffer.roll_over()
                invalid = state.invalid_actions - invalid_before
                if dp is not None:  # the job's losses, invalid actions and episodes
                    metrics, invalid = dp.sync_update(
                        metrics, invalid, self.episode_stats, episodes_before
                    )
                self.global_step += c.batch_size
                self.num_updates += 1
                metrics["SPS"] = c.batch_size / (time.perf_counter() - t0)
                metrics["invalid_actions"] = float(invalid)
                metrics["invalid_action_rate"] = metrics["invalid_actions"] / c.batch_size
                metrics["learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
                if callback is not None and callback(self, metrics) is False:
                    break
        return self

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write a checkpoint atomically (temporary file, then rename).

        Raises:
            ValueError: a weight or optimiser value is non-finite (a checkpoint
                that cannot be used is never written).
        """
        state = self.state_dict()
        # Every floating tensor of the state (weights, optimiser moments, any head a
        # trainer adds); the RNG states are integer tensors and pass untouched.
        bad = check_finite_state(state)
        if bad is not None:
            raise ValueError(f"refusing to save {path}: non-finite value in {bad}")
        save_checkpoint(state, path)
