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
from maskrl.agents.dqn_manual import ManualQStep, supports_manual
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
    step = ManualQStep.build(net, target_net)
    assert step is not None and step.usable()
    loss, target = step(batch, 0.97, double, unmasked)
    torch.testing.assert_close(torch.from_numpy(target), want_target)
    assert loss == pytest.approx(float(want_loss), rel=1e-6, abs=1e-7)
    td = batch["rewards"]  # both branches of the Huber loss were exercised
    assert td.abs().max() > 1
    for (name, p), w in zip(net.named_parameters(), want, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6 * float(w.abs().max()) + 1e-9,
                                   msg=name)  # fmt: skip
    assert not net.value_head.weight.grad.any()


@pytest.mark.parametrize("channels,n,b", [(10, 18, 5), (7, 3, 64)])
def test_other_grids_batches_and_action_counts(channels: int, n: int, b: int) -> None:
    """Seaquest's 10 channels with 18 actions at a batch of 5; Freeway's 7 with 3 at 64."""
    torch.manual_seed(1)
    net = ActorCritic(MinAtarCNN(channels, hidden=32), n)
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    target_net = copy.deepcopy(net)
    batch = _batch(np.random.default_rng(2), b, channels, n, np.float32)
    want_loss, want_target, want = _autograd(net, target_net, batch, True, False)
    FlatParameters(net)
    step = ManualQStep.build(net, target_net)
    assert step is not None
    loss, target = step({k: v.numpy() for k, v in batch.items()}, 0.97, True, False)
    torch.testing.assert_close(torch.from_numpy(target), want_target)
    assert loss == pytest.approx(float(want_loss), rel=1e-6, abs=1e-7)
    for (name, p), w in zip(net.named_parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6 * float(w.abs().max()) + 1e-9,
                                   msg=name)  # fmt: skip


def test_a_terminal_row_ignores_its_next_values() -> None:
    """A terminated row's target is its reward, whatever its next state's values (inf here)."""
    net = ActorCritic(MinAtarCNN(4, hidden=16), 3)
    target_net = copy.deepcopy(net)
    FlatParameters(net)
    batch = _batch(np.random.default_rng(3), 4, 4, 3, np.float32)
    batch["terminated"] = torch.tensor([True, False, True, False])
    step = ManualQStep.build(net, target_net)
    assert step is not None
    with torch.no_grad():
        target_net.policy_head.bias[0] = float("inf")
    batch["next_masks"][:, 0] = False  # action 0 (inf) is invalid in every next state,
    batch["next_masks"][:, 1] = True
    batch["next_masks"][[0, 2]] = False  # and a terminal row may have no valid action
    _, target = step(batch, 0.9, False, False)
    r = batch["rewards"].numpy()
    assert target[0] == r[0] and target[2] == r[2] and np.isfinite(target).all()


def test_which_networks_it_supports() -> None:
    assert supports_manual(ActorCritic(MinAtarCNN(4), 6))
    assert not supports_manual(ActorCritic(MLPEncoder(8), 3))
    assert not supports_manual(prepare_qat(ActorCritic(MinAtarCNN(4), 6), start_after=0))
    net = ActorCritic(MinAtarCNN(4), 6)
    assert ManualQStep.build(net, ActorCritic(MinAtarCNN(4, hidden=64), 6)) is None  # shapes
    assert ManualQStep.build(net, ActorCritic(MLPEncoder(8), 6)) is None
    step = ManualQStep.build(net, copy.deepcopy(net))
    assert step is not None and step.usable()
    step.target_host.net.encoder.register_forward_pre_hook(lambda m, i: None)
    assert not step.usable()


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


def test_a_hook_on_the_target_network_sends_the_gradient_steps_through_autograd() -> None:
    agent = _agent(exploration_final_eps=1.0)
    calls: list[int] = []
    agent.target_net.policy_head.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        agent.learn(96)
        assert not agent._manual_ready and agent._host_ready  # acting still in NumPy
        assert agent.num_updates > 0 and len(calls) == agent.num_updates
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
