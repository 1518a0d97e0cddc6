"""What an action outside the mask does, env by env, and the ecosystem's env checkers.

By default every maskrl env accepts every action of its action space and applies
its original's rule to an invalid one (MinAtar and ALE: the game's equivalent
action, the no-op for an input the game ignores; PettingZoo's board games: the
mover loses; Knapsack: the knapsack closes). ``check_actions=True`` raises a
``ValueError`` instead. Gymnasium's and SB3's ``check_env`` step with random,
unmasked actions, so they pass only with the default.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_helpers import make, run_env_checkers

import maskrl.envs
from maskrl.envs import ActionMaskWrapper, make_multigame_vec, make_vec

BREAKOUT = "maskrl/MinAtar-Breakout-v0"


# ------------------------------------------------------------------ the checkers


@pytest.mark.parametrize("env_id", maskrl.envs.registered_ids())
def test_gymnasium_and_sb3_env_checkers_pass_as_gym_make_builds_the_env(env_id: str) -> None:
    env = make(env_id)  # one env for both checkers
    run_env_checkers(env)
    env.close()


# ------------------------------------------------------------------ MinAtar


def test_minatar_action_outside_the_minimal_set_is_the_noop_by_hand() -> None:
    env = make(BREAKOUT, sticky_action_prob=0.0)
    obs, _ = env.reset(seed=0)
    assert obs[0, 9, 4] == 1  # Breakout's paddle starts in column 4 of the bottom row
    # up (2), down (4) and fire (5) are outside Breakout's minimal set {0, 1, 3}.
    for action, column in [(2, 4), (1, 3), (4, 3), (5, 3), (3, 4)]:
        obs, _, _, _, info = env.step(action)
        assert "invalid_action" not in info
        assert np.flatnonzero(obs[0, 9]).tolist() == [column], action
    env = make("maskrl/MinAtar-Freeway-v0", sticky_action_prob=0.0)
    obs, _ = env.reset(seed=0)
    assert obs[0, 9, 4] == 1  # the chicken starts at the bottom, column 4
    for action in (1, 3, 5):  # not in Freeway's {0, 2, 4}; the chicken may move after 3 steps
        obs, *_ = env.step(action)
        assert obs[0, 9, 4] == 1
    obs, *_ = env.step(2)  # up
    assert obs[0, 8, 4] == 1 and obs[0, 9, 4] == 0


@pytest.mark.parametrize("name", ["Asterix", "Breakout", "Freeway", "SpaceInvaders"])
def test_minatar_every_invalid_action_plays_exactly_as_the_noop(name: str) -> None:
    # With sticky actions on: the same seed gives the same draws, so the invalid
    # action must also repeat as a no-op.
    env_id = f"maskrl/MinAtar-{name}-v0"
    a, b = make(env_id), make(env_id)
    obs_a, info = a.reset(seed=5)
    obs_b, _ = b.reset(seed=5)
    invalid = np.flatnonzero(~info["action_mask"])
    assert invalid.size
    for t in range(150):
        out_a = a.step(int(invalid[t % invalid.size]))
        out_b = b.step(0)
        np.testing.assert_array_equal(out_a[0], out_b[0], err_msg=f"step {t}")
        assert out_a[1:4] == out_b[1:4], t
        if out_a[2] or out_a[3]:
            break


def test_minatar_check_actions_raises_and_out_of_range_always_raises() -> None:
    strict = make(BREAKOUT, check_actions=True)
    strict.reset(seed=0)
    with pytest.raises(ValueError, match=rf"invalid action 2 in env '{BREAKOUT}' at step 1: .*"
                       r"minimal action set is \[0, 1, 3\]"):  # fmt: skip
        strict.step(2)
    env = make(BREAKOUT)
    env.reset(seed=0)
    for bad in (6, -1):
        with pytest.raises(ValueError, match=rf"invalid action {bad} .*Discrete\(6\)"):
            env.step(bad)


# ------------------------------------------------------------------ Atari


@pytest.mark.parametrize("name", ["Breakout", "Seaquest"])
def test_minatar_padded_actions_are_invalid_and_play_exactly_as_the_noop(name: str) -> None:
    # num_actions pads the action space: the mask gains False entries only, and a
    # padding action is the no-op, sticky actions included (same seed, same draws).
    env_id = f"maskrl/MinAtar-{name}-v0"
    six, padded = make(env_id), make(env_id, num_actions=20)
    assert padded.action_space == gym.spaces.Discrete(20)
    obs_a, info_a = padded.reset(seed=3)
    obs_b, info_b = six.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert info_a["action_mask"].shape == (20,)
    np.testing.assert_array_equal(info_a["action_mask"][:6], info_b["action_mask"])
    assert not info_a["action_mask"][6:].any()
    rng = np.random.default_rng(0)
    for t in range(200):
        a = int(rng.integers(20))
        out_a = padded.step(a)
        out_b = six.step(a if a < 6 else 0)
        np.testing.assert_array_equal(out_a[0], out_b[0], err_msg=f"step {t}")
        assert out_a[1:4] == out_b[1:4], t
        if out_a[2] or out_a[3]:
            break
    with pytest.raises(ValueError, match=r"invalid action 20 .*Discrete\(20\)"):
        padded.step(20)
    strict = make(env_id, num_actions=20, check_actions=True)
    strict.reset(seed=0)
    with pytest.raises(ValueError, match="invalid action 7 .*minimal action set"):
        strict.step(7)
    for bad in (5, 6.0, True):
        with pytest.raises(ValueError, match="num_actions must be"):
            make(env_id, num_actions=bad)
    # make_vec batches the padded mask as the env's own.
    envs = make_vec(env_id, num_envs=2, seed=0, num_actions=20)
    _, infos = envs.reset()
    np.testing.assert_array_equal(infos["action_mask"], np.stack([info_a["action_mask"]] * 2))
    envs.close()


def test_atari_action_outside_the_minimal_set_is_played_by_ale() -> None:
    # Breakout's minimal set is NOOP, FIRE, RIGHT, LEFT: UP (2) is an input the
    # game ignores, so ALE plays it exactly as NOOP (sticky actions included).
    a, b = make("maskrl/Atari-Breakout-v0"), make("maskrl/Atari-Breakout-v0")
    _, info = a.reset(seed=1)
    b.reset(seed=1)
    assert not info["action_mask"][2]
    for t in range(40):
        out_a, out_b = a.step(2), b.step(0)
        np.testing.assert_array_equal(out_a[0], out_b[0], err_msg=f"step {t}")
        assert out_a[1:4] == out_b[1:4]
    strict = make("maskrl/Atari-Breakout-v0", check_actions=True)
    strict.reset(seed=1)
    with pytest.raises(ValueError, match=r"invalid action 2 in env 'maskrl/Atari-Breakout-v0'"):
        strict.step(2)


# ------------------------------------------------------------------ board games


def first_legal(observation: np.ndarray, action_mask: np.ndarray, rng: np.random.Generator) -> int:
    return int(np.flatnonzero(action_mask)[0])


def test_connect_four_illegal_move_loses_the_game_as_in_pettingzoo() -> None:
    env = make("maskrl/ConnectFour-v0", opponent=first_legal)
    env.reset(seed=0)
    for _ in range(3):  # both players drop into column 0, which is then full
        obs, _, term, _, info = env.step(0)
        assert not term
    assert not info["action_mask"][0]
    after, reward, term, trunc, info = env.step(0)
    assert (reward, term, trunc, info["invalid_action"]) == (-1.0, True, False, True)
    np.testing.assert_array_equal(after, obs)  # the board is unchanged
    assert obs[:, 0].sum() == 6  # six pieces in column 0, three each
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)
    env.reset(seed=0)  # and a new game starts normally
    assert env.step(1)[2] is False


def test_tictactoe_illegal_move_loses_and_check_actions_raises() -> None:
    env = make("maskrl/TicTacToe-v0", opponent=first_legal)
    env.reset(seed=0)
    env.step(4)  # centre; the opponent takes cell 0
    _, reward, term, _, info = env.step(0)  # cell 0 is the opponent's
    assert (reward, term, info["invalid_action"]) == (-1.0, True, True)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid action 9 .*not in Discrete\(9\)"):
        env.step(9)  # outside the action space: always an error
    strict = make("maskrl/TicTacToe-v0", opponent=first_legal, check_actions=True)
    strict.reset(seed=0)
    strict.step(4)
    with pytest.raises(
        ValueError, match=r"invalid action 0 in env 'maskrl/TicTacToe-v0' at step 2: legal moves"
    ):
        strict.step(0)


# ------------------------------------------------------------------ Knapsack


def test_knapsack_invalid_pick_closes_the_knapsack_with_reward_zero() -> None:
    env = make("maskrl/Knapsack-v0", n_min=2, n_max=6)
    seed = next(s for s in range(100) if env.reset(seed=s)[0]["item_mask"][5] == 0)
    _, info = env.reset(seed=seed)
    _, reward, term, trunc, info = env.step(5)  # padding
    assert (reward, term, trunc, info["invalid_action"], info["total_value"]) == (
        0.0, True, False, True, 0,
    )  # fmt: skip
    _, info = env.reset(seed=seed)
    first = int(np.flatnonzero(info["action_mask"])[0])
    value = float(env.unwrapped.values[first])  # type: ignore[attr-defined]
    assert env.step(first)[1] == value
    obs, reward, term, _, info = env.step(first)  # already picked
    assert (reward, term, info["invalid_action"], info["total_value"]) == (0.0, True, True, value)
    assert obs["item_mask"][first] == 0
    with pytest.raises(ValueError, match=r"invalid action 6 .*out of range for Discrete\(6\)"):
        env.step(6)


def test_knapsack_too_heavy_pick_and_check_actions() -> None:
    env = make("maskrl/Knapsack-v0")
    for seed in range(200):
        obs, info = env.reset(seed=seed)
        heavy = np.flatnonzero(obs["item_mask"].astype(bool) & ~info["action_mask"])
        if heavy.size:
            break
    else:
        pytest.fail("no instance with an item heavier than the capacity")
    _, reward, term, _, info = env.step(int(heavy[0]))
    assert (reward, term, info["invalid_action"], info["total_value"]) == (0.0, True, True, 0)
    strict = make("maskrl/Knapsack-v0", check_actions=True)
    strict.reset(seed=seed)
    with pytest.raises(ValueError, match=r"at step 1: item too heavy"):
        strict.step(int(heavy[0]))


# ------------------------------------------------------------------ wrapper and vector envs


def test_wrapper_passes_an_invalid_action_to_the_env_by_default() -> None:
    env = ActionMaskWrapper(gym.make("Taxi-v4"))
    _, info = env.reset(seed=0)
    assert not info["action_mask"][4]  # no passenger to pick up here
    _, reward, *_ = env.step(4)
    assert reward == -10  # Taxi's own rule for an illegal pickup
    strict = ActionMaskWrapper(gym.make("Taxi-v4"), check_actions=True)
    strict.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid action 4 in env 'Taxi-v4' at step 1"):
        strict.step(4)


def test_make_vec_accepts_invalid_actions_by_default_and_check_actions_raises() -> None:
    envs, ref = make_vec(BREAKOUT, 3, seed=0), make_vec(BREAKOUT, 3, seed=0)
    envs.reset()
    ref.reset()
    for t in range(50):
        out = envs.step(np.array([2, 4, 5]))
        expected = ref.step(np.zeros(3, dtype=np.int64))
        for x, y in zip(out[:4], expected[:4], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"step {t}")
    strict = make_vec(BREAKOUT, 3, seed=0, check_actions=True)
    strict.reset()
    with pytest.raises(ValueError, match=r"slot 1 took 2, valid \[0, 1, 3\]"):
        strict.step(np.array([0, 2, 3]))
    for e in (envs, ref, strict):
        e.close()


@pytest.mark.parametrize("multi", [False, True])
def test_torch_backend_plays_invalid_actions_as_noop_by_default(multi: bool) -> None:
    ids = [BREAKOUT, "maskrl/MinAtar-Freeway-v0", "maskrl/MinAtar-SpaceInvaders-v0"]

    def build(**kw: Any) -> Any:
        if multi:
            return make_multigame_vec(ids, 6, backend="torch", seed=3, **kw)
        return make_vec(BREAKOUT, 6, backend="torch", seed=3, **kw)

    envs, ref = build(), build()
    _, infos = envs.reset()
    ref.reset()
    # Per slot: an action outside its game's minimal set (Breakout 2/4/5,
    # Freeway 1/3/5, Space Invaders 2/4).
    masks = infos["action_mask"]
    invalid = torch.stack([torch.nonzero(~m).flatten()[0] for m in masks])
    assert not bool(masks.gather(1, invalid.unsqueeze(1)).any())
    for t in range(60):
        out = envs.step(invalid)
        expected = ref.step(torch.zeros(6, dtype=torch.int64))
        obs, want = (out[0]["obs"], expected[0]["obs"]) if multi else (out[0], expected[0])
        assert torch.equal(obs, want), t
        assert all(torch.equal(x, y) for x, y in zip(out[1:4], expected[1:4], strict=True)), t
    strict = build(check_actions=True)
    strict.reset()
    with pytest.raises(ValueError, match=r"invalid action\(s\) at vector step 0: slot 0"):
        strict.step(invalid)


def test_torch_backend_refuses_actions_outside_the_action_space_on_cpu() -> None:
    envs = make_vec(BREAKOUT, 4, backend="torch", seed=0)
    envs.reset()
    for bad in (6, -1):
        with pytest.raises(ValueError, match=rf"outside Discrete\(6\) .*slot 3 took {bad}"):
            envs.step(torch.tensor([0, 2, 4, bad]))


# ------------------------------------------------------------------ the trainers count them


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_trainer_counts_invalid_actions_the_env_accepted(backend: str) -> None:
    from maskrl.agents import PPO, PPOConfig
    from maskrl.agents.rollout import collect_rollout
    from maskrl.agents.trainer import make_training_env

    envs = make_training_env([BREAKOUT], 4, seed=0, backend=backend)
    agent = PPO(envs, PPOConfig(num_envs=4, num_steps=8, num_minibatches=1, device="cpu"))
    buf, state = agent._ensure_rollout_state()

    def act(obs: Any, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        action, logp, value = agent._act(obs, mask)
        action = action.clone()
        action[:2] = 2  # "up": outside Breakout's minimal set, in slots 0 and 1
        return action, logp, value

    collect_rollout(envs, buf, state, act, agent._value, agent.episode_stats)
    assert state.invalid_actions == 8 * 2
    assert buf.count_invalid_actions() == 8 * 2
    envs.close()
