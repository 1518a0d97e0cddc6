"""The skeleton every on-policy trainer shares (PPO, Actor-Mimic, ...).

:class:`OnPolicyTrainer` owns the loop of :meth:`~OnPolicyTrainer.learn` --
learning-rate schedule, the QAT delay, a rollout under the CPU rollout
settings, the trainer's own labelling hook, the update, counters and the
metrics every trainer reports -- plus the rollout buffer, the default masked
action sampling and the checkpoint writing that refuses non-finite state. A
trainer subclasses it, calls its constructor, and supplies the abstract
members -- :attr:`~OnPolicyTrainer.FORMAT`, :meth:`~OnPolicyTrainer.update`
(its loss, through :func:`~maskrl.agents.trainer.optimize_minibatches`),
:meth:`~OnPolicyTrainer.state_dict` and :meth:`~OnPolicyTrainer.load` -- and,
if it needs them, the hooks :meth:`~OnPolicyTrainer.after_rollout`
(Actor-Mimic labels the rollout with its experts there) and
:meth:`~OnPolicyTrainer.act` (a recurrent policy's state). ``docs/trainers.md``
walks through adding one.
"""

from __future__ import annotations

import abc
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
    PolicyState,
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

__all__ = [
    "OnPolicyTrainer",
    "check_rollout_fits",
    "local_env_seed",
    "local_num_envs",
    "read_trainer_checkpoint",
]


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
    if state.get("policy_only"):
        raise ValueError(
            f"checkpoint {path} holds a policy only (packed by train.py pack-experts, without "
            "the optimizer's state): it cannot be resumed; evaluate it, distil from it, or start "
            "a new run from its weights with --init-from"
        )
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


def local_num_envs(config: Any, data_parallel: DataParallel | None) -> int:
    """The envs one process steps: ``config.num_envs``, or its rank's share in a job."""
    n = int(config.num_envs)
    return n if data_parallel is None else n // data_parallel.world_size


def local_env_seed(config: Any, data_parallel: DataParallel | None) -> int:
    """Seed of one process's first env: ``config.seed``, plus its rank's offset in a job."""
    offset = 0 if data_parallel is None else data_parallel.env_seed_offset(int(config.num_envs))
    return int(config.seed) + offset


class OnPolicyTrainer(abc.ABC):
    """Rollout -> (hook) -> update, repeated; see the module docstring.

    **The contract.** A trainer subclasses this class, builds what it needs and
    calls ``super().__init__(config, policy, optimizer, envs, device, ...)``,
    and supplies the abstract members (instantiating a subclass that lacks one
    raises ``TypeError``):

    * :attr:`FORMAT` -- the ``format`` string of the checkpoints it writes (a
      class attribute, e.g. ``FORMAT = "maskrl.ppo/2"``);
    * :meth:`update` -- one update on a filled rollout buffer, returning the
      metrics to log;
    * :meth:`state_dict` -- everything a resume needs (with
      ``**self.policy.checkpoint_entries()``, so that
      :func:`~maskrl.agents.load_policy` reads the policy of any trainer);
    * :meth:`load` -- a classmethod that rebuilds the trainer from such a
      checkpoint.

    Optional hooks, with working defaults: :meth:`after_rollout` (Actor-Mimic
    labels the rollout there), :meth:`act` and :meth:`initial_policy_state` (a
    recurrent policy's per-env state, carried by the rollout and reset at
    episode ends), :meth:`_act` (the feedforward action sampling).

    To run it with ``train.py`` and the run harness (run folder, resume, lock,
    ``config.json``), register it: :func:`maskrl.agents.register_trainer`.
    See ``docs/trainers.md``.
    """

    #: Count invalid actions from the infos' ``"invalid_action"`` instead of the
    #: stored masks (the masking ablation: the masks the agent sampled under are all-valid).
    invalid_from_infos: bool = False

    def __init__(
        self,
        config: Any,
        policy: MaskedPolicy,
        optimizer: torch.optim.Optimizer,
        envs: Any,
        device: torch.device,
        data_parallel: DataParallel | None = None,
        *,
        invalid_from_infos: bool = False,
    ) -> None:
        """The state every on-policy trainer shares.

        Args:
            config: the trainer's configuration, a
                :class:`~maskrl.agents.config.TrainerConfig` (``num_envs``,
                ``num_steps``, ``batch_size``, ``learning_rate``, ``anneal_lr``,
                ``seed``, ``cpu_rollout_tuning``, ``torch_threads``, ``qat``, ...),
                already validated.
            policy: the policy being trained (its network acts in the rollout).
            optimizer: the optimiser of the policy's parameters (and of any
                parameters the trainer adds).
            envs: the vector env to train on, with :attr:`num_envs_local` envs
                seeded from :attr:`env_seed` (build them with
                :func:`local_num_envs` / :func:`local_env_seed` before calling
                this); ``None`` for a trainer that only acts.
            device: where the network and the rollout buffer live.
            data_parallel: this process's rank in a torchrun job
                (:mod:`maskrl.agents.distributed`); None for one process.
            invalid_from_infos: count invalid actions from the envs' reports
                (the masking ablation), not from the stored masks.
        """
        self.config = config
        self.policy = policy
        self.optimizer = optimizer
        self.envs = envs
        self.device = device
        #: This process's rank in a data-parallel job (None: one process, the default).
        self.data_parallel = data_parallel
        self.invalid_from_infos = invalid_from_infos
        self.net: nn.Module = policy.net
        self.head: MaskedPolicyHead = policy.head
        self.rng: TrainerRNG = policy.rng
        self.global_step = 0
        self.num_updates = 0
        #: The ``total_timesteps`` of the current (or last) :meth:`learn` call: the
        #: end of the learning-rate and entropy schedules. ``None`` before any.
        self.schedule_total: int | None = None
        self.episode_stats = EpisodeStats()
        self._buffer: RolloutBuffer | None = None
        self._state: RolloutState | None = None
        self._ranks_started = False

    # ------------------------------------------------------- the abstract part
    @property
    @abc.abstractmethod
    def FORMAT(self) -> str:  # noqa: N802  (a class constant in every subclass)
        """The ``format`` entry of the checkpoints :meth:`save` writes (e.g. ``"maskrl.ppo/2"``).

        Set it as a class attribute. The registry
        (:func:`~maskrl.agents.register_trainer`) maps it back to the trainer, so
        :func:`~maskrl.agents.load_trainer` and :func:`~maskrl.agents.load_policy`
        read the checkpoints.
        """

    @abc.abstractmethod
    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One update on a filled buffer; returns the metrics to report (name -> float).

        Runs with the network in train mode. Use
        :func:`~maskrl.agents.trainer.optimize_minibatches` for the epochs x
        minibatches loop (gradient clipping, non-finite checks, the
        data-parallel gradient averaging).
        """

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, as plain data and tensors.

        At least ``"format": self.FORMAT``, ``"config"``,
        ``**self.policy.checkpoint_entries()``, ``"optimizer"``,
        ``"global_step"``, ``"num_updates"`` and ``"rng"``
        (``self.rng.state_dict()``). :meth:`save` refuses a non-finite one.
        """

    @classmethod
    @abc.abstractmethod
    def load(
        cls, path: str | Path, device: str = "auto", data_parallel: DataParallel | None = None
    ) -> OnPolicyTrainer:
        """Rebuild a trainer from a checkpoint written by :meth:`save`, ready to resume.

        Read the file with :func:`read_trainer_checkpoint` (which refuses
        non-finite state) and raise ``ValueError`` for a checkpoint of another
        format or a malformed one. The trainer may come back without envs
        (PPO's); the harness then gives it its envs.
        """

    # ------------------------------------------------------------- properties
    @property
    def steps_per_update(self) -> int:
        """Env steps per update (``num_envs * num_steps``; a data-parallel job's, all ranks)."""
        return int(self.config.batch_size)

    @property
    def metrics_interval(self) -> int:
        """Env steps between the harness's tensorboard points of :meth:`learn`'s metrics.

        0 (on-policy trainers): one point per update. A trainer whose iterations
        are a few env steps long (DQN) sets more; the harness then writes the mean
        of each metric over the iterations in between.
        """
        return 0

    @property
    def num_envs_local(self) -> int:
        """The envs this process steps: ``num_envs``, or its rank's share of them."""
        return local_num_envs(self.config, self.data_parallel)

    @property
    def env_seed(self) -> int:
        """Seed of this process's first env (``seed``, plus the rank's offset in a job)."""
        return local_env_seed(self.config, self.data_parallel)

    # ------------------------------------------------------------------ acting
    def _act(self, obs: Obs, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A feedforward policy step: ``(action, log_prob, value)`` sampled under ``mask``."""
        logits, value = self.net(obs)
        action, logp = self.head.sample(logits, mask, generator=self.rng.device_gen)
        return action, logp, value

    def _value(self, obs: Obs) -> torch.Tensor:
        return self.net(obs)[1]

    def initial_policy_state(self, num_envs: int) -> PolicyState:
        """The per-env policy state at the start of training (default None: feedforward).

        A recurrent trainer returns e.g. an LSTM's ``(h, c)``, each ``[num_envs, ...]``
        (the env index first); the rollout resets the rows of envs whose
        episode ended to zeros (:func:`~maskrl.agents.rollout.reset_state_rows`).
        """
        return None

    def act(
        self, obs: Obs, mask: torch.Tensor, policy_state: PolicyState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PolicyState]:
        """One rollout step: ``(action, log_prob, value, next policy state)``.

        The default is :meth:`_act` with the state passed through. A recurrent
        trainer overrides this (and :meth:`value`) to read and advance its state;
        it returns a new state rather than changing ``policy_state`` in place.
        """
        action, logp, value = self._act(obs, mask)
        return action, logp, value, policy_state

    def value(self, obs: Obs, policy_state: PolicyState) -> torch.Tensor:
        """The value of ``obs`` under ``policy_state`` (bootstrapping; default: :meth:`_value`)."""
        return self._value(obs)

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
            self._state.policy_state = self.initial_policy_state(self.num_envs_local)
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
    def after_rollout(self, buffer: RolloutBuffer) -> None:  # noqa: B027 (an optional hook)
        """Hook between the rollout and the update (default: nothing)."""

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
        self.schedule_total = total_timesteps
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
                        self.envs, buffer, state, self.act, self.value, self.episode_stats,
                        self.invalid_from_infos, stateful=True,
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
