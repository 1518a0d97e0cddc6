"""``evaluate(..., use_mask=False)`` / ``train.py eval --no-mask``: a policy trained
with masks, played without them, and the share of invalid actions it takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from train_module import train

import maskrl.envs  # noqa: F401  (registers the ids)
from maskrl.agents import evaluate
from maskrl.agents.evaluation import _action_valid

BREAKOUT = "maskrl/MinAtar-Breakout-v0"  # valid: noop 0, left 1, right 3 of the six


class Prefers:
    """Takes action ``a`` where the mask it is shown allows it, else the first valid one."""

    def __init__(self, a: int, env_ids: list[str]) -> None:
        self.a, self.env_ids = a, env_ids
        self.shown: list[np.ndarray] = []

    def predict(self, obs: object, mask: np.ndarray, deterministic: bool = False) -> np.ndarray:
        self.shown.append(mask.copy())
        return np.where(mask[:, self.a], self.a, mask.argmax(axis=1))


def test_with_the_mask_no_invalid_action_is_taken_and_without_every_one_is() -> None:
    masked = Prefers(2, [BREAKOUT])  # "up": not one of Breakout's actions
    r = evaluate(masked, episodes=3, seed=1)
    assert r["invalid_action_rate"] == 0.0
    assert all(not m[:, 2].any() for m in masked.shown)  # the true masks were shown
    bare = Prefers(2, [BREAKOUT])
    r = evaluate(bare, episodes=3, seed=1, use_mask=False)
    assert all(m.all() for m in bare.shown)  # every action offered
    assert r["invalid_action_rate"] == 1.0 and r["episodes"] == 3


def test_a_valid_preferred_action_counts_no_invalid_action_without_the_mask() -> None:
    r = evaluate(Prefers(3, [BREAKOUT]), episodes=2, seed=1, use_mask=False)
    assert r["invalid_action_rate"] == 0.0


def test_the_rate_is_per_game_in_a_multigame_evaluation() -> None:
    ids = [BREAKOUT, "maskrl/MinAtar-Freeway-v0"]  # Freeway: noop 0, up 2, down 4
    r = evaluate(Prefers(2, ids), ids, episodes=1, seed=0, use_mask=False, num_envs=2)
    assert r["per_game"][BREAKOUT]["invalid_action_rate"] == 1.0
    assert r["per_game"][ids[1]]["invalid_action_rate"] == 0.0


def test_action_valid_by_hand() -> None:
    mask = np.array([[True, False, True], [False, True, True]])
    assert _action_valid(mask, np.array([1, 1]), None).tolist() == [False, True]
    # MultiDiscrete (2, 3): offsets 0 and 2; env 0 picks (0, 2) -> columns 0 and 4.
    md = np.array([[True, False, True, False, True], [True, True, True, True, False]])
    actions = np.array([[0, 2], [1, 2]])
    assert _action_valid(md, actions, np.array([0, 2])).tolist() == [True, False]


def test_cli_eval_no_mask_reports_the_invalid_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = ["--num-envs", "2", "--num-steps", "16", "--num-minibatches", "1", "--device", "cpu"]
    argv = ["ppo", "--env", BREAKOUT, "--total-timesteps", "32", *tiny, "--no-progress"]
    argv += ["--eval-episodes", "0", "--runs-dir", str(tmp_path), "--run-name", "b"]
    assert train.main(argv) == 0
    ckpt = str(tmp_path / "b" / "checkpoint.pt")
    out = tmp_path / "nomask.json"
    argv = ["eval", "--checkpoint", ckpt, "--episodes", "2", "--no-mask", "--output", str(out)]
    capsys.readouterr()
    assert train.main(argv) == 0
    # An untrained policy spreads over all six actions, three of them invalid in Breakout.
    rate = json.loads(out.read_text())["invalid_action_rate"]
    assert 0.2 < rate < 0.8
    assert f"invalid actions: {rate:.1%} of steps" in capsys.readouterr().out
    assert train.main(["eval", "--checkpoint", ckpt, "--episodes", "2", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["invalid_action_rate"] == 0.0


def test_the_progress_bar_counts_every_episode_and_changes_no_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [BREAKOUT, "maskrl/MinAtar-Freeway-v0"]
    quiet = evaluate(Prefers(3, ids), ids, episodes=3, seed=5, num_envs=4)
    capsys.readouterr()
    shown = evaluate(Prefers(3, ids), ids, episodes=3, seed=5, num_envs=4, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet
    assert "6/6" in err and "episode" in err  # 3 episodes of each of the 2 games
    mean = np.mean(quiet["per_game"][BREAKOUT]["returns"] + quiet["per_game"][ids[1]]["returns"])
    assert f"mean_return={mean:.2f}" in err


def _tiny_breakout_run(tmp_path: Path, steps: int) -> str:
    """A PPO checkpoint of ``steps`` Breakout steps on 2 envs; returns its path."""
    assert train.main(["ppo", "--env", BREAKOUT, "--total-timesteps", str(steps), "--num-envs", "2",
                       "--num-steps", "64", "--runs-dir", str(tmp_path / "runs"), "--run-name",
                       "r", "--eval-episodes", "0", "--no-progress"]) == 0  # fmt: skip
    return str(tmp_path / "runs" / "r" / "checkpoint.pt")


def test_cli_eval_num_envs_and_no_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _tiny_breakout_run(tmp_path, 256)
    capsys.readouterr()
    from maskrl.agents import load_policy

    policy = load_policy(ckpt, device="cpu")
    for n in (1, 3):
        out = tmp_path / f"e{n}.json"
        args = ["eval", "--checkpoint", ckpt, "--episodes", "3", "--seed", "7", "--deterministic"]
        assert train.main([*args, "--num-envs", str(n), "--no-progress", "--output", str(out)]) == 0
        # The flag reaches evaluate: the same episodes as evaluate(num_envs=n).
        want = evaluate(policy, BREAKOUT, 3, seed=7, deterministic=True, num_envs=n)
        assert json.loads(out.read_text()) == want
    assert "episode" not in capsys.readouterr().err  # --no-progress: no bar
    assert train.main(["eval", "--checkpoint", ckpt, "--num-envs", "0"]) == 2
    assert "--num-envs must be at least 1, got 0" in capsys.readouterr().err


def test_cli_eval_torch_threads_is_scoped_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval --torch-threads N`` runs the evaluation on N threads and puts the count back."""
    import torch

    import maskrl.agents

    ckpt = _tiny_breakout_run(tmp_path, 128)
    seen: list[int] = []
    real = maskrl.agents.evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(maskrl.agents, "evaluate", spy)
    before = torch.get_num_threads()
    args = ["eval", "--checkpoint", ckpt, "--episodes", "2", "--no-progress"]
    assert train.main([*args, "--torch-threads", "1"]) == 0
    assert seen == [1] and torch.get_num_threads() == before
    capsys.readouterr()
    assert train.main([*args, "--torch-threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--torch-threads must be in [1, " in err[0], err
