"""Action masks in maskrl's convention, and a wrapper that produces them from any source.

The convention (README.md, "The one mask convention"; the reasons behind it are in
docs/design-notes.md, "Masks"): a mask is a boolean numpy array, ``True`` = valid.

* ``Discrete(n)``: shape ``(n,)``; entry ``k`` is action ``start + k``.
* ``MultiDiscrete(nvec)`` (1-D ``nvec``): the per-dimension masks concatenated,
  shape ``(sum(nvec),)``.
* ``MultiBinary(n)`` (integer ``n``): per-bit ``[can-be-0, can-be-1]`` pairs,
  shape ``(2 * n,)``: entries ``2*i`` and ``2*i + 1`` say whether bit ``i`` may be
  0 and 1. This is exactly what sb3-contrib's ``MaskableBernoulliDistribution``
  expects (a multi-categorical over ``[2] * n``).

A Gymnasium env following the convention puts the mask of the observation it
returns in ``info["action_mask"]`` after every ``reset`` and ``step``, and answers
``action_masks()`` with the same array, so sb3-contrib's ``MaskablePPO`` works
with it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "ActionMaskWrapper",
    "MaskFn",
    "action_is_valid",
    "env_label",
    "mask_size",
    "validate_mask",
]

MaskFn = Callable[[gym.Env], Any]
"""A user mask function: ``mask_fn(env) -> array-like`` of the current state's mask.

It receives the *wrapped* env (the one passed to :class:`ActionMaskWrapper`) and is
called after every ``reset`` and ``step``."""

#: Marker attribute: an env (or a wrapper in its stack) that sets it to ``True``
#: already puts a validated boolean mask in ``info["action_mask"]`` and answers
#: ``action_masks()``; :func:`maskrl.envs.make_vec` then does not wrap it again.
CONVENTION_ATTR = "follows_mask_convention"


def mask_size(action_space: spaces.Space[Any]) -> int:
    """Length of the flat mask for ``action_space``.

    >>> mask_size(spaces.Discrete(6)), mask_size(spaces.MultiDiscrete([3, 2]))
    (6, 5)
    >>> mask_size(spaces.MultiBinary(4))
    8

    Raises:
        ValueError: for an action space without a mask layout (e.g. ``Box``).
    """
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        if action_space.nvec.ndim != 1:
            raise ValueError(
                f"MultiDiscrete with nvec of shape {action_space.nvec.shape} is not supported; "
                "flatten it to a 1-D nvec"
            )
        return int(action_space.nvec.sum())
    if isinstance(action_space, spaces.MultiBinary):
        if not isinstance(action_space.n, (int, np.integer)):
            raise ValueError(
                f"MultiBinary({action_space.n}) with a multi-dimensional shape is not supported; "
                "flatten it to MultiBinary(n)"
            )
        return 2 * int(action_space.n)
    raise ValueError(
        f"action masks need a Discrete, MultiDiscrete or MultiBinary action space, got {action_space}"
    )


def env_label(env: gym.Env[Any, Any]) -> str:
    """The env's registered id (``env.spec.id``) or, failing that, its class name."""
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(env.unwrapped).__name__


def _segments(action_space: spaces.Space[Any]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each dimension's block in the flat mask."""
    if isinstance(action_space, spaces.Discrete):
        return [(0, int(action_space.n))]
    if isinstance(action_space, spaces.MultiDiscrete):
        stops = np.cumsum(action_space.nvec)
        return [(int(s - n), int(s)) for s, n in zip(stops, action_space.nvec, strict=True)]
    if isinstance(action_space, spaces.MultiBinary):
        return [(2 * i, 2 * i + 2) for i in range(int(action_space.n))]  # type: ignore[arg-type]
    raise ValueError(f"unsupported action space {action_space}")


def _where(env_id: str, env_index: int | None, step: int) -> str:
    """``env 'X' (index i of the vector env) at step t``: where a mask error happened."""
    index = "" if env_index is None else f" (index {env_index} of the vector env)"
    return f"env '{env_id}'{index} at step {step}"


def validate_mask(
    mask: Any,
    action_space: spaces.Space[Any],
    *,
    env_id: str = "<env>",
    step: int = 0,
    allow_empty: bool = False,
    env_index: int | None = None,
) -> np.ndarray:
    """Check a mask against ``action_space`` and return it as a boolean array.

    The dtype rule is the package's one rule (:func:`maskrl.as_bool_mask` and
    :class:`maskrl.MaskedCategorical` follow it too): **boolean, or integers that
    are all 0 or 1; floating-point masks are refused**, even when they hold only
    0.0 and 1.0. A float mask is usually a probability vector or a score passed by
    mistake, and accepting the exact 0/1 case would make such a bug pass silently
    until the first fractional value.

    Args:
        mask: array-like; boolean, or integers holding only 0 and 1
            (e.g. Gymnasium Taxi's ``int8`` masks, PettingZoo's ``int8`` masks).
        action_space: the env's action space (decides the expected shape).
        env_id: named in error messages.
        step: step number since the last reset (0 = the reset), named in errors.
        allow_empty: accept a mask with no valid action (the mask of a terminal
            observation, e.g. a finished board game, where no action follows).
        env_index: the env's index in a vector env, named in error messages
            (None: not in a vector env, or unknown).

    Returns:
        ``np.ndarray`` of dtype ``np.bool_`` and shape ``(mask_size(action_space),)``
        (the input itself when it already is one; never a view of a non-bool input).

    Raises:
        ValueError: wrong shape (expected vs got), a floating-point (or other
            non-boolean, non-integer) dtype, integers other than 0/1, or a
            dimension with no valid action (naming the MultiDiscrete dimension or
            MultiBinary bit). An all-invalid mask is an environment bug: sampling
            from it could only pick an invalid action.

    >>> validate_mask(np.array([0, 1, 1], dtype=np.int8), spaces.Discrete(3))
    array([False,  True,  True])
    """
    where = _where(env_id, env_index, step)
    arr = np.asarray(mask)
    n = mask_size(action_space)
    if arr.shape != (n,):
        raise ValueError(
            f"action mask of {where} has shape {arr.shape}, expected ({n},) for {action_space}"
        )
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iu":
            raise ValueError(
                f"action mask of {where} has dtype {arr.dtype}; a mask must be boolean "
                "(True = valid) or integers 0/1, never floating point or other types"
            )
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(
                f"action mask of {where} has dtype {arr.dtype} and is not 0/1 "
                f"(values {np.unique(arr)[:5].tolist()}); a mask must be boolean (True = valid) "
                "or integers 0/1"
            )
        arr = arr.astype(np.bool_)
    if allow_empty:
        return arr
    if isinstance(action_space, spaces.Discrete):
        if not arr.any():
            raise ValueError(f"action mask of {where} has no valid action at all")
    else:
        for dim, (lo, hi) in enumerate(_segments(action_space)):
            if not arr[lo:hi].any():
                what = "bit" if isinstance(action_space, spaces.MultiBinary) else "dimension"
                raise ValueError(
                    f"action mask of {where} has no valid action in {what} {dim} "
                    f"(mask entries {lo}:{hi})"
                )
    return arr


def action_is_valid(action: Any, mask: np.ndarray, action_space: spaces.Space[Any]) -> bool:
    """Whether ``action`` is allowed by the flat boolean ``mask`` of ``action_space``.

    >>> action_is_valid(1, np.array([True, False]), spaces.Discrete(2))
    False
    """
    if isinstance(action_space, spaces.Discrete):
        k = int(action) - int(action_space.start)
        return 0 <= k < mask.shape[0] and bool(mask[k])
    a = np.asarray(action).reshape(-1)
    if isinstance(action_space, spaces.MultiDiscrete):
        offsets = np.concatenate(([0], np.cumsum(action_space.nvec)[:-1]))
        k = offsets + a - action_space.start
        ok_range = np.all((a >= action_space.start) & (a < action_space.start + action_space.nvec))
        return bool(ok_range) and bool(mask[k].all())
    if isinstance(action_space, spaces.MultiBinary):
        if not np.all((a == 0) | (a == 1)):
            return False
        return bool(mask[2 * np.arange(a.shape[0]) + a.astype(np.int64)].all())
    raise ValueError(f"unsupported action space {action_space}")


def _has_convention_marker(env: gym.Env[Any, Any]) -> bool:
    try:
        return bool(env.get_wrapper_attr(CONVENTION_ATTR))
    except AttributeError:
        return False


class ActionMaskWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Put the env's action mask in ``info["action_mask"]`` and ``action_masks()``.

    The mask source is found in this order (the first that applies wins):

    1. ``mask_fn(env)``, when given;
    2. a ``Dict`` observation space with an ``"action_mask"`` key (PettingZoo
       classic style). The agent then gets the rest of the observation: the
       single other entry itself when there is one (e.g. ``"observation"``),
       else a ``Dict`` without the mask key;
    3. the env's own ``action_masks()`` method (anywhere in its wrapper stack);
    4. ``info["action_mask"]`` from ``reset``/``step`` (Gymnasium's Taxi gives
       ``int8``). This source can only be seen in an info, so an env with none of
       1-4 raises :class:`ValueError` at its first ``reset``
       (:func:`maskrl.envs.make_vec` probes it at construction).

    Every mask is validated (:func:`validate_mask`): shape, boolean or integer
    0/1 dtype (floats are refused), at least one valid action (per dimension) —
    except for the mask of a terminal or truncated observation, after which no
    action is taken; errors name the env id, its index in the vector env (when
    ``env_index`` is given) and the step number since the reset (0 = the reset
    itself). Masks handed out are read-only boolean arrays of shape
    ``(mask_size(action_space),)``.

    Args:
        env: the env to wrap (Discrete, MultiDiscrete or MultiBinary actions).
        mask_fn: optional ``mask_fn(env) -> array`` (see :data:`MaskFn`).
        check_actions: when True, ``step`` raises :class:`ValueError` for an
            action the current mask forbids, naming env id and step, instead of
            passing it on (to debug an agent's masking; one array lookup per step).
            When False (default) every action of the action space is passed on and
            the env decides what an invalid one does (Taxi penalises it, ALE plays
            it as its equivalent minimal action), as Gymnasium's and SB3's env
            checkers and agents that do not mask need.
        env_index: the env's index in a vector env (:func:`maskrl.envs.make_vec`
            passes it), named in every error so that the failing slot can be found.

    Example:
        >>> import gymnasium as gym
        >>> env = ActionMaskWrapper(gym.make("Taxi-v4"))
        >>> obs, info = env.reset(seed=0)
        >>> info["action_mask"].dtype, info["action_mask"].shape
        (dtype('bool'), (6,))
    """

    follows_mask_convention = True

    def __init__(
        self,
        env: gym.Env[Any, Any],
        mask_fn: MaskFn | None = None,
        *,
        check_actions: bool = False,
        env_index: int | None = None,
    ) -> None:
        super().__init__(env)
        self._n = mask_size(env.action_space)  # raises for unsupported spaces
        self._mask_fn = mask_fn
        self._check_actions = check_actions
        self._env_index = env_index
        self._mask: np.ndarray | None = None
        self._steps = 0
        self._obs_key: str | None = None  # set when the mask rides in a Dict observation
        self._rest_keys: tuple[str, ...] = ()
        #: Where the masks come from: "mask_fn", "observation", "method" or "info".
        self.mask_source: str
        obs_space = env.observation_space
        if mask_fn is not None:
            self.mask_source = "mask_fn"
        elif isinstance(obs_space, spaces.Dict) and "action_mask" in obs_space.spaces:
            self.mask_source = "observation"
            rest = {k: s for k, s in obs_space.spaces.items() if k != "action_mask"}
            if not rest:
                raise ValueError(
                    f"env '{self._env_id}' has a Dict observation with only an 'action_mask' key"
                )
            self._rest_keys = tuple(rest)
            if len(rest) == 1:
                self._obs_key = next(iter(rest))
                self.observation_space = rest[self._obs_key]
            else:
                self.observation_space = spaces.Dict(rest)
        elif self._inner_method() is not None:
            self.mask_source = "method"
        else:
            self.mask_source = "info"

    @property
    def _env_id(self) -> str:
        # Looked up when needed: gym.make sets the spec only after the entry point returns.
        return env_label(self.env)

    def _where(self, step: int) -> str:
        return _where(self._env_id, self._env_index, step)

    def _inner_method(self) -> Callable[[], Any] | None:
        try:
            method = self.env.get_wrapper_attr("action_masks")
        except AttributeError:
            return None
        return method if callable(method) else None

    def _no_source_error(self) -> ValueError:
        return ValueError(
            f"env '{self._env_id}' has no action-mask source: it has no action_masks() method, "
            "no 'action_mask' key in a Dict observation and no info['action_mask']. Give one with "
            "ActionMaskWrapper(env, mask_fn=lambda env: ...) (or make_vec(..., mask_fn=...)), "
            "returning a boolean array of shape "
            f"({self._n},) for {self.env.action_space}"
        )

    def _extract(
        self, obs: Any, info: dict[str, Any], done: bool = False
    ) -> tuple[Any, np.ndarray]:
        """Read, validate and store the mask; return the agent's observation and the mask.

        ``done``: the observation is terminal (or truncated), so no action follows it
        and a mask without any valid action is accepted.
        """
        source = self.mask_source
        if source == "mask_fn":
            raw = self._mask_fn(self.env)  # type: ignore[misc]
        elif source == "observation":
            raw = obs["action_mask"]
            obs = (
                obs[self._obs_key]
                if self._obs_key is not None
                else {k: obs[k] for k in self._rest_keys}
            )
        elif source == "method":
            raw = self.env.get_wrapper_attr("action_masks")()
        else:
            if "action_mask" not in info:
                raise self._no_source_error()
            raw = info["action_mask"]
        mask = validate_mask(
            raw,
            self.env.action_space,
            env_id=self._env_id,
            step=self._steps,
            allow_empty=done,
            env_index=self._env_index,
        )
        if mask is raw:
            # Never hand out (or keep) an array the env may mutate later.
            mask = mask.copy()
        mask.flags.writeable = False
        self._mask = mask
        return obs, mask

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the env; ``info["action_mask"]`` is the reset observation's mask."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._steps = 0
        obs, mask = self._extract(obs, info)
        info = dict(info)
        info["action_mask"] = mask
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env; ``info["action_mask"]`` is the returned observation's mask.

        Raises:
            ValueError: with ``check_actions``, for an action the current mask forbids
                (without it, the action goes to the env unchanged).
        """
        if self._check_actions:
            mask = self.action_masks()
            if not action_is_valid(action, mask, self.env.action_space):
                raise ValueError(
                    f"invalid action {action!r} in {self._where(self._steps + 1)}: "
                    f"the mask allows entries {np.flatnonzero(mask).tolist()}"
                )
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        obs, mask = self._extract(obs, info, done=bool(terminated or truncated))
        info = dict(info)
        info["action_mask"] = mask
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """The current observation's mask, read-only ``np.bool_`` of shape ``(n,)``.

        Raises:
            RuntimeError: before the first ``reset``.
        """
        if self._mask is None:
            raise RuntimeError(f"env '{self._env_id}': call reset() before action_masks()")
        return self._mask
