"""Helpers shared by the env test files."""

from __future__ import annotations

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
