"""Actor-Mimic: experts, the distillation trainer and their command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_module import train

from maskrl.agents import PPO, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.mimic import ActorMimic, MimicConfig, load_experts, student_agreement

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"


def _decisive_experts(folder: Path, ids: list[str]) -> Path:
    """Untrained experts whose policy heads are scaled up, so their greedy action
    depends sharply on the observation: a target the student can only match by
    learning it (chance agreement is about 1/3 on these games' 3-5 valid actions)."""
    entries = []
    for i, env_id in enumerate(ids):
        agent = PPO(env_id, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, seed=10 + i))
        with torch.no_grad():
            agent.net.policy_head.weight.mul_(300.0)  # type: ignore[union-attr, operator]
        name = env_id.split("/")[-1]
        agent.save(folder / name / "checkpoint.pt")
        agent.envs.close()
        entries.append({"env_id": env_id, "checkpoint": f"{name}/checkpoint.pt"})
    (folder / "experts.json").write_text(json.dumps({"experts": entries}))
    return folder


def test_distillation_raises_agreement_with_both_experts_well_above_chance(
    tmp_path: Path,
) -> None:
    folder = _decisive_experts(tmp_path / "experts", [BREAKOUT, ASTERIX])
    experts = load_experts(folder, device="cpu")
    cfg = MimicConfig(
        num_envs=8, num_steps=32, num_epochs=4, num_minibatches=2, device="cpu", seed=0,
        torch_threads=1,
    )  # fmt: skip
    trainer = ActorMimic(experts, cfg)
    before = student_agreement(trainer.policy, experts, steps=100, seed=1)
    history: list[dict[str, float]] = []
    trainer.learn(12_000, callback=lambda t, m: history.append(m) is None)
    after = student_agreement(trainer.policy, experts, steps=100, seed=1)
    trainer.envs.close()
    for env_id in (BREAKOUT, ASTERIX):
        assert after[env_id] >= 0.8, (before, after)
        if before[env_id] < 0.6:  # (an expert that is nearly constant may agree by chance)
            assert after[env_id] > before[env_id] + 0.3, (before, after)
    assert min(before.values()) < 0.6  # at least one game had something to learn
    first, last = history[0], history[-1]
    assert last["policy_regression"] < first["policy_regression"]
    assert {"mimic/MinAtar-Breakout-v0/agreement", "mimic/MinAtar-Asterix-v0/agreement"} <= set(
        last
    )
    assert all(m["invalid_action_rate"] == 0 for m in history)


def test_the_student_policy_is_what_load_policy_gives_back(tmp_path: Path) -> None:
    folder = _decisive_experts(tmp_path / "experts", [BREAKOUT, ASTERIX])
    trainer = ActorMimic(
        load_experts(folder), MimicConfig(num_envs=4, num_steps=8, num_minibatches=1, device="cpu")
    )
    trainer.learn(64)
    trainer.save(tmp_path / "student.pt")
    trainer.envs.close()
    policy = load_policy(tmp_path / "student.pt", device="cpu")
    assert policy.env_ids == [BREAKOUT, ASTERIX]
    for p, q in zip(policy.net.parameters(), trainer.net.parameters(), strict=True):
        assert torch.equal(p, q)
    resumed = ActorMimic.load(tmp_path / "student.pt", device="cpu")
    assert resumed.global_step == 64
    assert torch.equal(resumed.rng.host_gen.get_state(), trainer.rng.host_gen.get_state())
    resumed.envs.close()


def test_epsilon_exploration_never_takes_a_masked_action(tmp_path: Path) -> None:
    folder = _decisive_experts(tmp_path / "experts", [BREAKOUT])
    cfg = MimicConfig(num_envs=4, num_steps=16, num_minibatches=1, device="cpu", epsilon=1.0)
    trainer = ActorMimic(load_experts(folder), cfg)
    rates: list[float] = []
    trainer.learn(256, callback=lambda t, m: rates.append(m["invalid_action_rate"]) is None)
    trainer.envs.close()
    assert rates and all(r == 0 for r in rates)


def _experts_with_constant_values(folder: Path, values: dict[str, float]) -> Path:
    """Decisive experts whose critic says ``values[env_id]`` for every state."""
    _decisive_experts(folder, list(values))
    for env_id, v in values.items():
        path = folder / env_id.split("/")[-1] / "checkpoint.pt"
        ckpt = torch.load(path, weights_only=False)
        ckpt["model"]["value_head.weight"].zero_()
        ckpt["model"]["value_head.bias"].fill_(v)
        torch.save(ckpt, path)
    return folder


def test_value_regression_teaches_the_student_each_experts_values(tmp_path: Path) -> None:
    values = {BREAKOUT: 5.0, ASTERIX: -3.0}
    experts = load_experts(_experts_with_constant_values(tmp_path / "x", values))
    cfg = MimicConfig(
        num_envs=4, num_steps=32, num_epochs=4, num_minibatches=2, device="cpu", seed=0,
        torch_threads=1, value_coef=1.0, learning_rate=3e-3,
    )  # fmt: skip
    trainer = ActorMimic(experts, cfg)
    history: list[dict[str, float]] = []
    trainer.learn(4_096, callback=lambda t, m: history.append(m) is None)
    # The labels are the experts' own values, per game slot (slot j plays game j % 2).
    assert torch.equal(trainer._expert_values[:, 0::2], torch.full((32, 2), 5.0))
    assert torch.equal(trainer._expert_values[:, 1::2], torch.full((32, 2), -3.0))
    o, _ = trainer.envs.reset(seed=123)
    batch = {k: torch.as_tensor(v) for k, v in o.items()}
    with torch.no_grad():
        _, v = trainer.net(batch)
    trainer.envs.close()
    target = torch.tensor([values[experts[int(g)].env_id] for g in batch["game_id"]])
    assert torch.allclose(v, target, atol=0.5), (v, target)
    assert history[-1]["value_regression"] < 0.05 * history[0]["value_regression"]


def test_without_value_regression_the_students_critic_is_untouched(tmp_path: Path) -> None:
    experts = load_experts(_experts_with_constant_values(tmp_path / "x", {BREAKOUT: 5.0}))
    trainer = ActorMimic(
        experts, MimicConfig(num_envs=2, num_steps=16, num_minibatches=1, device="cpu")
    )
    head = trainer.net.value_head  # type: ignore[union-attr]
    before = [p.detach().clone() for p in head.parameters()]
    history: list[dict[str, float]] = []
    trainer.learn(256, callback=lambda t, m: history.append(m) is None)
    trainer.envs.close()
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))
    assert "value_regression" not in history[-1]


def test_experts_mimic_and_eval_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = str(tmp_path)
    tiny = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--device", "cpu"]
    args = ["experts", "--env", f"{BREAKOUT},{ASTERIX}", "--total-timesteps", "128"]
    assert train.main([*args, "--run-name", "ex", "--runs-dir", runs, "--eval-episodes", "2",
                       "--no-progress", *tiny]) == 0  # fmt: skip
    index = json.loads((tmp_path / "ex" / "experts.json").read_text())
    assert [e["env_id"] for e in index["experts"]] == [BREAKOUT, ASTERIX]
    assert all(e["episodes"] == 2 and e["steps"] == 128 for e in index["experts"])
    for e in index["experts"]:  # each expert is a normal run that eval accepts
        ckpt = tmp_path / "ex" / e["checkpoint"]
        assert train.main(["eval", "--checkpoint", str(ckpt), "--episodes", "1"]) == 0
    args = ["mimic", "--experts", str(tmp_path / "ex"), "--total-timesteps", "128"]
    args += ["--run-name", "stu", "--runs-dir", runs, "--eval-episodes", "1", "--no-progress"]
    assert train.main([*args, *tiny, "--finetune-ppo", "64"]) == 0
    ckpt = load_checkpoint(tmp_path / "stu" / "checkpoint.pt")
    assert ckpt["format"] == "maskrl.mimic/1" and ckpt["global_step"] == 128
    assert ckpt["env_ids"] == [BREAKOUT, ASTERIX]
    assert (tmp_path / "stu" / "finetune" / "checkpoint.pt").is_file()
    capsys.readouterr()
    assert train.main(["eval", "--checkpoint", str(tmp_path / "stu" / "checkpoint.pt"),
                       "--episodes", "1", "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"eval {BREAKOUT}" in out and f"eval {ASTERIX}" in out
    # A resumed distillation continues from its checkpoint.
    argv = ["mimic", "--resume", str(tmp_path / "stu"), "--total-timesteps", "256"]
    assert train.main([*argv, "--no-progress", "--eval-episodes", "0"]) == 0
    assert load_checkpoint(tmp_path / "stu" / "checkpoint.pt")["global_step"] == 256


def test_bad_experts_folders_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "experts.json").write_text(json.dumps({"experts": []}))
    mixed = tmp_path / "mixed"
    knap = PPO("maskrl/Knapsack-v0", PPOConfig(num_envs=2, num_steps=8, num_minibatches=1))
    knap.save(mixed / "k" / "checkpoint.pt")
    knap.envs.close()
    _decisive_experts(mixed, [BREAKOUT])
    entries = json.loads((mixed / "experts.json").read_text())["experts"]
    entries.append({"env_id": "maskrl/Knapsack-v0", "checkpoint": "k/checkpoint.pt"})
    (mixed / "experts.json").write_text(json.dumps({"experts": entries}))
    cases = [
        (tmp_path / "absent", "is not a folder"),
        (tmp_path / "empty", "holds no experts.json"),
        (tmp_path / "none", "lists no experts"),
        (mixed, "disagree on action space size"),
    ]
    for folder, needle in cases:
        argv = ["mimic", "--experts", str(folder), "--runs-dir", str(tmp_path / "runs")]
        assert train.main([*argv, "--no-progress"]) == 2, folder
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (needle, lines)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------- game weights


def test_game_weights_parse_and_rescale_to_average_one() -> None:
    from maskrl.agents.config import parse_game_weights, resolve_game_weights

    ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Asterix-v0", "maskrl/MinAtar-Freeway-v0"]
    assert parse_game_weights(" a=2 ,b=0.5") == {"a": 2.0, "b": 0.5}
    assert resolve_game_weights(None, ids) == [1.0, 1.0, 1.0]
    # Raw [1, 4, 1] (sum 6) -> x 3/6; full ids and short names both match.
    assert resolve_game_weights("MinAtar-Asterix-v0=4", ids) == [0.5, 2.0, 0.5]
    assert resolve_game_weights("maskrl/MinAtar-Asterix-v0=4", ids) == [0.5, 2.0, 0.5]
    assert resolve_game_weights("MinAtar-Breakout-v0=0,MinAtar-Freeway-v0=0", ids) == [0, 3, 0]
    bad = {
        "": "is empty",
        "MinAtar-Asterix-v0": "is not GAME=WEIGHT",
        "=2": "is not GAME=WEIGHT",
        "a=x": "is not a number",
        "a=-1": "must be finite and >= 0",
        "a=nan": "must be finite and >= 0",
        "a=1,a=2": "names a twice",
    }
    for spec, needle in bad.items():
        with pytest.raises(ValueError, match=needle):
            parse_game_weights(spec)
        with pytest.raises(ValueError, match="game_weights \\(--game-weights\\)"):
            MimicConfig(game_weights=spec).validate()
    with pytest.raises(ValueError, match="names Asterix, which is not one of the games"):
        resolve_game_weights("Asterix=2", ids)
    with pytest.raises(ValueError, match="weighs maskrl/MinAtar-Asterix-v0 twice"):
        resolve_game_weights("MinAtar-Asterix-v0=2,maskrl/MinAtar-Asterix-v0=3", ids)
    with pytest.raises(ValueError, match="every game weighs 0"):
        resolve_game_weights(",".join(f"{i}=0" for i in ids), ids)


def _one_update_params(folder: Path, weights: str | None) -> list[torch.Tensor]:
    cfg = MimicConfig(
        num_envs=4, num_steps=16, num_minibatches=2, device="cpu", seed=3, torch_threads=1,
        value_coef=1.0, game_weights=weights,
    )  # fmt: skip
    trainer = ActorMimic(load_experts(folder), cfg)
    trainer.learn(64)
    trainer.envs.close()
    return [p.detach().clone() for p in trainer.net.parameters()]


def test_a_game_of_weight_zero_teaches_the_student_nothing(tmp_path: Path) -> None:
    """Two expert sets that differ only in Asterix's expert: with Asterix at weight 0
    the student's updates are bit for bit the same (its actions, and so the data, are
    the student's own); without weights they differ. Equal weights are the plain loss."""
    a = _decisive_experts(tmp_path / "a", [BREAKOUT, ASTERIX])
    b = _decisive_experts(tmp_path / "b", [BREAKOUT, ASTERIX])
    path = b / "MinAtar-Asterix-v0" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    for k in ("policy_head.weight", "value_head.bias"):
        ckpt["model"][k].neg_().add_(1.0)
    torch.save(ckpt, path)
    zero = "MinAtar-Asterix-v0=0"
    for p, q in zip(_one_update_params(a, zero), _one_update_params(b, zero), strict=True):
        assert torch.equal(p, q)
    plain_a, plain_b = _one_update_params(a, None), _one_update_params(b, None)
    assert any(not torch.equal(p, q) for p, q in zip(plain_a, plain_b, strict=True))
    equal = _one_update_params(a, "MinAtar-Asterix-v0=5,MinAtar-Breakout-v0=5")
    assert all(torch.equal(p, q) for p, q in zip(equal, plain_a, strict=True))
    weighted = _one_update_params(a, "MinAtar-Asterix-v0=3")
    assert any(not torch.equal(p, q) for p, q in zip(weighted, plain_a, strict=True))


def test_game_weights_naming_no_game_exit_2_before_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _decisive_experts(tmp_path / "experts", [BREAKOUT, ASTERIX])
    runs = tmp_path / "runs"
    argv = ["mimic", "--experts", str(folder), "--runs-dir", str(runs), "--device", "cpu",
            "--no-progress", "--total-timesteps", "16"]  # fmt: skip
    assert train.main([*argv, "--game-weights", "MinAtar-Pong-v0=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names MinAtar-Pong-v0, which is not one of the games" in err[0]
    assert not runs.exists() or not list(runs.iterdir())
