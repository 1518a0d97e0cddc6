"""maskrl.host_forward: NumPy forward passes equal torch's, track the weights, and step
aside for any network they do not know exactly (hooks, QAT layers, replaced weights)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import maskrl.agents.dqn_trainer as dqn_trainer
import maskrl.envs  # noqa: F401  (registers the ids)
from maskrl.agents import DQN, DQNConfig
from maskrl.agents.trainer import FlatParameters
from maskrl.host_forward import HostLogits
from maskrl.networks import ActorCritic, AtariCNN, MinAtarCNN, MLPEncoder, SetActorCritic
from maskrl.quant import prepare_qat


def _torch_logits(net: ActorCritic, obs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.policy_head(net.features(torch.from_numpy(obs).float())).numpy()


def _grids(rng: np.random.Generator, b: int, c: int, h: int, w: int, dtype: Any) -> np.ndarray:
    return (rng.random((b, c, h, w)) < 0.15).astype(dtype)


@pytest.mark.parametrize("c,h,w,filters,hidden", [(4, 10, 10, 16, 128), (7, 10, 10, 8, 32),
                                                  (2, 5, 7, 3, 16), (1, 3, 3, 16, 8)])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.float32])
def test_minatar_network_logits_equal_torch(c: int, h: int, w: int, filters: int, hidden: int,
                                             dtype: Any) -> None:  # fmt: skip
    torch.manual_seed(c + h)
    net = ActorCritic(MinAtarCNN(c, h, w, filters=filters, hidden=hidden), 6)
    for p in net.parameters():  # weights of every scale, not just the small initial heads
        nn.init.normal_(p, std=0.5)
    host = HostLogits.build(net)
    assert host is not None and host.usable()
    rng = np.random.default_rng(0)
    for b in (1, 3, 16):
        obs = _grids(rng, b, c, h, w, dtype)
        got, want = host(obs), _torch_logits(net, obs)
        assert got.dtype == np.float32 and got.shape == (b, 6)
        # float32 sums in another order: within a few ulps of the largest logit
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_mlp_network_logits_equal_torch() -> None:
    torch.manual_seed(1)
    net = ActorCritic(MLPEncoder(12, (32, 16)), 5)
    host = HostLogits.build(net)
    assert host is not None
    obs = np.random.default_rng(1).normal(size=(4, 3, 4)).astype(np.float64)  # flattened to 12
    np.testing.assert_allclose(host(obs), _torch_logits(net, obs), rtol=1e-5, atol=1e-6)


def test_a_hand_computed_convolution() -> None:
    # One channel, a 3x3 grid, one filter: the single output is sum(w * x) + b, then a
    # one-unit dense layer and a one-logit head with identity-like weights.
    net = ActorCritic(MinAtarCNN(1, 3, 3, filters=1, hidden=1), 1)
    with torch.no_grad():
        net.encoder.conv.weight.copy_(torch.arange(9.0).view(1, 1, 3, 3))
        net.encoder.conv.bias.fill_(-10.0)
        net.encoder.fc.weight.fill_(2.0)
        net.encoder.fc.bias.fill_(1.0)
        net.policy_head.weight.fill_(3.0)
        net.policy_head.bias.fill_(0.5)
    host = HostLogits.build(net)
    assert host is not None
    x = np.zeros((2, 1, 3, 3), dtype=np.float32)
    x[0, 0, 0, 2] = x[0, 0, 2, 1] = 1.0  # weights 2 and 7: relu(9 - 10) = 0 -> fc 1 -> 3.5
    x[1, 0, 2, 2] = x[1, 0, 1, 1] = 1.0  # weights 8 and 4: relu(12 - 10) = 2 -> fc 5 -> 15.5
    np.testing.assert_array_equal(host(x), [[3.5], [15.5]])


def test_it_reads_the_live_weights() -> None:
    torch.manual_seed(2)
    net = ActorCritic(MinAtarCNN(4), 6)
    flat = FlatParameters(net)  # the trainers' layout: Linear weights stored transposed
    host = HostLogits.build(net)
    assert host is not None
    obs = _grids(np.random.default_rng(2), 2, 4, 10, 10, np.float32)
    before = host(obs)
    opt = torch.optim.SGD([flat.param], lr=0.5)
    flat.grad.normal_()
    opt.step()
    after = host(obs)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _torch_logits(net, obs), rtol=1e-5, atol=1e-6)
    other = ActorCritic(MinAtarCNN(4), 6)
    net.load_state_dict(other.state_dict())
    assert host.usable()
    np.testing.assert_allclose(host(obs), _torch_logits(other, obs), rtol=1e-5, atol=1e-6)


def test_unknown_networks_get_none() -> None:
    assert HostLogits.build(ActorCritic(AtariCNN(), 6)) is None
    assert HostLogits.build(ActorCritic(MinAtarCNN(4), 6, obs_key="grid")) is None
    assert HostLogits.build(SetActorCritic(3)) is None
    padded = ActorCritic(MinAtarCNN(4), 6)
    padded.encoder.conv = nn.Conv2d(4, 16, 3, padding=1)
    assert HostLogits.build(padded) is None
    assert HostLogits.build(prepare_qat(ActorCritic(MinAtarCNN(4), 6), start_after=0)) is None
    double = ActorCritic(MinAtarCNN(4), 6).double()
    assert HostLogits.build(double) is None


def test_hooks_swaps_and_replaced_weights_make_it_unusable() -> None:
    def fresh() -> tuple[ActorCritic, HostLogits]:
        net = ActorCritic(MinAtarCNN(4), 6)
        host = HostLogits.build(net)
        assert host is not None and host.usable()
        return net, host

    net, host = fresh()
    handle = net.encoder.fc.register_forward_hook(lambda m, i, o: None)
    assert not host.usable()
    handle.remove()
    assert host.usable()
    net, host = fresh()
    net.policy_head.register_forward_pre_hook(lambda m, i: None)
    assert not host.usable()
    net, host = fresh()
    net.register_forward_hook(lambda m, i, o: None)
    assert not host.usable()
    net, host = fresh()
    prepare_qat(net, start_after=0)  # swaps the Linear/Conv2d layers in place
    assert not host.usable()
    net, host = fresh()
    net.encoder.fc.weight = nn.Parameter(torch.zeros(128, 1024))
    assert not host.usable()
    net, host = fresh()
    global_hook = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert not host.usable()
    finally:
        global_hook.remove()
    assert host.usable()


@pytest.mark.parametrize("num_envs", [1, 3])
def test_dqn_acts_the_same_with_and_without_it(num_envs: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # A short MinAtar run: the NumPy forward pass picks the same greedy actions as torch's.
    def run(host_max: int) -> DQN:
        monkeypatch.setattr(dqn_trainer, "_HOST_MAX_BATCH", host_max)
        cfg = DQNConfig(device="cpu", num_envs=num_envs, seed=4, buffer_size=2_000, batch_size=16,
                        learning_starts=200, exploration_steps=300, train_freq=2,
                        target_update_interval=100)  # fmt: skip
        agent = DQN("maskrl/MinAtar-Breakout-v0", cfg)
        try:
            agent.learn(1_200)
        finally:
            agent.envs.close()
        return agent

    with_host, without = run(16), run(0)
    assert with_host._host_logits is not None
    assert with_host.replay is not None and without.replay is not None
    assert torch.equal(with_host.replay.actions, without.replay.actions)
    assert with_host.episode_stats.returns == without.episode_stats.returns


def test_dqn_counts_host_forward_passes_as_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a hook on the network, acting runs in torch (the hook sees every greedy step).
    cfg = DQNConfig(device="cpu", num_envs=1, seed=0, learning_starts=10_000, exploration_steps=0,
                    exploration_final_eps=0.0)  # fmt: skip
    agent = DQN("maskrl/MinAtar-Breakout-v0", cfg)
    calls: list[int] = []
    agent.net.policy_head.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        agent.learn(20)
    finally:
        agent.envs.close()
    assert len(calls) == 20
