"""PPO's critic warm-up (``critic_warmup``): the value head trains alone for the
first steps, every other weight and its optimiser state stay exactly as they
were, then the whole network trains; resume, the recurrent trainer, the
``--init-from`` run it is for, and the refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from maskrl.agents import PPO, PPOConfig
from maskrl.agents.recurrent import RecurrentPPO
from maskrl.agents.trainer import trainable_parameters, value_head_parameters
from tests.test_ppo import make_envs

BATCH = 64  # 4 envs x 16 steps
# masked=False: with one valid action per step the policy gradient would be zero
# and "the policy did not move" would hold whatever the warm-up did.


def _cfg(**kw) -> PPOConfig:
    base = dict(num_envs=4, num_steps=16, num_minibatches=2, num_epochs=2, seed=0, device="cpu")
    return PPOConfig(**{**base, **kw})


def _snapshot(agent: PPO) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in agent.net.named_parameters()}


def _is_critic(name: str) -> bool:
    return "value_head" in name.split(".")[:-1]


def _changed(before: dict[str, torch.Tensor], agent: PPO) -> set[str]:
    return {n for n, p in agent.net.named_parameters() if not torch.equal(before[n], p)}


def test_warmup_updates_change_the_value_head_only_then_everything_trains() -> None:
    agent = PPO(make_envs(4, masked=False), _cfg(critic_warmup=2 * BATCH))
    names = {n for n, _ in agent.net.named_parameters()}
    critic = {n for n in names if _is_critic(n)}
    assert critic == {"value_head.weight", "value_head.bias"}
    start = _snapshot(agent)
    logged: list[float] = []
    agent.learn(2 * BATCH, callback=lambda a, m: logged.append(m["critic_warmup"]))
    assert logged == [1.0, 1.0]
    assert _changed(start, agent) == critic
    # The frozen weights have no optimiser state at all: Adam never saw a gradient for them.
    for n, p in agent.net.named_parameters():
        assert (p in agent.optimizer.state) == (n in critic), n
    assert all(p.requires_grad for p in agent.net.parameters())  # restored after each update
    after_warmup = _snapshot(agent)
    agent.learn(3 * BATCH, callback=lambda a, m: logged.append(m["critic_warmup"]))
    assert logged == [1.0, 1.0, 0.0]
    assert _changed(after_warmup, agent) == names


def test_the_policy_is_unchanged_through_the_warmup() -> None:
    agent = PPO(make_envs(4, masked=False), _cfg(critic_warmup=3 * BATCH))
    obs = torch.rand(16, 6)
    with torch.no_grad():
        logits0, values0 = agent.net(obs)
    agent.learn(3 * BATCH)
    with torch.no_grad():
        logits1, values1 = agent.net(obs)
    torch.testing.assert_close(logits1, logits0, rtol=0, atol=0)
    assert not torch.equal(values1, values0)


def test_the_rollout_that_starts_before_the_end_is_still_a_warmup_update() -> None:
    # critic_warmup=70: the second rollout starts at step 64 < 70, the third at 128.
    agent = PPO(make_envs(4, masked=False), _cfg(critic_warmup=70))
    logged: list[float] = []
    agent.learn(3 * BATCH, callback=lambda a, m: logged.append(m["critic_warmup"]))
    assert logged == [1.0, 1.0, 0.0]


def test_off_by_default_logs_nothing_and_trains_everything() -> None:
    agent = PPO(make_envs(4, masked=False), _cfg())
    start = _snapshot(agent)
    seen: list[dict[str, float]] = []
    agent.learn(BATCH, callback=lambda a, m: seen.append(dict(m)))
    assert "critic_warmup" not in seen[0]
    assert _changed(start, agent) == set(start)


def test_resume_in_the_middle_keeps_to_the_same_updates(tmp_path) -> None:
    agent = PPO(make_envs(4, masked=False), _cfg(critic_warmup=2 * BATCH))
    agent.learn(BATCH)
    agent.save(tmp_path / "c.pt")
    again = PPO.load(tmp_path / "c.pt", device="cpu", env=make_envs(4, masked=False))
    assert again.config.critic_warmup == 2 * BATCH
    start = _snapshot(again)
    logged: list[float] = []
    again.learn(3 * BATCH, callback=lambda a, m: logged.append(m["critic_warmup"]))
    assert logged == [1.0, 0.0]
    assert _changed(start, again) == set(start)


def test_recurrent_ppo_freezes_everything_but_its_value_head() -> None:
    cfg = _cfg(recurrent=True, lstm_hidden=8, critic_warmup=2 * BATCH)
    agent = RecurrentPPO(make_envs(4, masked=False), cfg)
    critic = {n for n, _ in agent.net.named_parameters() if _is_critic(n)}
    assert critic == {"base.value_head.weight", "base.value_head.bias"}
    start = _snapshot(agent)
    agent.learn(2 * BATCH)
    assert _changed(start, agent) == critic


def test_an_init_from_run_keeps_the_sources_policy_through_the_warmup(tmp_path) -> None:
    from maskrl.agents.transfer import build_ppo_from

    game = "maskrl/MinAtar-Breakout-v0"
    source = PPO(game, _cfg(hidden=16))
    source.learn(BATCH)
    source.save(tmp_path / "src.pt")
    agent, _ = build_ppo_from(
        [game], _cfg(critic_warmup=2 * BATCH, seed=5), str(tmp_path / "src.pt"), "all"
    )
    src = dict(source.net.named_parameters())
    for n, p in agent.net.named_parameters():
        assert torch.equal(p, src[n]), n  # every layer copied, the value head included
    agent.learn(2 * BATCH)
    changed = {n for n, p in agent.net.named_parameters() if not torch.equal(p, src[n])}
    assert changed == {"value_head.weight", "value_head.bias"}


def test_the_helper_restores_requires_grad_after_an_error() -> None:
    net = PPO(make_envs(4, masked=False), _cfg()).net
    with pytest.raises(RuntimeError, match="boom"):
        with trainable_parameters(net, critic_only=True) as params:
            assert {id(p) for p in params} == {id(p) for p in value_head_parameters(net)}
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in net.parameters())
    with trainable_parameters(net) as params:
        assert len(params) == len(list(net.parameters()))


def test_a_network_without_a_value_head_is_refused_by_name() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="critic_warmup.*'value_head'.*Sequential"):
        with trainable_parameters(net, critic_only=True):
            pass


@pytest.mark.parametrize("bad", [-1, 10**14])
def test_bad_values_are_refused_by_name(bad: int) -> None:
    with pytest.raises(ValueError, match=r"critic_warmup \(--critic-warmup\)"):
        _cfg(critic_warmup=bad).validate()


def test_round_trips_through_the_config_dict() -> None:
    cfg = _cfg(critic_warmup=500_000)
    d = cfg.to_dict()
    assert d["critic_warmup"] == 500_000
    assert dataclasses.replace(cfg) == PPOConfig.from_dict(d)
