"""``train.py ppo|mimic --init-from``: a new run starts from a trained network's weights.

Sources: a single-game PPO run and an Actor-Mimic student (Breakout + SpaceInvaders,
so it reads 6 padded channels), both on tiny budgets. Targets: games with fewer
channels than the student (Asterix, 4), more (Seaquest, 10), and the source's own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from train_module import train

from maskrl.agents import PPO, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.mimic import ActorMimic, MimicConfig, load_experts
from maskrl.agents.transfer import build_ppo_from, init_mimic_from, transfer_weights
from maskrl.networks import ActorCritic, MinAtarCNN

BREAKOUT = "maskrl/MinAtar-Breakout-v0"
INVADERS = "maskrl/MinAtar-SpaceInvaders-v0"  # 6 channels
ASTERIX = "maskrl/MinAtar-Asterix-v0"  # 4 channels
SEAQUEST = "maskrl/MinAtar-Seaquest-v0"  # 10 channels
CFG = dict(num_envs=2, num_steps=8, num_minibatches=1, device="cpu")
TINY = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "1", "--device", "cpu",
        "--no-progress", "--eval-episodes", "0"]  # fmt: skip


def _cfg(seed: int = 1) -> PPOConfig:
    return PPOConfig(seed=seed, **CFG)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``ppo``: a Breakout PPO run folder (seed 5, weights moved off their init);
    ``student``: a student run folder distilled from Breakout and SpaceInvaders experts."""
    root = tmp_path_factory.mktemp("sources")
    (root / "ppo").mkdir()
    agent = PPO(BREAKOUT, _cfg(seed=5))
    with torch.no_grad():
        for p in agent.policy.net.parameters():
            p.add_(0.5)  # every weight differs from any fresh initialisation
    agent.save(root / "ppo" / "checkpoint.pt")
    agent.envs.close()
    experts = root / "experts"
    entries = []
    for i, env_id in enumerate([BREAKOUT, INVADERS]):
        (experts / f"e{i}").mkdir(parents=True)
        e = PPO(env_id, _cfg(seed=10 + i))
        e.save(experts / f"e{i}" / "checkpoint.pt")
        e.envs.close()
        entries.append({"env_id": env_id, "checkpoint": f"e{i}/checkpoint.pt"})
    (experts / "experts.json").write_text(json.dumps({"experts": entries}))
    rc = train.main(
        ["mimic", "--experts", str(experts), "--runs-dir", str(root), "--run-name", "student",
         "--total-timesteps", "16", "--hidden", "32", *TINY]
    )  # fmt: skip
    assert rc == 0
    return {"ppo": root / "ppo", "student": root / "student", "experts": experts}


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _scratch(env_id: str, **kw: object) -> dict[str, torch.Tensor]:
    agent = PPO(env_id, _cfg(), network_kwargs=dict(kw) or None)
    agent.envs.close()
    return _params(agent.policy.net)


def test_encoder_from_a_ppo_run_equals_the_source_and_heads_are_fresh(
    sources: dict[str, Path],
) -> None:
    src = _params(load_policy(sources["ppo"] / "checkpoint.pt", device="cpu").net)
    agent, rec = build_ppo_from([BREAKOUT], _cfg(), str(sources["ppo"]), "encoder")
    agent.envs.close()
    got, fresh = _params(agent.policy.net), _scratch(BREAKOUT)
    assert agent.global_step == 0
    assert sorted(rec["copied"]) == sorted(k for k in got if k.startswith("encoder."))
    for k, v in got.items():
        if k.startswith("encoder."):
            assert torch.equal(v, src[k]), k
        else:  # the heads: exactly a from-scratch run's with the same seed, not the source's
            assert torch.equal(v, fresh[k]), k
            assert not torch.equal(v, src[k]), k


def test_all_layers_from_a_ppo_run_equal_the_source(sources: dict[str, Path]) -> None:
    src = _params(load_policy(sources["ppo"] / "checkpoint.pt", device="cpu").net)
    agent, rec = build_ppo_from([BREAKOUT], _cfg(), str(sources["ppo"] / "checkpoint.pt"), "all")
    agent.envs.close()
    got = _params(agent.policy.net)
    assert set(rec["copied"]) == set(got) and not rec["fresh"] and not rec["partial"]
    for k, v in got.items():
        assert torch.equal(v, src[k]), k
    # The optimiser trains the copied tensors (they were written in place).
    opt_params = {id(p) for g in agent.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in agent.policy.net.parameters())


def test_a_student_encoder_on_an_unseen_game_with_fewer_channels(
    sources: dict[str, Path],
) -> None:
    student = load_policy(sources["student"] / "checkpoint.pt", device="cpu")
    src = _params(student.net)
    assert src["encoder.conv.weight"].shape[1] == 6  # Breakout 4, SpaceInvaders 6: padded to 6
    agent, rec = build_ppo_from([ASTERIX], _cfg(), str(sources["student"]), "encoder")
    agent.envs.close()
    got, fresh = _params(agent.policy.net), _scratch(ASTERIX, hidden=32)
    assert got["encoder.fc.weight"].shape == (32, 16 * 8 * 8)  # the student's width
    assert got["encoder.conv.weight"].shape[1] == 4  # Asterix's own channels
    assert torch.equal(got["encoder.conv.weight"], src["encoder.conv.weight"][:, :4])
    for k in ("encoder.conv.bias", "encoder.fc.weight", "encoder.fc.bias"):
        assert torch.equal(got[k], src[k]), k
    for k in ("policy_head.weight", "policy_head.bias", "value_head.weight", "value_head.bias"):
        assert torch.equal(got[k], fresh[k]), k
    assert rec["partial"] == ["encoder.conv.weight"] and rec["notes"]
    # The new encoder computes exactly the student's on the observation padded as the
    # student's layout pads it (zeros after the game's channels).
    obs = (torch.rand(3, 4, 10, 10) > 0.7).float()
    padded = torch.cat([obs, torch.zeros(3, 2, 10, 10)], dim=1)
    torch.testing.assert_close(agent.policy.net.encoder(obs), student.net.encoder(padded))


def test_a_student_encoder_on_a_game_with_more_channels_keeps_the_extra_ones_fresh(
    sources: dict[str, Path],
) -> None:
    src = _params(load_policy(sources["student"] / "checkpoint.pt", device="cpu").net)
    agent, rec = build_ppo_from([SEAQUEST], _cfg(), str(sources["student"]), "encoder")
    agent.envs.close()
    got, fresh = _params(agent.policy.net), _scratch(SEAQUEST, hidden=32)
    w = got["encoder.conv.weight"]
    assert w.shape[1] == 10
    assert torch.equal(w[:, :6], src["encoder.conv.weight"])
    assert torch.equal(w[:, 6:], fresh["encoder.conv.weight"][:, 6:])
    assert any("channels 6-9 start freshly initialised" in n for n in rec["notes"])


def test_all_layers_from_a_student_take_its_policy_head_and_leave_per_game_layers(
    sources: dict[str, Path],
) -> None:
    src = _params(load_policy(sources["student"] / "checkpoint.pt", device="cpu").net)
    agent, rec = build_ppo_from([ASTERIX], _cfg(), str(sources["student"]), "all")
    agent.envs.close()
    got, fresh = _params(agent.policy.net), _scratch(ASTERIX, hidden=32)
    assert torch.equal(got["policy_head.weight"], src["policy_head.weight"])
    assert torch.equal(got["policy_head.bias"], src["policy_head.bias"])
    assert torch.equal(got["value_head.weight"], fresh["value_head.weight"])
    assert rec["fresh"] == ["value_head.weight", "value_head.bias"]
    assert "game_embedding.weight" not in got


def test_a_head_of_another_shape_is_one_line_naming_it() -> None:
    a, b = ActorCritic(MinAtarCNN(4), 6), ActorCritic(MinAtarCNN(4), 7)
    transfer_weights(a, b, "encoder")  # the encoders agree
    with pytest.raises(ValueError, match=r"^--init-from: layer policy_head.weight has shape "):
        transfer_weights(a, b, "all")


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: "), lines
    return lines[0]


def test_cli_run_records_init_and_resumes(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ppo", "--env", SEAQUEST, "--runs-dir", str(tmp_path), "--run-name", "t",
            "--total-timesteps", "16", *TINY]  # fmt: skip
    assert train.main([*args, "--init-from", str(sources["student"]), "--init-layers", "all"]) == 0
    err = capsys.readouterr().err
    assert "init-from: encoder.conv.weight: the source reads 6 input channels" in err
    saved = json.loads((tmp_path / "t" / "config.json").read_text())
    assert saved["run"]["init_from"] == str(sources["student"])
    assert saved["run"]["init_layers"] == "all"
    assert saved["init"]["checkpoint"] == str((sources["student"] / "checkpoint.pt").absolute())
    assert "policy_head.weight" in saved["init"]["copied"]
    resume = ["ppo", "--resume", str(tmp_path / "t"), "--total-timesteps", "32", "--no-progress"]
    assert train.main([*resume, "--eval-episodes", "0"]) == 0
    again = json.loads((tmp_path / "t" / "config.json").read_text())
    assert again["init"] == saved["init"] and again["run"]["total_timesteps"] == 32


def test_init_from_with_resume_is_refused(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = train.main(["ppo", "--resume", str(sources["ppo"]), "--init-from", str(sources["ppo"])])
    assert rc == 2
    assert "--init-from starts a new run" in _one_error(capsys)


@pytest.mark.parametrize(
    ("where", "expect"),
    [
        ("missing", "does not exist"),
        ("empty", "the folder has no checkpoint.pt"),
        ("experts", "is a folder of experts"),
        ("garbage", "--init-from"),
    ],
)
def test_a_bad_source_path_is_one_line(
    where: str,
    expect: str,
    sources: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = {"missing": tmp_path / "nope", "empty": tmp_path, "experts": sources["experts"]}.get(
        where, tmp_path / "garbage.pt"
    )
    if where == "garbage":
        path.write_bytes(b"not a checkpoint")
    rc = train.main(["ppo", "--env", ASTERIX, "--init-from", str(path),
                     "--runs-dir", str(tmp_path / "runs"), *TINY])  # fmt: skip
    assert rc == 2
    assert expect in _one_error(capsys)
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made


def test_a_source_whose_encoder_does_not_line_up_is_one_line_naming_the_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A Connect Four net (6 x 7 board, channels last) cannot start a Tic-Tac-Toe one (3 x 3).
    four = PPO("maskrl/ConnectFour-v0", _cfg())
    (tmp_path / "four").mkdir()
    four.save(tmp_path / "four" / "checkpoint.pt")
    four.envs.close()
    rc = train.main(["ppo", "--env", "maskrl/TicTacToe-v0", "--init-from", str(tmp_path / "four"),
                     "--runs-dir", str(tmp_path / "runs"), *TINY])  # fmt: skip
    assert rc == 2
    line = _one_error(capsys)
    assert "layer encoder." in line and "fc.weight has shape (128, 320) in the source" in line


def test_init_layers_without_init_from_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["ppo", "--env", ASTERIX, "--init-layers", "all", *TINY]) == 2
    assert "--init-layers only applies with --init-from" in _one_error(capsys)


def test_an_unknown_init_layers_value_is_refused(
    sources: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ppo", "--env", ASTERIX, "--init-from", str(sources["ppo"]), "--init-layers", "heads"]
    assert train.main([*argv, *TINY]) == 2
    assert "init_layers (--init-layers) must be encoder or all" in _one_error(capsys)


def _mimic(experts: Path, hidden: int = 32, seed: int = 1) -> ActorMimic:
    cfg = MimicConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu", hidden=hidden,
                      seed=seed)  # fmt: skip
    return ActorMimic(load_experts(experts), cfg)


def test_mimic_from_a_student_takes_every_layer_and_its_feature_heads(
    sources: dict[str, Path],
) -> None:
    ckpt = load_checkpoint(sources["student"] / "checkpoint.pt")
    src = _params(load_policy(sources["student"] / "checkpoint.pt", device="cpu").net)
    trainer = _mimic(sources["experts"], seed=7)
    rec = init_mimic_from(trainer, str(sources["student"]), "all")
    trainer.envs.close()
    got = _params(trainer.policy.net)
    assert trainer.global_step == 0 and not rec["fresh"] and not rec["notes"]
    for k, v in got.items():
        assert torch.equal(v, src[k]), k
    for k, v in trainer.feature_heads.state_dict().items():
        assert torch.equal(v, ckpt["feature_heads"][k]), k
        assert f"feature_heads.{k}" in rec["copied"]


def test_mimic_from_a_student_encoder_keeps_the_heads_of_a_fresh_student(
    sources: dict[str, Path],
) -> None:
    src = _params(load_policy(sources["student"] / "checkpoint.pt", device="cpu").net)
    fresh_trainer = _mimic(sources["experts"])
    fresh_trainer.envs.close()
    fresh = _params(fresh_trainer.policy.net)
    fresh_heads = _params(fresh_trainer.feature_heads)
    trainer = _mimic(sources["experts"])
    init_mimic_from(trainer, str(sources["student"]), "encoder")
    trainer.envs.close()
    for k, v in _params(trainer.policy.net).items():
        assert torch.equal(v, src[k] if k.startswith("encoder.") else fresh[k]), k
    for k, v in _params(trainer.feature_heads).items():
        assert torch.equal(v, fresh_heads[k]), k


def test_mimic_from_a_ppo_run_leaves_the_per_game_layers_and_feature_heads_fresh(
    sources: dict[str, Path],
) -> None:
    # The PPO source plays Breakout (4 channels); the student reads 6 (padded).
    trainer = _mimic(sources["experts"], hidden=128)
    rec = init_mimic_from(trainer, str(sources["ppo"]), "all")
    trainer.envs.close()
    assert "encoder.conv.weight" in rec["partial"]
    assert {"value_head.weight", "game_embedding.weight"} <= set(rec["fresh"])
    assert any("feature-regression heads start freshly initialised" in n for n in rec["notes"])


def test_mimic_init_from_through_the_command_line(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["mimic", "--experts", str(sources["experts"]), "--runs-dir", str(tmp_path),
            "--total-timesteps", "16", *TINY]  # fmt: skip
    init = ["--init-from", str(sources["student"]), "--init-layers", "all"]
    assert train.main([*base, *init, "--hidden", "32", "--run-name", "t"]) == 0
    saved = json.loads((tmp_path / "t" / "config.json").read_text())
    assert saved["run"]["init_from"] == str(sources["student"])
    assert saved["init"]["checkpoint"] == str((sources["student"] / "checkpoint.pt").absolute())
    assert "feature_heads.heads.0.weight" in saved["init"]["copied"]
    capsys.readouterr()
    # The student's width must be given: one line that says which flag.
    assert train.main([*base, *init, "--run-name", "u"]) == 2
    assert "pass --hidden 32 so the encoders line up" in _one_error(capsys)
    assert not (tmp_path / "u").exists()
    rc = train.main(["mimic", "--resume", str(tmp_path / "t"), "--init-from", str(sources["ppo"])])
    assert rc == 2
    assert "--init-from starts a new run" in _one_error(capsys)
    assert train.main([*base, "--init-layers", "all", "--run-name", "v"]) == 2
    assert "--init-layers only applies with --init-from" in _one_error(capsys)


def test_the_source_folder_is_left_untouched(sources: dict[str, Path], tmp_path: Path) -> None:
    before = sorted(p.name for p in sources["ppo"].iterdir())
    copy = tmp_path / "src"
    shutil.copytree(sources["ppo"], copy)
    agent, _ = build_ppo_from([BREAKOUT], _cfg(), str(copy), "encoder")
    agent.envs.close()
    assert sorted(p.name for p in copy.iterdir()) == before


def test_quantizer_state_does_not_transfer_but_the_weights_do(sources: dict[str, Path]) -> None:
    src = _params(load_policy(sources["ppo"] / "checkpoint.pt", device="cpu").net)
    cfg = PPOConfig(seed=1, qat=True, **CFG)  # type: ignore[arg-type]
    agent, rec = build_ppo_from([BREAKOUT], cfg, str(sources["ppo"]), "all")
    agent.envs.close()
    got = _params(agent.policy.net)
    assert any("_quant." in k for k in got)  # a QAT network...
    assert not any("_quant." in k for k in rec["copied"])  # ...whose quantizers start afresh
    assert sorted(rec["copied"]) == sorted(src)
    for k in src:
        assert torch.equal(got[k], src[k]), k


def test_all_layers_into_a_multigame_run_of_the_students_own_games(
    sources: dict[str, Path],
) -> None:
    src = _params(load_policy(sources["student"] / "checkpoint.pt", device="cpu").net)
    agent, rec = build_ppo_from([BREAKOUT, INVADERS], _cfg(), str(sources["student"]), "all")
    agent.envs.close()
    got = _params(agent.policy.net)
    assert set(rec["copied"]) == set(got) == set(src) and not rec["fresh"]
    for k in src:  # the per-game layers too: the same games in the same order
        assert torch.equal(got[k], src[k]), k
    # In another order the per-game rows would be the wrong games': they stay fresh.
    agent, rec = build_ppo_from([INVADERS, BREAKOUT], _cfg(), str(sources["student"]), "all")
    agent.envs.close()
    assert sorted(rec["fresh"]) == [
        "game_embedding.weight", "value_head.bias", "value_head.weight"
    ]  # fmt: skip


def test_a_hidden_flag_other_than_the_sources_width_is_one_line(
    sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The student is 32 units wide; --hidden 64 (or the minatar preset's 256) cannot line up.
    for extra in (["--hidden", "64"], ["--preset", "minatar"]):
        rc = train.main(["ppo", "--env", ASTERIX, "--init-from", str(sources["student"]), *extra,
                         "--runs-dir", str(tmp_path / "runs"), *TINY])  # fmt: skip
        assert rc == 2
        line = _one_error(capsys)
        assert "differs from the width of the --init-from network (32)" in line
        assert "pass --hidden 32" in line


def test_the_sources_width_given_as_hidden_is_accepted(sources: dict[str, Path]) -> None:
    agent, record = build_ppo_from([ASTERIX], PPOConfig(hidden=32, **CFG), str(sources["student"]))  # type: ignore[arg-type]
    agent.envs.close()
    cnn = [m for m in agent.policy.net.modules() if isinstance(m, MinAtarCNN)]
    assert cnn[0].fc.out_features == 32 and record["copied"]
