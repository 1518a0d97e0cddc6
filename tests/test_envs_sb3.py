"""Every kind of maskrl id trains under sb3-contrib's MaskablePPO, unchanged, without invalid actions.

The envs are made with ``check_actions=True`` (not the default, which accepts an
invalid action), so an invalid action would raise inside ``learn``; a recording
wrapper also counts every action against the mask it was chosen under.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import pytest

import maskrl.envs

pytest.importorskip("sb3_contrib")


class ActionAudit(gym.Wrapper[Any, Any, Any, Any]):
    """Counts steps and actions outside the mask of the observation they answered."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.steps = 0
        self.violations = 0
        self._mask: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._mask = info["action_mask"]
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        assert self._mask is not None
        self.steps += 1
        self.violations += not bool(self._mask[int(action)])
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._mask = info["action_mask"]
        return obs, reward, terminated, truncated, info


def tiny_cnn_kwargs() -> dict[str, Any]:
    """policy_kwargs for a one-layer CNN: a full NatureCNN would dominate the test's time."""
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class TinyCNN(BaseFeaturesExtractor):
        def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 32) -> None:
            super().__init__(observation_space, features_dim)
            c = observation_space.shape[0]
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(c, 8, kernel_size=8, stride=8),  # 84x84 -> 10x10
                torch.nn.ReLU(),
                torch.nn.Flatten(),
                torch.nn.Linear(8 * 10 * 10, features_dim),
                torch.nn.ReLU(),
            )

        def forward(self, observations: torch.Tensor) -> torch.Tensor:
            return self.net(observations)

    return {"features_extractor_class": TinyCNN, "net_arch": [32]}


CASES: list[tuple[str, str, dict[str, Any]]] = [
    *[(env_id, "MlpPolicy", {}) for env_id in maskrl.envs.minatar_ids()],
    ("maskrl/Knapsack-v0", "MultiInputPolicy", {}),
    ("maskrl/ConnectFour-v0", "MlpPolicy", {}),
    ("maskrl/TicTacToe-v0", "MlpPolicy", {}),
    ("maskrl/Atari-Breakout-v0", "CnnPolicy", {}),
    ("maskrl/Atari-Pong-v0", "CnnPolicy", {}),
]


@pytest.mark.parametrize(("env_id", "policy", "env_kwargs"), CASES, ids=[c[0] for c in CASES])
def test_maskable_ppo_trains_without_invalid_actions(
    env_id: str, policy: str, env_kwargs: dict[str, Any]
) -> None:
    from sb3_contrib import MaskablePPO

    missing = maskrl.envs.missing_dependency(env_id)
    if missing:
        pytest.skip(missing)
    atari = "Atari" in env_id
    total = 512 if atari else 2048  # an Atari step costs ~1 ms
    env = ActionAudit(gym.make(env_id, check_actions=True, **env_kwargs))
    model = MaskablePPO(
        policy,
        env,
        n_steps=128 if atari else 512,
        batch_size=64 if atari else 256,
        n_epochs=1,
        seed=0,
        device="cpu",
        # Small networks: this checks the plumbing, not learning.
        policy_kwargs=tiny_cnn_kwargs() if atari else {"net_arch": [32]},
    )
    model.learn(total_timesteps=total)
    assert env.steps >= total
    assert env.violations == 0
    env.close()
