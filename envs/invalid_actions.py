"""The masking ablation at the env level: what an agent that does not mask meets.

:class:`InvalidActionPolicy` wraps an env following maskrl's mask convention
(any other env is first wrapped in :class:`~maskrl.envs.ActionMaskWrapper`) and
applies one of three rules to an action outside the mask, as in Huang & Ontañón
(2022, "A Closer Look at Invalid Action Masking in Policy Gradient Algorithms"):

The mode decides the mask the agent sees (``info["action_mask"]``,
``action_masks()``) and what an action outside the true mask does:

* ``"mask"``: the agent sees the true mask. An invalid action raises
  :class:`ValueError` before the env sees it: a masked agent never takes one,
  so it is a bug.
* ``"penalty"``: the agent sees all actions as valid (it samples over all of
  them). An invalid action is a no-op with reward ``penalty``; the episode goes on.
* ``"none"``: the agent sees all actions as valid. An invalid action is passed
  to the env, which applies its own rule (see below).

**The no-op of ``penalty``**, per env (``noop_action``):

* turn-based envs (Knapsack, the board games, Recall, any env without a clock):
  the env is **not stepped**. The observation, mask and ``info`` of the previous
  step are returned again, so the state is exactly unchanged.
* real-time games (``maskrl/MinAtar-*``, ``maskrl/Atari-*``): the env is stepped
  with the game's no-op, action 0 (NOOP, in every game's minimal set), and the
  reward is the game's reward for that frame plus ``penalty``. Freezing the
  world would be no sound no-op there: the agent could stop the clock by acting
  invalidly.

``noop_action="auto"`` (default) picks 0 for those two families and "not
stepped" for every other env; ``None`` or an int sets it.

**Time limits.** A penalised step counts towards the episode's time limit, even
when the env is not stepped (so its own ``TimeLimit`` does not see it): the
wrapper counts every step and truncates at ``max_episode_steps`` (default: the
env's registered ``env.spec.max_episode_steps``, none if it has none).

**The env's own rule** (mode ``none``): MinAtar and ALE play an invalid action
as the game's equivalent action (the no-op for an input the game ignores);
ConnectFour and TicTacToe end the game as a loss (-1); Knapsack ends the
episode with reward 0; Recall ignores it before the answer and scores it 0 as
the answer. For a no-op with reward 0 instead, use ``penalty`` with
``penalty=0``.

**Metrics.** In every mode each ``info`` (reset and step) carries
``"true_action_mask"``, the env's own mask of the returned observation, and
each step's ``info`` carries ``"invalid_action"`` (bool): whether the action just
taken was outside the true mask. Invalid-action rates are counted from those,
never from ``info["action_mask"]`` (all-valid in modes ``penalty`` and
``none``: the agent samples over all actions, as in the ablation).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from maskrl.envs.masks import (
    ActionMaskWrapper,
    _has_convention_marker,
    action_is_valid,
    env_label,
    mask_size,
    validate_mask,
)

__all__ = ["DEFAULT_NOOP_ACTIONS", "INVALID_ACTION_MODES", "InvalidActionPolicy"]

InvalidActionMode = Literal["mask", "penalty", "none"]

#: The modes of :class:`InvalidActionPolicy`.
INVALID_ACTION_MODES: tuple[str, ...] = ("mask", "penalty", "none")

#: id prefix -> the action ``noop_action="auto"`` steps for an invalid action in
#: mode ``penalty`` (ids with no entry are not stepped).
DEFAULT_NOOP_ACTIONS: dict[str, int] = {"maskrl/MinAtar-": 0, "maskrl/Atari-": 0}


def _default_noop(env: gym.Env[Any, Any]) -> int | None:
    spec = getattr(env, "spec", None)
    env_id = getattr(spec, "id", None) or ""
    return next((a for p, a in DEFAULT_NOOP_ACTIONS.items() if env_id.startswith(p)), None)


class InvalidActionPolicy(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Apply the ``mask`` / ``penalty`` / ``none`` rule to actions outside the mask.

    See the module doc for what each mode does, which no-op ``penalty`` uses,
    and the ``info`` keys for metrics.

    Args:
        env: the env (Discrete, MultiDiscrete or MultiBinary actions; one that does
            not follow the mask convention is wrapped in
            :class:`~maskrl.envs.ActionMaskWrapper` first).
        mode: ``"mask"`` (default), ``"penalty"`` or ``"none"``.
        penalty: the reward of an invalid action in mode ``penalty`` (usually
            negative; 0 makes it a free no-op). Must be 0 in the other modes.
        noop_action: mode ``penalty`` only: ``"auto"`` (default; see the module
            doc), ``None`` (do not step the env) or the ``Discrete`` action to step
            instead (it must be valid whenever it is used).
        max_episode_steps: the time limit every step counts towards; default the
            env's registered limit (``env.spec.max_episode_steps``), if any.

    Raises:
        ValueError: an unknown mode, a non-finite penalty or one given outside mode
            ``penalty``, an explicit ``noop_action`` outside mode ``penalty`` or not
            in a ``Discrete`` action space, a ``max_episode_steps`` below 1; at
            ``step``: an action outside the action space (every mode), an invalid
            action in mode ``mask``, a designated no-op that is not valid in the
            current state.
        RuntimeError: a ``step`` after the episode ended, before ``reset``.

    Example:
        >>> import gymnasium as gym, maskrl.envs
        >>> env = InvalidActionPolicy(gym.make("maskrl/Knapsack-v0"), "penalty", penalty=-1.0)
        >>> obs, info = env.reset(seed=0)
        >>> bad = int(np.flatnonzero(~info["true_action_mask"])[0])
        >>> _, reward, terminated, _, info = env.step(bad)
        >>> reward, terminated, info["invalid_action"]
        (-1.0, False, True)
    """

    follows_mask_convention = True

    def __init__(
        self,
        env: gym.Env[Any, Any],
        mode: InvalidActionMode = "mask",
        *,
        penalty: float = 0.0,
        noop_action: int | Literal["auto"] | None = "auto",
        max_episode_steps: int | None = None,
    ) -> None:
        if mode not in INVALID_ACTION_MODES:
            raise ValueError(
                f"unknown invalid-action mode {mode!r}; choose one of {list(INVALID_ACTION_MODES)}"
            )
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)):
            raise ValueError(f"penalty must be a number, got {type(penalty).__name__}")
        if not math.isfinite(penalty):
            raise ValueError(f"penalty must be finite, got {penalty}")
        if mode != "penalty" and penalty != 0:
            raise ValueError(f"penalty={penalty} applies only to mode 'penalty', not {mode!r}")
        if mode != "penalty" and noop_action not in ("auto", None):
            raise ValueError(f"noop_action applies only to mode 'penalty', not {mode!r}")
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, (int, np.integer))
            or max_episode_steps < 1
        ):
            raise ValueError(
                f"max_episode_steps must be an integer >= 1, got {max_episode_steps!r}"
            )
        # Recorded so that env.spec can rebuild the stack (gym.make(env.spec)).
        gym.utils.RecordConstructorArgs.__init__(
            self, mode=mode, penalty=penalty, noop_action=noop_action,
            max_episode_steps=max_episode_steps,
        )  # fmt: skip
        if not _has_convention_marker(env):
            env = ActionMaskWrapper(env)
        gym.Wrapper.__init__(self, env)
        self.mode: InvalidActionMode = mode
        self.penalty = float(penalty)
        space = env.action_space
        self._n = mask_size(space)
        noop = _default_noop(env) if noop_action == "auto" else noop_action
        if noop is not None:
            if not isinstance(space, spaces.Discrete):
                raise ValueError(f"noop_action needs a Discrete action space, got {space}")
            if (
                isinstance(noop, bool)
                or not isinstance(noop, (int, np.integer))
                or not space.contains(int(noop))
            ):
                raise ValueError(f"noop_action {noop!r} is not an action of {space}")
            noop = int(noop)
        #: What ``penalty`` steps for an invalid action (None: the env is not stepped).
        self.noop_action: int | None = noop if mode == "penalty" else None
        spec = getattr(env, "spec", None)
        #: The time limit every step counts towards (None: no limit).
        self.max_episode_steps: int | None = (
            int(max_episode_steps)
            if max_episode_steps is not None
            else getattr(spec, "max_episode_steps", None)
        )
        self._true_mask: np.ndarray | None = None
        self._last_obs: Any = None
        self._last_info: dict[str, Any] = {}
        self._elapsed = 0
        self._done = True

    def _read_mask(self, info: dict[str, Any], done: bool) -> np.ndarray:
        raw = info.get("action_mask")
        if raw is None:  # e.g. MinAtar built for a vector env's constant-mask path
            raw = self.env.get_wrapper_attr("action_masks")()
        mask = validate_mask(
            raw, self.env.action_space, env_id=env_label(self.env), step=self._elapsed,
            allow_empty=done,
        )  # fmt: skip
        if mask is raw:
            mask = mask.copy()
        mask.flags.writeable = False
        return mask

    def _finish(self, obs: Any, info: dict[str, Any], done: bool) -> dict[str, Any]:
        """Record the new state's mask and return the info the agent sees."""
        self._true_mask = self._read_mask(info, done)
        info = dict(info)
        info["true_action_mask"] = self._true_mask
        info["action_mask"] = self._agent_mask()
        self._last_obs, self._last_info = obs, info
        self._done = done
        return info

    def _agent_mask(self) -> np.ndarray:
        # A new array each time: what an env returns must not share data with
        # what it returned before (users keep it; Gymnasium's checker tests it).
        if self.mode == "mask":
            mask = self._true_mask.copy()  # type: ignore[union-attr]
        else:
            mask = np.ones(self._n, dtype=np.bool_)
        mask.flags.writeable = False
        return mask

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env; ``info`` holds the agent's mask and ``"true_action_mask"``."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._elapsed = 0
        return obs, self._finish(obs, info, done=False)

    def _check_in_space(self, action: Any) -> None:
        space = self.env.action_space
        if isinstance(space, spaces.Discrete):
            ok = not isinstance(action, bool) and space.contains(int(action))
        else:
            ok = space.contains(np.asarray(action, dtype=space.dtype))
        if not ok:
            raise ValueError(
                f"invalid action {action!r} in env '{env_label(self.env)}' at step "
                f"{self._elapsed + 1}: not in {space}"
            )

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step with ``action``, applying the mode's rule if it is outside the true mask."""
        if self._done or self._true_mask is None:
            raise RuntimeError(f"env '{env_label(self.env)}': the episode is over: call reset()")
        self._check_in_space(action)
        invalid = not action_is_valid(action, self._true_mask, self.env.action_space)
        self._elapsed += 1
        limit = self.max_episode_steps
        out_of_time = limit is not None and self._elapsed >= limit
        if invalid and self.mode == "mask":
            allowed = np.flatnonzero(self._true_mask).tolist()
            raise ValueError(
                f"invalid action {action!r} in env '{env_label(self.env)}' at step "
                f"{self._elapsed} in mode 'mask': the mask allows entries {allowed} (a masked "
                "agent never takes it; use mode 'penalty' or 'none' to allow it)"
            )
        if invalid and self.mode == "penalty" and self.noop_action is None:
            # Not stepped: the state, and so its observation, mask and info, are
            # unchanged; returned as copies (never data shared with an earlier return).
            info = copy.deepcopy(self._last_info)
            info["invalid_action"] = True
            self._done = out_of_time
            return copy.deepcopy(self._last_obs), self.penalty, False, out_of_time, info
        reward: SupportsFloat
        to_env = action
        if invalid and self.mode == "penalty":
            if not self._true_mask[self.noop_action]:
                raise ValueError(
                    f"the designated no-op action {self.noop_action} of env "
                    f"'{env_label(self.env)}' is not valid at step {self._elapsed}; pass "
                    "noop_action=None (do not step the env) or a valid action"
                )
            to_env = self.noop_action
        obs, reward, terminated, truncated, info = self.env.step(to_env)
        if invalid and self.mode == "penalty":
            reward = float(reward) + self.penalty
        truncated = bool(truncated) or (out_of_time and not terminated)
        info = self._finish(obs, info, done=bool(terminated or truncated))
        info["invalid_action"] = invalid
        return obs, reward, terminated, truncated, info

    @property
    def constant_action_mask(self) -> None:
        """Always None: the agent's mask is never taken as a constant of the env.

        :func:`maskrl.envs.make_vec` writes a constant mask (MinAtar's minimal set,
        found through this attribute anywhere in the wrapper stack) straight into
        the batched infos; over this wrapper that would replace the all-valid masks
        of modes ``penalty`` and ``none`` with the true ones. Answering None here keeps every
        mask, and the metrics keys, coming from this wrapper's own infos.
        """
        return None

    def action_masks(self) -> np.ndarray:
        """The agent's mask now: the true one in mode ``mask``, else all-valid (read-only).

        Raises:
            RuntimeError: before the first ``reset``.
        """
        if self._true_mask is None:
            raise RuntimeError(f"env '{env_label(self.env)}': call reset() before action_masks()")
        return self._agent_mask()

    def true_action_mask(self) -> np.ndarray:
        """The env's own mask now, in every mode (read-only).

        Raises:
            RuntimeError: before the first ``reset``.
        """
        if self._true_mask is None:
            raise RuntimeError(
                f"env '{env_label(self.env)}': call reset() before true_action_mask()"
            )
        return self._true_mask
