"""Flickering observations: a partially observed version of any env.

:class:`Flicker` blanks the observation (all zeros) with probability ``p`` at
every ``reset`` and ``step``, as in Hausknecht & Stone (2015, "Deep Recurrent
Q-Learning for Partially Observable MDPs"): a policy that sees one frame at a
time cannot tell where things are on a blank frame; one with memory can. The
action mask, rewards, ``terminated`` / ``truncated`` and ``info`` are passed
through untouched: only what the agent *sees* flickers, not what it may do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["FLICKER_SEED_KEY", "Flicker", "check_flicker_p", "flicker_wrapper"]

#: Mixed with the reset seed to seed the blanking generator, so that it draws
#: numbers unrelated to those of the env's own generator seeded with the same seed.
FLICKER_SEED_KEY = 0x466C6B72  # "Flkr"


def check_flicker_p(p: Any) -> float:
    """Return ``p`` as a float, or raise ``ValueError`` unless it is a number in ``[0, 1)``."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise ValueError(f"flicker probability p must be a number in [0, 1), got {p!r}")
    if not (math.isfinite(p) and 0.0 <= p < 1.0):
        raise ValueError(f"flicker probability p must be in [0, 1), got {p}")
    return float(p)


class Flicker(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Blank the observation (all zeros) with probability ``p`` at each reset and step.

    The blanking has its own generator: ``reset(seed=s)`` seeds it from ``s``
    (mixed with :data:`FLICKER_SEED_KEY`), so a seeded run flickers the same
    way every time; a ``reset()`` without a seed continues the generator (the
    first one, if never seeded, draws fresh OS entropy). Each observation is
    blanked independently of the others.

    Args:
        env: a Gymnasium env whose observation space is a ``Box`` containing
            zero (MinAtar grids, Atari frames, vectors).
        p: the probability that an observation is blanked, in ``[0, 1)``
            (``p = 0`` passes every observation through).

    Raises:
        ValueError: ``p`` not a number in ``[0, 1)``; an observation space that
            is not a ``Box`` or does not contain the all-zero observation.

    Example:
        >>> import gymnasium as gym, maskrl.envs
        >>> env = Flicker(gym.make("maskrl/MinAtar-Breakout-v0"), p=0.5)
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, info["action_mask"].dtype
        ((4, 10, 10), dtype('bool'))
    """

    def __init__(self, env: gym.Env[Any, Any], p: float = 0.5) -> None:
        p = check_flicker_p(p)
        space = env.observation_space
        if not isinstance(space, spaces.Box):
            raise ValueError(f"Flicker needs a Box observation space, got {space}")
        zero = np.zeros(space.shape, dtype=space.dtype)
        if not space.contains(zero):
            raise ValueError(f"Flicker blanks to zeros, which are outside {space}")
        gym.utils.RecordConstructorArgs.__init__(self, p=p)
        gym.Wrapper.__init__(self, env)
        #: The probability that an observation is blanked.
        self.p = p
        self._rng = np.random.default_rng()
        #: Whether the observation just returned was blanked.
        self.blanked = False

    def _show(self, obs: Any) -> Any:
        self.blanked = bool(self._rng.random() < self.p)
        if self.blanked:
            return np.zeros_like(obs)
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env; ``seed`` also seeds the blanking generator."""
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng([int(seed), FLICKER_SEED_KEY])
        return self._show(obs), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env; the observation is blanked with probability ``p``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._show(obs), reward, terminated, truncated, info


def _wrap(env: gym.Env[Any, Any], p: float, inner: Any = None) -> gym.Env[Any, Any]:
    return Flicker(env if inner is None else inner(env), p=p)


def flicker_wrapper(
    p: float, inner: Callable[[gym.Env[Any, Any]], gym.Env[Any, Any]] | None = None
) -> Callable[[gym.Env[Any, Any]], gym.Env[Any, Any]]:
    """A picklable ``make_vec(wrapper=...)``: ``Flicker(inner(env), p)`` (``inner`` optional).

    Raises:
        ValueError: ``p`` not in ``[0, 1)``.
    """
    return partial(_wrap, p=check_flicker_p(p), inner=inner)
