"""0/1 knapsack as a "pick an element of a variable-size set" environment.

``maskrl/Knapsack-v0`` (:class:`KnapsackEnv`). Each episode draws a fresh instance
from the env's own generator (``self.np_random``):

* ``n ~ U{n_min, ..., n_max}`` items, integer weights ``~ U{1, ..., max_weight}``
  and values ``~ U{1, ..., max_value}``;
* integer capacity ``max(floor(capacity_fraction * sum(weights)), min(weights))``,
  so at least one item always fits.

``slots`` (default ``n_max``) is the number of item slots: observation rows and
actions. Slots beyond an instance's items are zero padding and never valid.

Observation ``Dict`` (the key is not ``"items"``: sb3's ``MultiInputPolicy`` keeps
one sub-network per key in an ``nn.ModuleDict``, where ``items`` is a method name):

* ``"item_features"``: ``Box(0, ., (slots, 2), float32)``, row ``i`` =
  ``[weight_i / capacity, value_i / max_value]`` (capacity = the instance's
  initial capacity); rows ``n..slots-1`` are zero padding;
* ``"item_mask"``: ``MultiBinary(slots)``, 1 = the item is in the instance **and
  not yet picked**: the set still to choose from shrinks as items are picked, so
  ``items`` + ``item_mask`` + ``capacity`` is the whole (Markov) state;
* ``"capacity"``: ``Box(0, 1, (1,), float32)``, remaining capacity / initial capacity.

Action ``Discrete(slots)``: the index of the item to put in the knapsack. The
action mask (``info["action_mask"]``, ``action_masks()``) is ``item_mask`` and
"fits in the remaining capacity": padding, already-picked and too-heavy items
are invalid. The episode terminates when no remaining item fits.

An invalid pick (padding, an item already picked or one too heavy for the
remaining capacity) closes the knapsack: the episode terminates with reward 0
for that step, nothing is added, and ``info["invalid_action"] = True`` (so
``total_value`` is what was packed before it). A policy that ignores the mask
thus forfeits the value it could still have packed, and every episode still
ends within ``n_max`` steps. ``check_actions=True`` raises :class:`ValueError`
instead, to debug an agent's masking; an action outside ``0..slots-1`` (not in
the action space) always raises it.

Reward: the picked item's **raw** integer value (as a float). ``info`` holds, in
the same raw units, ``"optimal_value"`` (exact optimum by dynamic programming
over integer capacities) and ``"total_value"`` (value picked so far), so any
agent can be scored as ``total_value / optimal_value`` at the end.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["KnapsackEnv", "knapsack_optimum"]


def knapsack_optimum(weights: np.ndarray, values: np.ndarray, capacity: int) -> int:
    """Best total value of a subset of items with total weight ``<= capacity`` (0/1 knapsack).

    Dynamic programming over integer capacities, ``O(n * capacity)``.

    Args:
        weights: positive integer weights, shape ``(n,)``.
        values: non-negative integer values, shape ``(n,)``.
        capacity: non-negative integer capacity.

    >>> knapsack_optimum(np.array([3, 4, 5]), np.array([4, 5, 6]), 7)
    9
    """
    best = np.zeros(int(capacity) + 1, dtype=np.int64)  # best[c]: optimum with capacity c
    for w, v in zip(
        np.asarray(weights, dtype=np.int64), np.asarray(values, dtype=np.int64), strict=True
    ):
        if w <= capacity:
            # The right-hand side is evaluated before the assignment, so each item
            # is used at most once (the classic reverse loop, vectorised).
            best[w:] = np.maximum(best[w:], best[: capacity + 1 - w] + v)
    return int(best[capacity])


class KnapsackEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Pick items into a knapsack; instances of ``n_min..n_max`` items, padded to ``slots`` (default ``n_max``).

    Args:
        n_min, n_max: range of the number of items per episode (inclusive).
        slots: the number of item slots (observation rows and actions), ``>= n_max``;
            default ``n_max``. Slots beyond an instance's items are padding, never
            valid: more slots with the same ``n_min..n_max`` raise the share of
            invalid actions without changing the instances (the masking ablation).
        max_weight, max_value: upper ends of the integer weights and values.
        capacity_fraction: capacity as a fraction of the instance's total weight.
        check_actions: when True an invalid pick raises :class:`ValueError` (to
            debug an agent's masking). When False (default) it ends the episode:
            reward 0, terminated, nothing picked, ``info["invalid_action"] = True``.

    Example:
        >>> import gymnasium as gym, maskrl.envs
        >>> env = gym.make("maskrl/Knapsack-v0", n_min=3, n_max=5)
        >>> obs, info = env.reset(seed=0)
        >>> obs["item_features"].shape, info["action_mask"].shape, info["optimal_value"] > 0
        ((5, 2), (5,), True)
    """

    metadata: dict[str, Any] = {"render_modes": []}
    follows_mask_convention = True

    def __init__(
        self,
        n_min: int = 5,
        n_max: int = 20,
        max_weight: int = 20,
        max_value: int = 20,
        capacity_fraction: float = 0.5,
        check_actions: bool = False,
        slots: int | None = None,
    ) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        if slots is None:
            slots = n_max
        if slots < n_max:
            raise ValueError(f"slots must be >= n_max, got slots={slots}, n_max={n_max}")
        if max_weight < 1 or max_value < 1:
            raise ValueError(
                f"max_weight and max_value must be >= 1, got {max_weight}, {max_value}"
            )
        if not 0.0 < capacity_fraction <= 1.0:
            raise ValueError(f"capacity_fraction must be in (0, 1], got {capacity_fraction}")
        self.n_min, self.n_max, self.slots = n_min, n_max, slots
        self.max_weight, self.max_value = max_weight, max_value
        self.capacity_fraction = capacity_fraction
        self._check_actions = check_actions
        high = np.tile(np.array([max_weight, 1.0], dtype=np.float32), (slots, 1))
        self.observation_space = spaces.Dict(  # type: ignore[assignment]
            {
                "item_features": spaces.Box(0.0, high, (slots, 2), np.float32),
                "item_mask": spaces.MultiBinary(slots),
                "capacity": spaces.Box(0.0, 1.0, (1,), np.float32),
            }
        )
        self.action_space = spaces.Discrete(slots)
        # Instance state (set by reset).
        self.weights = np.zeros(slots, dtype=np.int64)
        self.values = np.zeros(slots, dtype=np.int64)
        self.capacity = 0
        self.remaining = 0
        self.available = np.zeros(slots, dtype=np.bool_)  # present and not yet picked
        self.optimal_value = 0
        self.total_value = 0
        self._steps = 0

    def _mask(self) -> np.ndarray:
        return self.available & (self.weights <= self.remaining)

    def _obs(self) -> dict[str, np.ndarray]:
        items = np.zeros((self.slots, 2), dtype=np.float32)
        items[:, 0] = self.weights / self.capacity
        items[:, 1] = self.values / self.max_value
        return {
            "item_features": items,
            "item_mask": self.available.astype(np.int8),
            "capacity": np.array([self.remaining / self.capacity], dtype=np.float32),
        }

    def _info(self, mask: np.ndarray) -> dict[str, Any]:
        return {
            "action_mask": mask,
            "optimal_value": self.optimal_value,
            "total_value": self.total_value,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Draw a new instance; ``info`` holds its mask and exact ``"optimal_value"``."""
        super().reset(seed=seed)
        rng = self.np_random
        n = int(rng.integers(self.n_min, self.n_max + 1))
        self.weights = np.zeros(self.slots, dtype=np.int64)
        self.values = np.zeros(self.slots, dtype=np.int64)
        self.weights[:n] = rng.integers(1, self.max_weight + 1, size=n)
        self.values[:n] = rng.integers(1, self.max_value + 1, size=n)
        total = int(self.weights[:n].sum())
        # At least the lightest item fits, so the first step always has a valid action.
        self.capacity = max(int(self.capacity_fraction * total), int(self.weights[:n].min()))
        self.remaining = self.capacity
        self.available = np.zeros(self.slots, dtype=np.bool_)
        self.available[:n] = True
        self.optimal_value = knapsack_optimum(self.weights[:n], self.values[:n], self.capacity)
        self.total_value = 0
        self._steps = 0
        return self._obs(), self._info(self._mask())

    def step(
        self, action: Any
    ) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        """Pick item ``action``; reward = its raw value; terminated when nothing more fits.

        An invalid pick terminates the episode with reward 0 (see the module doc).

        Raises:
            ValueError: an action outside ``0..slots-1``, or with ``check_actions``
                an invalid pick.
        """
        i = int(action)
        self._steps += 1
        mask = self._mask()
        if not (0 <= i < self.slots and mask[i]):
            why = (
                f"out of range for {self.action_space}" if not 0 <= i < self.slots
                else "padding or already picked" if not self.available[i]
                else f"too heavy (weight {self.weights[i]} > remaining capacity {self.remaining})"
            )  # fmt: skip
            if self._check_actions or not 0 <= i < self.slots:
                env_id = self.spec.id if self.spec is not None else "Knapsack"
                raise ValueError(
                    f"invalid action {i} in env '{env_id}' at step {self._steps}: item {why}"
                )
            # The documented rule: an invalid pick closes the knapsack.
            info = self._info(mask)
            info["invalid_action"] = True
            return self._obs(), 0.0, True, False, info
        self.available[i] = False
        self.remaining -= int(self.weights[i])
        self.total_value += int(self.values[i])
        mask = self._mask()
        return self._obs(), float(self.values[i]), not mask.any(), False, self._info(mask)

    def action_masks(self) -> np.ndarray:
        """Valid picks now: ``(slots,)`` bool, present, not picked and fitting."""
        return self._mask()
