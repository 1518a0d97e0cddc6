"""Helpers shared by the env test files."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import maskrl.envs


def make(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    """gym.make, skipping the test when the id's optional extra is not installed."""
    missing = maskrl.envs.missing_dependency(env_id)
    if missing:
        pytest.skip(missing)
    return gym.make(env_id, **kwargs)


def same(a: Any, b: Any) -> bool:
    """Exact equality of observations (arrays, or dicts of arrays)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def run_env_checkers(env: gym.Env[Any, Any]) -> None:
    """Gymnasium's and SB3's env checkers on one env (each resets it, with seeds, first).

    Gymnasium's checker reports most findings as warnings: each one fails here,
    except its note that a gym.make stack differs from env.unwrapped (intended).
    SB3's warnings are advice on its default policies (float image grids for
    MinAtar, Knapsack's set-shaped Dict entry), not findings; it fails by raising.
    """
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version.*")
        gymnasium_check_env(env, skip_render_check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sb3_check_env(env, warn=True, skip_render_check=True)
