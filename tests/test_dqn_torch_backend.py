"""Masked DQN on the torch env backend (``--env-backend torch``): the replay at episode
ends, masked acting, the per-iteration checks and the CLI (save / load / resume:
``test_dqn_trainer.py``, for both backends)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from train_module import train

from maskrl.agents import DQN, DQNConfig
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.trainer import NonFiniteError
from maskrl.envs import make_vec
from maskrl.envs.torch_minatar import TorchMinAtarVectorEnv

BREAKOUT = "maskrl/MinAtar-Breakout-v0"


def _cfg(**kw: Any) -> DQNConfig:
    base: dict[str, Any] = dict(
        device="cpu", env_backend="torch", buffer_size=256, batch_size=8, learning_starts=16,
        train_freq=2, target_update_interval=8, exploration_steps=32,
    )  # fmt: skip
    base.update(kw)
    return DQNConfig(**base)


def _breakout_mask() -> list[bool]:
    """Breakout's action mask as the numpy (Gymnasium) env reports it."""
    envs = make_vec(BREAKOUT, 1, seed=0)
    try:
        _, infos = envs.reset(seed=0)
        return [bool(x) for x in np.asarray(infos["action_mask"])[0]]
    finally:
        envs.close()


class _Recorder:
    """A torch-backend env that keeps a copy of everything ``reset`` and ``step`` return."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.resets: list[torch.Tensor] = []
        self.steps: list[dict[str, torch.Tensor]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, **kw: Any) -> Any:
        obs, infos = self.env.reset(**kw)
        self.resets.append(obs.clone())
        return obs, infos

    def step(self, actions: torch.Tensor) -> Any:
        out = self.env.step(actions)
        obs, r, te, tr, infos = out
        self.steps.append(
            dict(action=actions.clone(), obs=obs.clone(), r=r.clone(), te=te.clone(),
                 tr=tr.clone(), final=infos["final_obs"].clone(), mask=infos["action_mask"].clone())
        )  # fmt: skip
        return out


def _short_episodes(agent: DQN, max_steps: int) -> _Recorder:
    """Replace the agent's env by one with a time limit of ``max_steps`` that refuses
    (ValueError) any action outside the game's minimal set; it reuses its observation
    buffers (``copy_obs=False``) as the trainer's own env does."""
    agent.envs.close()
    env = TorchMinAtarVectorEnv(
        BREAKOUT, agent.config.num_envs, "cpu", seed=agent.config.seed,
        max_episode_steps=max_steps, check_actions=True, copy_obs=False,
    )  # fmt: skip
    rec = _Recorder(env)
    agent.envs = rec
    return rec


def test_config_refuses_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match=r"env_backend \(--env-backend\) must be 'numpy' or"):
        DQNConfig(env_backend="jax").validate()


def test_the_replay_holds_the_final_obs_and_mask_at_episode_ends() -> None:
    # Random valid play on Breakout under a 7-step time limit: episodes end both ways
    # (the ball lost: terminated; the limit: truncated), many times over 40 steps.
    n, steps = 4, 40
    agent = DQN(BREAKOUT, _cfg(num_envs=n, learning_starts=10_000, exploration_steps=0,
                               exploration_final_eps=1.0))  # fmt: skip
    rec = _short_episodes(agent, 7)
    try:
        agent.learn(n * steps)
        rb = agent.replay
        assert rb is not None and rb.size == n * steps and len(rec.steps) == steps
        log = {k: torch.stack([s[k] for s in rec.steps]) for k in rec.steps[0]}
        done = log["te"] | log["tr"]
        trunc = log["tr"] & ~log["te"]
        assert int(log["te"].sum()) >= 3 and int(trunc.sum()) >= 3
        rows = slice(0, n * steps)
        shape = (steps, n, 4, 10, 10)
        # obs: what the agent acted on, the reset obs at step 0, then each step's returned
        # obs (the new episode's first one after an autoreset).
        acted_on = torch.cat([rec.resets[0][None], log["obs"][:-1]])
        assert torch.equal(rb.obs[rows].view(shape), acted_on)
        # next_obs: the env's own final observation where an episode ended, never the
        # reset one (which differs from it in every ended row here).
        expected = torch.where(done[..., None, None, None], log["final"], log["obs"])
        assert torch.equal(rb.next_obs[rows].view(shape), expected)
        assert bool((log["final"][done] != log["obs"][done]).flatten(1).any(1).all())
        # terminated kept apart from truncated: a truncated row bootstraps.
        assert torch.equal(rb.terminated[rows].view(steps, n), log["te"])
        assert not bool(rb.terminated[rows].view(steps, n)[trunc].any())
        assert torch.equal(rb.rewards[rows].view(steps, n), log["r"])
        assert torch.equal(rb.actions[rows].view(steps, n), log["action"])
        # next_mask: Breakout's mask, as the numpy env reports it, in every row incl. the
        # ends (the batched games' masks are fixed per slot).
        mask = torch.tensor(_breakout_mask())
        assert torch.equal(rb.next_masks[rows], mask.expand(n * steps, 6))
        # The episodes recorded, in the order they ended, from the env's own rewards.
        ret, length = np.zeros(n), np.zeros(n, dtype=int)
        returns, lengths = [], []
        for t in range(steps):
            ret += log["r"][t].numpy()
            length += 1
            for i in np.flatnonzero(done[t].numpy()):
                returns.append(float(ret[i]))
                lengths.append(int(length[i]))
                ret[i], length[i] = 0.0, 0
        assert agent.episode_stats.returns == pytest.approx(returns)
        assert agent.episode_stats.lengths == lengths and max(lengths) == 7
    finally:
        agent.envs.close()


def test_acting_never_takes_a_masked_action() -> None:
    # The env refuses a masked action (check_actions); the network learns and acts
    # greedily for most steps (epsilon 1 -> 0 over the first 64 env steps).
    n = 4
    agent = DQN(BREAKOUT, _cfg(num_envs=n, exploration_steps=64, exploration_final_eps=0.0,
                               learning_starts=32))  # fmt: skip
    _short_episodes(agent, 10_000)
    seen: list[float] = []
    try:
        agent.learn(512, callback=lambda t, m: seen.append(m["invalid_actions"]) and None)
        rb = agent.replay
        assert rb is not None and agent.num_updates > 0
        acts = rb.actions[: rb.size]
        valid = torch.tensor(_breakout_mask())
        assert bool(valid[acts].all()) and len(set(acts.tolist())) > 1
        assert seen and sum(seen) == 0.0
    finally:
        agent.envs.close()


def test_an_invalid_action_is_counted() -> None:
    # The counter is real: an acting bug that picks action 2 (masked on Breakout) shows.
    agent = DQN(BREAKOUT, _cfg(num_envs=3, learning_starts=10_000))
    agent._act_tensor = lambda obs, mask, eps, sync: torch.full((3,), 2)  # type: ignore[method-assign]
    seen: list[dict[str, float]] = []
    try:
        agent.learn(12, callback=lambda t, m: seen.append(m) and None)
        assert [m["invalid_actions"] for m in seen] == [6.0, 6.0]
        assert seen[0]["invalid_action_rate"] == 1.0
    finally:
        agent.envs.close()


def test_a_non_finite_reward_names_the_env_and_step() -> None:
    agent = DQN(BREAKOUT, _cfg(num_envs=3, learning_starts=10_000))
    real = agent.envs.step
    calls = [0]

    def step(actions: torch.Tensor) -> Any:
        obs, r, te, tr, infos = real(actions)
        calls[0] += 1
        if calls[0] == 4:  # the 4th vector step: env steps 9..11
            r = r.clone()
            r[2] = float("nan")
        return obs, r, te, tr, infos

    agent.envs.step = step
    try:
        with pytest.raises(
            NonFiniteError, match="env index 2 returned a non-finite reward at step 9$"
        ):
            agent.learn(60)
    finally:
        agent.envs.close()


TINY = ["--device", "cpu", "--no-progress", "--buffer-size", "256", "--batch-size", "16"]
TINY += ["--learning-starts", "32", "--target-update-interval", "32", "--exploration-steps", "64"]


def test_cli_train_resume_and_eval_on_the_torch_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["dqn", "--env", BREAKOUT, "--env-backend", "torch", "--total-timesteps", "128"]
    args += ["--num-envs", "4", "--run-name", "d", "--runs-dir", str(tmp_path)]
    assert train.main([*args, "--eval-episodes", "1", *TINY]) == 0
    run_dir = tmp_path / "d"
    assert json.loads((run_dir / "config.json").read_text())["dqn"]["env_backend"] == "torch"
    assert json.loads((run_dir / "eval.json").read_text())["eval"]["episodes"] == 1
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["config"]["env_backend"] == "torch" and ckpt["replay"]["size"] == 128
    again = ["dqn", "--resume", str(run_dir), "--total-timesteps", "256", "--no-progress"]
    assert train.main([*again, "--eval-episodes", "0"]) == 0
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["global_step"] == 256 and ckpt["replay"]["size"] == 256
    capsys.readouterr()
    ev = ["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--episodes", "1"]
    assert train.main([*ev, "--deterministic", "--device", "cpu"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_cli_torch_backend_needs_a_minatar_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["dqn", "--env", "maskrl/Knapsack-v0", "--env-backend", "torch", "--device", "cpu"]
    assert train.main([*args, "--runs-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "supports only the batched MinAtar games" in err and "maskrl/Knapsack-v0" in err
    assert not list(tmp_path.iterdir())


def test_dqn_learns_breakout_on_the_torch_backend() -> None:
    # Random valid play returns ~0.3 a Breakout episode; after 8k env steps (~2.5 s)
    # the greedy policy returns well over 1 (1.7 to 2.9 over seeds 0-3).
    cfg = DQNConfig(
        device="cpu", env_backend="torch", seed=0, num_envs=8, train_freq=1, buffer_size=20_000,
        batch_size=32, learning_rate=1e-3, learning_starts=800, target_update_interval=400,
        exploration_steps=3_000, exploration_final_eps=0.0, hidden=64, torch_threads=1,
    )  # fmt: skip
    agent = DQN(BREAKOUT, cfg)
    try:
        agent.learn(8_000)
        returns = agent.episode_stats.returns
        assert np.mean(returns[:100]) < 0.5 and np.mean(returns[-50:]) > 1.0
    finally:
        agent.envs.close()
