"""A masked memory task: recall a cue seen once, among the actions valid at the end.

``maskrl/Recall-v0`` (:class:`RecallEnv`). An episode has ``delay + 2`` steps
(``K = num_cues`` actions, ``D = delay``):

* **step 0, the cue**: the observation shows the cue, one of the ``K`` actions
  drawn uniformly, as a one-hot vector; it is never shown again.
* **steps 1..D, blank**: the cue part of the observation is zero.
* **step D + 1, the answer**: the agent must pick the cue. The valid set is the
  cue plus ``m - 1`` other actions, ``m ~ U{min_choices, ..., K}`` and the
  others a uniformly random ``(m - 1)``-subset of the remaining actions. Reward
  **+1** for the cue, **0** for anything else (so the return is the success
  indicator and its mean the success rate; 0 rather than -1 keeps that reading
  and gives a wrong answer no extra signal). The episode then terminates.

On every step before the answer the action has no effect and the reward is 0;
the valid set is a random non-empty subset (size ``U{1, ..., K}``, then a
uniform subset of that size), drawn independently of the cue. The valid set thus
changes from step to step.

Observation ``Box(0, 1, (K + 2,), float32)``: ``[cue one-hot (K), answer-now
flag, elapsed fraction t / (D + 2)]`` -- the phase and timer are visible, the
cue only at step 0. The last observation (after the answer) is the timer alone
(``1.0``); its mask is all-valid, so that under Gymnasium's ``next_step``
autoreset a masked sampler can act on it (that action is ignored).

**Chance.** Given the answer step's valid set ``V``, every action of ``V`` is
equally likely to be the cue (``P(c, V) = P(c) P(V | c)`` is the same for every
``c`` in ``V``), and the observation at that step is the same in every episode.
So no policy without memory does better than ``E[1 / m]``
(:func:`recall_chance`; ``13/36 = 0.361`` for the defaults ``K=4``,
``min_choices=2``), which a memoryless policy reaches by picking any valid
action. A policy that remembers the cue scores 1.

An action outside the mask is accepted, as in every maskrl env: before the
answer it changes nothing; as the answer it is wrong (reward 0, terminated).
Either way ``info["invalid_action"] = True``. ``check_actions=True`` raises
:class:`ValueError` instead; an action outside ``0..K-1`` always raises it.
The answer step's ``info`` holds ``"success"`` (bool) and ``"cue"``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["RecallEnv", "recall_chance"]


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; a one-line ValueError otherwise (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def recall_chance(num_cues: int = 4, min_choices: int = 2) -> Fraction:
    """The best success rate without memory on ``maskrl/Recall-v0``: ``E[1 / m]``, exactly.

    ``m ~ U{min_choices, ..., num_cues}`` is the size of the answer step's valid set.

    >>> recall_chance(4, 2)
    Fraction(13, 36)
    >>> recall_chance(2, 2)
    Fraction(1, 2)
    """
    k = _check_int("num_cues", num_cues, 2)
    lo = _check_int("min_choices", min_choices, 2, k)
    return sum((Fraction(1, m) for m in range(lo, k + 1)), Fraction(0)) / (k - lo + 1)


class RecallEnv(gym.Env[np.ndarray, np.int64]):
    """Remember the cue of step 0 and pick it among the valid actions ``delay + 1`` steps later.

    Args:
        num_cues: ``K``, the number of actions (and of possible cues), ``>= 2``.
        delay: ``D``, the number of blank steps between cue and answer, ``>= 0``.
        min_choices: the smallest size of the answer step's valid set, in
            ``[2, K]`` (2 by default: the cue and at least one other action).
        check_actions: when True an action outside the mask raises
            :class:`ValueError` (to debug an agent's masking). When False
            (default) it is accepted (see the module doc).

    Example:
        >>> import gymnasium as gym, maskrl.envs
        >>> env = gym.make("maskrl/Recall-v0", num_cues=3, delay=1)
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, info["action_mask"].shape, float(obs[:3].sum())
        ((5,), (3,), 1.0)
    """

    metadata: dict[str, Any] = {"render_modes": []}
    follows_mask_convention = True

    def __init__(
        self,
        num_cues: int = 4,
        delay: int = 4,
        min_choices: int = 2,
        check_actions: bool = False,
    ) -> None:
        self.num_cues = _check_int("num_cues", num_cues, 2)
        self.delay = _check_int("delay", delay, 0)
        self.min_choices = _check_int("min_choices", min_choices, 2, self.num_cues)
        self._check_actions = check_actions
        self.observation_space = spaces.Box(0.0, 1.0, (self.num_cues + 2,), np.float32)
        self.action_space = spaces.Discrete(self.num_cues)
        self.cue = 0
        self._t = 0  # actions taken since the reset
        self._mask = np.ones(self.num_cues, dtype=np.bool_)
        self._done = True

    @property
    def answer_step(self) -> int:
        """The step (0-based) at which the cue must be picked: ``delay + 1``."""
        return self.delay + 1

    @property
    def chance_success_rate(self) -> float:
        """The best success rate of a policy without memory, :func:`recall_chance`."""
        return float(recall_chance(self.num_cues, self.min_choices))

    def _random_subset(self, size: int, must: int | None = None) -> np.ndarray:
        mask = np.zeros(self.num_cues, dtype=np.bool_)
        rng = self.np_random
        if must is None:
            mask[rng.choice(self.num_cues, size=size, replace=False)] = True
        else:
            others = np.delete(np.arange(self.num_cues), must)
            mask[rng.choice(others, size=size - 1, replace=False)] = True
            mask[must] = True
        return mask

    def _next_mask(self) -> np.ndarray:
        """The mask of the observation at step ``self._t`` (drawn when that step begins)."""
        if self._t > self.answer_step:
            return np.ones(self.num_cues, dtype=np.bool_)
        if self._t == self.answer_step:
            m = int(self.np_random.integers(self.min_choices, self.num_cues + 1))
            return self._random_subset(m, must=self.cue)
        return self._random_subset(int(self.np_random.integers(1, self.num_cues + 1)))

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_cues + 2, dtype=np.float32)
        if self._t == 0:
            obs[self.cue] = 1.0
        obs[self.num_cues] = float(self._t == self.answer_step)
        obs[self.num_cues + 1] = self._t / (self.delay + 2)
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a cue; the observation shows it, ``info["action_mask"]`` is step 0's mask."""
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(self.num_cues))
        self._t = 0
        self._done = False
        self._mask = self._next_mask()
        return self._obs(), {"action_mask": self._mask.copy()}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Take ``action``; at the answer step, reward 1 if it is the cue, and the episode ends.

        Raises:
            ValueError: an action outside ``0..K-1``, or with ``check_actions`` an
                action outside the mask.
            RuntimeError: a step after the episode ended, before ``reset``.
        """
        if self._done:
            raise RuntimeError("the episode is over: call reset()")
        a = int(action)
        valid = 0 <= a < self.num_cues and bool(self._mask[a])
        if not valid and (self._check_actions or not 0 <= a < self.num_cues):
            env_id = self.spec.id if self.spec is not None else "Recall"
            why = (
                f"not in {self.action_space}" if not 0 <= a < self.num_cues
                else f"valid actions are {np.flatnonzero(self._mask).tolist()}"
            )  # fmt: skip
            raise ValueError(f"invalid action {a} in env '{env_id}' at step {self._t + 1}: {why}")
        info: dict[str, Any] = {}
        if not valid:
            info["invalid_action"] = True
        reward, terminated = 0.0, False
        if self._t == self.answer_step:
            success = valid and a == self.cue
            reward, terminated = float(success), True
            info.update(success=success, cue=self.cue)
            self._done = True
        self._t += 1
        self._mask = self._next_mask()
        info["action_mask"] = self._mask.copy()
        return self._obs(), reward, terminated, False, info

    def action_masks(self) -> np.ndarray:
        """The valid actions now, ``bool`` of shape ``(K,)``."""
        return self._mask.copy()
