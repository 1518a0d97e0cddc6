"""Actor-Mimic experts are matched to the games they label, and a student finds the same ones.

Every case goes through ``train.py`` (``train.main(argv)`` in this process) on
tiny budgets: untrained PPO experts saved straight away, students of 2-4 env
slots x 8 steps.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from train_module import train

from maskrl.agents import PPO, MaskedPolicy, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint, save_checkpoint
from maskrl.agents.mimic import (
    ActorMimic,
    MimicConfig,
    file_sha256,
    load_expert,
    load_experts,
)
from maskrl.agents.mimic_losses import (
    MIN_TAU,
    FeatureRegressionHeads,
    expert_policy,
    policy_regression_loss,
)

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
INVADERS = "maskrl/MinAtar-SpaceInvaders-v0"  # 6 channels; Breakout and Asterix have 4
TINY = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "1", "--device", "cpu",
        "--no-progress"]  # fmt: skip


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


# ------------------------------------------------------- experts match their games


def test_swapped_expert_checkpoints_are_refused_naming_both_games(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Breakout and Asterix have the same spaces: only the recorded env id tells them apart.
    folder = _experts_dir(
        tmp_path / "ex", [(BREAKOUT, pool / "Asterix-v0.pt"), (ASTERIX, pool / "Breakout-v0.pt")]
    )
    assert train.main(_mimic(folder, tmp_path / "runs", "s")) == 2
    line = _one_error_line(capsys)
    assert f"the expert for {BREAKOUT}" in line and f"was trained on {ASTERIX}" in line, line
    assert not (tmp_path / "runs").exists()


def test_a_breakout_expert_listed_as_space_invaders_is_refused(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _experts_dir(tmp_path / "ex", [(INVADERS, pool / "Breakout-v0.pt")])
    assert train.main(_mimic(folder, tmp_path / "runs", "s")) == 2
    line = _one_error_line(capsys)
    assert f"the expert for {INVADERS}" in line and f"was trained on {BREAKOUT}" in line, line


def test_an_expert_whose_spaces_are_not_its_games_is_refused(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 6-channel SpaceInvaders network recorded as a Breakout (4-channel) expert: it
    used to reach the convolution and fail there with a RuntimeError traceback."""
    ckpt = load_checkpoint(pool / "SpaceInvaders-v0.pt")
    ckpt["env_ids"] = [BREAKOUT]
    save_checkpoint(ckpt, tmp_path / "relabelled.pt")
    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, tmp_path / "relabelled.pt")])
    assert train.main(_mimic(folder, tmp_path / "runs", "s")) == 2
    line = _one_error_line(capsys)
    assert "observation space Box(0.0, 1.0, (6, 10, 10), float32)" in line, line
    assert f"but {BREAKOUT} has Box(0.0, 1.0, (4, 10, 10), float32)" in line, line
    # The action space is checked the same way.
    ckpt = load_checkpoint(pool / "Breakout-v0.pt")
    ckpt["action_space"] = {"type": "Discrete", "n": 5, "start": 0}
    save_checkpoint(ckpt, tmp_path / "five.pt")
    with pytest.raises(ValueError, match=r"action space Discrete\(5\), but .* has Discrete\(6\)"):
        load_expert(BREAKOUT, tmp_path / "five.pt", "cpu")


@pytest.mark.parametrize(
    ("which", "needle"),
    [("student", "is an Actor-Mimic student"), ("multi", "is a multi-game run")],
)
def test_a_student_or_a_multigame_run_as_an_expert_is_one_line(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, needle: str
) -> None:
    if which == "student":
        trainer = ActorMimic(
            load_experts(_experts_dir(tmp_path / "first", [(BREAKOUT, pool / "Breakout-v0.pt")])),
            MimicConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"),
        )
        trainer.save(tmp_path / "src.pt")
        trainer.envs.close()
    else:
        shutil.copy(pool / "multi.pt", tmp_path / "src.pt")
    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, tmp_path / "src.pt")])
    assert train.main(_mimic(folder, tmp_path / "runs", "s")) == 2
    line = _one_error_line(capsys)
    assert f"the expert for {BREAKOUT}" in line and needle in line, line


# ------------------------------------------------------- a resume finds the same experts


def test_the_student_records_absolute_expert_paths_and_digests_and_resumes_from_anywhere(
    pool: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _experts_dir(tmp_path / "a" / "ex", [(BREAKOUT, pool / "Breakout-v0.pt")])
    # Another folder holds other experts under the same relative path.
    _experts_dir(tmp_path / "b" / "ex", [(BREAKOUT, pool / "Breakout-other.pt")])
    monkeypatch.chdir(tmp_path / "a")
    assert train.main(_mimic(Path("ex"), Path("runs"), "stu")) == 0
    run = tmp_path / "a" / "runs" / "stu"
    original = tmp_path / "a" / "ex" / "e0" / "checkpoint.pt"
    (entry,) = load_checkpoint(run / "checkpoint.pt")["experts"]
    assert entry == {
        "env_id": BREAKOUT,
        "checkpoint": str(original.absolute()),
        "sha256": file_sha256(original),
    }
    assert json.loads((run / "config.json").read_text())["experts"] == str(
        (tmp_path / "a" / "ex").absolute()
    )
    monkeypatch.chdir(tmp_path / "b")
    resumed = ActorMimic.load(run / "checkpoint.pt", device="cpu")
    resumed.envs.close()
    assert [x.checkpoint for x in resumed.experts] == [original.absolute()]
    argv = ["mimic", "--resume", str(run), "--total-timesteps", "32", "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "0"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["global_step"] == 32

    # An expert file that changed (here: retrained) or disappeared is refused by name.
    shutil.copy(pool / "Breakout-other.pt", original)
    capsys.readouterr()
    assert train.main([*argv, "--total-timesteps", "48", "--eval-episodes", "0"]) == 2
    line = _one_error_line(capsys)
    assert f"the expert for {BREAKOUT} ({original.absolute()}) has changed" in line, line
    original.unlink()
    assert train.main([*argv, "--total-timesteps", "48", "--eval-episodes", "0"]) == 2
    line = _one_error_line(capsys)
    assert f"the expert for {BREAKOUT} ({original.absolute()}) does not exist" in line, line
    assert load_checkpoint(run / "checkpoint.pt")["global_step"] == 32


def test_a_student_checkpoint_without_digests_still_loads_with_a_warning(
    pool: Path, tmp_path: Path
) -> None:
    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, pool / "Breakout-v0.pt")])
    trainer = ActorMimic(
        load_experts(folder), MimicConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu")
    )
    trainer.save(tmp_path / "student.pt")
    trainer.envs.close()
    ckpt = load_checkpoint(tmp_path / "student.pt")
    for e in ckpt["experts"]:
        del e["sha256"]
    save_checkpoint(ckpt, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="does not record the SHA-256"):
        old = ActorMimic.load(tmp_path / "old.pt", device="cpu")
    old.envs.close()


# ------------------------------------------------------- a one-game student works


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


def test_the_fine_tune_takes_its_preset_and_keeps_it_on_resume(pool: Path, tmp_path: Path) -> None:
    from maskrl.agents.config import PRESETS

    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, pool / "Breakout-v0.pt")])
    runs = tmp_path / "runs"
    extra = ("--finetune-ppo", "16", "--finetune-preset", "reference", "--value-coef", "0.5")
    assert train.main(_mimic(folder, runs, "ftp", *extra)) == 0
    saved = json.loads((runs / "ftp" / "config.json").read_text())
    assert saved["mimic"]["value_coef"] == 0.5
    lr = PRESETS["reference"]["learning_rate"] / 10  # a tenth of the preset's by default
    assert saved["finetune_config"]["learning_rate"] == pytest.approx(lr)
    ppo = json.loads((runs / "ftp" / "finetune" / "config.json").read_text())["ppo"]
    assert ppo["learning_rate"] == pytest.approx(lr)
    for key, value in PRESETS["reference"].items():
        if key != "learning_rate":
            assert ppo[key] == value, key
    # Distilling further fine-tunes the new student afresh, with the saved preset.
    argv = ["mimic", "--resume", str(runs / "ftp"), "--total-timesteps", "32", "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "1"]) == 0
    assert (runs / "ftp" / "finetune-from-step-16" / "checkpoint.pt").is_file()
    again = json.loads((runs / "ftp" / "finetune" / "config.json").read_text())["ppo"]
    assert again["learning_rate"] == pytest.approx(lr)
    assert again["clip_coef"] == PRESETS["reference"]["clip_coef"]
    # An explicit learning rate is taken as given; a bad one is one line.
    extra = ("--finetune-ppo", "16", "--finetune-learning-rate", "3e-5", "--value-coef", "0.5")
    assert train.main(_mimic(folder, runs, "ftlr", *extra)) == 0
    ppo = json.loads((runs / "ftlr" / "finetune" / "config.json").read_text())["ppo"]
    assert ppo["learning_rate"] == 3e-5
    assert ppo["critic_warmup"] == 0
    # A critic warm-up reaches the fine-tune's config, and its first update trains the
    # value head alone (the student distilled without --value-coef has a fresh critic).
    extra = ("--finetune-ppo", "16", "--finetune-critic-warmup", "16")
    assert train.main(_mimic(folder, runs, "ftcw", *extra)) == 0
    ppo = json.loads((runs / "ftcw" / "finetune" / "config.json").read_text())["ppo"]
    assert ppo["critic_warmup"] == 16
    student = load_checkpoint(runs / "ftcw" / "checkpoint.pt")["model"]
    tuned = load_checkpoint(runs / "ftcw" / "finetune" / "checkpoint.pt")["model"]
    moved = {k for k in student if not torch.equal(student[k], tuned[k])}
    assert moved == {"value_head.weight", "value_head.bias"}


def test_a_bad_fine_tune_learning_rate_is_one_line(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, pool / "Breakout-v0.pt")])
    argv = _mimic(
        folder, tmp_path / "runs", "x", "--finetune-ppo", "16", "--finetune-learning-rate", "0"
    )
    assert train.main(argv) == 2
    line = _one_error_line(capsys)
    assert "--finetune-learning-rate" in line and "got 0.0" in line
    argv = _mimic(
        folder, tmp_path / "runs", "y", "--finetune-ppo", "16", "--finetune-critic-warmup", "-1"
    )
    assert train.main(argv) == 2
    line = _one_error_line(capsys)
    assert "--finetune-critic-warmup" in line and "got -1" in line


# ------------------------------------------------------- malformed checkpoints and values


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


def test_tau_below_the_bound_is_refused_and_the_bound_keeps_the_loss_finite(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _experts_dir(tmp_path / "ex", [(BREAKOUT, pool / "Breakout-v0.pt")])
    for tau in ("1e-45", "5e-5", "0"):
        assert train.main(_mimic(folder, tmp_path / "runs", "t", "--tau", tau)) == 2
        line = _one_error_line(capsys)
        assert "tau (--tau) must be finite and >= 0.0001" in line, line
        assert line.endswith(f"got {float(tau)!r}"), line
    assert not (tmp_path / "runs").exists()
    logits = torch.tensor([[3.0, -2.0, 1e30, 0.5]])
    mask = torch.tensor([[True, True, True, False]])
    with pytest.raises(ValueError, match=r"tau must be a finite number >= 0.0001"):
        policy_regression_loss(torch.zeros(1, 4), logits, mask, tau=1e-45)
    # At the bound the target is finite (one-hot on the expert's greedy action), as is the loss.
    p = expert_policy(logits, mask, tau=MIN_TAU)
    assert p.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    loss = policy_regression_loss(torch.zeros(1, 4), logits, mask, tau=MIN_TAU)
    assert math.isclose(float(loss), math.log(3), rel_tol=1e-6)
    MimicConfig(tau=MIN_TAU).validate()


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
        (np.nan, r"game_id'\] holds NaN or infinite values"),
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
    # So do the feature-regression heads (one per expert).
    heads = FeatureRegressionHeads(8, [4, 2])
    h = torch.zeros(2, 8)
    assert heads(h, torch.tensor([1, 0])).shape == (2, 4)
    for gid, needle in [
        (torch.tensor([0.5, 1.0]), r"game_id must hold integers in \[0, 1\], got 0.5"),
        (torch.tensor([0, 7]), r"game_id must be in \[0, 1\] \(2 feature heads\), got 7"),
        (torch.tensor([True, False]), "game_id must hold integers, got dtype torch.bool"),
    ]:
        with pytest.raises(ValueError, match=needle):
            heads.loss(h, gid, torch.zeros(2, 4))
        with pytest.raises(ValueError, match=needle):
            heads.feature_mask(gid)
