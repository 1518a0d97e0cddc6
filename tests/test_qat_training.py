"""Quantization-aware training in the trainers, QAT checkpoints, and int8 policies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_module import train

from maskrl.agents import PPO, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.quantize import int8_policy, state_bytes
from maskrl.quant import QATConv2d, QATLinear

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
TINY = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--device", "cpu"]


def _observations(n_steps: int = 16) -> tuple[np.ndarray, np.ndarray]:
    from maskrl.envs import make_vec

    envs = make_vec(BREAKOUT, 8, seed=5)
    obs, infos = envs.reset(seed=5)
    rng = np.random.default_rng(0)
    out, masks = [], []
    for _ in range(n_steps):
        out.append(obs)
        masks.append(infos["action_mask"])
        valid = [np.flatnonzero(m) for m in infos["action_mask"]]
        obs, _, _, _, infos = envs.step(np.array([rng.choice(v) for v in valid]))
    envs.close()
    return np.concatenate(out), np.concatenate(masks)


def test_ppo_qat_run_checkpoint_and_int8_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ppo", "--env", BREAKOUT, "--qat", "--qat-bits", "8", "--total-timesteps", "256"]
    args += [*TINY, "--runs-dir", str(tmp_path), "--run-name", "q", "--eval-episodes", "2"]
    assert train.main([*args, "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "q" / "checkpoint.pt")
    assert ckpt["quant"] is not None and ckpt["quant"]["num_bits"] == 8
    # The QAT checkpoint loads without the user rebuilding its network.
    policy = load_policy(tmp_path / "q" / "checkpoint.pt", device="cpu")
    layers = [m for m in policy.net.modules() if isinstance(m, QATLinear | QATConv2d)]
    assert len(layers) == 4  # conv, fc, policy head, value head
    # The int8 policy picks the fake-quantized policy's greedy actions.
    q8 = int8_policy(policy)
    obs, masks = _observations()
    np.testing.assert_array_equal(
        policy.predict(obs, masks, deterministic=True), q8.predict(obs, masks, deterministic=True)
    )
    assert state_bytes(q8.net) * 3.5 <= state_bytes(policy.net)
    argv = ["eval", "--checkpoint", str(tmp_path / "q" / "checkpoint.pt"), "--int8"]
    assert train.main([*argv, "--episodes", "2", "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["episodes"] == 2


def test_post_training_int8_of_a_float_policy(tmp_path: Path) -> None:
    agent = PPO(BREAKOUT, PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, device="cpu"))
    with torch.no_grad():  # a decisive policy, so greedy actions are not near-ties
        agent.net.policy_head.weight.mul_(100.0)  # type: ignore[union-attr, operator]
    agent.learn(64)
    agent.save(tmp_path / "f.pt")
    agent.envs.close()
    policy = load_policy(tmp_path / "f.pt", device="cpu")
    q8 = int8_policy(policy)
    obs, masks = _observations()
    same = policy.predict(obs, masks, True) == q8.predict(obs, masks, True)
    assert same.mean() >= 0.9  # calibrated, not trained for it: nearly always the same
    from maskrl.quant import quant_spec

    assert quant_spec(policy.net) is None  # the original stays a float network


def test_qat_delay_and_bad_qat_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["ppo", "--env", BREAKOUT, "--qat", *TINY, "--runs-dir", str(tmp_path), "--no-progress"]
    for bits in ("1", "9"):
        assert train.main([*base, "--qat-bits", bits]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--qat-bits" in err[0] and "[2, 8]" in err[0]
    argv = [*base, "--qat-start-after", "100000", "--total-timesteps", "128", "--run-name", "d"]
    assert train.main([*argv, "--eval-episodes", "0"]) == 0
    capsys.readouterr()
    ev = ["eval", "--checkpoint", str(tmp_path / "d" / "checkpoint.pt"), "--int8"]
    assert train.main(ev) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be converted to int8" in err[0] and "not on yet" in err[0]


def test_qat_four_bits_trains_and_converts(tmp_path: Path) -> None:
    cfg = PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, device="cpu", qat=True, qat_bits=4)
    agent = PPO(BREAKOUT, cfg)
    agent.learn(128)
    agent.save(tmp_path / "q4.pt")
    agent.envs.close()
    policy = load_policy(tmp_path / "q4.pt", device="cpu")
    q = int8_policy(policy)
    obs, masks = _observations(4)
    acts = q.predict(obs, masks, deterministic=True)
    assert masks[np.arange(len(acts)), acts].all()


def test_mimic_student_with_qat(tmp_path: Path) -> None:
    from maskrl.agents.mimic import ActorMimic, Expert, MimicConfig

    experts = []
    for i, env_id in enumerate([BREAKOUT, "maskrl/MinAtar-Asterix-v0"]):
        a = PPO(env_id, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, seed=i))
        a.save(tmp_path / f"e{i}.pt")
        a.envs.close()
        experts.append(Expert(env_id, tmp_path / f"e{i}.pt", load_policy(tmp_path / f"e{i}.pt")))
    cfg = MimicConfig(num_envs=4, num_steps=8, num_minibatches=1, device="cpu", qat=True)
    trainer = ActorMimic(experts, cfg)
    trainer.learn(64)
    trainer.save(tmp_path / "s.pt")
    trainer.envs.close()
    student = load_policy(tmp_path / "s.pt", device="cpu")
    assert any(isinstance(m, QATLinear) for m in student.net.modules())
    q8 = int8_policy(student)
    assert q8.env_ids == student.env_ids


def test_qat_returns_benchmark_smoke(tmp_path: Path) -> None:
    for name, extra in (("f", []), ("q4", ["--qat", "--qat-bits", "4"])):
        args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "128", *TINY, *extra]
        args += ["--runs-dir", str(tmp_path), "--run-name", name, "--eval-episodes", "0"]
        assert train.main([*args, "--no-progress"]) == 0
    spec = importlib.util.spec_from_file_location("qr", REPO / "benchmarks" / "qat_returns.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.measure(tmp_path / "f", [tmp_path / "q4"], 1, 0)
    assert [r["policy"] for r in rows] == ["float", "PTQ int8", "QAT-4", "QAT-4 int8"]
    assert rows[1]["bytes"] * 3.5 <= rows[0]["bytes"]
    assert all(r["episodes"] == 1 for r in rows)


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_reading_a_qat_policy_never_changes_it(tmp_path: Path) -> None:
    from maskrl.agents import evaluate

    cfg = PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, device="cpu", qat=True)
    agent = PPO(BREAKOUT, cfg)
    agent.learn(128)
    agent.save(tmp_path / "q.pt")
    # Right after learn() the network is in training mode (the update ran last):
    # evaluating must neither move its fake-quantization ranges nor its mode.
    assert agent.policy.net.training
    before = _state(agent.policy.net)
    runs = [evaluate(agent, BREAKOUT, 3, seed=0, deterministic=True)["returns"] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    after = _state(agent.policy.net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert agent.policy.net.training  # the caller's mode is restored
    agent.envs.close()

    for loaded in (
        load_policy(tmp_path / "q.pt", device="cpu"),
        PPO.load(tmp_path / "q.pt", "cpu").policy,
    ):
        assert not any(m.training for m in loaded.net.modules())
        before = _state(loaded.net)
        obs, masks = _observations(4)
        first = loaded.predict(obs, masks, deterministic=True)
        for _ in range(3):
            assert np.array_equal(loaded.predict(obs, masks, deterministic=True), first)
        after = _state(loaded.net)
        assert all(torch.equal(before[k], after[k]) for k in before)
