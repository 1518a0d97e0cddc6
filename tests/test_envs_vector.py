"""Vector envs: masks belong to the observation they arrive with, across autoresets.

A deterministic toy env whose valid actions are a function of its observation
lets every step of many episodes (of different lengths) be checked, in sync and
async mode, same_step and next_step autoreset, for one game and several.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import maskrl.envs
from maskrl.envs import episodes_by_game, make_multigame_vec, make_vec


def toy_mask(obs: np.ndarray, n_actions: int) -> np.ndarray:
    """Valid actions of the toy env as a function of its observation: k valid iff (t+k) % 3 != 0."""
    t = int(round(float(obs[0])))
    return (t + np.arange(n_actions)) % 3 != 0  # 4+ consecutive ints: never all invalid


class MaskToyEnv(gym.Env[np.ndarray, np.int64]):
    """Episodes of random length 1..max_len; obs = [t, length, episode#, 0...]; reward 1 per step.

    The mask is published as an int8 ``info["action_mask"]`` (so make_vec wraps it).
    """

    def __init__(self, n_actions: int = 4, obs_len: int = 3, max_len: int = 7) -> None:
        self.n_actions, self.max_len, self.obs_len = n_actions, max_len, obs_len
        self.observation_space = spaces.Box(0.0, 1000.0, (obs_len,), np.float32)
        self.action_space = spaces.Discrete(n_actions)
        self._t, self._len, self._episode = 0, 1, -1

    def _out(self) -> tuple[np.ndarray, dict[str, Any]]:
        obs = np.zeros(self.obs_len, dtype=np.float32)
        obs[:3] = (self._t, self._len, self._episode)
        return obs, {"action_mask": toy_mask(obs, self.n_actions).astype(np.int8)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t, self._episode = 0, self._episode + 1
        self._len = int(self.np_random.integers(1, self.max_len + 1))
        return self._out()

    def step(self, action: Any) -> Any:
        obs, _ = self._out()
        assert toy_mask(obs, self.n_actions)[int(action)], "invalid action reached the env"
        self._t += 1
        obs, info = self._out()
        return obs, 1.0, self._t >= self._len, False, info


TOY_A, TOY_B = "test/MaskToyA-v0", "test/MaskToyB-v0"


@pytest.fixture(scope="module", autouse=True)
def _toys() -> Any:
    # gymnasium types entry points as keyword-only creators; an Env class is one at runtime.
    toy: Any = MaskToyEnv
    gym.register(TOY_A, entry_point=toy, kwargs={"n_actions": 4, "obs_len": 3, "max_len": 5})
    gym.register(TOY_B, entry_point=toy, kwargs={"n_actions": 6, "obs_len": 5, "max_len": 9})
    yield
    del gym.registry[TOY_A], gym.registry[TOY_B]


def sample_valid(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(m)) for m in masks])


MODES = [
    pytest.param("sync", "same_step", id="sync-same_step"),
    pytest.param("sync", "next_step", id="sync-next_step"),
    pytest.param("async", "same_step", id="async-same_step"),
    pytest.param("async", "next_step", id="async-next_step"),
]


@pytest.mark.parametrize(("vectorization", "autoreset"), MODES)
def test_make_vec_masks_match_observations_across_autoresets(
    vectorization: str, autoreset: str
) -> None:
    num_envs, n = 5, 4
    envs = make_vec(TOY_A, num_envs, vectorization=vectorization, seed=1, autoreset_mode=autoreset)
    try:
        rng = np.random.default_rng(0)
        obs, infos = envs.reset()
        lengths: list[int] = []
        finals = 0
        for _ in range(150):
            masks = infos["action_mask"]
            assert masks.dtype == np.bool_ and masks.shape == (num_envs, n)
            for i in range(num_envs):
                np.testing.assert_array_equal(masks[i], toy_mask(obs[i], n))
            obs, rewards, term, trunc, infos = envs.step(sample_valid(masks, rng))
            if autoreset == "same_step" and (term | trunc).any():
                final_obs, final = infos["final_obs"], infos["final_info"]
                for i in np.flatnonzero(term | trunc).tolist():
                    finals += 1
                    assert obs[i][0] == 0  # the returned observation is the reset one
                    assert final["_action_mask"][i]
                    np.testing.assert_array_equal(
                        final["action_mask"][i], toy_mask(final_obs[i], n)
                    )
                    lengths.append(int(final_obs[i][1]))
        if autoreset == "same_step":
            assert finals > 50 and len(set(lengths)) == 5  # many episodes, every length 1..5
    finally:
        envs.close()


@pytest.mark.parametrize(("vectorization", "autoreset"), MODES)
def test_multigame_slots_masks_and_game_ids_at_every_step(
    vectorization: str, autoreset: str
) -> None:
    ids = [TOY_A, TOY_B]
    num_envs = 4
    envs = make_multigame_vec(
        ids, num_envs, vectorization=vectorization, seed=2, autoreset_mode=autoreset
    )
    try:
        assert envs.single_action_space == spaces.Discrete(6)  # union of 4 and 6
        assert envs.single_observation_space["obs"].shape == (5,)  # padded to the larger
        assert envs.single_observation_space["game_id"] == spaces.Discrete(2)
        n_game = [4, 6]
        rng = np.random.default_rng(0)
        obs, infos = envs.reset()
        ended = np.zeros(2, dtype=int)
        episode_lengths: dict[int, list[int]] = {0: [], 1: []}
        counted: dict[int, list[int]] = {0: [], 1: []}
        steps_in_episode = np.zeros(num_envs, dtype=int)
        prev_done = np.zeros(num_envs, dtype=bool)
        for _ in range(150):
            masks = infos["action_mask"]
            assert masks.shape == (num_envs, 6)
            np.testing.assert_array_equal(obs["game_id"], [0, 1, 0, 1])
            np.testing.assert_array_equal(infos["game_id"], [0, 1, 0, 1])
            assert infos["game_id"].dtype == np.int64
            for i in range(num_envs):
                g = i % 2
                np.testing.assert_array_equal(
                    masks[i, : n_game[g]], toy_mask(obs["obs"][i], n_game[g])
                )
                assert not masks[i, n_game[g] :].any()  # padding actions are never valid
                if g == 0:
                    assert (obs["obs"][i][3:] == 0).all()  # zero-padded observation
            actions = sample_valid(masks, rng)
            obs, rewards, term, trunc, infos = envs.step(actions)
            done = term | trunc
            if autoreset == "next_step":
                # the step after a done is the reset: it does not count in the episode
                steps_in_episode += ~prev_done
                prev_done = done
            else:
                steps_in_episode += 1
            for i in np.flatnonzero(done).tolist():
                ended[i % 2] += 1
                episode_lengths[i % 2].append(int(steps_in_episode[i]))
                steps_in_episode[i] = 0
            for g, eps in episodes_by_game(infos).items():
                counted[g].extend(length for _, length in eps)
                assert all(r == length for r, length in eps)  # reward 1 per step
        assert (ended > 10).all()
        assert counted == episode_lengths
    finally:
        envs.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_multigame_minatar_masks_are_each_slots_minimal_set(vectorization: str) -> None:
    ids = maskrl.envs.minatar_ids()
    expected = []
    for env_id in ids:
        env = gym.make(env_id)
        expected.append(np.asarray(env.get_wrapper_attr("action_masks")()))
        env.close()
    envs = make_multigame_vec(ids, 5, vectorization=vectorization, seed=0)
    try:
        assert envs.single_observation_space["obs"].shape == (10, 10, 10)
        obs, infos = envs.reset()
        rng = np.random.default_rng(0)
        dones = 0
        for _ in range(120):
            for i in range(5):
                np.testing.assert_array_equal(infos["action_mask"][i], expected[i])
            assert obs["obs"].dtype == np.float32
            # Breakout (4 channels) is zero-padded after its own channels
            assert (obs["obs"][1, 4:] == 0).all()
            obs, _, term, trunc, infos = envs.step(sample_valid(infos["action_mask"], rng))
            dones += int((term | trunc).sum())
        assert dones > 0  # autoresets happened and were checked
    finally:
        envs.close()


def test_make_vec_minatar_constant_masks_in_both_modes_and_final_info() -> None:
    for mode in ("same_step", "next_step"):
        envs = make_vec(
            "maskrl/MinAtar-Breakout-v0", 3, seed=0, autoreset_mode=mode, check_actions=True
        )
        obs, infos = envs.reset()
        rng = np.random.default_rng(1)
        seen_final = False
        for _ in range(300):
            np.testing.assert_array_equal(infos["action_mask"], np.tile([1, 1, 0, 1, 0, 0], (3, 1)))
            obs, _, term, trunc, infos = envs.step(sample_valid(infos["action_mask"], rng))
            if mode == "same_step" and (term | trunc).any():
                seen_final = True
                np.testing.assert_array_equal(infos["final_info"]["_action_mask"], term | trunc)
                np.testing.assert_array_equal(
                    infos["final_info"]["action_mask"][0], [1, 1, 0, 1, 0, 0]
                )
        assert seen_final or mode == "next_step"
        with pytest.raises(ValueError, match=r"slot 1 took 2, valid \[0, 1, 3\]"):
            envs.step(np.array([0, 2, 3]))
        envs.close()


def test_make_vec_seed_makes_runs_reproducible() -> None:
    def run() -> np.ndarray:
        envs = make_vec("maskrl/MinAtar-Seaquest-v0", 2, seed=7)
        obs, infos = envs.reset()
        rng = np.random.default_rng(0)
        total = np.zeros_like(obs)
        for _ in range(50):
            obs, *_ = envs.step(sample_valid(infos["action_mask"], rng))
            total += obs
        envs.close()
        return total

    np.testing.assert_array_equal(run(), run())


def test_async_spawn_registers_ids_in_the_subprocess() -> None:
    # A spawned worker starts from a fresh interpreter: the ids must be registered there too.
    envs = make_vec(
        "maskrl/MinAtar-Freeway-v0", 1, vectorization="async", vector_kwargs={"context": "spawn"}
    )
    try:
        obs, infos = envs.reset(seed=0)
        assert obs.shape == (1, 7, 10, 10)
        np.testing.assert_array_equal(infos["action_mask"], [[1, 0, 1, 0, 1, 0]])
    finally:
        envs.close()


class EmptyMaskAtStepEnv(gym.Env[np.ndarray, np.int64]):
    """Publishes an info mask that has no valid action at step 2 -- only when seeded with ``bad_seed``.

    ``make_vec(..., seed=0)`` seeds slot ``i`` with ``0 + i``, so exactly slot ``bad_seed`` goes bad.
    """

    def __init__(self, bad_seed: int = 1) -> None:
        self.bad_seed = bad_seed
        self.observation_space = spaces.Box(0.0, 10.0, (1,), np.float32)
        self.action_space = spaces.Discrete(3)
        self._t, self._bad = 0, False

    def _out(self) -> tuple[np.ndarray, dict[str, Any]]:
        empty = self._bad and self._t == 2
        mask = np.zeros(3, np.int8) if empty else np.ones(3, np.int8)
        return np.array([self._t], np.float32), {"action_mask": mask}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        if seed is not None:
            self._bad = seed == self.bad_seed
        self._t = 0
        return self._out()

    def step(self, action: Any) -> Any:
        self._t += 1
        obs, info = self._out()
        return obs, 0.0, False, False, info


@pytest.mark.parametrize("multigame", [False, True])
def test_empty_mask_in_a_vector_env_names_env_id_index_and_step(multigame: bool) -> None:
    # In the multi-game env slot i plays game i % 2: slot 2 is the second slot of EmptyAt2.
    bad = 2 if multigame else 1
    creator: Any = EmptyMaskAtStepEnv  # an Env class is an entry point at runtime
    gym.register("test/EmptyAt2-v0", entry_point=creator, kwargs={"bad_seed": bad})
    try:
        envs = (
            make_multigame_vec(["test/EmptyAt2-v0", TOY_A], 3, seed=0)
            if multigame
            else make_vec("test/EmptyAt2-v0", 3, seed=0)
        )
        try:
            rng = np.random.default_rng(0)
            _, infos = envs.reset()
            _, _, _, _, infos = envs.step(sample_valid(infos["action_mask"], rng))
            with pytest.raises(
                ValueError,
                match=rf"action mask of env 'test/EmptyAt2-v0' \(index {bad} of the vector env\) "
                r"at step 2 has no valid action at all",
            ):
                envs.step(sample_valid(infos["action_mask"], rng))
        finally:
            envs.close()
    finally:
        del gym.registry["test/EmptyAt2-v0"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="autoreset_mode"):
        make_vec(TOY_A, 2, autoreset_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vectorization"):
        make_vec(TOY_A, 2, vectorization="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="smaller than the number of games"):
        make_multigame_vec([TOY_A, TOY_B], 1)
    with pytest.raises(ValueError, match="needs Box observations"):
        make_multigame_vec(["maskrl/Knapsack-v0"], 1)


def test_mask_overhead_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_mask_overhead.py"
    spec = importlib.util.spec_from_file_location("bench_mask_overhead", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--env", "Freeway", "--num-envs", "2", "--steps", "30", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "mask plumbing overhead (step time):" in out and "median of pairs" in out


def test_multigame_play_keeps_the_layout_and_game_ids_of_all_the_games() -> None:
    ids = [TOY_A, TOY_B]
    full = make_multigame_vec(ids, 2, seed=0)
    for play, n, games in (
        ([TOY_B], 3, [1, 1, 1]),
        ([TOY_A], 2, [0, 0]),
        ([TOY_B, TOY_A], 4, [1, 0, 1, 0]),
    ):
        envs = make_multigame_vec(ids, n, seed=2, play=play)
        try:
            assert envs.single_observation_space == full.single_observation_space
            assert envs.single_action_space == full.single_action_space
            obs, infos = envs.reset()
            rng = np.random.default_rng(0)
            for _ in range(30):
                np.testing.assert_array_equal(obs["game_id"], games)
                np.testing.assert_array_equal(infos["game_id"], games)
                for i, g in enumerate(games):
                    k = (4, 6)[g]
                    np.testing.assert_array_equal(
                        infos["action_mask"][i, :k], toy_mask(obs["obs"][i], k)
                    )
                    assert not infos["action_mask"][i, k:].any()
                    if g == 0:
                        assert (obs["obs"][i][3:] == 0).all()
                obs, _, _, _, infos = envs.step(sample_valid(infos["action_mask"], rng))
        finally:
            envs.close()
    full.close()
    for bad, match in (
        (["test/Nope-v0"], "not among"),
        ([TOY_A, TOY_A], "twice|duplicate|more than once|unique"),
        (TOY_A, "non-empty list"),
        ([], "non-empty list"),
    ):
        with pytest.raises(ValueError, match=match):
            make_multigame_vec(ids, 2, play=bad)
    with pytest.raises(ValueError, match="smaller than the number of games"):
        make_multigame_vec(ids, 1, play=[TOY_A, TOY_B])
    with pytest.raises(ValueError, match="needs backend='numpy'"):
        make_multigame_vec(ids, 2, play=[TOY_A], backend="torch")
