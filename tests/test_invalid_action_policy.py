"""The masking ablation wrapper: ``mask`` never leaks, ``penalty`` is a no-op with reward R, ``none``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_helpers import make, run_env_checkers, same

from maskrl.agents import masked_epsilon_greedy
from maskrl.envs import InvalidActionPolicy, action_is_valid

BREAKOUT = "maskrl/MinAtar-Breakout-v0"


class Spy(gym.Wrapper[Any, Any, Any, Any]):
    """Records, for every action the wrapped env receives, whether its own mask allowed it."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.received: list[tuple[int, bool]] = []

    def step(self, action: Any) -> Any:
        mask = self.env.get_wrapper_attr("action_masks")()
        self.received.append((int(action), action_is_valid(action, mask, self.action_space)))
        return self.env.step(action)


def play(env: InvalidActionPolicy, steps: int, epsilon: float, seed: int) -> list[bool]:
    """A masked epsilon-greedy agent on the agent's mask; returns info["invalid_action"] per step."""
    g = torch.Generator().manual_seed(seed)
    _, info = env.reset(seed=seed)
    flags = []
    for _ in range(steps):
        q = torch.randn(1, info["action_mask"].shape[0], generator=g)
        action = masked_epsilon_greedy(q, torch.tensor(info["action_mask"])[None], epsilon, g)
        _, _, term, trunc, info = env.step(int(action))
        flags.append(bool(info["invalid_action"]))
        np.testing.assert_array_equal(info["true_action_mask"], env.true_action_mask())
        if term or trunc:
            _, info = env.reset()
    return flags


@pytest.mark.parametrize("env_id", ["maskrl/Knapsack-v0", "maskrl/Recall-v0", BREAKOUT])
def test_only_none_mode_passes_invalid_actions_to_the_env(env_id: str) -> None:
    spy = Spy(make(env_id))
    flags = play(InvalidActionPolicy(spy, "mask"), 300, epsilon=0.5, seed=0)
    assert len(spy.received) == 300 and all(ok for _, ok in spy.received)
    assert not any(flags)
    # The same agent in mode "none" sees all-valid masks and takes invalid actions,
    # which reach the env; info["invalid_action"] says which, exactly.
    spy = Spy(make(env_id))
    flags = play(InvalidActionPolicy(spy, "none"), 300, epsilon=0.5, seed=0)
    assert flags == [not ok for _, ok in spy.received]
    assert sum(flags) > 20
    # In mode "penalty" it takes them too, and the env still never receives one.
    spy = Spy(make(env_id))
    flags = play(InvalidActionPolicy(spy, "penalty", penalty=-1.0), 300, epsilon=0.5, seed=0)
    assert sum(flags) > 20 and all(ok for _, ok in spy.received)


def test_mask_mode_raises_on_an_invalid_action_before_the_env_sees_it() -> None:
    spy = Spy(make("maskrl/Knapsack-v0"))
    env = InvalidActionPolicy(spy, "mask")
    _, info = env.reset(seed=0)
    bad = int(np.flatnonzero(~info["action_mask"])[0])
    with pytest.raises(ValueError, match=rf"invalid action {bad} in env 'maskrl/Knapsack-v0' at "
                       r"step 1 in mode 'mask': the mask allows entries \["):  # fmt: skip
        env.step(bad)
    assert spy.received == []


def test_penalty_is_a_noop_with_reward_r_on_knapsack() -> None:
    spy = Spy(make("maskrl/Knapsack-v0"))
    env = InvalidActionPolicy(spy, "penalty", penalty=-0.5)
    twin = make("maskrl/Knapsack-v0")
    obs, info = env.reset(seed=3)
    twin.reset(seed=3)
    assert info["action_mask"].all()  # the agent samples over all actions
    inner = env.unwrapped
    state = (inner.remaining, inner.available.copy(), inner.total_value)  # type: ignore[attr-defined]
    valid = np.flatnonzero(info["true_action_mask"])
    for bad in np.flatnonzero(~info["true_action_mask"])[:3]:
        after, reward, term, trunc, info2 = env.step(int(bad))
        assert (reward, term, trunc, info2["invalid_action"]) == (-0.5, False, False, True)
        assert same(after, obs)
        np.testing.assert_array_equal(info2["true_action_mask"], info["true_action_mask"])
        assert info2["optimal_value"] == info["optimal_value"]  # the state's info, again
        now = (inner.remaining, inner.available, inner.total_value)  # type: ignore[attr-defined]
        assert now[0] == state[0] and np.array_equal(now[1], state[1]) and now[2] == state[2]
    assert spy.received == []  # the env was never stepped
    # A valid pick then plays exactly as in an env that never saw the invalid ones.
    out, want = env.step(int(valid[0])), twin.step(int(valid[0]))
    assert same(out[0], want[0]) and out[1:4] == want[1:4] and out[4]["invalid_action"] is False


def test_penalty_on_recall_and_taxi_leaves_the_state_unchanged() -> None:
    env = InvalidActionPolicy(make("maskrl/Recall-v0", num_cues=4, delay=2), "penalty", penalty=-1)
    obs, info = env.reset(seed=0)  # step 0's mask is [T, T, F, T] (tests/test_recall.py)
    after, reward, term, _, info = env.step(2)
    assert reward == -1.0 and not term and info["invalid_action"]
    np.testing.assert_array_equal(after, obs)  # the cue is still shown, the timer still 0
    # An env outside the convention is wrapped first; Taxi's own rule (-10) is replaced.
    env = InvalidActionPolicy(gym.make("Taxi-v4"), "penalty", penalty=-1.0)
    obs, info = env.reset(seed=0)
    assert not info["true_action_mask"][4]  # no passenger to pick up here
    after, reward, term, _, info = env.step(4)
    assert (after, reward, term, info["invalid_action"]) == (obs, -1.0, False, True)


def test_board_game_illegal_move_is_a_penalised_noop_not_a_loss() -> None:
    def first_legal(o: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> int:
        return int(np.flatnonzero(mask)[0])

    env = InvalidActionPolicy(
        make("maskrl/TicTacToe-v0", opponent=first_legal), "penalty", penalty=-0.1
    )
    env.reset(seed=0)
    board, *_ = env.step(4)  # centre; the opponent takes cell 0
    after, reward, term, _, info = env.step(0)  # the opponent's cell
    assert (reward, term, info["invalid_action"]) == (-0.1, False, True)
    np.testing.assert_array_equal(after, board)
    _, _, term, _, info = env.step(8)  # and the game goes on
    assert info["invalid_action"] is False


def test_penalty_on_minatar_steps_the_noop_and_adds_r() -> None:
    spy = Spy(make(BREAKOUT))
    env = InvalidActionPolicy(spy, "penalty", penalty=-2.0)
    assert env.noop_action == 0 and env.max_episode_steps == 10_000
    twin = make(BREAKOUT)
    env.reset(seed=5)
    twin.reset(seed=5)
    for t in range(80):
        got, want = env.step(2), twin.step(0)  # 2 (up) is outside Breakout's {0, 1, 3}
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"step {t}")
        assert got[1] == float(want[1]) - 2.0 and got[2:4] == want[2:4]
        if got[2] or got[3]:
            break
    assert {a for a, _ in spy.received} == {0}  # the env only ever saw the no-op
    # noop_action=None freezes the game instead (not stepped).
    env = InvalidActionPolicy(make(BREAKOUT), "penalty", penalty=-2.0, noop_action=None)
    obs, _ = env.reset(seed=5)
    assert np.array_equal(env.step(2)[0], obs)


def test_a_penalised_step_counts_for_the_time_limit() -> None:
    env = InvalidActionPolicy(
        make("maskrl/Knapsack-v0"), "penalty", penalty=-1, max_episode_steps=3
    )
    assert InvalidActionPolicy(make("maskrl/Knapsack-v0"), "penalty").max_episode_steps is None
    _, info = env.reset(seed=0)
    bad = int(np.flatnonzero(~info["true_action_mask"])[0])
    assert env.step(bad)[2:4] == (False, False)
    assert env.step(bad)[2:4] == (False, False)
    assert env.step(bad)[2:4] == (False, True)  # truncated at the 3rd step
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(bad)
    _, info = env.reset(seed=0)  # a real step counts too
    good = int(np.flatnonzero(info["true_action_mask"])[0])
    env.step(bad)
    env.step(bad)
    _, _, term, trunc, _ = env.step(good)
    assert trunc == (not term)


def test_none_mode_reports_all_valid_masks_and_keeps_the_envs_own_rule() -> None:
    env = InvalidActionPolicy(make("maskrl/Knapsack-v0"), "none")
    _, info = env.reset(seed=3)
    assert info["action_mask"].all() and env.action_masks().all()
    assert not info["true_action_mask"].all()
    np.testing.assert_array_equal(info["true_action_mask"], env.unwrapped.action_masks())  # type: ignore[attr-defined]
    bad = int(np.flatnonzero(~info["true_action_mask"])[0])
    _, reward, term, _, info = env.step(bad)  # Knapsack's rule: the knapsack closes
    assert (reward, term, info["invalid_action"]) == (0.0, True, True)
    assert info["action_mask"].all()


def test_make_vecs_constant_mask_shortcut_is_not_taken_over_the_wrapper() -> None:
    # make_vec finds MinAtar's constant mask through get_wrapper_attr and would
    # then write the true mask into the batched infos, over mode "none"'s.
    inner = make(BREAKOUT)
    assert inner.get_wrapper_attr("constant_action_mask") is not None
    env = InvalidActionPolicy(inner, "none")
    assert env.get_wrapper_attr("constant_action_mask") is None


def test_vector_env_batches_the_true_masks_and_flags() -> None:
    def fn() -> gym.Env[Any, Any]:
        return InvalidActionPolicy(gym.make("maskrl/Recall-v0", num_cues=5, delay=1), "none")

    envs = gym.vector.SyncVectorEnv([fn, fn, fn])
    _, infos = envs.reset(seed=0)
    assert infos["action_mask"].shape == (3, 5) and infos["action_mask"].all()
    assert infos["true_action_mask"].shape == (3, 5) and not infos["true_action_mask"].all()
    invalid = np.argmin(infos["true_action_mask"], axis=1)  # an invalid action in each slot
    _, _, _, _, infos = envs.step(invalid)
    assert infos["invalid_action"].tolist() == [True, True, True]
    envs.close()


@pytest.mark.parametrize("mode", ["penalty", "none"])
@pytest.mark.parametrize("env_id", ["maskrl/Knapsack-v0", "maskrl/Recall-v0", BREAKOUT])
def test_env_checkers_pass(mode: str, env_id: str) -> None:
    # Mode "mask" raises on the checkers' random (unmasked) actions, as
    # check_actions=True does: that is its point.
    env = InvalidActionPolicy(make(env_id), mode, penalty=-1.0 if mode == "penalty" else 0.0)  # type: ignore[arg-type]
    run_env_checkers(env)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "mask_it"}, r"unknown invalid-action mode 'mask_it'; choose one of \['mask', "
         r"'penalty', 'none'\]"),
        ({"mode": "none", "penalty": -1.0}, r"penalty=-1.0 applies only to mode 'penalty', not "
         "'none'"),
        ({"mode": "penalty", "penalty": float("nan")}, "penalty must be finite, got nan"),
        ({"mode": "mask", "noop_action": 0}, "noop_action applies only to mode 'penalty'"),
        ({"mode": "penalty", "noop_action": 6}, r"noop_action 6 is not an action of Discrete\(6\)"),
        ({"mode": "penalty", "max_episode_steps": 0}, "max_episode_steps must be an integer >= 1"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InvalidActionPolicy(make(BREAKOUT), **kwargs)


def test_out_of_space_actions_and_an_invalid_noop_raise() -> None:
    env = InvalidActionPolicy(make("maskrl/Knapsack-v0", n_max=6), "penalty", penalty=-1.0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"invalid action 6 .*not in Discrete\(6\)"):
        env.step(6)  # never turned into a penalty
    env = InvalidActionPolicy(make("maskrl/Recall-v0"), "penalty", penalty=-1.0, noop_action=2)
    _, info = env.reset(seed=0)  # step 0's mask is [T, T, F, T] with num_cues=4, delay=4
    assert not info["true_action_mask"][2]
    with pytest.raises(ValueError, match="the designated no-op action 2 .* is not valid at step 1"):
        env.step(2)


def test_docstring_examples_run() -> None:
    import doctest

    import maskrl.envs.invalid_actions

    result = doctest.testmod(maskrl.envs.invalid_actions)
    assert result.attempted >= 4 and result.failed == 0
