"""Registered games: ids, minimal-action-set masks, env checker, seeding, board games, Knapsack."""

from __future__ import annotations

import itertools
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from env_helpers import make, same
from hypothesis import given, settings
from hypothesis import strategies as st

import maskrl.envs
from maskrl.envs.atari import ATARI_GAMES, atari_game_name
from maskrl.envs.knapsack import KnapsackEnv, knapsack_optimum
from maskrl.envs.minatar_games import MINATAR_GAMES

ATARI_HANDFUL = ["Breakout", "Pong", "SpaceInvaders", "MsPacman", "Seaquest"]


def trajectory(env_id: str, seed: int, steps: int) -> list[tuple[Any, float, bool, bool, Any]]:
    """``steps`` steps of valid actions chosen by a fixed rule, every value checked on the way.

    Checks at every step: the observation lies in the observation space (shape,
    dtype, bounds), the mask is a ``bool`` array of the action space's size with a
    valid action (except after a terminal step), ``action_masks()`` agrees with
    the info, the reward is a finite float. Episodes that end are reset without a
    seed, so the run continues from the env's own generator.
    """
    env = make(env_id)
    n = maskrl.envs.mask_size(env.action_space)
    obs, info = env.reset(seed=seed)
    out = []
    for t in range(steps):
        assert env.observation_space.contains(obs), f"step {t}: observation outside the space"
        mask = info["action_mask"]
        assert mask.dtype == np.bool_ and mask.shape == (n,) and mask.any(), mask
        np.testing.assert_array_equal(env.get_wrapper_attr("action_masks")(), mask)
        valid = np.flatnonzero(mask)
        action = int(valid[(7 * t) % len(valid)])  # deterministic, and not always the same
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(reward, float | int | np.floating) and np.isfinite(reward)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        out.append((obs, float(reward), terminated, truncated, mask))
        if terminated or truncated:
            assert env.observation_space.contains(obs)  # the last observation too
            obs, info = env.reset()
    env.close()
    return out


def checked(env_id: str, expected_mask: np.ndarray | None = None, steps: int = 60) -> None:
    """The values: spaces and dtypes of what the env returns, the mask (``expected_mask``
    when the game's mask is constant), and that one seed gives one trajectory.

    Gymnasium's and SB3's env checkers run on every registered id in
    tests/test_envs_invalid_actions.py.
    """
    a = trajectory(env_id, seed=3, steps=steps)
    b = trajectory(env_id, seed=3, steps=steps)
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        assert same(x[0], y[0]) and x[1:4] == y[1:4] and same(x[4], y[4]), f"differs at step {t}"
    if expected_mask is not None:
        for t, step in enumerate(a):
            np.testing.assert_array_equal(step[4], expected_mask, err_msg=f"step {t}")


# ------------------------------------------------------------------ registration


def test_every_ale_game_has_an_id_and_the_static_list_matches_ale_py() -> None:
    import ale_py.roms

    ale_single_player = [
        r
        for r in ale_py.roms.get_all_rom_ids()
        if r not in {"combat", "joust", "maze_craze", "warlords"}
    ]
    assert sorted(ATARI_GAMES) == sorted(ale_single_player)
    gym.register_envs(ale_py)
    for rom in ATARI_GAMES:
        name = atari_game_name(rom)
        assert f"maskrl/Atari-{name}-v0" in gym.registry
        assert f"ALE/{name}-v5" in gym.registry  # same naming as ale-py's own ids
    assert len(maskrl.envs.atari_ids()) == len(ATARI_GAMES)
    expected = {*maskrl.envs.atari_ids(), *maskrl.envs.minatar_ids()}
    expected |= {"maskrl/Knapsack-v0", "maskrl/ConnectFour-v0", "maskrl/TicTacToe-v0"}
    expected |= {"maskrl/Recall-v0"}
    assert set(maskrl.envs.registered_ids()) == expected


# ------------------------------------------------------------------ MinAtar


@pytest.mark.parametrize("name", list(MINATAR_GAMES))
def test_minatar_mask_is_the_games_minimal_action_set(name: str) -> None:
    from minatar import Environment

    minimal = Environment(MINATAR_GAMES[name]).minimal_action_set()
    env = gym.make(f"maskrl/MinAtar-{name}-v0", check_actions=True)
    obs, info = env.reset(seed=0)
    expected = np.isin(np.arange(6), minimal)
    np.testing.assert_array_equal(info["action_mask"], expected)
    assert env.action_space == gym.spaces.Discrete(6)
    c = Environment(MINATAR_GAMES[name]).state_shape()[2]
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (c, 10, 10), np.float32)
    assert obs.shape == (c, 10, 10) and obs.dtype == np.float32
    assert env.spec is not None and env.spec.max_episode_steps == 10_000
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, _, term, trunc, info = env.step(int(rng.choice(minimal)))
        np.testing.assert_array_equal(info["action_mask"], expected)
        if term or trunc:
            obs, info = env.reset()
    invalid = int(np.flatnonzero(~expected)[0]) if (~expected).any() else None
    if invalid is not None:
        with pytest.raises(
            ValueError, match=rf"invalid action {invalid} in env 'maskrl/MinAtar-{name}-v0'"
        ):
            env.step(invalid)


@pytest.mark.parametrize("name", list(MINATAR_GAMES))
def test_minatar_passes_env_checker_and_its_values_are_right(name: str) -> None:
    from minatar import Environment

    game = Environment(MINATAR_GAMES[name])
    env_id = f"maskrl/MinAtar-{name}-v0"
    env = gym.make(env_id)
    c = game.state_shape()[2]
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (c, 10, 10), np.float32)
    assert env.action_space == gym.spaces.Discrete(6)
    env.close()
    checked(env_id, expected_mask=np.isin(np.arange(6), game.minimal_action_set()))


def test_minatar_observation_is_the_transposed_state_and_seeding_reproduces() -> None:
    env = gym.make("maskrl/MinAtar-Seaquest-v0")
    game = env.unwrapped._game  # type: ignore[attr-defined]

    def rollout(seed: int) -> list[np.ndarray]:
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for t in range(40):
            obs, _, term, trunc, _ = env.step([0, 5, 1, 3][t % 4])
            np.testing.assert_array_equal(obs, game.state().transpose(2, 0, 1).astype(np.float32))
            out.append(obs)
            if term or trunc:
                break
        return out

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert len(a) == len(b) and all((x == y).all() for x, y in zip(a, b, strict=True))
    assert len(a) != len(c) or any((x != y).any() for x, y in zip(a, c, strict=True))


# ------------------------------------------------------------------ Atari


@pytest.mark.parametrize("name", ATARI_HANDFUL)
def test_atari_mask_is_ales_minimal_action_set(name: str) -> None:
    import ale_py

    env = make(f"maskrl/Atari-{name}-v0")
    obs, info = env.reset(seed=0)
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    rom = next(r for r in ATARI_GAMES if atari_game_name(r) == name)
    rom_path = ale_py.roms.get_rom_path(rom)
    assert rom_path is not None, f"ale-py ships no ROM for {rom}"
    ale.loadROM(rom_path)
    expected = np.zeros(18, dtype=bool)
    expected[[a.value for a in ale.getMinimalActionSet()]] = True
    np.testing.assert_array_equal(info["action_mask"], expected)
    assert env.action_space == gym.spaces.Discrete(18)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    _, _, _, _, info = env.step(int(np.flatnonzero(expected)[-1]))
    np.testing.assert_array_equal(info["action_mask"], expected)
    env.close()


def test_atari_mask_follows_ales_legal_set_when_it_has_9_actions() -> None:
    # ale-py's legal set for Skiing is the 9 actions without fire,
    # [NOOP, UP, RIGHT, LEFT, DOWN, UPRIGHT, UPLEFT, DOWNRIGHT, DOWNLEFT] = [0, 2, ..., 9],
    # and its minimal set NOOP, RIGHT, LEFT = 0, 3, 4: positions 0, 2, 3.
    env = make("maskrl/Atari-Skiing-v0")
    _, info = env.reset(seed=0)
    assert env.action_space == gym.spaces.Discrete(9)
    assert np.flatnonzero(info["action_mask"]).tolist() == [0, 2, 3]
    assert env.step(2)[4]["action_mask"].shape == (9,)  # RIGHT
    env.close()
    # LostLuggage: the same 9 legal actions, all of them minimal.
    env = make("maskrl/Atari-LostLuggage-v0")
    _, info = env.reset(seed=0)
    assert env.action_space == gym.spaces.Discrete(9) and info["action_mask"].all()
    env.close()


@pytest.mark.parametrize("name", ["Breakout", "Pong"])
def test_atari_passes_env_checker_and_its_values_are_right(name: str) -> None:
    import ale_py

    env = make(f"maskrl/Atari-{name}-v0")
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert env.action_space == gym.spaces.Discrete(18)
    env.close()
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    rom = next(r for r in ATARI_GAMES if atari_game_name(r) == name)
    rom_path = ale_py.roms.get_rom_path(rom)
    assert rom_path is not None, f"ale-py ships no ROM for {rom}"
    ale.loadROM(rom_path)
    minimal = np.zeros(18, dtype=bool)
    minimal[[a.value for a in ale.getMinimalActionSet()]] = True
    checked(f"maskrl/Atari-{name}-v0", expected_mask=minimal, steps=30)


def test_atari_settings_are_the_documented_ones() -> None:
    env = make("maskrl/Atari-Breakout-v0")
    base = env.unwrapped
    assert base._frameskip == 1  # type: ignore[attr-defined]  # skipping is AtariPreprocessing's
    assert base.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)  # type: ignore[attr-defined]
    assert base.ale.getInt("max_num_frames_per_episode") == 108_000  # type: ignore[attr-defined]
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    env.close()


# ------------------------------------------------------------------ board games

BOARD = {"maskrl/ConnectFour-v0": (7, (6, 7, 2)), "maskrl/TicTacToe-v0": (9, (3, 3, 2))}


@pytest.mark.parametrize("env_id", list(BOARD))
def test_board_game_masks_are_legal_moves_and_games_finish(env_id: str) -> None:
    n, shape = BOARD[env_id]
    env = make(env_id, agent_seat="random")
    results = []
    for episode in range(30):
        obs, info = env.reset(seed=episode)
        assert obs.shape == shape
        while True:
            mask = info["action_mask"]
            assert mask.dtype == np.bool_ and mask.shape == (n,) and mask.any()
            # Legal moves are exactly the free cells / non-full columns of the board.
            occupied = obs.sum(axis=-1) > 0
            legal = ~occupied[0] if n == 7 else ~occupied.reshape(-1)
            np.testing.assert_array_equal(mask, legal)
            action = int(env.unwrapped.np_random.choice(np.flatnonzero(mask)))
            obs, reward, term, trunc, info = env.step(action)
            if term or trunc:
                results.append(reward)
                break
    assert set(results) <= {-1.0, 0.0, 1.0} and len(set(results)) >= 2


def first_legal(observation: np.ndarray, action_mask: np.ndarray, rng: np.random.Generator) -> int:
    return int(np.flatnonzero(action_mask)[0])


def test_illegal_moves_are_refused_with_env_id_and_step_under_check_actions() -> None:
    # Both players drop into column 0 (alternating colours: nobody wins); after the
    # agent's third move and the reply the column is full.
    env = make("maskrl/ConnectFour-v0", opponent=first_legal, check_actions=True)
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, _, info = env.step(0)
        assert not term
    assert not info["action_mask"][0] and info["action_mask"][1:].all()
    with pytest.raises(
        ValueError, match=r"invalid action 0 in env 'maskrl/ConnectFour-v0' at step 4"
    ):
        env.step(0)
    env = make("maskrl/TicTacToe-v0", opponent=first_legal, check_actions=True)
    env.reset(seed=0)
    env.step(4)
    with pytest.raises(
        ValueError, match=r"invalid action 4 in env 'maskrl/TicTacToe-v0' at step 2"
    ):
        env.step(4)


@pytest.mark.parametrize("env_id", list(BOARD))
def test_board_game_passes_env_checker_and_its_values_are_right(env_id: str) -> None:
    n, shape = BOARD[env_id]
    env = make(env_id)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, shape, np.float32)
    assert env.action_space == gym.spaces.Discrete(n)
    assert env.metadata["obs_layout"] == "HWC"  # channels last: the default network reads this
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and set(np.unique(obs)) <= {0.0, 1.0}
    assert info["action_mask"].all()  # the agent moves first on an empty board
    env.close()
    checked(env_id)


def test_opponent_uses_the_envs_rng_not_global_state() -> None:
    def moves(seed: int) -> list[int]:
        env = make("maskrl/TicTacToe-v0", agent_seat="second")
        obs, _ = env.reset(seed=seed)
        return [int(np.flatnonzero(obs[..., 1].reshape(-1))[0])]

    np.random.seed(0)  # noqa: NPY002 -- the global state must not matter
    a = [moves(s) for s in range(10)]
    np.random.seed(1)  # noqa: NPY002
    b = [moves(s) for s in range(10)]
    assert a == b and len({m[0] for m in a}) > 1


# ------------------------------------------------------------------ Knapsack


def brute_force(weights: np.ndarray, values: np.ndarray, capacity: int) -> int:
    best = 0
    for picks in itertools.product([0, 1], repeat=len(weights)):
        p = np.array(picks, dtype=bool)
        if weights[p].sum() <= capacity:
            best = max(best, int(values[p].sum()))
    return best


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(1, 15), st.integers(0, 20)), min_size=0, max_size=9),
    capacity=st.integers(0, 60),
)
def test_knapsack_dp_equals_brute_force(items: list[tuple[int, int]], capacity: int) -> None:
    w = np.array([i[0] for i in items], dtype=np.int64)
    v = np.array([i[1] for i in items], dtype=np.int64)
    assert knapsack_optimum(w, v, capacity) == brute_force(w, v, capacity)


def test_knapsack_masks_exclude_padding_picked_and_too_heavy_and_play_never_beats_optimum() -> None:
    env = gym.make("maskrl/Knapsack-v0", n_min=2, n_max=9)
    raw: KnapsackEnv = env.unwrapped  # type: ignore[assignment]
    sizes = set()
    for episode in range(60):
        obs, info = env.reset(seed=episode)
        n = int(obs["item_mask"].sum())
        sizes.add(n)
        present = np.arange(9) < n
        assert (obs["item_features"][~present] == 0).all()
        assert info["optimal_value"] == brute_force(raw.weights[:n], raw.values[:n], raw.capacity)
        picked = np.zeros(9, dtype=bool)
        total = 0.0
        while True:
            mask = info["action_mask"]
            remaining = raw.capacity - raw.weights[picked].sum()
            np.testing.assert_array_equal(mask, present & ~picked & (raw.weights <= remaining))
            np.testing.assert_array_equal(obs["item_mask"].astype(bool), present & ~picked)
            assert obs["capacity"][0] == pytest.approx(remaining / raw.capacity)
            np.testing.assert_allclose(
                obs["item_features"][:n, 0], raw.weights[:n] / raw.capacity, rtol=1e-6
            )
            i = int(raw.np_random.choice(np.flatnonzero(mask)))
            obs, reward, term, trunc, info = env.step(i)
            picked[i] = True
            total += float(reward)
            assert info["total_value"] == total
            if term:
                break
        assert not info["action_mask"].any()  # terminated exactly when nothing more fits
        assert 0 < total <= info["optimal_value"]
    assert len(sizes) >= 5


def test_knapsack_invalid_pick_errors_under_check_actions() -> None:
    env = gym.make("maskrl/Knapsack-v0", n_min=2, n_max=6, check_actions=True)
    seed = next(s for s in range(100) if env.reset(seed=s)[0]["item_mask"][5] == 0)
    obs, info = env.reset(seed=seed)
    with pytest.raises(
        ValueError, match=r"invalid action 5 in env 'maskrl/Knapsack-v0' at step 1: item padding"
    ):
        env.step(5)
    first = int(np.flatnonzero(info["action_mask"])[0])
    env.reset(seed=seed)
    env.step(first)
    with pytest.raises(ValueError, match=r"at step 2: item padding or already picked"):
        env.step(first)


def test_knapsack_passes_env_checker_and_its_values_are_right() -> None:
    env = gym.make("maskrl/Knapsack-v0")
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert set(space.spaces) == {"item_features", "item_mask", "capacity"}
    items = space["item_features"]
    assert isinstance(items, gym.spaces.Box)
    n_max = items.shape[0]
    assert space["item_features"].shape == (n_max, 2)
    assert space["item_features"].dtype == np.float32
    assert space["capacity"] == gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    assert space["item_mask"] == gym.spaces.MultiBinary(n_max)
    assert env.action_space == gym.spaces.Discrete(n_max)
    env.close()
    checked("maskrl/Knapsack-v0")


def test_knapsack_always_starts_with_a_valid_action() -> None:
    env = KnapsackEnv(n_min=1, n_max=1, capacity_fraction=0.01)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert info["action_mask"].tolist() == [True]


def test_knapsack_slots_pad_the_same_instances_with_never_valid_actions() -> None:
    base = gym.make("maskrl/Knapsack-v0", n_min=3, n_max=8)
    wide = gym.make("maskrl/Knapsack-v0", n_min=3, n_max=8, slots=20)
    assert wide.action_space == gym.spaces.Discrete(20)
    assert wide.observation_space["item_features"].shape == (20, 2)  # type: ignore[index]
    assert wide.observation_space["item_mask"] == gym.spaces.MultiBinary(20)  # type: ignore[index]
    for seed in range(10):
        (ob, ib), (ow, iw) = base.reset(seed=seed), wide.reset(seed=seed)
        # The same instance (same draws from the same seed), then 12 padding slots.
        np.testing.assert_array_equal(ow["item_features"][:8], ob["item_features"])
        assert (ow["item_features"][8:] == 0).all() and not ow["item_mask"][8:].any()
        np.testing.assert_array_equal(iw["action_mask"][:8], ib["action_mask"])
        assert not iw["action_mask"][8:].any() and iw["optimal_value"] == ib["optimal_value"]
        # A padding slot is an invalid pick: the episode ends with reward 0.
        _, reward, term, _, info = wide.step(19)
        assert (reward, term, info["invalid_action"]) == (0.0, True, True)
    from gymnasium.utils.env_checker import check_env

    check_env(KnapsackEnv(n_min=3, n_max=8, slots=20), skip_render_check=True)
    with pytest.raises(ValueError, match="slots must be >= n_max, got slots=7, n_max=8"):
        KnapsackEnv(n_min=3, n_max=8, slots=7)
