"""``maskrl.envs.Flicker`` and ``train.py ppo --flicker P`` / ``train.py eval --flicker P``.

The wrapper blanks each observation with probability ``p`` from its own seeded
generator and leaves masks, rewards and episode ends untouched; the flag is
recorded with the run and applied to its training envs and its evaluation.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from test_train_cli import TINY, assert_one_line_error, run_cli
from train_module import train

import maskrl.agents
import maskrl.envs
from maskrl.agents import PPO, PPOConfig, evaluate
from maskrl.agents import runner as runner_mod
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.config import ExpertsConfig
from maskrl.envs import Flicker

BREAKOUT = "maskrl/MinAtar-Breakout-v0"  # its screens are never all zero (paddle, bricks)


def _blank(obs: np.ndarray) -> bool:
    return not np.asarray(obs).any()


def _play(env: gym.Env[Any, Any], seed: int, steps: int) -> list[tuple[Any, ...]]:
    """(obs, mask, reward, terminated, truncated) per reset/step under a fixed action stream."""
    rng = np.random.default_rng(123)
    obs, info = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs, info["action_mask"], 0.0, False, False)]
    for _ in range(steps):
        mask = info["action_mask"]
        action = int(rng.choice(np.flatnonzero(mask)))
        obs, reward, term, trunc, info = env.step(action)
        out.append((obs, info["action_mask"], float(reward), term, trunc))
        if term or trunc:
            obs, info = env.reset()
            out.append((obs, info["action_mask"], 0.0, False, False))
    return out


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9])
def test_blank_frequency_is_p(p: float) -> None:
    env = Flicker(gym.make(BREAKOUT), p=p)
    trace = _play(env, seed=3, steps=4000)
    n = len(trace)
    blanks = sum(_blank(o) for o, *_ in trace)
    # Binomial(n, p): 5 standard deviations (a false alarm has probability < 1e-6).
    assert abs(blanks / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (blanks, n)
    if p == 0.0:
        assert blanks == 0


def test_blank_is_exact_zero_and_the_rest_is_the_env_untouched() -> None:
    plain = _play(gym.make(BREAKOUT), seed=7, steps=1500)
    flick = _play(Flicker(gym.make(BREAKOUT), p=0.5), seed=7, steps=1500)
    assert len(plain) == len(flick)
    blanked = 0
    for (o0, m0, r0, t0, u0), (o1, m1, r1, t1, u1) in zip(plain, flick, strict=True):
        assert o1.shape == o0.shape and o1.dtype == o0.dtype
        if _blank(o1):
            blanked += 1
            assert (o1 == 0).all() and o0.any()
        else:
            np.testing.assert_array_equal(o1, o0)  # shown frames are the env's own
        np.testing.assert_array_equal(m1, m0)  # masks untouched
        assert (r1, t1, u1) == (r0, t0, u0)  # rewards and episode ends untouched
    assert 0 < blanked < len(flick)
    assert sum(r for _, _, r, *_ in plain) > 0  # the comparison saw rewards


def test_reproducible_given_the_seed_and_independent_of_the_env_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        return [_blank(o) for o, *_ in _play(Flicker(gym.make(BREAKOUT), 0.5), seed, 300)]

    assert pattern(11) == pattern(11)
    assert pattern(11) != pattern(12)
    # A reset with the same seed restarts the same pattern on the same env.
    env = Flicker(gym.make(BREAKOUT), 0.5)
    assert [_blank(o) for o, *_ in _play(env, 11, 300)] == pattern(11)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, math.inf, True, "0.5", None])
def test_p_out_of_range_is_refused(p: Any) -> None:
    with pytest.raises(ValueError, match=r"flicker probability p must be .*\[0, 1\)"):
        Flicker(gym.make(BREAKOUT), p=p)


def test_passes_gymnasiums_env_checker() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker notes it was handed a wrapper
        check_env(Flicker(gym.make(BREAKOUT), p=0.5), skip_render_check=True)


def test_training_envs_flicker_and_torch_backend_is_refused() -> None:
    cfg = dict(num_envs=8, num_steps=16, num_epochs=1, num_minibatches=1, device="cpu")
    agent = PPO(BREAKOUT, PPOConfig(**cfg, flicker=0.5))
    obs, _ = agent.envs.reset(seed=0)
    seen = [obs]
    for _ in range(60):
        obs, *_ = agent.envs.step(np.zeros(8, dtype=np.int64))  # NOOP: always valid
        seen.append(obs)
    frac = np.mean([_blank(o) for batch in seen for o in batch])
    assert 0.35 < frac < 0.65, frac
    plain = PPO(BREAKOUT, PPOConfig(**cfg))
    obs, _ = plain.envs.reset(seed=0)
    assert not any(_blank(o) for o in obs)
    with pytest.raises(ValueError, match=r"flicker=0.5 \(--flicker\) needs --env-backend numpy"):
        PPOConfig(**cfg, flicker=0.5, env_backend="torch").validate()


def test_evaluate_plays_flickering_screens() -> None:
    class Spy:
        env_ids = [BREAKOUT]

        def __init__(self) -> None:
            self.blank: list[bool] = []

        def predict(self, obs: Any, mask: Any, deterministic: bool = False) -> np.ndarray:
            self.blank += [_blank(o) for o in obs]
            return np.array([int(np.flatnonzero(m)[0]) for m in mask])

    for p, low, high in ((0.0, 0.0, 0.0), (0.5, 0.4, 0.6)):
        spy = Spy()
        evaluate(spy, episodes=4, seed=0, flicker=p)
        assert low <= np.mean(spy.blank) <= high, (p, np.mean(spy.blank))
    with pytest.raises(ValueError, match="flicker probability"):
        evaluate(Spy(), episodes=1, flicker=1.0)


def test_cli_records_the_flag_and_applies_it_to_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    real = runner_mod.evaluate

    def spy_eval(*args: Any, **kw: Any) -> Any:
        calls.append(kw.get("flicker", 0.0))
        return real(*args, **kw)

    monkeypatch.setattr(runner_mod, "evaluate", spy_eval)
    runs = tmp_path / "runs"
    argv = ["ppo", "--env", BREAKOUT, "--flicker", "0.5", "--total-timesteps", "256"]
    argv += ["--eval-episodes", "2", *TINY, "--run-name", "f", "--runs-dir", str(runs)]
    assert train.main(argv) == 0
    saved = json.loads((runs / "f" / "config.json").read_text())
    assert saved["ppo"]["flicker"] == 0.5
    assert load_checkpoint(runs / "f" / "checkpoint.pt")["config"]["flicker"] == 0.5
    assert calls == [0.5]  # the run's own evaluation played flickering screens

    # `train.py eval` defaults to the checkpoint's probability; --flicker overrides it.
    seen: list[float] = []
    real_eval = maskrl.agents.evaluate

    def spy_cli(*args: Any, **kw: Any) -> Any:
        seen.append(kw["flicker"])
        return real_eval(*args, **kw)

    monkeypatch.setattr(maskrl.agents, "evaluate", spy_cli)
    ckpt = str(runs / "f" / "checkpoint.pt")
    assert train.main(["eval", "--checkpoint", ckpt, "--episodes", "2", "--device", "cpu"]) == 0
    ev = ["eval", "--checkpoint", ckpt, "--episodes", "2", "--device", "cpu", "--flicker", "0"]
    assert train.main(ev) == 0
    assert seen == [0.5, 0.0]


def test_bad_flicker_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, needles in (
        (["ppo", "--flicker", "1", "--runs-dir", str(tmp_path)], ("flicker", "[0, 1)")),
        (
            ["ppo", "--flicker", "0.5", "--env-backend", "torch", "--runs-dir", str(tmp_path)],
            ("--flicker", "numpy"),
        ),
        (["eval", "--checkpoint", "x.pt", "--flicker", "-0.5"], ("--flicker", "[0, 1)")),
    ):
        assert train.main(args) == 2, args
        assert_one_line_error(capsys.readouterr().err, *needles)
    assert not list(tmp_path.glob("*/checkpoint.pt"))
    # In a real process; and experts are trained on full screens: the flag is not theirs.
    res = run_cli(["eval", "--checkpoint", "x.pt", "--flicker", "nan"], tmp_path)
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "--flicker", "[0, 1)")
    ex = ["experts", "--env", BREAKOUT, "--run-name", "x", "--flicker", "0.5"]
    res = run_cli([*ex, "--runs-dir", str(tmp_path)], tmp_path)
    assert res.returncode == 2 and "unrecognized arguments: --flicker" in res.stderr
    assert not hasattr(ExpertsConfig(), "flicker")


def test_benchmark_smoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "recurrent_flicker.py"
    spec = importlib.util.spec_from_file_location("recurrent_flicker", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cmds: list[list[str]] = []

    def in_process(cmd: list[str], check: bool) -> None:  # train.py without a new interpreter
        assert cmd[1].endswith("train.py") and check
        cmds.append(cmd)
        assert train.main(cmd[2:]) == 0

    monkeypatch.setattr(bench.subprocess, "run", in_process)
    argv = ["--total-timesteps", "512", "--eval-episodes", "2", "--runs-dir", str(tmp_path)]
    assert bench.main([*argv, "--", *TINY]) == 0
    out = capsys.readouterr().out
    assert "flicker 0.5, 512 steps per run" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["ff"], ["rnn"])]
    assert [r[:2] for r in rows] == [["ff", "1"], ["rnn", "1"]]
    for arm in ("ff", "rnn"):
        saved = json.loads((tmp_path / f"flk-{arm}-s1" / "config.json").read_text())
        assert saved["ppo"]["flicker"] == 0.5 and saved["ppo"]["recurrent"] == (arm == "rnn")
    assert len(cmds) == 2
    assert bench.main([*argv, "--", *TINY]) == 0  # finished runs are read, not trained again
    assert len(cmds) == 2
