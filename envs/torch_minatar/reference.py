"""Frame-by-frame conformance of the batched games with MinAtar's own ``Environment``.

:func:`check_conformance` runs ``num_envs`` MinAtar ``Environment`` objects (sticky
actions and difficulty ramping as configured) whose ``RandomState`` records every
draw it makes, and a :class:`~maskrl.envs.torch_minatar.vector.GameBatch` of the
same game fed with the same actions and with those recorded draws (see
:mod:`maskrl.envs.torch_minatar._base` for how a draw becomes a column). After
every step it compares, per env: the observation after the step (after the
autoreset where an episode ended), ``final_obs`` (the frame before the reset where
an episode ended, zero elsewhere), the reward and the termination flag.
Episodes end as in maskrl's registered ids: on termination or at the time limit,
after which the env is reset with ``last_action = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maskrl.device import resolve_device
from maskrl.envs.torch_minatar._base import Call
from maskrl.envs.torch_minatar.vector import GameBatch, make_game

__all__ = ["ConformanceResult", "RecordingRandomState", "check_conformance"]


class RecordingRandomState(np.random.RandomState):
    """A ``RandomState`` that logs each ``rand``/``randint`` call as ``(name, args, result)``.

    MinAtar's games draw only through these two methods.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.calls: list[Call] = []

    def rand(self, *args: int) -> Any:  # type: ignore[override]
        """``RandomState.rand``, recorded."""
        value = super().rand(*args)
        self.calls.append(("rand", args, np.copy(value) if args else value))
        return value

    def randint(  # type: ignore[override]
        self, low: int, high: int | None = None, size: Any = None, dtype: Any = int
    ) -> Any:
        """``RandomState.randint``, recorded."""
        value = super().randint(low, high, size, dtype)
        # A copy: freeway.py multiplies its speed array in place after drawing it.
        self.calls.append(("randint", (low, high, size), np.copy(value)))
        return value

    def take(self) -> list[Call]:
        """The calls since the last ``take`` (and forget them)."""
        calls, self.calls = self.calls, []
        return calls


@dataclass
class ConformanceResult:
    """Outcome of :func:`check_conformance`.

    Attributes:
        env_id: the game's id.
        num_envs: envs run side by side.
        steps: vector steps compared (``steps * num_envs`` env steps).
        episodes: episodes that ended during the run.
        total_reward: sum of all rewards (shows that scoring events were exercised).
        mismatch: None when every step agreed; else a description of the first difference.
    """

    env_id: str
    num_envs: int
    steps: int
    episodes: int
    total_reward: float
    mismatch: str | None

    @property
    def ok(self) -> bool:
        """True when every compared step agreed."""
        return self.mismatch is None


def _chw(state: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(state.transpose(2, 0, 1), dtype=np.float32)


def check_conformance(
    env_id: str,
    num_envs: int,
    steps: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    sticky_action_prob: float = 0.1,
    difficulty_ramping: bool = True,
    max_episode_steps: int | None = 10_000,
    action_probs: Sequence[float] | None = None,
    lazy_reset: bool | None = None,
) -> ConformanceResult:
    """Run MinAtar and the batched game side by side and compare every step.

    Actions are drawn over the game's minimal action set (a separate numpy
    generator seeded with ``seed``), uniformly or with ``action_probs`` (e.g. to
    make Freeway's chicken cross the road, which a uniform policy rarely does);
    MinAtar env ``i`` is seeded with ``seed * 1000 + i``. ``lazy_reset`` picks the
    batch's autoreset path (see :class:`~maskrl.envs.torch_minatar.GameBatch`).

    Returns:
        A :class:`ConformanceResult`; ``mismatch`` names the first step, env and
        quantity that differed.
    """
    from minatar import Environment

    game = make_game(env_id, difficulty_ramping)
    dev = resolve_device(device)
    refs = []
    recs = []
    for i in range(num_envs):
        env = Environment(
            game.name,
            sticky_action_prob=sticky_action_prob,
            difficulty_ramping=difficulty_ramping,
        )
        rec = RecordingRandomState(seed * 1000 + i)
        # MinAtar's seed() shares one RandomState between the wrapper (sticky actions)
        # and the game; do the same with the recording one.
        env.random = rec
        env.env.random = rec
        refs.append(env)
        recs.append(rec)
    # reuse_obs: the trainers' path (each step's observations are read before the next).
    batch = GameBatch(
        game, num_envs, dev, sticky_action_prob, max_episode_steps, lazy_reset, reuse_obs=True
    )

    reset_cols = []
    for env, rec in zip(refs, recs, strict=True):
        env.reset()
        env.last_action = 0
        reset_cols.append(game.reset_draws_from_calls(rec.take()))
    f64 = torch.float64
    obs = batch.reset(torch.tensor(reset_cols, dtype=f64, device=dev).view(num_envs, -1))
    expected = np.stack([_chw(env.state()) for env in refs])
    if not np.array_equal(obs.cpu().numpy(), expected):
        return ConformanceResult(env_id, num_envs, 0, 0, 0.0, "observation after the first reset")

    rng = np.random.default_rng(seed)
    minimal = np.asarray(game.minimal_actions)
    ep_len = np.zeros(num_envs, dtype=np.int64)
    episodes = 0
    total = 0.0
    filler = [0.5] * game.reset_draws
    for t in range(1, steps + 1):
        actions = rng.choice(minimal, size=num_envs, p=action_probs)
        draws = []
        rewards = np.zeros(num_envs, dtype=np.float32)
        terms = np.zeros(num_envs, dtype=np.bool_)
        finals = []
        nexts = []
        for i, (env, rec) in enumerate(zip(refs, recs, strict=True)):
            r, term = env.act(int(actions[i]))
            calls = rec.take()
            name, args, sticky = calls[0]
            assert name == "rand" and args == (), calls[0]
            row = [float(sticky), *game.step_draws_from_calls(calls[1:])]
            rewards[i], terms[i] = r, term
            ep_len[i] += 1
            ended = term or (max_episode_steps is not None and ep_len[i] >= max_episode_steps)
            # final_obs: the frame before the reset where the episode ended, zero elsewhere.
            finals.append(_chw(env.state()) if ended else np.zeros_like(_chw(env.state())))
            if ended:
                env.reset()
                env.last_action = 0
                row += game.reset_draws_from_calls(rec.take())
                ep_len[i] = 0
                episodes += 1
            else:
                row += filler
            nexts.append(_chw(env.state()))
            draws.append(row)
        total += float(rewards.sum())
        out = batch.step(
            torch.as_tensor(actions, dtype=torch.int64, device=dev),
            torch.tensor(draws, dtype=f64, device=dev),
        )
        got = {
            "reward": out[1].cpu().numpy(),
            "terminated": out[2].cpu().numpy(),
            "final observation": out[4].cpu().numpy(),
            "observation": out[0].cpu().numpy(),
        }
        want = {
            "reward": rewards,
            "terminated": terms,
            "final observation": np.stack(finals),
            "observation": np.stack(nexts),
        }
        for key, value in got.items():
            if not np.array_equal(value, want[key]):
                bad = [i for i in range(num_envs) if not np.array_equal(value[i], want[key][i])]
                msg = f"{key} differs at step {t} in env(s) {bad[:5]}"
                return ConformanceResult(env_id, num_envs, t, episodes, total, msg)
    return ConformanceResult(env_id, num_envs, steps, episodes, total, None)
