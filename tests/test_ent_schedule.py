"""The entropy-bonus schedule (``ent_coef_final``): hand-computed values along a
run, the loss it feeds, the recurrent trainer, resume and the config checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maskrl.agents import PPO, PPOConfig
from maskrl.agents.ppo import ppo_loss
from maskrl.agents.recurrent import RecurrentPPO
from tests.test_ppo import make_envs


def _cfg(**kw) -> PPOConfig:
    base = dict(num_envs=4, num_steps=16, num_minibatches=2, num_epochs=1, seed=0, device="cpu")
    return PPOConfig(**{**base, **kw})


def test_schedule_is_linear_from_ent_coef_to_final_then_held() -> None:
    agent = PPO(make_envs(4), _cfg(ent_coef=0.03, ent_coef_final=0.0))
    assert agent.current_ent_coef() == 0.03  # before any learn(): the start value
    agent.schedule_total = 1000
    for step, want in ((0, 0.03), (250, 0.0225), (500, 0.015), (1000, 0.0), (4000, 0.0)):
        agent.global_step = step
        assert agent.current_ent_coef() == pytest.approx(want, abs=1e-12), step
    # Upwards works the same way.
    up = PPO(make_envs(4), _cfg(ent_coef=0.0, ent_coef_final=0.02))
    up.schedule_total, up.global_step = 1000, 750
    assert up.current_ent_coef() == pytest.approx(0.015)


def test_no_final_keeps_the_constant_and_logs_nothing_new() -> None:
    agent = PPO(make_envs(4), _cfg(ent_coef=0.02))
    seen: list[dict[str, float]] = []
    agent.learn(3 * 64, callback=lambda a, m: seen.append(dict(m)))
    assert agent.current_ent_coef() == 0.02
    assert all("ent_coef" not in m for m in seen)


def test_each_update_uses_and_logs_the_scheduled_value() -> None:
    # 4 envs x 16 steps = 64 per update; 4 updates over 256 steps: the value at
    # the start of each update is 0.04 * (1 - k / 4).
    agent = PPO(make_envs(4), _cfg(ent_coef=0.04, ent_coef_final=0.0))
    logged: list[float] = []
    agent.learn(256, callback=lambda a, m: logged.append(m["ent_coef"]))
    assert logged == pytest.approx([0.04, 0.03, 0.02, 0.01])


def test_the_loss_takes_the_given_coefficient() -> None:
    agent = PPO(make_envs(4), _cfg(ent_coef=0.5))
    obs = torch.rand(8, 6)
    masks = torch.rand(8, 6) < 0.5
    masks[:, 0] = True
    actions = torch.zeros(8, dtype=torch.long)
    zeros = torch.zeros(8)
    args = (agent.net, agent.head, obs, masks, actions, zeros, torch.randn(8), zeros, zeros)
    loss_cfg, aux = ppo_loss(*args, agent.config)
    loss_kw, _ = ppo_loss(*args, _cfg(ent_coef=0.0), ent_coef=0.5)
    torch.testing.assert_close(loss_cfg, loss_kw)
    # Hand-computed: the two losses differ by exactly 0.2 x mean entropy.
    loss_02, _ = ppo_loss(*args, agent.config, ent_coef=0.3)
    torch.testing.assert_close(loss_02 - loss_cfg, 0.2 * aux["entropy"])


def test_recurrent_ppo_follows_the_same_schedule() -> None:
    cfg = _cfg(ent_coef=0.04, ent_coef_final=0.0, recurrent=True, lstm_hidden=8)
    agent = RecurrentPPO(make_envs(4), cfg)
    logged: list[float] = []
    agent.learn(256, callback=lambda a, m: logged.append(m["ent_coef"]))
    assert logged == pytest.approx([0.04, 0.03, 0.02, 0.01])


def test_resume_continues_the_schedule(tmp_path) -> None:
    agent = PPO(make_envs(4), _cfg(ent_coef=0.04, ent_coef_final=0.0))
    agent.learn(128)
    agent.save(tmp_path / "c.pt")
    again = PPO.load(tmp_path / "c.pt", device="cpu", env=make_envs(4))
    assert again.config.ent_coef_final == 0.0
    logged: list[float] = []
    again.learn(256, callback=lambda a, m: logged.append(m["ent_coef"]))
    assert logged == pytest.approx([0.02, 0.01])


@pytest.mark.parametrize("bad", [-0.01, float("inf"), float("nan")])
def test_bad_final_values_are_refused_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match="ent_coef_final"):
        _cfg(ent_coef_final=bad).validate()


def test_round_trips_through_the_config_dict() -> None:
    cfg = _cfg(ent_coef=0.03, ent_coef_final=0.001)
    d = cfg.to_dict()
    assert d["ent_coef_final"] == 0.001
    assert dataclasses.replace(cfg) == PPOConfig.from_dict(d)
