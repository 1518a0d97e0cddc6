"""MinAtar games with the full 6-action space and the game's minimal action set as the mask.

Registered ids (on ``import maskrl.envs``): ``maskrl/MinAtar-Asterix-v0``,
``maskrl/MinAtar-Breakout-v0``, ``maskrl/MinAtar-Freeway-v0``,
``maskrl/MinAtar-Seaquest-v0``, ``maskrl/MinAtar-SpaceInvaders-v0``.

* Action space ``Discrete(6)`` for every game (MinAtar's shared action set
  ``[noop, left, up, right, down, fire]``), so one network can play all of them;
  ``info["action_mask"]`` / ``action_masks()`` is the game's
  ``minimal_action_set()`` (e.g. Breakout: noop, left, right).
* Every one of the 6 actions is accepted. One outside the minimal set does what
  it does in MinAtar: the game ignores it, so it acts as the no-op (Breakout's
  "up" moves nothing; under sticky actions it is the action that repeats).
  ``check_actions=True`` raises :class:`ValueError` on it instead, to debug an
  agent's masking.
* Observation ``Box(0, 1, (C, 10, 10), float32)``, channels first (MinAtar's own
  state is ``(10, 10, C)`` bool); ``C`` is 4 (Breakout), 4 (Asterix),
  7 (Freeway), 10 (Seaquest), 6 (Space Invaders).
* MinAtar's defaults: sticky actions with probability 0.1, difficulty ramping on.
* Time limit: ``max_episode_steps=10_000`` (a ``TimeLimit`` added by
  ``gym.make``; truncation, not termination).
* Randomness comes only from the env's own generator: ``reset(seed=...)`` reseeds
  MinAtar's ``RandomState`` (which drives both the game and sticky actions) from
  ``self.np_random``.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["MINATAR_GAMES", "MINATAR_MAX_EPISODE_STEPS", "MinAtarEnv"]

#: Gymnasium id suffix -> MinAtar module name.
MINATAR_GAMES: dict[str, str] = {
    "Asterix": "asterix",
    "Breakout": "breakout",
    "Freeway": "freeway",
    "Seaquest": "seaquest",
    "SpaceInvaders": "space_invaders",
}

#: The time limit registered for every MinAtar id.
MINATAR_MAX_EPISODE_STEPS = 10_000


class MinAtarEnv(gym.Env[np.ndarray, np.int64]):
    """One MinAtar game as a Gymnasium env following maskrl's mask convention.

    Args:
        game: MinAtar module name (``"breakout"``, ``"space_invaders"``, ...).
        sticky_action_prob: probability of repeating the previous action (MinAtar: 0.1).
        difficulty_ramping: MinAtar's difficulty ramping (default on).
        check_actions: when True, ``step`` raises :class:`ValueError` for an action
            outside the game's minimal set (to debug an agent's masking). When False
            (default) MinAtar executes any of the 6 actions: one outside the minimal
            set is ignored by the game, i.e. it acts as the no-op, as in MinAtar.
        mask_in_info: when False, infos carry no mask. Only for vector envs that
            add the constant mask themselves, batched (:func:`maskrl.envs.make_vec`
            does so: it saves a per-env copy and info entry on every step).
        num_actions: the size of the action space, at least 6 (default 6). The
            actions from 6 up are never valid and act as the no-op, like any action
            outside the minimal set: padding that raises the share of invalid
            actions without changing the game (the masking ablation's axis, as
            Knapsack's ``slots``).

    Observations are ``float32`` arrays of shape ``(C, 10, 10)``; ``info`` after
    ``reset`` and ``step`` holds ``"action_mask"``: a new ``bool`` array ``(num_actions,)``
    each call.

    Raises:
        ValueError: ``num_actions`` not an integer >= 6.

    Example:
        >>> import gymnasium as gym, maskrl.envs
        >>> env = gym.make("maskrl/MinAtar-Breakout-v0")
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, info["action_mask"].nonzero()[0].tolist()
        ((4, 10, 10), [0, 1, 3])
    """

    metadata: dict[str, Any] = {"render_modes": [], "obs_layout": "CHW"}
    follows_mask_convention = True

    def __init__(
        self,
        game: str = "breakout",
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        check_actions: bool = False,
        mask_in_info: bool = True,
        num_actions: int = 6,
    ) -> None:
        from minatar import Environment

        if isinstance(num_actions, bool) or not isinstance(num_actions, (int, np.integer)):
            raise ValueError(f"num_actions must be an integer >= 6, got {num_actions!r}")
        if num_actions < 6:
            raise ValueError(
                f"num_actions must be at least 6 (MinAtar's action set), got {num_actions}"
            )
        self.game = game
        self._game = Environment(
            game, sticky_action_prob=sticky_action_prob, difficulty_ramping=difficulty_ramping
        )
        h, w, c = self._game.state_shape()
        self.observation_space = spaces.Box(0.0, 1.0, (c, h, w), np.float32)
        self.action_space = spaces.Discrete(int(num_actions))
        # The minimal set is constant per game: build the mask once (read-only);
        # each info gets a cheap copy of it.
        mask = np.zeros(self.action_space.n, dtype=np.bool_)
        mask[np.asarray(self._game.minimal_action_set(), dtype=np.int64)] = True
        mask.flags.writeable = False
        self._mask = mask
        self._check_actions = check_actions
        self._mask_in_info = mask_in_info
        self._seeded = False
        self._t = 0  # steps since reset, for error messages

    def _obs(self) -> np.ndarray:
        # (10, 10, C) bool -> (C, 10, 10) float32 in one copy.
        return np.ascontiguousarray(self._game.state().transpose(2, 0, 1), dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode; reseed MinAtar from ``self.np_random`` when seeded."""
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            # Without this MinAtar draws from its own unseeded RandomState.
            self._game.seed(int(self.np_random.integers(0, 2**31 - 1)))
            self._seeded = True
        self._game.reset()
        self._game.last_action = 0
        self._t = 0
        # A fresh copy per call: users (and Gymnasium's checker) keep infos, so no two
        # calls may share an array; copying 6 booleans is cheaper than rebuilding them.
        return self._obs(), ({"action_mask": self._mask.copy()} if self._mask_in_info else {})

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply ``action`` (``0..num_actions-1``); the returned info carries the (constant) mask.

        An action outside the minimal set acts as the no-op (MinAtar's own rule; a
        padding action from 6 up is played as action 0, the no-op); with
        ``check_actions`` it raises :class:`ValueError` instead.

        Raises:
            ValueError: an action outside the action space, or with ``check_actions``
                an action outside the minimal set.
        """
        a = int(action)
        self._t += 1
        n = self._mask.shape[0]
        if not 0 <= a < n:
            self._invalid(a, f"the action space is Discrete({n})")
        if self._check_actions and not self._mask[a]:
            self._invalid(
                a, f"the game's minimal action set is {np.flatnonzero(self._mask).tolist()}"
            )
        reward, terminal = self._game.act(a if a < 6 else 0)
        info = {"action_mask": self._mask.copy()} if self._mask_in_info else {}
        return self._obs(), float(reward), bool(terminal), False, info

    def _invalid(self, a: int, why: str) -> None:
        env_id = self.spec.id if self.spec is not None else f"MinAtar {self.game}"
        raise ValueError(f"invalid action {a} in env '{env_id}' at step {self._t}: {why}")

    @property
    def constant_action_mask(self) -> np.ndarray:
        """The mask, which never changes for a MinAtar game (read-only ``bool`` ``(num_actions,)``).

        Its presence tells :func:`maskrl.envs.make_vec` that the env accepts
        ``mask_in_info`` and ``check_actions`` and that masks may be batched at the
        vector level.
        """
        return self._mask

    def action_masks(self) -> np.ndarray:
        """The game's minimal action set as a read-only ``bool`` mask of shape ``(num_actions,)``."""
        return self._mask
