"""``maskrl/Recall-v0``: masks and rewards by hand, chance without memory computed exactly."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import maskrl.envs
from maskrl.envs.recall import RecallEnv, recall_chance

T, F = True, False


def masks_of(env: RecallEnv, seed: int, actions: list[int]) -> list[tuple[list[bool], float]]:
    obs, info = env.reset(seed=seed)
    out = [(info["action_mask"].tolist(), 0.0)]
    for a in actions:
        obs, reward, *_, info = env.step(a)
        out.append((info["action_mask"].tolist(), float(reward)))
    return out


def test_a_seeded_episode_by_hand() -> None:
    env = gym.make("maskrl/Recall-v0", num_cues=4, delay=2)
    obs, info = env.reset(seed=0)
    # Step 0: the cue (3) is shown, the timer at 0/4, the answer flag off.
    np.testing.assert_array_equal(obs, [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(info["action_mask"], [T, T, F, T])
    np.testing.assert_array_equal(env.get_wrapper_attr("action_masks")(), [T, T, F, T])
    obs, reward, term, trunc, info = env.step(1)
    assert (reward, term, trunc) == (0.0, False, False) and "invalid_action" not in info
    np.testing.assert_array_equal(obs, [0, 0, 0, 0, 0, 0.25])  # the cue is gone
    np.testing.assert_array_equal(info["action_mask"], [T, F, F, F])
    obs, reward, term, _, info = env.step(3)  # invalid here: accepted, changes nothing
    assert (reward, term, info["invalid_action"]) == (0.0, False, True)
    np.testing.assert_array_equal(obs, [0, 0, 0, 0, 0, 0.5])
    np.testing.assert_array_equal(info["action_mask"], [T, T, T, T])
    obs, reward, term, _, info = env.step(0)
    # Step 3 = delay + 1: answer now; the cue 3 is valid, with 1 and 2.
    np.testing.assert_array_equal(obs, [0, 0, 0, 0, 1, 0.75])
    np.testing.assert_array_equal(info["action_mask"], [F, T, T, T])
    obs, reward, term, trunc, info = env.step(3)
    assert (reward, term, trunc, info["success"], info["cue"]) == (1.0, True, False, True, 3)
    np.testing.assert_array_equal(obs, [0, 0, 0, 0, 0, 1])
    assert info["action_mask"].all()  # the last observation's mask: all valid (see the doc)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)
    # The same seed with other actions: the same masks (actions draw nothing), and a
    # wrong valid answer (1) or an invalid one (0) scores 0.
    for answer in (1, 0):
        env.reset(seed=0)
        for a in (0, 0, 0):
            env.step(a)
        _, reward, term, _, info = env.step(answer)
        assert (reward, term, info["success"]) == (0.0, True, False)
        assert info.get("invalid_action", False) == (answer == 0)


def test_check_actions_and_out_of_range() -> None:
    strict = gym.make("maskrl/Recall-v0", num_cues=4, delay=2, check_actions=True)
    strict.reset(seed=0)
    with pytest.raises(
        ValueError,
        match=r"invalid action 2 in env 'maskrl/Recall-v0' at step 1: valid actions are \[0, 1, 3\]",
    ):
        strict.step(2)
    env = gym.make("maskrl/Recall-v0")
    env.reset(seed=0)
    for bad in (4, -1):
        with pytest.raises(ValueError, match=rf"invalid action {bad} .*not in Discrete\(4\)"):
            env.step(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_cues": 1}, r"num_cues must be >= 2, got 1"),
        ({"num_cues": 2.5}, r"num_cues must be an integer, got float 2.5"),
        ({"num_cues": True}, r"num_cues must be an integer, got bool True"),
        ({"delay": -1}, r"delay must be >= 0, got -1"),
        ({"min_choices": 1}, r"min_choices must be in \[2, 4\], got 1"),
        ({"num_cues": 3, "min_choices": 4}, r"min_choices must be in \[2, 3\], got 4"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecallEnv(**kwargs)  # type: ignore[arg-type]


def exact_law(k: int, min_choices: int) -> dict[tuple[int, frozenset[int]], Fraction]:
    """``P(cue, answer-step valid set)`` as the module doc states it, enumerated."""
    law: dict[tuple[int, frozenset[int]], Fraction] = {}
    sizes = range(min_choices, k + 1)
    for cue in range(k):
        for m in sizes:
            others = [a for a in range(k) if a != cue]
            subsets = list(itertools.combinations(others, m - 1))
            for rest in subsets:
                p = Fraction(1, k) / len(sizes) / len(subsets)
                law[(cue, frozenset((cue, *rest)))] = p
    return law


@pytest.mark.parametrize(("k", "min_choices"), [(2, 2), (3, 2), (4, 2), (4, 3), (5, 2), (6, 6)])
def test_best_memoryless_success_rate_is_chance_exactly(k: int, min_choices: int) -> None:
    law = exact_law(k, min_choices)
    assert sum(law.values()) == 1
    # A policy without memory sees, at the answer step, the same observation in
    # every episode and the valid set V: the best it can do is pick, for each V,
    # the most likely cue given V.
    by_set: dict[frozenset[int], list[Fraction]] = {}
    for (_, valid), p in law.items():
        by_set.setdefault(valid, []).append(p)
    best = sum((max(ps) for ps in by_set.values()), Fraction(0))
    # Every cue in V is equally likely given V: no choice beats any other.
    assert all(len(set(ps)) == 1 for ps in by_set.values())
    assert best == recall_chance(k, min_choices)
    assert best == sum(Fraction(1, m) for m in range(min_choices, k + 1)) / (k - min_choices + 1)
    env = RecallEnv(num_cues=k, delay=1, min_choices=min_choices)
    assert env.chance_success_rate == float(best)
    assert recall_chance(4, 2) == Fraction(13, 36)


def test_the_env_samples_the_stated_law_and_memory_is_needed() -> None:
    # 6,000 seeded episodes of K = 3: (cue, answer-step valid set) has 9 outcomes,
    # probability 1/12 each for |V| = 2 and 1/6 for |V| = 3. Pearson's chi-square
    # with 8 degrees of freedom is below 26.1 with probability 0.999 (fixed seed:
    # deterministic).
    env = RecallEnv(num_cues=3, delay=1)
    counts: Counter[tuple[int, frozenset[int]]] = Counter()
    answer_obs = set()
    first_valid_wins = 0
    n = 6000
    env.reset(seed=11)
    for _ in range(n):
        _, info = env.reset()
        env.step(0)
        obs, _, _, _, info = env.step(0)
        mask = info["action_mask"]
        answer_obs.add(obs.tobytes())
        counts[(env.cue, frozenset(np.flatnonzero(mask).tolist()))] += 1
        # The memoryless rule "first valid action" against the rule that remembers.
        _, r_memoryless, *_ = env.step(int(np.flatnonzero(mask)[0]))
        first_valid_wins += int(r_memoryless)
    assert len(answer_obs) == 1  # nothing at the answer step tells episodes apart
    law = exact_law(3, 2)
    assert set(counts) == set(law)
    chi2 = sum((counts[key] - n * float(p)) ** 2 / (n * float(p)) for key, p in law.items())
    assert chi2 < 26.1, counts
    rate = first_valid_wins / n
    assert abs(rate - 5 / 12) < 4 * np.sqrt(5 / 12 * 7 / 12 / n), rate
    # With memory: pick the cue shown at step 0 -> every episode succeeds.
    for seed in range(50):
        obs, _ = env.reset(seed=seed)
        cue = int(np.argmax(obs[:3]))
        env.step(0)
        env.step(0)
        assert env.step(cue)[1] == 1.0


def test_seeding_reproduces_and_checkers_pass() -> None:
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = RecallEnv(num_cues=5, delay=3)
    a = masks_of(env, 4, [0, 1, 2, 3, 4])
    b = masks_of(env, 4, [0, 1, 2, 3, 4])
    c = masks_of(env, 5, [0, 1, 2, 3, 4])
    assert a == b and a != c
    for kwargs in ({"num_cues": 2, "delay": 0}, {"num_cues": 6, "delay": 7, "min_choices": 3}):
        env = gym.make("maskrl/Recall-v0", **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", message=".*is different from the unwrapped version.*")
            gymnasium_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True, skip_render_check=True)


def test_vector_env_and_ppo_run_on_it(tmp_path: Path) -> None:
    from train_module import train

    envs = maskrl.envs.make_vec("maskrl/Recall-v0", 3, seed=0, num_cues=3, delay=1)
    obs, infos = envs.reset()
    assert obs.shape == (3, 5) and infos["action_mask"].shape == (3, 3)
    envs.close()
    args = ["ppo", "--env", "maskrl/Recall-v0", "--num-envs", "2", "--num-steps", "16"]
    args += ["--num-minibatches", "2", "--num-epochs", "1", "--total-timesteps", "64"]
    args += ["--eval-episodes", "2", "--no-progress", "--device", "cpu"]
    assert train.main([*args, "--runs-dir", str(tmp_path), "--run-name", "r"]) == 0
    assert (tmp_path / "r" / "checkpoint.pt").exists()


def test_docstring_examples_run() -> None:
    import doctest

    import maskrl.envs.recall

    result = doctest.testmod(maskrl.envs.recall)
    assert result.attempted >= 3 and result.failed == 0
