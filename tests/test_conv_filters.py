"""``--conv-filters``: the MinAtar CNN's convolution width, for PPO, DQN and the student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from train_module import train

import maskrl.envs
from maskrl.agents import build_actor_critic, load_policy
from maskrl.agents.config import DQNConfig, PPOConfig
from maskrl.agents.mimic import MimicConfig

BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
TINY = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1"]
TINY += ["--device", "cpu", "--no-progress", "--seed", "1"]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Any:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _convs(net: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def test_the_filters_set_the_convolution_and_the_dense_layer_it_feeds() -> None:
    env = maskrl.envs.make_vec(BREAKOUT, 1)
    obs_space, act_space = env.single_observation_space, env.single_action_space
    env.close()
    default = build_actor_critic(obs_space, act_space)
    wide = build_actor_critic(obs_space, act_space, conv_filters=40, hidden=64)
    assert [c.out_channels for c in _convs(default)] == [16]
    (conv,) = _convs(wide)
    assert conv.out_channels == 40 and conv.in_channels == 4 and conv.kernel_size == (3, 3)
    linears = [m for m in wide.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 40 * 8 * 8 and linears[0].out_features == 64
    x = torch.rand(3, *obs_space.shape)
    logits, value = wide(x)
    assert logits.shape == (3, 6) and value.shape == (3,)
    # The multi-game student's padded-channel CNN.
    ids = [BREAKOUT, ASTERIX]
    multi = maskrl.envs.make_multigame_vec(ids, 2)
    net = build_actor_critic(
        multi.single_observation_space, multi.single_action_space, conv_filters=24
    )
    multi.close()
    assert [c.out_channels for c in _convs(net)] == [24]


def test_a_network_without_the_minatar_cnn_refuses_the_filters() -> None:
    ks = maskrl.envs.make_vec("maskrl/Knapsack-v0", 1)
    with pytest.raises(ValueError, match="no convolution"):
        build_actor_critic(ks.single_observation_space, ks.single_action_space, conv_filters=8)
    ks.close()
    from gymnasium import spaces

    box = spaces.Box(0, 1, (7,), np.float32)
    with pytest.raises(ValueError, match="MinAtar CNN .* shape \\(7,\\)"):
        build_actor_critic(box, spaces.Discrete(3), conv_filters=8)
    atari = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    with pytest.raises(ValueError, match="shape \\(4, 84, 84\\)"):
        build_actor_critic(atari, spaces.Discrete(3), conv_filters=8)
    with pytest.raises(ValueError, match="one-hot encoder has no convolution"):
        build_actor_critic(spaces.Discrete(5), spaces.Discrete(3), conv_filters=8)
    env = maskrl.envs.make_vec(BREAKOUT, 1)
    with pytest.raises(ValueError, match="conv_filters must be >= 1"):
        build_actor_critic(env.single_observation_space, env.single_action_space, conv_filters=0)
    env.close()
    for cfg in (PPOConfig, DQNConfig, MimicConfig):
        with pytest.raises(ValueError, match=r"conv_filters \(--conv-filters\)"):
            cfg(conv_filters=0).validate()
    with pytest.raises(ValueError, match="None unless --multigame-encoder cnn"):
        MimicConfig(multigame_encoder="tokens", conv_filters=32).validate()


def test_ppo_dqn_and_the_student_train_with_the_filters_and_reload_them(tmp_path: Path) -> None:
    common = ["--runs-dir", str(tmp_path), "--eval-episodes", "0", "--conv-filters", "8"]
    argv = ["ppo", "--env", BREAKOUT, "--total-timesteps", "64", "--run-name", "p", *TINY]
    assert train.main([*argv, *common]) == 0
    policy = load_policy(tmp_path / "p" / "checkpoint.pt", device="cpu")
    assert [c.out_channels for c in _convs(policy.net)] == [8]
    argv = ["dqn", "--env", BREAKOUT, "--total-timesteps", "64", "--run-name", "d"]
    argv += ["--device", "cpu", "--no-progress", "--buffer-size", "64", "--batch-size", "8"]
    argv += ["--learning-starts", "32"]
    assert train.main([*argv, *common]) == 0
    policy = load_policy(tmp_path / "d" / "checkpoint.pt", device="cpu")
    assert [c.out_channels for c in _convs(policy.net)] == [8]
    argv = ["experts", "--env", f"{BREAKOUT},{ASTERIX}", "--total-timesteps", "64"]
    argv += ["--run-name", "ex", "--runs-dir", str(tmp_path), "--eval-episodes", "1", *TINY]
    assert train.main(argv) == 0
    argv = ["mimic", "--experts", str(tmp_path / "ex"), "--total-timesteps", "64"]
    argv += ["--run-name", "s", *TINY, *common]
    assert train.main(argv) == 0
    student = load_policy(tmp_path / "s" / "checkpoint.pt", device="cpu")
    assert [c.out_channels for c in _convs(student.net)] == [8]
    # The reloaded student computes what the saved weights say.
    saved = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False)
    conv_w = next(v for k, v in saved["model"].items() if k.endswith("conv.weight"))
    torch.testing.assert_close(_convs(student.net)[0].weight.detach(), conv_w)
