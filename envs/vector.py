"""Vector envs whose infos carry batched action masks, for one game or several.

* :func:`make_vec` — ``num_envs`` copies of one id; ``infos["action_mask"]`` is
  ``(num_envs, n)`` bool after ``reset`` and every ``step``.
* :func:`make_multigame_vec` — slots spread round-robin over several ids, one
  union action space, the slot's game id in the observation and in the infos,
  per-slot episode statistics (:func:`episodes_by_game` reads them).

Masks always belong to the observation they arrive with, across autoresets, in
both of Gymnasium's autoreset modes:

* ``"same_step"`` (maskrl's default): when slot ``i`` ends, the returned
  ``obs[i]`` is already the next episode's reset observation and
  ``infos["action_mask"][i]`` its mask; the last observation of the finished
  episode is ``infos["final_obs"][i]`` and its step info (mask included) is in
  ``infos["final_info"]`` (batched like ``infos``, valid where
  ``infos["final_info"]["_action_mask"]`` is True).
* ``"next_step"`` (Gymnasium's default): the step that ends an episode returns
  its last observation and mask; the next ``step`` ignores the action for that
  slot, resets it and returns the reset observation with its mask.

The envs are built from ids inside the worker (``vectorization="async"``
pickles only the id and keyword arguments; unpickling the builder imports
``maskrl.envs``, which registers the ``maskrl/...`` ids in the subprocess too).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import (
    AsyncVectorEnv,
    AutoresetMode,
    SyncVectorEnv,
    VectorEnv,
    VectorWrapper,
)
from gymnasium.wrappers import RecordEpisodeStatistics

from maskrl.envs.masks import ActionMaskWrapper, MaskFn, _has_convention_marker, mask_size
from maskrl.envs.registration import install_hint, missing_dependency, optional_extra

__all__ = [
    "GameSlotWrapper",
    "episodes_by_game",
    "game_observation",
    "make_multigame_vec",
    "make_vec",
    "multigame_layout",
]

Vectorization = Literal["sync", "async"]
AutoresetName = Literal["same_step", "next_step"]

#: Wraps one env of a vector env (``make_vec(..., wrapper=...)``); must pickle for "async".
EnvWrapper = Callable[[gym.Env[Any, Any]], gym.Env[Any, Any]]

_AUTORESET = {"same_step": AutoresetMode.SAME_STEP, "next_step": AutoresetMode.NEXT_STEP}


def _autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    if isinstance(mode, AutoresetMode) and mode in _AUTORESET.values():
        return mode
    if mode in _AUTORESET:
        return _AUTORESET[mode]  # type: ignore[index]
    raise ValueError(f"autoreset_mode must be 'same_step' or 'next_step', got {mode!r}")


def _check_id(env_id: str) -> str:
    """Check an env id before anything is built; return the registered id it names.

    Accepts Gymnasium's ``"module:id"`` form, as ``gym.make`` does: ``module`` is
    imported here (importing it registers ``id``), so a user's own env can be
    named on the command line, e.g. ``--env mypackage.envs:MyGame-v0``. The
    optional dependencies of maskrl's own ids are looked up without importing
    them, so a missing extra is reported before any import can fail.

    Returns:
        The id without its module part (``"MyGame-v0"`` for ``"mypackage.envs:MyGame-v0"``).

    Raises:
        ValueError: one line each for: not a string; a malformed ``module:id``; a
            module that cannot be imported (naming it); an unknown id (with close
            matches); an id whose optional dependency is not installed (naming the
            maskrl extra to install).
    """
    if not isinstance(env_id, str):
        raise ValueError(f"an env id must be a string, got {type(env_id).__name__} {env_id!r}")
    module, colon, name = env_id.rpartition(":")
    if colon:
        # gym.make splits on every colon, so exactly one is allowed; the module
        # part must be an absolute dotted name (import_module rejects relative ones
        # with a TypeError, not an ImportError).
        if (
            not name
            or env_id.count(":") != 1
            or not all(part.isidentifier() for part in module.split("."))
        ):
            raise ValueError(
                f"malformed env id {env_id!r}: the module form is 'module:id' with an "
                "importable module name and one colon, e.g. 'mypackage.envs:MyGame-v0'"
            )
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(
                f"cannot import module {module!r} of env id {env_id!r} ({err}); the "
                "'module:id' form imports the module that registers the id, so it must be "
                "installed or on PYTHONPATH"
            ) from err
    try:
        gym.spec(name)
    except gym.error.Error as err:
        close = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        where = (
            f"module {module!r} was imported but did not register it"
            if colon
            else "maskrl's ids are registered by `import maskrl.envs` (see "
            "maskrl.envs.registered_ids()); register your own env with "
            "gymnasium.register(...) first, or name the module that registers it as "
            "'module:id'"
        )
        reason = str(err).rstrip(".")
        raise ValueError(f"unknown env id {name!r} ({reason}).{hint} {where}.") from err
    missing = missing_dependency(name)
    if missing is not None:
        raise ValueError(missing)
    return name


def _check_unique(env_ids: Sequence[str]) -> None:
    """Raise a ValueError naming any game listed twice (it would train as two games)."""
    seen: dict[str, str] = {}
    for env_id in env_ids:
        # "module:id" and "id" name the same game.
        key = env_id.rpartition(":")[2] if isinstance(env_id, str) else env_id
        if key in seen:
            same = "" if seen[key] == env_id else f" (as {seen[key]!r} and {env_id!r})"
            raise ValueError(
                f"env id {key!r} is listed twice{same} in {list(env_ids)!r}: each game may "
                "appear once (use more envs, not repeated ids, to give a game more slots)"
            )
        seen[key] = env_id


def _make_masked_env(
    env_id: str,
    mask_fn: MaskFn | None,
    env_kwargs: Mapping[str, Any],
    seed: int | None = None,
    index: int | None = None,
    wrapper: EnvWrapper | None = None,
) -> gym.Env[Any, Any]:
    """Build one env of ``env_id`` following the mask convention (wrapping it if needed).

    With ``seed``, the env is reset once with it, so that the vector env's first
    ``reset()`` without a seed continues from a seeded generator. ``index`` is the
    env's slot in the vector env, named in the wrapper's mask errors. ``wrapper``
    (e.g. :class:`~maskrl.envs.InvalidActionPolicy`) wraps the masked env, before
    the seeding reset.

    Raises:
        ValueError: an installed optional dependency of the id fails to import
            (e.g. a broken ale-py or OpenCV build): one line naming the extra.
    """
    try:
        env = gym.make(env_id, **env_kwargs)
    except ImportError as err:
        extra = optional_extra(env_id)
        if extra is None:
            raise
        raise ValueError(
            f"{env_id} needs maskrl's {extra!r} extra, and importing it failed ({err}): "
            f"{install_hint(extra)}"
        ) from err
    if mask_fn is not None or not _has_convention_marker(env):
        env = ActionMaskWrapper(env, mask_fn=mask_fn, env_index=index)
    if wrapper is not None:
        env = wrapper(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def _probe(
    env_id: str,
    mask_fn: MaskFn | None,
    env_kwargs: Mapping[str, Any],
    wrapper: EnvWrapper | None = None,
) -> gym.Env[Any, Any]:
    """One env of ``env_id``, checked to have a mask source (raises the ValueError otherwise)."""
    env = _make_masked_env(env_id, mask_fn, env_kwargs, wrapper=wrapper)
    if isinstance(env, ActionMaskWrapper) and env.mask_source == "info":
        # An info mask can only be seen after a reset: fail now, not in the trainer.
        try:
            env.reset()
        except Exception:
            env.close()
            raise
    return env


def _build(
    env_fns: Sequence[Callable[[], gym.Env[Any, Any]]],
    vectorization: str,
    autoreset_mode: str | AutoresetMode,
    vector_kwargs: Mapping[str, Any] | None,
) -> VectorEnv[Any, Any, Any]:
    mode = _autoreset_mode(autoreset_mode)
    kwargs = dict(vector_kwargs or {})
    if vectorization == "sync":
        return SyncVectorEnv(env_fns, autoreset_mode=mode, **kwargs)
    if vectorization == "async":
        return AsyncVectorEnv(env_fns, autoreset_mode=mode, **kwargs)
    raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")


class _ConstantMaskInfos(VectorWrapper):
    """Adds constant per-slot masks to a vector env's infos, batched, at the vector level.

    For games whose mask never changes (MinAtar's minimal action sets) this replaces
    a per-env copy plus a per-env info entry on every step by one ``(num_envs, n)``
    copy per vector step, and checks all actions with one fancy index. The mask of
    a constant-mask game trivially belongs to every observation, resets included.
    """

    def __init__(
        self,
        env: VectorEnv[Any, Any, Any],
        masks: np.ndarray,  # (num_envs, n), every row the same game's mask
        check_actions: bool,
        env_id: str,
    ) -> None:
        super().__init__(env)
        self._masks = masks
        # All slots play one game, so one row decides validity (1-D lookup is cheapest);
        # the extra False entry catches the out-of-range actions n and -1.
        self._valid = np.append(masks[0], False)
        self._present = np.ones(env.num_envs, dtype=np.bool_)
        self._rows = np.arange(env.num_envs)
        self._check = check_actions
        self._env_id = env_id
        self._steps = 0

    def _invalid(self, a: np.ndarray) -> None:
        n = self._masks.shape[1]
        bad = [i for i in range(len(a)) if not (0 <= a[i] < n and self._masks[i, a[i]])]
        raise ValueError(
            f"invalid action(s) in env '{self._env_id}' at vector step {self._steps}: "
            + "; ".join(
                f"slot {i} took {a[i]}, valid {np.flatnonzero(self._masks[i]).tolist()}"
                for i in bad
            )
        )

    def _add(self, infos: dict[str, Any]) -> dict[str, Any]:
        infos["action_mask"] = self._masks.copy()
        infos["_action_mask"] = self._present.copy()
        return infos

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset all slots; ``infos["action_mask"]`` is ``(num_envs, n)`` bool."""
        obs, infos = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]
        self._steps = 0
        return obs, self._add(infos)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step all slots; with ``check_actions``, ValueError (slot, action, step) for an invalid action.

        Without it (default) the actions go to the envs, whose own rule applies
        (MinAtar: an action outside the minimal set is the no-op).
        """
        self._steps += 1
        if self._check:
            a = np.asarray(actions)
            try:
                ok = self._valid[a].all()
            except IndexError:  # far out of range
                ok = False
            if not ok:
                self._invalid(a)
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        if "final_info" in infos:
            # same_step: the finished episodes' last observations had the same masks.
            final = infos["final_info"]
            final["action_mask"] = self._masks.copy()
            final["_action_mask"] = infos["_final_info"].copy()
        return obs, rewards, terminations, truncations, self._add(infos)


def _constant_mask(env: gym.Env[Any, Any]) -> np.ndarray | None:
    try:
        mask = env.get_wrapper_attr("constant_action_mask")
    except AttributeError:
        return None
    return None if mask is None else np.asarray(mask, dtype=np.bool_)


def _check_num_envs(num_envs: Any) -> None:
    """``num_envs`` is an int >= 1 (a bool, float or str is a TypeError naming it)."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer):
        raise TypeError(f"num_envs must be an int, got {type(num_envs).__name__} {num_envs!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")


def _torch_device(device: Any) -> Any:
    """``device`` for the torch backend (None: cpu).

    Checked by :func:`maskrl.device.resolve_device` when the torch env is
    built (a TypeError or ValueError naming it): this module imports no torch.
    """
    return "cpu" if device is None else device


def _check_backend(backend: str, device: Any) -> None:
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy" and device is not None:
        raise ValueError(f"device={device!r} applies only to backend='torch'")


def _torch_backend_ids(
    env_ids: Sequence[str],
    vectorization: str,
    autoreset_mode: str | AutoresetMode,
    vector_kwargs: Mapping[str, Any] | None,
) -> list[str]:
    """The registered names of ``env_ids`` for ``backend="torch"``; ValueError if it cannot take them."""
    from maskrl.envs.registration import minatar_ids

    torch_ids = minatar_ids()
    names = [_check_id(env_id) for env_id in env_ids]
    unsupported = [e for e, n in zip(env_ids, names, strict=True) if n not in torch_ids]
    if unsupported:
        raise ValueError(
            f"backend='torch' supports only the batched MinAtar games {torch_ids}, "
            f"not {', '.join(map(repr, unsupported))}"
        )
    if vectorization != "sync" or vector_kwargs:
        raise ValueError("vectorization and vector_kwargs do not apply to backend='torch'")
    if _autoreset_mode(autoreset_mode) != AutoresetMode.SAME_STEP:
        raise ValueError("backend='torch' supports only autoreset_mode='same_step'")
    return names


def _slot_seed(seed: int | None, i: int) -> int | None:
    return None if seed is None else seed + i


def make_vec(
    env_id: str,
    num_envs: int,
    vectorization: Vectorization = "sync",
    seed: int | None = None,
    autoreset_mode: AutoresetName | AutoresetMode = "same_step",
    mask_fn: MaskFn | None = None,
    vector_kwargs: Mapping[str, Any] | None = None,
    backend: Literal["numpy", "torch"] = "numpy",
    device: Any = None,
    wrapper: EnvWrapper | None = None,
    **env_kwargs: Any,
) -> VectorEnv[Any, Any, Any]:
    """A Gymnasium vector env of ``num_envs`` copies of ``env_id`` with batched masks.

    Any registered id with a mask source works; envs that do not already follow
    the convention are wrapped in :class:`~maskrl.envs.ActionMaskWrapper`
    (``mask_fn`` is passed to it and takes precedence over other sources).

    Args:
        env_id: a registered Gymnasium id, e.g. ``"maskrl/MinAtar-Breakout-v0"``.
        num_envs: number of copies.
        vectorization: ``"sync"`` (one process; right for cheap envs like MinAtar)
            or ``"async"`` (one subprocess per env; pays off for Atari).
        seed: slot ``i`` is seeded with ``seed + i`` at construction (the first
            ``reset()`` continues from there); also seeds the action spaces.
        autoreset_mode: ``"same_step"`` (default) or ``"next_step"``; see the module doc.
        mask_fn: optional ``mask_fn(env) -> array`` for envs with no mask of their own.
        vector_kwargs: extra keyword arguments for ``SyncVectorEnv``/``AsyncVectorEnv``
            (e.g. ``{"context": "spawn"}``).
        backend: ``"numpy"`` (default: Gymnasium vector env of Python envs) or
            ``"torch"``: the game as one batched torch program on ``device``
            (:class:`maskrl.envs.torch_minatar.TorchMinAtarVectorEnv`; the five
            MinAtar ids only; same-step autoreset; observations, rewards, flags and
            masks are tensors; actions must be an int64 tensor on ``device``).
            ``vectorization``, ``mask_fn`` and ``vector_kwargs`` do not apply to it;
            ``seed`` seeds its ``torch.Generator``.
        device: ``"cpu"`` (default), ``"cuda"``, ... (torch backend only).
        wrapper: optional ``wrapper(env) -> env`` applied to each env after its mask
            wrapper and before it is seeded (numpy backend only), e.g.
            ``functools.partial(maskrl.envs.InvalidActionPolicy, mode="none")`` for the
            masking ablation; with ``"async"`` it must pickle (a class or a
            ``functools.partial`` of one does, a lambda does not). A wrapped env's
            mask is read per env (MinAtar's batched constant-mask shortcut is taken
            only if the wrapped env still reports ``constant_action_mask``).
        **env_kwargs: passed to ``gym.make(env_id, ...)``; for the torch backend:
            ``sticky_action_prob``, ``difficulty_ramping``, ``max_episode_steps``,
            ``check_actions``, ``copy_obs`` (False: observations valid only until the
            next step; see :class:`~maskrl.envs.torch_minatar.TorchMinAtarVectorEnv`).
            ``check_actions=True`` (the maskrl envs and the torch
            backend; default False) makes a step with an action outside a slot's
            mask raise ``ValueError`` naming the slot, to debug an agent's masking;
            by default each env applies its own rule for invalid actions.

    Returns:
        A vector env whose ``reset``/``step`` infos hold ``"action_mask"``:
        ``np.bool_`` array ``(num_envs, n)`` (a bool tensor for the torch backend).

    Raises:
        ValueError: unknown id (with suggestions), an env with no mask source
            (at construction), bad ``vectorization``/``autoreset_mode``, a bad
            ``backend``, ``backend="torch"`` for an id without a torch version, or
            ``device`` with the numpy backend, or a ``device`` string torch does not know.
        TypeError: ``num_envs`` that is not an int (a bool, float or str), or a
            ``device`` that is not a str or ``torch.device``.

    Example:
        >>> import maskrl.envs
        >>> envs = maskrl.envs.make_vec("maskrl/MinAtar-Breakout-v0", 4, seed=0)
        >>> obs, infos = envs.reset()
        >>> obs.shape, infos["action_mask"].shape
        ((4, 4, 10, 10), (4, 6))
    """
    _check_num_envs(num_envs)
    if backend == "torch":
        if mask_fn is not None:
            raise ValueError("mask_fn does not apply to backend='torch'")
        if wrapper is not None:
            raise ValueError("wrapper does not apply to backend='torch' (no Gymnasium envs)")
        (name,) = _torch_backend_ids([env_id], vectorization, autoreset_mode, vector_kwargs)
        # Imported here: maskrl.envs itself stays free of torch.
        from maskrl.envs.torch_minatar import TorchMinAtarVectorEnv

        return TorchMinAtarVectorEnv(
            name, num_envs, device=_torch_device(device), seed=seed, **env_kwargs
        )
    _check_backend(backend, device)
    _check_id(env_id)
    probe = _probe(env_id, mask_fn, env_kwargs, wrapper)
    constant = _constant_mask(probe) if mask_fn is None else None
    probe.close()
    env_kwargs = dict(env_kwargs)
    fast = constant is not None and "mask_in_info" not in env_kwargs
    check_actions = bool(env_kwargs.get("check_actions", False))
    if fast:
        # Constant masks are batched once per vector step by _ConstantMaskInfos
        # instead of per env (keeps the plumbing well under 10% of a MinAtar step).
        env_kwargs.update(mask_in_info=False, check_actions=False)
    fns = [
        partial(
            _make_masked_env,
            env_id,
            mask_fn,
            env_kwargs,
            _slot_seed(seed, i),
            index=i,
            wrapper=wrapper,
        )  # fmt: skip
        for i in range(num_envs)
    ]
    envs = _build(fns, vectorization, autoreset_mode, vector_kwargs)
    if fast:
        masks = np.tile(constant, (num_envs, 1))  # type: ignore[arg-type]
        masks.flags.writeable = False
        envs = _ConstantMaskInfos(envs, masks, check_actions, env_id)
    if seed is not None:
        envs.action_space.seed(seed)
    return envs


class GameSlotWrapper(gym.Wrapper[dict[str, Any], Any, Any, Any]):
    """One slot of a multi-game vector env: pads observation and mask, adds the game id.

    Observation: ``{"obs": padded Box, "game_id": np.int64}``; action
    ``Discrete(n_actions)`` where actions ``>= `` the game's own count are padding
    (always invalid: their mask entries are False and ``step`` raises
    :class:`ValueError` on them). ``info`` gains ``"game_id"`` (``np.int64``) and a
    padded ``"action_mask"`` (``(n_actions,)`` bool).

    Args:
        env: an env following the mask convention with a ``Discrete`` action space
            and a ``Box`` observation whose shape fits inside ``obs_space``'s.
        game_id: this slot's game index.
        num_games: number of games (the ``game_id`` space is ``Discrete(num_games)``).
        obs_space: the common padded observation space.
        n_actions: size of the union action space.
    """

    follows_mask_convention = True

    def __init__(
        self,
        env: gym.Env[Any, Any],
        game_id: int,
        num_games: int,
        obs_space: spaces.Box,
        n_actions: int,
    ) -> None:
        super().__init__(env)
        inner = env.observation_space
        assert isinstance(inner, spaces.Box)
        self._game_id = np.int64(game_id)
        self._n_game = mask_size(env.action_space)
        self._n_actions = n_actions
        self._shape = obs_space.shape
        self._dtype = obs_space.dtype
        # Zero-pad at the end of every axis (e.g. extra channels after the game's own).
        self._region = tuple(slice(0, s) for s in inner.shape)
        self._needs_pad = inner.shape != obs_space.shape or inner.dtype != obs_space.dtype
        self.observation_space = spaces.Dict(
            {"obs": obs_space, "game_id": spaces.Discrete(num_games)}
        )
        self.action_space = spaces.Discrete(n_actions)
        self._mask: np.ndarray | None = None
        self._steps = 0

    def _obs(self, obs: Any) -> dict[str, Any]:
        if self._needs_pad:
            out = np.zeros(self._shape, dtype=self._dtype)
            out[self._region] = obs
            obs = out
        return {"obs": obs, "game_id": self._game_id}

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        mask = info["action_mask"]  # a new array per call (the convention's envs copy)
        if self._n_game != self._n_actions:
            padded = np.zeros(self._n_actions, dtype=np.bool_)
            padded[: self._n_game] = mask
            mask = padded
        self._mask = mask
        info["action_mask"] = mask
        info["game_id"] = self._game_id
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the slot's game; the info holds the padded mask and ``game_id``."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._steps = 0
        return self._obs(obs), self._info(info)

    def step(self, action: Any) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the slot's game with ``action`` (must be one of its own actions)."""
        a = int(action)
        self._steps += 1
        if a >= self._n_game:
            raise ValueError(
                f"invalid action {a} in env '{self.env.spec.id if self.env.spec else self.env}' "
                f"(game {int(self._game_id)}) at step {self._steps}: the game has only "
                f"{self._n_game} actions; {self._n_game}..{self._n_actions - 1} are padding"
            )
        obs, reward, terminated, truncated, info = self.env.step(a)
        return self._obs(obs), reward, terminated, truncated, self._info(info)

    def action_masks(self) -> np.ndarray:
        """The current padded mask, read-only bool ``(n_actions,)``."""
        if self._mask is None:
            raise RuntimeError("call reset() before action_masks()")
        return self._mask


def _make_slot(
    env_id: str,
    game_id: int,
    num_games: int,
    obs_space: spaces.Box,
    n_actions: int,
    seed: int | None,
    index: int | None = None,
) -> gym.Env[Any, Any]:
    """Slot ``index`` of a multi-game vector env: ``env_id`` as game ``game_id``, padded."""
    env = _make_masked_env(env_id, None, {}, index=index)
    env = RecordEpisodeStatistics(env)
    slot = GameSlotWrapper(env, game_id, num_games, obs_space, n_actions)
    if seed is not None:
        slot.reset(seed=seed)
        slot.action_space.seed(seed)
    return slot


def _common_obs_space(boxes: Sequence[spaces.Space[Any]], env_ids: Sequence[str]) -> spaces.Box:
    for env_id, box in zip(env_ids, boxes, strict=True):
        if not isinstance(box, spaces.Box):
            raise ValueError(f"make_multigame_vec needs Box observations; {env_id!r} has {box}")
    box_list = [b for b in boxes if isinstance(b, spaces.Box)]
    ndims = {len(b.shape) for b in box_list}
    if len(ndims) != 1:
        shapes = {i: b.shape for i, b in zip(env_ids, box_list, strict=True)}
        raise ValueError(f"observations of different ranks cannot be padded together: {shapes}")
    shape = tuple(int(s) for s in np.max([b.shape for b in box_list], axis=0))
    dtype = np.result_type(*[b.dtype for b in box_list])
    # Padding is zeros, so 0 must lie inside the bounds.
    low = min(0.0, min(float(np.min(b.low)) for b in box_list))
    high = max(0.0, max(float(np.max(b.high)) for b in box_list))
    return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)  # type: ignore[arg-type]


def make_multigame_vec(
    env_ids: Sequence[str],
    num_envs: int,
    vectorization: Vectorization = "sync",
    seed: int | None = None,
    autoreset_mode: AutoresetName | AutoresetMode = "same_step",
    vector_kwargs: Mapping[str, Any] | None = None,
    backend: Literal["numpy", "torch"] = "numpy",
    device: Any = None,
    play: Sequence[str] | None = None,
    **env_kwargs: Any,
) -> VectorEnv[Any, Any, Any]:
    """One vector env whose slots play several games (the Actor-Mimic setting).

    Slot ``i`` plays ``env_ids[i % len(env_ids)]``; its game index is that
    position in ``env_ids``. With ``play``, slot ``i`` plays
    ``play[i % len(play)]`` instead, still as game ``env_ids.index(...)`` in the
    layout of all of ``env_ids`` (padded shape, action count, number of game
    ids): how a multi-game agent is evaluated on some of its games.

    * Actions: ``Discrete(max n)`` over all games. Games with fewer actions get
      always-invalid padding actions at the end (MinAtar games all have 6,
      Atari games 18, so none is needed there).
    * Observation: ``Dict({"obs": Box(common shape), "game_id": Discrete(len(env_ids))})``,
      batched as ``obs["obs"]`` ``(num_envs, *shape)`` and ``obs["game_id"]``
      ``(num_envs,)`` int64. Observations of different shapes (same rank) are
      zero-padded at the end of each axis (MinAtar: 4-10 channels -> 10).
    * Infos after ``reset`` and every ``step``: ``"action_mask"`` ``(num_envs, n)``
      bool, ``"game_id"`` ``(num_envs,)`` int64. Each slot records episode
      statistics: when an episode ends its info holds ``"episode"``
      (``{"r": return, "l": length, "t": seconds}``, with ``"_episode"`` marking
      the slots) — under ``infos["final_info"]`` in ``"same_step"`` mode, at the
      top level in ``"next_step"`` mode. :func:`episodes_by_game` reads both.

    Args:
        env_ids: registered ids with ``Discrete`` actions and ``Box`` observations.
        num_envs: number of slots (``>= len(env_ids)`` so every game plays; with
            ``play``, ``>= len(play)``).
        vectorization, seed, autoreset_mode, vector_kwargs: as in :func:`make_vec`.
        backend, device: as in :func:`make_vec`. With ``backend="torch"`` (MinAtar ids
            only) all games step in one batched torch program
            (:class:`maskrl.envs.torch_minatar.TorchMinAtarMultiGameVectorEnv`):
            ``obs["obs"]``/``obs["game_id"]``, ``infos["game_id"]`` and the dict
            ``infos["final_obs"]`` are tensors on ``device``, and episode statistics
            are batched in ``infos["episode"]``/``infos["_episode"]`` directly.
        **env_kwargs: torch backend only: ``sticky_action_prob``,
            ``difficulty_ramping``, ``max_episode_steps``, ``check_actions``,
            ``copy_obs`` (as in :func:`make_vec`).
        play: the games the slots play, distinct ids among ``env_ids`` in any
            order (default: ``env_ids``); numpy backend only.

    Example:
        >>> import maskrl.envs
        >>> ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"]
        >>> envs = maskrl.envs.make_multigame_vec(ids, 4, seed=0)
        >>> obs, infos = envs.reset()
        >>> obs["obs"].shape, obs["game_id"].tolist(), infos["action_mask"].shape
        ((4, 10, 10, 10), [0, 1, 0, 1], (4, 6))
    """
    env_ids = list(env_ids)
    if not env_ids:
        raise ValueError("make_multigame_vec needs at least one env id")
    _check_unique(env_ids)
    _check_num_envs(num_envs)
    played = env_ids if play is None else list(play)
    if play is not None:
        if isinstance(play, str) or not played:
            raise ValueError(f"play must be a non-empty list of env ids, got {play!r}")
        _check_unique(played)
        unknown = [e for e in played if e not in env_ids]
        if unknown:
            raise ValueError(f"play: {unknown} not among the env_ids {env_ids}")
        if backend == "torch":
            raise ValueError("play (a subset of the games) needs backend='numpy'")
    if num_envs < len(played):
        raise ValueError(
            f"num_envs={num_envs} is smaller than the number of games ({len(played)}): "
            "some games would never be played"
        )
    if backend == "torch":
        names = _torch_backend_ids(env_ids, vectorization, autoreset_mode, vector_kwargs)
        # Imported here: maskrl.envs itself stays free of torch.
        from maskrl.envs.torch_minatar import TorchMinAtarMultiGameVectorEnv

        return TorchMinAtarMultiGameVectorEnv(
            names, num_envs, device=_torch_device(device), seed=seed, **env_kwargs
        )
    _check_backend(backend, device)
    if env_kwargs:
        raise ValueError(
            f"make_multigame_vec takes env keyword arguments only with backend='torch', "
            f"got {sorted(env_kwargs)}"
        )
    obs_spaces = []
    n_per_game = []
    for env_id in env_ids:
        _check_id(env_id)
        probe = _probe(env_id, None, {})
        if not isinstance(probe.action_space, spaces.Discrete) or probe.action_space.start != 0:
            probe.close()
            raise ValueError(
                f"make_multigame_vec needs Discrete actions starting at 0; {env_id!r} has "
                f"{probe.action_space}"
            )
        obs_spaces.append(probe.observation_space)
        n_per_game.append(int(probe.action_space.n))
        probe.close()
    obs_space = _common_obs_space(obs_spaces, env_ids)
    n_actions = max(n_per_game)
    fns = [
        partial(
            _make_slot,
            played[i % len(played)],
            env_ids.index(played[i % len(played)]),
            len(env_ids),
            obs_space,
            n_actions,
            _slot_seed(seed, i),
            index=i,
        )
        for i in range(num_envs)
    ]
    envs = _build(fns, vectorization, autoreset_mode, vector_kwargs)
    if seed is not None:
        envs.action_space.seed(seed)
    return envs


def episodes_by_game(infos: Mapping[str, Any]) -> dict[int, list[tuple[float, int]]]:
    """The episodes that ended in one vector step, grouped by game id.

    Works for both autoreset modes (reads ``infos["final_info"]`` and the top
    level) and for any vector env whose slots use ``RecordEpisodeStatistics``;
    slots without a ``"game_id"`` info count as game 0.

    Returns:
        ``{game_id: [(episode_return, episode_length), ...]}``; empty when no
        episode ended.

    Example:
        >>> returns: dict[int, list[float]] = {}
        >>> # after each step: obs, rew, term, trunc, infos = envs.step(actions)
        >>> for game, eps in episodes_by_game({}).items():
        ...     returns.setdefault(game, []).extend(r for r, _ in eps)
    """
    out: dict[int, list[tuple[float, int]]] = {}
    sources = [infos]
    if "final_info" in infos:
        sources.append(infos["final_info"])
    for src in sources:
        if "episode" not in src:
            continue
        ep = src["episode"]
        done = np.flatnonzero(src["_episode"])
        games = src.get("game_id")
        for i in done:
            game = int(games[i]) if games is not None else 0
            out.setdefault(game, []).append((float(ep["r"][i]), int(ep["l"][i])))
    return out


def multigame_layout(env_ids: Sequence[str]) -> list[tuple[int, ...]]:
    """Each game's own observation shape, in game-id order, for :func:`make_multigame_vec`.

    Game ``g`` of ``make_multigame_vec(env_ids, ...)`` is ``env_ids[g]``; its
    observation sits in the first ``shape[g][k]`` entries of every axis ``k``
    of the padded ``obs["obs"]`` (:class:`GameSlotWrapper` pads at the end of
    every axis), and the padded shape is the elementwise maximum of the shapes.
    The channel count of a channels-first game is ``shape[g][0]``.

    Args:
        env_ids: the ids passed to :func:`make_multigame_vec`, in the same order.

    Returns:
        ``[shape_0, shape_1, ...]``, one tuple per game. Each env is built once
        to read its space (and closed), so call this once, not per step.

    Raises:
        ValueError: unknown id, or an env whose observation space is not a ``Box``.

    Example:
        >>> import maskrl.envs
        >>> multigame_layout(["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"])
        [(4, 10, 10), (10, 10, 10)]
    """
    shapes = []
    for env_id in env_ids:
        _check_id(env_id)
        probe = _probe(env_id, None, {})
        space = probe.observation_space
        probe.close()
        if not isinstance(space, spaces.Box):
            raise ValueError(f"multi-game envs need Box observations; {env_id!r} has {space}")
        shapes.append(tuple(int(s) for s in space.shape))
    return shapes


def game_observation(
    padded_obs: Any,
    game_id: int,
    layout: Sequence[str] | Sequence[Sequence[int]],
) -> Any:
    """Game ``game_id``'s own observation, recovered from a padded multi-game one.

    This is exactly what a single-game env of that game (e.g. its expert's
    training env) returns: :class:`GameSlotWrapper` copies the game's
    observation into the leading corner of a zero array, and this takes that
    corner back out.

    Args:
        padded_obs: a padded observation ``obs["obs"]`` of
            :func:`make_multigame_vec`, one ``(*padded_shape)`` or a batch
            ``(..., *padded_shape)`` whose rows all belong to game ``game_id``
            (select them first, e.g. ``obs["obs"][obs["game_id"] == g]``).
            A NumPy array, or anything that slices like one (a torch tensor).
        game_id: the game's index, its position in the ids.
        layout: the env ids given to :func:`make_multigame_vec` (each env is
            then built once to read its shape), or the shapes
            :func:`multigame_layout` returned for them (cheap: pass these in
            loops).

    Returns:
        A view of ``padded_obs`` of shape ``(..., *shape_of_game)``: the same
        values as the game's own observation. The dtype is the padded one
        (the common dtype of all games, which holds each game's values
        exactly); cast it if an expert needs its own dtype.

    Raises:
        ValueError: ``game_id`` out of range, ranks that differ between games,
            or ``padded_obs`` whose trailing shape is not the padded shape.

    Example:
        >>> import numpy as np
        >>> shapes = [(4, 10, 10), (10, 10, 10)]
        >>> padded = np.zeros((3, 10, 10, 10), dtype=np.float32)  # three rows of game 0
        >>> game_observation(padded, 0, shapes).shape
        (3, 4, 10, 10)
    """
    entries: list[Any] = list(layout)
    if entries and all(isinstance(e, str) for e in entries):
        shapes = multigame_layout(entries)
    else:
        shapes = [tuple(int(s) for s in e) for e in entries]
    if not shapes:
        raise ValueError("layout is empty: pass the env ids or their shapes")
    if not 0 <= int(game_id) < len(shapes):
        raise ValueError(f"game_id {game_id} is out of range for {len(shapes)} games")
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1:
        raise ValueError(f"the games' observations have different ranks: {shapes}")
    rank = ranks.pop()
    padded_shape = tuple(int(s) for s in np.max(shapes, axis=0))
    trailing = tuple(int(s) for s in padded_obs.shape[len(padded_obs.shape) - rank :])
    if len(padded_obs.shape) < rank or trailing != padded_shape:
        raise ValueError(
            f"padded_obs of shape {tuple(padded_obs.shape)} does not end in the padded "
            f"shape {padded_shape} of these games"
        )
    own = shapes[int(game_id)]
    # Padding is at the end of every axis, so the game's own data is the
    # leading corner: plain slices, a view with no copy.
    return padded_obs[(Ellipsis,) + tuple(slice(0, s) for s in own)]
