"""PPO on the batched torch MinAtar games: the rollout stays on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from maskrl.agents import PPO, PPOConfig
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.envs import make_multigame_vec, make_vec

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _Watch:
    """A torch-backend vector env that records what crosses its step()."""

    def __init__(self, envs: Any) -> None:
        self._envs = envs
        self.actions: list[torch.Tensor] = []
        self.final: list[tuple[int, int, torch.Tensor]] = []
        self.t = -1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._envs, name)

    def reset(self, **kw: Any) -> Any:
        self.t = -1
        return self._envs.reset(**kw)

    def step(self, actions: Any) -> Any:
        assert isinstance(actions, torch.Tensor), type(actions)
        self.actions.append(actions)
        out = self._envs.step(actions)
        self.t += 1
        trunc = out[3] & ~out[2]
        for i in torch.nonzero(trunc).flatten().tolist():
            self.final.append((self.t, i, out[4]["final_obs"][i].clone()))
        return out


@pytest.mark.parametrize("device", DEVICES)
def test_ppo_trains_on_the_device_and_bootstraps_truncated_episodes(device: str) -> None:
    envs = make_vec(BREAKOUT, 8, backend="torch", device=device, seed=0, max_episode_steps=12)
    watch = _Watch(envs)
    # num_steps below the time limit: an env is truncated at most once per rollout.
    cfg = PPOConfig(num_envs=8, num_steps=10, num_minibatches=2, num_epochs=1, device=device)
    agent = PPO(watch, cfg)
    buf, state = agent._ensure_rollout_state()
    from maskrl.agents.rollout import collect_rollout

    collect_rollout(watch, buf, state, agent._act, agent._value, agent.episode_stats)
    buf.roll_over()
    watch.final.clear()
    watch.t = -1  # the second rollout's steps, numbered from 0
    collect_rollout(watch, buf, state, agent._act, agent._value, agent.episode_stats)
    dev = torch.device(device)
    for t in (buf.obs, buf.masks, buf.actions, buf.rewards, buf.final_values):
        assert t.device.type == dev.type  # type: ignore[union-attr]
    assert all(a.device.type == dev.type and a.dtype == torch.int64 for a in watch.actions)
    # Every episode is cut at 12 steps: the truncated steps bootstrap from V(final_obs).
    assert watch.final, "no truncation happened"
    with torch.inference_mode():
        for t, i, final in watch.final:
            expected = agent._value(final.unsqueeze(0).to(dev))[0]
            assert buf.truncated[t, i] == 1
            torch.testing.assert_close(buf.final_values[t, i], expected)
    assert float(buf.final_values[buf.truncated == 0].abs().sum()) == 0.0
    buf.roll_over()
    # Episode statistics arrive per episode, with lengths of the time limit.
    assert agent.episode_stats.lengths and set(agent.episode_stats.lengths) <= set(range(1, 13))
    assert buf.count_invalid_actions() == 0
    metrics: list[dict[str, float]] = []
    agent.learn(3 * cfg.batch_size, callback=lambda a, m: metrics.append(m) is None)
    assert len(metrics) == 3 and all(m["invalid_action_rate"] == 0 for m in metrics)
    envs.close()


def test_two_truncations_in_one_rollout_are_refused() -> None:
    envs = make_vec(BREAKOUT, 8, backend="torch", device="cpu", seed=0, max_episode_steps=12)
    agent = PPO(envs, PPOConfig(num_envs=8, num_steps=32, num_minibatches=2, num_epochs=1))
    with pytest.raises(ValueError, match="truncated twice"):
        agent.learn(8 * 32)


def test_multigame_ppo_on_the_torch_backend_keeps_each_games_mask() -> None:
    ids = [BREAKOUT, "maskrl/MinAtar-Seaquest-v0"]
    envs = make_multigame_vec(ids, 4, backend="torch", device="cpu", seed=1)
    agent = PPO(envs, PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, num_epochs=1))
    agent.learn(4 * 16 * 3)
    buf = agent._buffer
    assert buf is not None and isinstance(buf.obs, dict)
    assert buf.obs["obs"].shape == (17, 4, 10, 10, 10)
    # Breakout slots (0, 2) only ever allowed noop/left/right; Seaquest slots all 6.
    assert bool((buf.masks[:, 0::2].sum(-1) == 3).all())
    assert bool((buf.masks[:, 1::2].sum(-1) == 6).all())
    assert buf.count_invalid_actions() == 0
    envs.close()


def test_a_trainer_and_env_on_different_devices_are_refused() -> None:
    if not torch.cuda.is_available():
        envs = make_vec(BREAKOUT, 2, backend="torch", device="cpu", seed=0)
        envs.device = torch.device("cuda")  # pretend: the check reads this attribute
        agent = PPO(envs, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"))
        with pytest.raises(ValueError, match="same device"):
            agent.learn(16)
        return
    envs = make_vec(BREAKOUT, 2, backend="torch", device="cuda", seed=0)
    agent = PPO(envs, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"))
    with pytest.raises(ValueError, match="same device"):
        agent.learn(16)


def test_train_py_env_backend_torch(tmp_path: Path) -> None:
    from train_module import train

    args = ["ppo", "--env", BREAKOUT, "--env-backend", "torch", "--device", "cpu"]
    args += ["--num-envs", "8", "--num-steps", "16", "--num-minibatches", "2"]
    args += ["--total-timesteps", "256", "--runs-dir", str(tmp_path), "--run-name", "tb"]
    assert train.main([*args, "--eval-episodes", "2", "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "tb" / "checkpoint.pt")["global_step"] == 256
    # Resume rebuilds the torch-backend env from the saved config.
    argv = ["ppo", "--resume", str(tmp_path / "tb"), "--total-timesteps", "384", "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "0"]) == 0
    assert load_checkpoint(tmp_path / "tb" / "checkpoint.pt")["global_step"] == 384
    bad = ["ppo", "--env", "maskrl/Knapsack-v0", "--env-backend", "torch", "--no-progress"]
    assert train.main([*bad, "--runs-dir", str(tmp_path)]) == 2
