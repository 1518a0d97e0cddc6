"""Actor-Mimic experts are matched to the games they label, and a student finds the same ones.

Every case goes through ``train.py`` (``train.main(argv)`` in this process) on
tiny budgets: untrained PPO experts saved straight away, students of 2-4 env
slots x 8 steps.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from maskrl.agents import PPO, MaskedPolicy, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
INVADERS = "maskrl/MinAtar-SpaceInvaders-v0"  # 6 channels; Breakout and Asterix have 4
TINY = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "1", "--device", "cpu",
        "--no-progress"]  # fmt: skip


def _load_train_module() -> Any:
    spec = importlib.util.spec_from_file_location("train_mimic_experts_tests", REPO / "train.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


train = _load_train_module()


def _label(env_id: str) -> str:
    return env_id.split("/")[-1].removeprefix("MinAtar-")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained per-game PPO checkpoints (``<pool>/<label>.pt``), a 2-game PPO run's
    (``multi.pt``) and a spare Breakout expert with other weights (``Breakout-other.pt``)."""
    root = tmp_path_factory.mktemp("pool")
    cfg = dict(num_envs=2, num_steps=8, num_minibatches=1, device="cpu")
    for i, env_id in enumerate([BREAKOUT, ASTERIX, INVADERS]):
        agent = PPO(env_id, PPOConfig(seed=i, **cfg))  # type: ignore[arg-type]
        agent.save(root / f"{_label(env_id)}.pt")
        agent.envs.close()
    other = PPO(BREAKOUT, PPOConfig(seed=7, **cfg))  # type: ignore[arg-type]
    other.save(root / "Breakout-other.pt")
    other.envs.close()
    multi = PPO([BREAKOUT, ASTERIX], PPOConfig(seed=3, **cfg))  # type: ignore[arg-type]
    multi.save(root / "multi.pt")
    multi.envs.close()
    return root


def _experts_dir(folder: Path, pairs: list[tuple[str, Path]]) -> Path:
    """An experts folder listing ``(env_id, checkpoint file)`` pairs, copied into it."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (env_id, src) in enumerate(pairs):
        name = f"e{i}"
        (folder / name).mkdir(exist_ok=True)
        shutil.copy(src, folder / name / "checkpoint.pt")
        entries.append({"env_id": env_id, "checkpoint": f"{name}/checkpoint.pt"})
    (folder / "experts.json").write_text(json.dumps({"experts": entries}))
    return folder


def _mimic(folder: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["mimic", "--experts", str(folder), "--runs-dir", str(runs), "--run-name", name,
            "--total-timesteps", "16", "--eval-episodes", "1", *TINY, *extra]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: "), lines
    return lines[0]


def test_a_one_expert_student_trains_evaluates_resumes_and_fine_tunes(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, pool / "Breakout-v0.pt")])
    runs = tmp_path / "runs"
    assert train.main(_mimic(folder, runs, "one", "--eval-episodes", "2")) == 0
    ev = json.loads((runs / "one" / "eval.json").read_text())["eval"]
    assert ev["env_id"] == BREAKOUT and ev["episodes"] == 2 and len(ev["returns"]) == 2
    capsys.readouterr()
    ckpt = str(runs / "one" / "checkpoint.pt")
    assert train.main(["eval", "--checkpoint", ckpt, "--episodes", "2", "--device", "cpu"]) == 0
    assert f"eval {BREAKOUT}: mean return" in capsys.readouterr().out
    argv = ["mimic", "--resume", str(runs / "one"), "--total-timesteps", "32", "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "1"]) == 0
    assert load_checkpoint(ckpt)["global_step"] == 32
    assert json.loads((runs / "one" / "eval.json").read_text())["eval"]["episodes"] == 1

    # Fine-tuning with PPO (it used to stop on an AssertionError), and resuming that run.
    assert train.main(_mimic(folder, runs, "ft", "--finetune-ppo", "16")) == 0
    ft = runs / "ft" / "finetune"
    assert json.loads((ft / "eval.json").read_text())["eval"]["env_id"] == BREAKOUT
    step = load_checkpoint(ft / "checkpoint.pt")["global_step"]
    assert step > 0
    argv = ["ppo", "--resume", str(ft), "--total-timesteps", str(2 * step), "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "1"]) == 0
    assert load_checkpoint(ft / "checkpoint.pt")["global_step"] == 2 * step


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("observation_space", "Box"),
        ("observation_space", None),
        ("observation_space", [4, 10, 10]),
        ("observation_space", {"type": "Dict", "spaces": 3}),
        (
            "observation_space",
            {"type": "Box", "shape": [-4, 10, 10], "dtype": "float32", "low": 0, "high": 1},
        ),  # fmt: skip
        (
            "observation_space",
            {"type": "Box", "shape": [4, 10, 10], "dtype": "object", "low": 0, "high": 1},
        ),  # fmt: skip
        ("action_space", 6),
    ],
)
def test_a_crc_valid_checkpoint_with_a_malformed_space_is_one_line(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any
) -> None:
    ckpt = load_checkpoint(pool / "Breakout-v0.pt")
    ckpt[key] = value
    path = tmp_path / "bad.pt"
    save_checkpoint(ckpt, path)
    with pytest.raises(ValueError, match=f"checkpoint .* has a malformed {key}"):
        load_policy(path, device="cpu")
    assert train.main(["eval", "--checkpoint", str(path), "--episodes", "1"]) == 2
    assert f"has a malformed {key}" in _one_error_line(capsys)


def test_a_students_game_id_must_be_an_integer_in_range() -> None:
    from maskrl.envs import make_multigame_vec

    envs = make_multigame_vec([BREAKOUT, ASTERIX], 2, seed=0)
    policy = MaskedPolicy.build(envs.single_observation_space, envs.single_action_space)
    obs, infos = envs.reset(seed=0)
    envs.close()
    mask = infos["action_mask"]
    assert policy.predict(obs, mask).shape == (2,)  # game ids 0 and 1 are fine
    one = {"obs": obs["obs"][0], "game_id": 1}
    assert policy.predict(one, mask[0]).shape == ()
    for gid, needle in [
        (0.5, r"observation\['game_id'\] must hold integers in \[0, 1\] \(a game id\), got 0.5"),
        (7, r"observation\['game_id'\] must be in \[0, 1\] .* got 7"),
        (-1, r"observation\['game_id'\] must be in \[0, 1\] .* got -1"),
        (np.nan, r"must hold integers in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=needle):
            policy.predict({**one, "game_id": gid}, mask[0])
    # An integral float is the integer it holds.
    assert policy.predict({**one, "game_id": 1.0}, mask[0]).shape == ()
    # The network itself refuses what would otherwise be truncated or fail in the embedding.
    t_obs = torch.as_tensor(obs["obs"])
    with pytest.raises(ValueError, match=r"game_id must hold integers in \[0, 1\], got 0.5"):
        policy.net({"obs": t_obs, "game_id": torch.tensor([0.5, 1.0])})
    with pytest.raises(ValueError, match="game_id must hold integers, got dtype torch.bool"):
        policy.net({"obs": t_obs, "game_id": torch.tensor([False, True])})
    with pytest.raises(ValueError, match=r"game_id must be in \[0, 1\] .* got 7"):
        policy.net({"obs": t_obs, "game_id": torch.tensor([0, 7])})
