"""maskrl.agents.dqn_manual: the hand-written DQN gradients equal autograd's, and the
trainer takes them only for the plain MinAtar network with its own loss."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import maskrl.envs  # noqa: F401  (registers the ids)
from maskrl.agents import DQN, DQNConfig
from maskrl.agents.dqn_manual import manual_q_gradients, supports_manual
from maskrl.agents.trainer import FlatParameters
from maskrl.networks import ActorCritic, MinAtarCNN, MLPEncoder
from maskrl.quant import prepare_qat

BREAKOUT = "maskrl/MinAtar-Breakout-v0"


def _batch(rng: np.random.Generator, b: int, c: int, n: int, obs_dtype: Any) -> dict[str, Any]:
    masks = rng.random((b, n)) < 0.6
    masks[np.arange(b), rng.integers(0, n, b)] = True  # a valid action in every row
    return {
        "obs": torch.from_numpy((rng.random((b, c, 10, 10)) < 0.2).astype(obs_dtype)),
        "next_obs": torch.from_numpy((rng.random((b, c, 10, 10)) < 0.2).astype(obs_dtype)),
        "actions": torch.from_numpy(rng.integers(0, n, b)),
        # rewards of a few units: TD errors on both sides of the Huber loss's kink at 1
        "rewards": torch.from_numpy(rng.normal(0, 2, b).astype(np.float32)),
        "terminated": torch.from_numpy(rng.random(b) < 0.3),
        "next_masks": torch.from_numpy(masks),
    }


def _autograd(net: ActorCritic, target_net: ActorCritic, batch: dict[str, Any], double: bool,
              unmasked: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:  # fmt: skip
    """The trainer's loss through autograd (DQN.loss's computation), and the gradients."""
    agent = DQN.__new__(DQN)
    agent.net, agent.target_net = net, target_net
    agent.config = DQNConfig(double=double, unmasked_target=unmasked, gamma=0.97)
    net.zero_grad(set_to_none=True)
    loss, target = agent.loss(batch)
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]
    return loss.detach(), target, grads


@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("unmasked", [False, True])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("obs_dtype", [np.float32, np.bool_])
def test_the_gradients_equal_autograds(double: bool, unmasked: bool, flat: bool,
                                       obs_dtype: Any) -> None:  # fmt: skip
    torch.manual_seed(0)
    net = ActorCritic(MinAtarCNN(4, hidden=64), 6)
    for p in net.parameters():  # values of a few units, so that |td| > 1 occurs
        nn.init.normal_(p, std=0.3)
    target_net = copy.deepcopy(net)
    for p in target_net.parameters():
        p.data.add_(torch.randn_like(p), alpha=0.1)
    batch = _batch(np.random.default_rng(1), 32, 4, 6, obs_dtype)
    want_loss, want_target, want = _autograd(net, target_net, batch, double, unmasked)
    if flat:
        FlatParameters(net)  # the trainer's layout (Linear weights stored transposed)
    else:
        for p in net.parameters():
            p.grad = torch.full_like(p, 7.0)  # overwritten, not accumulated
    loss, target = manual_q_gradients(net, target_net, batch, 0.97, double, unmasked)
    torch.testing.assert_close(target, want_target)
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-7)
    td = batch["rewards"]  # both branches of the Huber loss were exercised
    assert td.abs().max() > 1
    for (name, p), w in zip(net.named_parameters(), want, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6 * float(w.abs().max()) + 1e-9,
                                   msg=name)  # fmt: skip
    assert not net.value_head.weight.grad.any()


def test_which_networks_it_supports() -> None:
    assert supports_manual(ActorCritic(MinAtarCNN(4), 6))
    assert not supports_manual(ActorCritic(MLPEncoder(8), 3))
    assert not supports_manual(prepare_qat(ActorCritic(MinAtarCNN(4), 6), start_after=0))


def _agent(**kw: Any) -> DQN:
    cfg = dict(device="cpu", seed=3, num_envs=2, buffer_size=500, batch_size=16,
               learning_starts=64, train_freq=4, exploration_steps=100)  # fmt: skip
    cfg.update(kw)
    return DQN(BREAKOUT, DQNConfig(**cfg))


def test_the_trainer_uses_it_for_the_minatar_network_only() -> None:
    agent = _agent()
    try:
        assert agent._manual
        agent.learn(80)
        assert agent._manual_ready and agent.num_updates > 0
    finally:
        agent.envs.close()

    class OwnLoss(DQN):
        def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return super().loss(batch)

    other = OwnLoss(BREAKOUT, DQNConfig(device="cpu", num_envs=1))
    try:
        assert not other._manual  # a subclass's own loss goes through autograd
    finally:
        other.envs.close()


def test_a_hook_sends_the_gradient_steps_through_autograd() -> None:
    agent = _agent(exploration_final_eps=1.0)  # always exploring: the hook sees only learning
    calls: list[int] = []
    agent.net.encoder.fc.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        agent.learn(96)
        assert not agent._manual_ready
        # double DQN (the default): the online network reads s and s' in each step
        assert agent.num_updates > 0 and len(calls) == 2 * agent.num_updates
    finally:
        agent.envs.close()


def test_one_gradient_step_moves_the_weights_as_autograds_does() -> None:
    a, b = _agent(), _agent()
    try:
        for agent in (a, b):
            agent.allocate()
            agent._reset()
            for _ in range(40):
                agent._step_envs()
        b._manual_ready = False
        a._manual_ready = True
        ma, mb = a.gradient_step(), b.gradient_step()
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
        assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-5)
        torch.testing.assert_close(a.flat.param, b.flat.param, rtol=1e-5, atol=1e-7)
    finally:
        a.envs.close()
        b.envs.close()
