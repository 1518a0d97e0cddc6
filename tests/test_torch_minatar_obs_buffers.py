"""The torch MinAtar envs' observation contract: ``copy_obs=True`` (default) returns
tensors the env never writes again; ``copy_obs=False`` reuses them, valid until the
next step, and gives the same data, also to the trainers' rollout."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from maskrl.agents.rollout import (
    EpisodeStats,
    RolloutBuffer,
    collect_rollout,
    start_rollouts,
)
from maskrl.agents.trainer import make_training_env
from maskrl.envs import make_multigame_vec, make_vec

BREAKOUT = "maskrl/MinAtar-Breakout-v0"
TWO_GAMES = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"]


def _obs(o: Any) -> torch.Tensor:
    return o["obs"] if isinstance(o, dict) else o


def _actions(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(masks.to(torch.float32), 1, generator=gen).flatten()


@pytest.mark.parametrize("multi", [False, True], ids=["one-game", "two-games"])
@pytest.mark.parametrize("kwargs", [{}, {"copy_obs": True}], ids=["default", "copy_obs"])
def test_held_observations_stay_unchanged_with_copy_obs(
    multi: bool, kwargs: dict[str, Any]
) -> None:
    if multi:
        envs = make_multigame_vec(TWO_GAMES, 64, backend="torch", seed=0, **kwargs)
    else:
        envs = make_vec(BREAKOUT, 64, backend="torch", seed=0, **kwargs)
    assert envs.copy_obs is True  # type: ignore[attr-defined]
    obs, infos = envs.reset()
    gen = torch.Generator().manual_seed(0)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    ended = 0
    for t in range(40):
        obs, _, term, trunc, infos = envs.step(_actions(infos["action_mask"], gen))
        ended += int((term | trunc).sum())
        if t % 10 == 0:  # a whole tensor, and a view of another
            kept.append((_obs(obs), _obs(obs).clone()))
            final = _obs(infos["final_obs"])
            kept.append((final[5:9], final[5:9].clone()))
    assert ended > 0
    for held, copy in kept:
        assert torch.equal(held, copy)


@pytest.mark.parametrize("multi", [False, True], ids=["one-game", "two-games"])
def test_reused_observations_are_right_until_the_next_step(multi: bool) -> None:
    def build(copy_obs: bool) -> Any:
        if multi:
            return make_multigame_vec(TWO_GAMES, 32, backend="torch", seed=3, copy_obs=copy_obs)
        return make_vec(BREAKOUT, 32, backend="torch", seed=3, copy_obs=copy_obs)

    safe, reused = build(True), build(False)
    assert reused.copy_obs is False
    _, infos = safe.reset()
    reused.reset()
    gen = torch.Generator().manual_seed(1)
    prev: torch.Tensor | None = None
    ended = 0
    for _ in range(80):
        actions = _actions(infos["action_mask"], gen)
        want = safe.step(actions)
        got = reused.step(actions)
        infos = want[4]
        # Until the next step, the reused tensors hold exactly the fresh ones' data,
        # final observations included (zero where no episode ended).
        assert torch.equal(_obs(got[0]), _obs(want[0]))
        assert torch.equal(_obs(got[4]["final_obs"]), _obs(want[4]["final_obs"]))
        for i in (1, 2, 3):
            assert torch.equal(got[i], want[i])
        ended += int((want[2] | want[3]).sum())
        if not multi and prev is not None:
            # One game: the next step wrote into the observation it returned before.
            assert prev.data_ptr() == _obs(got[0]).data_ptr()
            assert torch.equal(prev, _obs(want[0]))
        prev = _obs(got[0])
    assert ended > 5


def _rollout(copy_obs: bool) -> RolloutBuffer:
    envs = make_vec(BREAKOUT, 16, backend="torch", seed=0, copy_obs=copy_obs, max_episode_steps=7)
    buf = RolloutBuffer(envs.single_observation_space, 6, (), 6, 16, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)

    def act(obs: Any, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = _actions(mask, gen)
        return a, torch.zeros(16), obs.flatten(1).sum(1)

    def value(obs: Any) -> torch.Tensor:  # depends on every pixel of the final observation
        return (obs.flatten(1) * torch.arange(400.0)).sum(1)

    state = start_rollouts(envs, buf, seed=0)
    stats = EpisodeStats()
    for _ in range(3):
        collect_rollout(envs, buf, state, act, value, stats)
        buf.roll_over()
    assert bool(buf.truncated.any()) and len(stats.returns) > 0
    return buf


def test_the_rollout_gets_the_same_data_from_reused_observations() -> None:
    safe, reused = _rollout(True), _rollout(False)
    assert torch.equal(safe.obs, reused.obs)
    assert torch.equal(safe.values, reused.values)
    assert torch.equal(safe.final_values, reused.final_values)
    assert (safe.final_values != 0).any()
    assert torch.equal(safe.rewards, reused.rewards)


def test_trainers_build_the_env_with_reused_observations() -> None:
    envs = make_training_env([BREAKOUT], 4, 0, backend="torch", device=torch.device("cpu"))
    assert envs.copy_obs is False
    multi = make_training_env(TWO_GAMES, 4, 0, backend="torch", device=torch.device("cpu"))
    assert multi.copy_obs is False


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_copy_obs_must_be_a_bool(bad: Any) -> None:
    with pytest.raises(ValueError, match="copy_obs must be True or False"):
        make_vec(BREAKOUT, 2, backend="torch", copy_obs=bad)
