"""Masked recurrent PPO: state replay, masks, resets, checkpoints, refusals, and learning on Recall."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from maskrl.agents import PPO, PPOConfig, RecurrentPPO, evaluate, load_policy
from maskrl.agents.recurrent import episode_starts
from maskrl.agents.rollout import collect_rollout
from maskrl.envs import make_vec
from maskrl.envs.recall import recall_chance
from maskrl.networks import RecurrentActorCritic

REPO = Path(__file__).resolve().parents[1]
RECALL = "maskrl/Recall-v0"  # episodes of delay + 2 = 6 steps


def small(**kw: object) -> PPOConfig:
    base = dict(
        recurrent=True, num_envs=4, num_steps=16, num_minibatches=2, num_epochs=1,
        lstm_hidden=16, hidden=16, seed=3, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return PPOConfig(**base)  # type: ignore[arg-type]


def rollout(agent: RecurrentPPO):  # type: ignore[no-untyped-def]
    buf, state = agent._ensure_rollout_state()
    collect_rollout(
        agent.envs, buf, state, agent.act, agent.value, agent.episode_stats, stateful=True
    )
    return buf, state


def replay_logprobs(agent: RecurrentPPO, buf, envs: torch.Tensor, starts: torch.Tensor):  # type: ignore[no-untyped-def]
    T = buf.num_steps
    with torch.no_grad():
        logits, values = agent.net.forward_sequence(
            buf.obs[:T, envs], tuple(x[envs] for x in buf.policy_state), starts[:, envs]
        )
        M = T * envs.numel()
        logp, _ = agent.head.evaluate(
            logits.reshape(M, -1),
            buf.masks[:T, envs].reshape(M, -1),
            buf.actions[:, envs].reshape(M),
        )
    return logp.view(T, -1), values


def test_replay_from_the_stored_state_gives_the_rollouts_logprobs_across_resets() -> None:
    agent = RecurrentPPO(RECALL, small())
    rollout(agent)  # the second rollout starts from a carried (non-zero) state
    buf, _ = rollout(agent)
    assert float(buf.policy_state[0].abs().sum()) > 0
    starts = episode_starts(buf.terminated, buf.truncated)
    # Episodes of 6 steps end inside the 16-step rollout: the replay must reset there.
    assert int(starts.sum()) >= 8
    # All envs at once: the rollout's numbers exactly (ratio 1).
    logp, values = replay_logprobs(agent, buf, torch.arange(4), starts)
    assert torch.equal(logp, buf.logprobs) and torch.equal(values, buf.values)
    # Minibatches of envs: the same up to float rounding of smaller matrix products.
    for envs in (torch.tensor([2, 0]), torch.tensor([3])):
        logp, values = replay_logprobs(agent, buf, envs, starts)
        torch.testing.assert_close(logp, buf.logprobs[:, envs], rtol=0, atol=1e-6)
        torch.testing.assert_close(values, buf.values[:, envs], rtol=0, atol=1e-6)
    # Without the resets the replay is wrong after the first episode end.
    logp, _ = replay_logprobs(agent, buf, torch.arange(4), torch.zeros_like(starts))
    assert not torch.allclose(logp, buf.logprobs)


@pytest.mark.parametrize("p_start", [0.0, 0.15, 0.6])
def test_the_padded_replay_equals_the_stretch_by_stretch_one_and_stepping(
    p_start: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forward_sequence batched as one padded call of the pieces between episode starts
    (ROWS_PER_CALL huge) equals it run stretch by stretch (ROWS_PER_CALL 0) bit for bit,
    in outputs and gradients; and both equal the one-step forward with the state zeroed
    at each start (to float rounding: the heads then see other matrix shapes)."""
    from maskrl.networks import ActorCritic, MLPEncoder

    torch.manual_seed(0)
    net = RecurrentActorCritic(ActorCritic(MLPEncoder(5, (16,)), 3), 8)
    T, B = 12, 5
    starts = torch.from_numpy(np.random.default_rng(int(p_start * 100)).random((T, B)) < p_start)
    starts[0, 1] = True  # an env that starts an episode at the rollout's first step
    obs = torch.randn(T, B, 5)
    state = (torch.randn(B, 8), torch.randn(B, 8))
    results = []
    for rows_per_call in (0, 10**6):
        monkeypatch.setattr(RecurrentActorCritic, "ROWS_PER_CALL", rows_per_call)
        net.zero_grad()
        logits, values = net.forward_sequence(obs, state, starts)
        (logits.square().sum() + values.sum()).backward()
        results.append((logits, values, [p.grad.clone() for p in net.parameters()]))
    (l0, v0, g0), (l1, v1, g1) = results
    assert torch.equal(l0, l1) and torch.equal(v0, v1)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # sums in another order
    h, c = state
    steps = []
    with torch.no_grad():
        for t in range(T):
            keep = (~starts[t]).float().unsqueeze(1)
            lg, v, (h, c) = net(obs[t], (h * keep, c * keep))
            steps.append((lg, v))
    torch.testing.assert_close(l1, torch.stack([x for x, _ in steps]), rtol=0, atol=1e-6)
    torch.testing.assert_close(v1, torch.stack([x for _, x in steps]), rtol=0, atol=1e-6)


def test_first_epoch_of_the_update_has_ratio_one() -> None:
    agent = RecurrentPPO(RECALL, small(num_minibatches=1))
    rollout(agent)
    buf, _ = rollout(agent)
    metrics = agent.update(buf)  # one epoch, one minibatch of all envs: before any step
    assert metrics["approx_kl"] == 0.0
    assert metrics["clipfrac"] == 0.0


def test_masked_actions_are_never_sampled_and_have_probability_zero() -> None:
    agent = RecurrentPPO(RECALL, small(num_envs=8, num_steps=48, num_minibatches=4))
    buf, state = rollout(agent)
    assert state.invalid_actions == 0 and buf.count_invalid_actions() == 0
    assert not bool(buf.masks[:48].all())  # masks do remove actions
    T, N = 48, 8
    starts = episode_starts(buf.terminated, buf.truncated)
    with torch.no_grad():
        logits, _ = agent.net.forward_sequence(buf.obs[:T], buf.policy_state, starts)
    flat_logits, flat_masks = logits.reshape(T * N, -1), buf.masks[:T].reshape(T * N, -1)
    for a in range(4):
        logp, _ = agent.head.evaluate(flat_logits, flat_masks, torch.full((T * N,), a))
        p = logp.exp()
        assert bool((p[~flat_masks[:, a]] == 0).all())
        assert bool((p[flat_masks[:, a]] > 0).all())
    # predict_recurrent, sampling: never a masked action.
    mask = np.array([[True, False, False, True]] * 64)
    obs = np.zeros((64, 6), dtype=np.float32)
    state = None
    for _ in range(10):
        action, state = agent.predict_recurrent(obs, mask, state)
        assert mask[np.arange(64), action].all()


def test_state_is_zeroed_at_episode_ends() -> None:
    # All envs start together and end at step 5: after 6 steps every state is zero.
    agent = RecurrentPPO(RECALL, small(num_steps=6))
    buf, state = rollout(agent)
    assert bool(buf.terminated[5].all()) and not bool(buf.terminated[:5].any())
    assert all(float(x.abs().sum()) == 0 for x in state.policy_state)
    buf, state = rollout(agent)  # ... and the next rollout starts from zeros
    assert all(float(x.abs().sum()) == 0 for x in buf.policy_state)
    # One step more: the new episodes have a state.
    agent = RecurrentPPO(RECALL, small(num_steps=7))
    _, state = rollout(agent)
    assert all(float(x.abs().sum(1).min()) > 0 for x in state.policy_state)
    # predict_recurrent's episode_start zeroes the rows it names before the step.
    policy = agent.policy
    obs = np.random.default_rng(0).random((2, 6)).astype(np.float32)
    mask = np.ones((2, 4), bool)
    _, s1 = policy.predict_recurrent(obs, mask, None, True)
    _, from_zero = policy.predict_recurrent(obs, mask, None, True)
    _, s2 = policy.predict_recurrent(obs, mask, s1, True, episode_start=[True, False])
    assert torch.equal(s2[0][0], from_zero[0][0]) and not torch.equal(s2[0][1], from_zero[0][1])


def test_save_load_resume_round_trip(tmp_path: Path) -> None:
    agent = RecurrentPPO(RECALL, small())
    agent.learn(128)
    path = tmp_path / "ckpt.pt"
    agent.save(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["config"]["recurrent"] is True and ckpt["config"]["lstm_hidden"] == 16
    loaded = PPO.load(path, device="cpu")  # PPO.load gives the recurrent trainer back
    assert isinstance(loaded, RecurrentPPO) and loaded.global_step == agent.global_step
    policy = load_policy(path, device="cpu")
    assert policy.is_recurrent and isinstance(policy.net, RecurrentActorCritic)
    rng = np.random.default_rng(0)
    states: list[object] = [None, None, None]
    for _ in range(12):
        obs = rng.random((5, 6)).astype(np.float32)
        mask = rng.random((5, 4)) < 0.6
        mask[:, 0] = True
        outs = [
            who.predict_recurrent(obs, mask, s, deterministic=True)
            for who, s in zip((agent, loaded, policy), states, strict=True)
        ]
        for a, _ in outs[1:]:
            np.testing.assert_array_equal(a, outs[0][0])
        states = [s for _, s in outs]
    # Sampled actions too: the agent's generator is restored with the checkpoint.
    agent2 = PPO.load(path, device="cpu")
    assert isinstance(agent2, RecurrentPPO)
    a1, _ = loaded.predict_recurrent(obs, mask)
    a2, _ = agent2.predict_recurrent(obs, mask)
    np.testing.assert_array_equal(a1, a2)
    # Resume: the loaded agent trains on.
    loaded.envs = make_vec(RECALL, 4, seed=7)
    loaded.learn(256)
    assert loaded.global_step == 256


def test_refusals_from_python() -> None:
    with pytest.raises(ValueError, match="RecurrentPPO"):
        PPO(RECALL, PPOConfig(recurrent=True, device="cpu"))
    with pytest.raises(ValueError, match="config.recurrent=True"):
        RecurrentPPO(RECALL, PPOConfig(device="cpu"))
    with pytest.raises(ValueError, match="--lstm-hidden"):
        PPOConfig(lstm_hidden=8).validate()
    with pytest.raises(ValueError, match="num_minibatches=4 .* num_envs=6"):
        PPOConfig(recurrent=True, num_envs=6, num_minibatches=4).validate()
    with pytest.raises(ValueError, match="--qat"):
        PPOConfig(recurrent=True, qat=True).validate()
    agent = RecurrentPPO(RECALL, small())
    with pytest.raises(ValueError, match="predict_recurrent"):
        agent.predict(np.zeros(6, np.float32), np.ones(4, bool))
    with pytest.raises(ValueError, match="state must be"):
        agent.predict_recurrent(np.zeros(6, np.float32), np.ones(4, bool), (torch.zeros(3),))


def test_a_torchrun_rank_is_refused_before_any_env_is_built() -> None:
    from maskrl.agents.registry import RunContext
    from maskrl.agents.runner import RunConfig, _build_ppo

    rank = object()  # any rank: refused before it is used
    ctx = RunContext(RunConfig(env=RECALL), small(), data_parallel=rank)
    with pytest.raises(ValueError, match="without torchrun"):
        _build_ppo(ctx)
    with pytest.raises(ValueError, match="torchrun"):
        RecurrentPPO(RECALL, small(), data_parallel=rank)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--lstm-hidden", "8"], ("--lstm-hidden", "--recurrent")),
        (["--recurrent", "--qat"], ("--recurrent", "--qat")),
        (["--recurrent", "--num-envs", "6", "--num-minibatches", "4"], ("num_envs=6",)),
        (["--recurrent", "--init-from", "x"], ("--init-from", "--recurrent")),
    ],
)
def test_cli_refusals_are_one_line_exit_2(
    flags: list[str], needles: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ppo", "--env", RECALL, "--runs-dir", str(tmp_path), "--no-progress", *flags]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    assert not list(tmp_path.glob("*/checkpoint.pt"))


def test_cli_train_resume_and_eval(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    common = ["--no-progress", "--device", "cpu", "--eval-episodes", "4"]
    res = cli(
        "ppo", "--env", RECALL, "--recurrent", "--lstm-hidden", "8", "--num-envs", "4",
        "--num-steps", "8", "--num-minibatches", "2", "--total-timesteps", "64",
        "--runs-dir", "runs", "--run-name", "r", *common,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "r"
    cfg = json.loads((run / "config.json").read_text())["ppo"]
    assert cfg["recurrent"] is True and cfg["lstm_hidden"] == 8
    res = cli("ppo", "--resume", str(run), "--total-timesteps", "128", *common)
    assert res.returncode == 0, res.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=True)["global_step"] == 128
    res = cli("eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "6")
    assert res.returncode == 0, res.stderr
    assert "6 episodes" in res.stdout or "episodes" in res.stdout


def test_evaluate_carries_and_resets_the_state() -> None:
    # An untrained recurrent policy through evaluate: every episode finishes, no masked action.
    agent = RecurrentPPO(RECALL, small())
    res = evaluate(agent.policy, RECALL, episodes=10, seed=1)
    assert res["episodes"] == 10 and res["invalid_action_rate"] == 0.0


def test_evaluate_marks_episode_starts_for_a_recurrent_agent() -> None:
    class Recorder:
        is_recurrent = True

        def __init__(self) -> None:
            self.starts: list[list[bool]] = []

        def predict_recurrent(self, obs, mask, state, deterministic, episode_start):  # type: ignore[no-untyped-def]
            self.starts.append(np.asarray(episode_start).tolist())
            return mask.argmax(1), ("state", len(self.starts))

    rec = Recorder()
    evaluate(rec, RECALL, episodes=4, seed=0, num_envs=2)  # 2 episodes of 6 steps per env
    assert rec.starts == [[k in (6,)] * 2 for k in range(12)]


def test_recurrent_learns_recall_and_feedforward_stays_at_chance() -> None:
    """About 10 s: 24k steps each; recurrent above 0.9, feedforward within chance's noise."""
    kw = dict(
        num_envs=16, num_steps=32, num_minibatches=4, num_epochs=4, learning_rate=1e-3,
        hidden=64, seed=0, device="cpu",
    )  # fmt: skip
    chance = float(recall_chance())
    rec = RecurrentPPO(RECALL, PPOConfig(recurrent=True, lstm_hidden=64, **kw))  # type: ignore[arg-type]
    rec.learn(24_576)
    ff = PPO(RECALL, PPOConfig(**kw))  # type: ignore[arg-type]
    ff.learn(24_576)
    r = evaluate(rec.policy, RECALL, 400, seed=123, deterministic=True)["mean"]
    f = evaluate(ff.policy, RECALL, 400, seed=123, deterministic=True)["mean"]
    assert r >= 0.9, r
    assert abs(f - chance) < 0.08, (f, chance)


@pytest.mark.parametrize(
    ("env", "backend"),
    [
        ("maskrl/MinAtar-Breakout-v0", "torch"),
        (["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Asterix-v0"], "numpy"),
    ],
)
def test_torch_backend_and_multigame_replay_exactly(env: object, backend: str) -> None:
    agent = RecurrentPPO(env, small(env_backend=backend, hidden=32))
    assert isinstance(agent.net, RecurrentActorCritic)
    rollout(agent)
    buf, state = rollout(agent)
    assert state.invalid_actions == 0
    starts = episode_starts(buf.terminated, buf.truncated)
    T, N = buf.num_steps, buf.num_envs
    with torch.no_grad():
        obs = buf.obs
        sliced = {k: v[:T] for k, v in obs.items()} if isinstance(obs, dict) else obs[:T]
        logits, values = agent.net.forward_sequence(sliced, buf.policy_state, starts)
        logp, _ = agent.head.evaluate(
            logits.reshape(T * N, -1), buf.masks[:T].reshape(T * N, -1), buf.actions.reshape(T * N)
        )
    # The same states and masks; the replay's encoder runs over T x N rows at once
    # and the rollout's over N a step, and a CPU's kernels may round those batch
    # sizes differently (the MinAtar CNN: up to ~5e-7 apart on an AVX-512 Xeon,
    # identical on an AMD EPYC), so this holds to float32 rounding, not bit for bit.
    torch.testing.assert_close(logp.view(T, N), buf.logprobs, rtol=0, atol=1e-6)
    torch.testing.assert_close(values, buf.values, rtol=0, atol=1e-6)
    agent.learn(agent.global_step + 64)  # an update runs


def test_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "recurrent_recall", REPO / "benchmarks" / "recurrent_recall.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n = torch.get_num_threads()
    argv = ["--total-timesteps", "512", "--eval-episodes", "4", "--lstm-hidden", "8", "--sb3"]
    assert bench.main(argv) == 0
    assert torch.get_num_threads() == n  # the process-wide setting comes back
    out = capsys.readouterr().out
    assert "chance without memory: 0.361" in out
    assert "recurrent success" in out and "maskrl recurrent / sb3-contrib" in out
