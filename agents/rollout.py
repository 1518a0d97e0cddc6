"""Rollout collection over a masked Gymnasium vector env, reusable by any on-policy trainer.

The pieces are plain functions and one buffer so that a second trainer (for
instance a distillation trainer that rolls out a student and labels its steps
with a teacher) can reuse them unchanged:

* :class:`RolloutBuffer` -- preallocated device tensors for ``T`` steps of ``N``
  envs: observations (tensor or dict of tensors), the action masks the actions
  were sampled under, actions, log-probs, values, rewards, ``terminated`` /
  ``truncated`` flags, and the value of the final observation of truncated
  episodes;
* :func:`read_masks` -- validates ``infos["action_mask"]`` from a vector env;
* :func:`collect_rollout` -- fills the buffer by stepping the env with a policy:
  one loop for both backends (a numpy vector env adapted to tensors at the
  boundary, or a torch-backend env on its device), carrying a recurrent
  policy's per-env state when there is one (:data:`PolicyState`).

The vector env must use Gymnasium's ``same_step`` autoreset (what
:func:`maskrl.envs.make_vec` builds by default): after an episode ends the env
returns the *reset* observation and its mask, and the final observation in
``infos["final_obs"]``, whose value the trainer bootstraps from when the
episode was truncated rather than terminated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Obs = torch.Tensor | dict[str, torch.Tensor]
#: A policy's per-env state (e.g. an LSTM's ``(h, c)``): None for a feedforward
#: policy, else a tensor or a tuple / list / dict of tensors, each with the env
#: index as its first dimension.
PolicyState = Any
# A policy step: (obs [N, ...], mask [N, n]) -> (action [N, ...], log_prob [N], value [N]).
ActFn = Callable[[Obs, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
ValueFn = Callable[[Obs], torch.Tensor]
# The same with a policy state (``collect_rollout(..., stateful=True)``):
# (obs, mask, state) -> (action, log_prob, value, next state); (obs, state) -> value.
StatefulActFn = Callable[
    [Obs, torch.Tensor, PolicyState],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, PolicyState],
]
StatefulValueFn = Callable[[Obs, PolicyState], torch.Tensor]


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: PolicyState) -> PolicyState:
    """``fn`` applied to every tensor of a policy state (None stays None)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, tuple | list):
        return type(state)(map_state(fn, v) for v in state)
    raise TypeError(
        f"a policy state is a tensor or a tuple, list or dict of tensors, got {type(state)}"
    )


def reset_state_rows(state: PolicyState, done: torch.Tensor) -> PolicyState:
    """The policy state with the rows of the envs whose episode ended (``done [N]``) zeroed.

    Returns new tensors (the input is left as it is); None stays None.
    """
    if state is None:
        return None
    keep = ~done

    def reset(x: torch.Tensor) -> torch.Tensor:
        return x * keep.view((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)

    return map_state(reset, state)


def _where_rows(rows: torch.Tensor, a: PolicyState, b: PolicyState) -> PolicyState:
    """Per env: ``a``'s row where ``rows [N]`` is True, else ``b``'s (same structure)."""
    if isinstance(a, torch.Tensor):
        return torch.where(rows.view((-1,) + (1,) * (a.dim() - 1)), a, b)
    if isinstance(a, dict):
        return {k: _where_rows(rows, a[k], b[k]) for k in a}
    return type(a)(_where_rows(rows, x, y) for x, y in zip(a, b, strict=True))


def select_state_rows(state: PolicyState, idx: torch.Tensor) -> PolicyState:
    """The rows ``idx`` of every tensor of a policy state (None stays None)."""
    return map_state(lambda x: x[idx], state)


_TORCH_DTYPES: dict[Any, torch.dtype] = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float32,  # stored as float32: networks run in float32
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int32): torch.int64,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}


def _space_spec(space: Any) -> Any:
    """``(shape, torch dtype)`` for a Box/Discrete/MultiBinary space, a dict of those for Dict."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {k: _space_spec(s) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Discrete):
        return ((), torch.int64)
    dtype = np.dtype(space.dtype)
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"unsupported observation dtype {dtype} in space {space}")
    return (tuple(space.shape), _TORCH_DTYPES[dtype])


def alloc_obs(spec: Any, lead: tuple[int, ...], device: torch.device) -> Obs:
    """Zeros of shape ``lead + shape`` for every leaf of an observation spec."""
    if isinstance(spec, dict):
        return {k: alloc_obs(s, lead, device) for k, s in spec.items()}  # type: ignore[misc]
    shape, dtype = spec
    return torch.zeros(lead + shape, dtype=dtype, device=device)


def obs_to_tensor(obs: Any, device: torch.device, spec: Any | None = None) -> Obs:
    """Convert a (batched) numpy observation or dict of them to tensors on ``device``."""
    if isinstance(obs, dict):
        return {
            k: obs_to_tensor(v, device, None if spec is None else spec[k])  # type: ignore[misc]
            for k, v in obs.items()
        }
    t = torch.as_tensor(np.asarray(obs))
    if spec is not None:
        t = t.to(spec[1])
    elif t.dtype == torch.float64:
        t = t.float()
    return t.to(device, non_blocking=True)


def copy_obs_(dst: Obs, src: Any) -> None:
    """Copy a batched numpy observation into preallocated tensors (one copy per leaf)."""
    if isinstance(dst, dict):
        if not isinstance(src, dict):
            raise ValueError(
                f"expected a dict observation with keys {sorted(dst)}, got {type(src)}"
            )
        for k, d in dst.items():
            if k not in src:
                raise ValueError(f"observation is missing key {k!r} (has {sorted(src)})")
            copy_obs_(d, src[k])
        return
    arr = np.asarray(src)
    if arr.shape != tuple(dst.shape):
        raise ValueError(f"observation has shape {arr.shape}, expected {tuple(dst.shape)}")
    dst.copy_(torch.from_numpy(arr), non_blocking=True)


def index_obs(obs: Obs, idx: Any) -> Obs:
    if isinstance(obs, dict):
        return {k: v[idx] for k, v in obs.items()}
    return obs[idx]


def flatten_obs(obs: Obs, n: int) -> Obs:
    """Merge the two leading dims ``[T, N, ...]`` into ``[T * N, ...]`` (views)."""
    if isinstance(obs, dict):
        return {k: v.reshape((n,) + v.shape[2:]) for k, v in obs.items()}
    return obs.reshape((n,) + obs.shape[2:])


def empty_mask_rows(mask: np.ndarray, nvec: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``(row, dimension)`` pairs of a ``(B, sum(nvec))`` mask with no valid action.

    ``nvec=None`` means one dimension (``Discrete``).
    """
    if nvec is None or len(nvec) == 1:
        any_valid = mask.any(axis=1)
        if any_valid.all():  # the usual case, checked every step: one more reduction
            return []
        return [(int(r), 0) for r in np.flatnonzero(~any_valid)]
    starts = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    any_valid = np.logical_or.reduceat(mask, starts, axis=1)  # [B, len(nvec)]
    rows, dims = np.nonzero(~any_valid)
    return [(int(r), int(d)) for r, d in zip(rows, dims, strict=True)]


def _empty_message(empty: list[tuple[int, int]], what: str, multi: bool) -> str:
    if not multi:
        return f"action mask has no valid action for {what} {[r for r, _ in empty]}"
    return f"action mask has no valid action for ({what}, dimension) {empty}"


def read_masks(
    infos: dict[str, Any], num_envs: int, n_logits: int, nvec: Sequence[int] | None = None
) -> np.ndarray:
    """Return ``infos["action_mask"]`` as a ``(num_envs, n_logits)`` boolean array.

    Raises:
        ValueError: if the infos carry no mask, the mask has the wrong shape or a
            non-boolean dtype other than 0/1 integers, or some env has no valid
            action (in some dimension, for ``MultiDiscrete``; the message names
            the env index and dimension).
    """
    if "action_mask" not in infos:
        raise ValueError(
            "the vector env's infos carry no 'action_mask'; build it with maskrl.envs.make_vec "
            "or wrap each env in maskrl.envs.ActionMaskWrapper"
        )
    mask = np.asarray(infos["action_mask"])
    if mask.shape != (num_envs, n_logits):
        raise ValueError(
            f"infos['action_mask'] has shape {mask.shape}, expected (num_envs, n) = ({num_envs}, {n_logits})"
        )
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer) or ((mask != 0) & (mask != 1)).any():
            raise ValueError(
                f"infos['action_mask'] must be boolean (or 0/1 integers), got dtype {mask.dtype}"
            )
        mask = mask.astype(np.bool_)
    if "_action_mask" in infos:
        present = np.asarray(infos["_action_mask"])
        missing = np.flatnonzero(~present) if not present.all() else present[:0]
        if missing.size:
            raise ValueError(
                f"env index(es) {missing.tolist()} returned no action_mask in their info"
            )
    # Only the no-valid-action check is needed per step; it is one reduction.
    empty = empty_mask_rows(mask, nvec)
    if empty:
        multi = nvec is not None and len(nvec) > 1
        raise ValueError(
            _empty_message(empty, "env index(es)", multi)
            + ": an environment must always allow at least one action"
        )
    return mask


@dataclass
class EpisodeStats:
    """Completed episodes seen during rollouts: returns, lengths and game ids."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    game_ids: list[int] = field(default_factory=list)

    def clear(self) -> None:
        self.returns.clear()
        self.lengths.clear()
        self.game_ids.clear()


def _spec_bytes(spec: Any) -> int:
    if isinstance(spec, dict):
        return sum(_spec_bytes(s) for s in spec.values())
    shape, dtype = spec
    return int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()


def buffer_bytes(
    obs_spec: Any, n_logits: int, action_shape: tuple[int, ...], num_steps: int, num_envs: int
) -> int:
    """Bytes a :class:`RolloutBuffer` of ``num_steps x num_envs`` needs on its device."""
    per_slot = _spec_bytes(obs_spec) + n_logits  # observation + bool mask, T + 1 slots
    per_step = 8 * max(1, int(np.prod(action_shape))) + 4 * 7 + 4 * 3  # actions, scalars, host copy
    return (num_steps + 1) * num_envs * per_slot + num_steps * num_envs * per_step


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(need: int, device: torch.device, num_steps: int, num_envs: int) -> None:
    avail = _available_bytes(device)
    if avail is not None and need > avail:
        raise ValueError(
            f"the rollout buffer of num_steps x num_envs = {num_steps} x {num_envs} needs "
            f"{need / 2**30:.1f} GiB but {device} has {avail / 2**30:.1f} GiB free: lower "
            "--num-steps or --num-envs"
        )


class RolloutBuffer:
    """Preallocated rollout storage on one device.

    Slot ``t`` of ``obs``/``masks`` holds what the policy acted on at step ``t``;
    slot ``T`` holds the observation after the last step (the bootstrap
    observation), which becomes slot 0 of the next rollout. Each env step costs
    one host-to-device copy of the batched observations and one of the masks;
    rewards and episode-end flags are copied once per rollout.
    """

    def __init__(
        self,
        observation_space: Any,
        n_logits: int,
        action_shape: tuple[int, ...],
        num_steps: int,
        num_envs: int,
        device: torch.device,
        nvec: list[int] | None = None,
    ) -> None:
        self.num_steps, self.num_envs, self.n_logits = num_steps, num_envs, n_logits
        self.device = device
        self.obs_spec = _space_spec(observation_space)
        T, N = num_steps, num_envs
        _check_fits(
            buffer_bytes(self.obs_spec, n_logits, action_shape, T, N), device, num_steps, num_envs
        )
        self.obs = alloc_obs(self.obs_spec, (T + 1, N), device)
        self.masks = torch.zeros((T + 1, N, n_logits), dtype=torch.bool, device=device)
        self.actions = torch.zeros((T, N) + action_shape, dtype=torch.int64, device=device)
        # Where each action dimension's entries start in the concatenated mask.
        sizes = list(nvec) if nvec is not None else [n_logits]
        self.nvec = sizes
        self.action_offsets = torch.tensor(
            np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.int64, device=device
        )
        self.logprobs = torch.zeros((T, N), device=device)
        self.values = torch.zeros((T, N), device=device)
        self.rewards = torch.zeros((T, N), device=device)
        self.terminated = torch.zeros((T, N), device=device)
        self.truncated = torch.zeros((T, N), device=device)
        # Per-step scalars are gathered on the host and copied to the device once
        # per rollout (three copies instead of three per step on a GPU).
        self.host_scalars = np.zeros((3, T, N), dtype=np.float32)
        # Value of the final observation of an episode truncated at step t (else 0).
        self.final_values = torch.zeros((T, N), device=device)
        self.next_value = torch.zeros(N, device=device)
        #: The policy state each env was in at the rollout's first step (a copy;
        #: None for a feedforward policy): where a recurrent update replays from.
        self.policy_state: PolicyState = None

    def count_invalid_actions(self) -> int:
        """How many stored actions were masked out at the step they were taken."""
        T, N = self.num_steps, self.num_envs
        idx = self.actions.view(T, N, -1) + self.action_offsets  # into the concatenated mask
        valid = self.masks[:T].gather(-1, idx).all(-1)
        return int((~valid).sum())

    def set_initial(self, obs: Any, mask: np.ndarray) -> None:
        """Store the observation and mask the first step will act on."""
        copy_obs_(index_obs(self.obs, 0), obs)
        self.masks[0].copy_(torch.from_numpy(mask))

    def roll_over(self) -> None:
        """Move the bootstrap observation (slot ``T``) to slot 0 for the next rollout."""
        T = self.num_steps
        if isinstance(self.obs, dict):
            for v in self.obs.values():
                v[0].copy_(v[T])
        else:
            self.obs[0].copy_(self.obs[T])
        self.masks[0].copy_(self.masks[T])


def _first_bad(bad: torch.Tensor) -> tuple[int, int] | None:
    """``(t, env)`` of the first True in a ``[T, N]`` bool tensor, or None."""
    if not bool(bad.any()):
        return None
    flat = int(bad.reshape(-1).nonzero()[0])
    return flat // bad.shape[1], flat % bad.shape[1]


def check_rollout_finite(buffer: RolloutBuffer, steps_before: int, rewards: torch.Tensor) -> None:
    """Stop at the first non-finite reward or observation of a filled rollout.

    One reduction per rollout (not per step). Observation slot ``t + 1`` holds
    what step ``t`` returned.

    Raises:
        NonFiniteError: naming the env index, the rollout step and the run's
            env-step count at which it appeared.
    """
    from maskrl.agents.trainer import NonFiniteError

    T, N = buffer.num_steps, buffer.num_envs
    where = _first_bad(~torch.isfinite(rewards))
    if where is not None:
        t, i = where
        raise NonFiniteError(
            f"non-finite reward from env index {i} at rollout step {t} "
            f"(env step {steps_before + t * N + i} of the run); the env returned "
            f"{float(rewards[t, i])}"
        )
    leaves = buffer.obs.items() if isinstance(buffer.obs, dict) else [(None, buffer.obs)]
    for key, o in leaves:
        if not o.is_floating_point():
            continue
        bad = ~torch.isfinite(o[1:].reshape(T, N, -1)).all(-1)
        where = _first_bad(bad)
        if where is not None:
            t, i = where
            what = "observation" if key is None else f"observation[{key!r}]"
            raise NonFiniteError(
                f"non-finite {what} from env index {i} at rollout step {t} "
                f"(env step {steps_before + t * N + i} of the run)"
            )


@dataclass
class RolloutState:
    """Per-env running state carried from one rollout to the next."""

    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    game_ids: np.ndarray
    invalid_actions: int = 0
    steps: int = 0
    #: The policy's per-env state before the next step (None: a feedforward policy).
    policy_state: PolicyState = None


def is_torch_env(envs: Any) -> bool:
    """True for a vector env whose observations, rewards and masks are tensors on a device."""
    return getattr(envs, "backend", "numpy") == "torch"


def _copy_tensor_obs_(dst: Obs, src: Any) -> None:
    if isinstance(dst, dict):
        for k, d in dst.items():
            d.copy_(src[k], non_blocking=True)
    else:
        dst.copy_(src, non_blocking=True)


def start_rollouts(envs: Any, buffer: RolloutBuffer, seed: int | None) -> RolloutState:
    """Reset the vector env and store the first observation and mask in the buffer."""
    n = envs.num_envs
    if is_torch_env(envs):
        env_dev = torch.device(envs.device)
        if env_dev.type != buffer.device.type or (
            env_dev.index is not None and env_dev.index != buffer.device.index
        ):
            raise ValueError(
                f"the torch-backend env is on {env_dev} but the trainer on {buffer.device}: "
                "put both on the same device (--device)"
            )
    obs, infos = envs.reset(seed=seed)
    if is_torch_env(envs):
        mask = infos["action_mask"]
        if not bool(mask.any(dim=1).all()):
            raise ValueError(
                f"action mask has no valid action for env index(es) "
                f"{torch.nonzero(~mask.any(dim=1)).flatten().tolist()}"
            )
        _copy_tensor_obs_(index_obs(buffer.obs, 0), obs)
        buffer.masks[0].copy_(mask)
        game_ids = np.asarray(infos["game_id"].cpu()) if "game_id" in infos else np.zeros(n)
        return RolloutState(np.zeros(n), np.zeros(n, dtype=np.int64), game_ids.astype(np.int64))
    buffer.set_initial(obs, read_masks(infos, n, buffer.n_logits, buffer.nvec))
    game_ids = np.asarray(infos.get("game_id", np.zeros(n)), dtype=np.int64)
    return RolloutState(np.zeros(n), np.zeros(n, dtype=np.int64), game_ids)


def _final_obs_batch(infos: dict[str, Any], idx: np.ndarray) -> Any:
    finals = infos["final_obs"]
    items = [finals[i] for i in idx]
    if isinstance(items[0], dict):
        return {k: np.stack([it[k] for it in items]) for k in items[0]}
    return np.stack(items)


def invalid_actions_in_infos(infos: dict[str, Any], num_envs: int) -> int:
    """How many actions of one vector step were outside the env's true mask.

    Reads ``"invalid_action"`` from the step's infos and, for the slots whose
    episode ended (same-step autoreset), from ``infos["final_info"]``: what
    :class:`maskrl.envs.InvalidActionPolicy` reports in every mode.

    Raises:
        ValueError: a slot reported no ``"invalid_action"`` (an env not wrapped
            in :class:`~maskrl.envs.InvalidActionPolicy`).
    """
    total = 0
    reported = np.zeros(num_envs, dtype=np.bool_)
    for src in (infos, infos.get("final_info")):
        if src is None or "invalid_action" not in src:
            continue
        present = np.asarray(src["_invalid_action"], dtype=np.bool_)
        total += int(np.asarray(src["invalid_action"], dtype=np.bool_)[present].sum())
        reported |= present
    if not reported.all():
        raise ValueError(
            f"env index(es) {np.flatnonzero(~reported).tolist()} reported no 'invalid_action' "
            "in their step info: with --invalid-actions penalty or none, wrap each env in "
            "maskrl.envs.InvalidActionPolicy"
        )
    return total


def collect_rollout(
    envs: Any,
    buffer: RolloutBuffer,
    state: RolloutState,
    act: ActFn | StatefulActFn,
    value_fn: ValueFn | StatefulValueFn,
    stats: EpisodeStats,
    invalid_from_infos: bool = False,
    *,
    stateful: bool = False,
) -> None:
    """Step ``envs`` for ``buffer.num_steps`` steps with ``act`` and fill ``buffer``.

    ``act`` and ``value_fn`` are called under ``torch.inference_mode``. For an
    episode truncated at step ``t`` (time limit), ``buffer.final_values[t]``
    receives ``value_fn(final_obs)`` so GAE can bootstrap from it; a terminated
    episode bootstraps from nothing. Completed episodes are appended to
    ``stats``. Discounting is left to :func:`maskrl.agents.compute_gae`.

    Invalid actions (``state.invalid_actions``) are counted against the stored
    masks, or, with ``invalid_from_infos`` (the masking ablation's modes
    ``penalty`` and ``none``, whose stored masks are all-valid), from each step's
    ``infos["invalid_action"]`` (:func:`invalid_actions_in_infos`; numpy
    backend only).

    ``stateful``: ``act(obs, mask, policy_state)`` returns ``(action, log_prob,
    value, next_policy_state)`` and ``value_fn(obs, policy_state)`` the value
    (see :data:`PolicyState`). The rollout starts from ``state.policy_state``,
    keeps a copy of it in ``buffer.policy_state``, zeroes the rows of envs whose
    episode ended after each step (:func:`reset_state_rows`; the value of a
    truncated episode's final observation uses the state before that reset), and
    leaves the state for the next rollout in ``state.policy_state``. Without it
    (the default), ``act(obs, mask)`` and ``value_fn(obs)`` carry no state.

    One loop for both backends; the env side of a step is a small adapter: a
    numpy (Gymnasium) vector env is converted to and from tensors at the
    boundary (:class:`_NumpyEnvSteps`), a torch-backend env
    (:func:`is_torch_env`) stays on its device (:class:`_TorchEnvSteps`).
    """
    step: StatefulActFn
    value_of: StatefulValueFn
    if stateful:
        step, value_of = act, value_fn  # type: ignore[assignment]
    else:
        plain_act, plain_value = act, value_fn

        def step(o: Obs, m: torch.Tensor, s: PolicyState) -> Any:
            return (*plain_act(o, m), s)  # type: ignore[call-arg]

        def value_of(o: Obs, s: PolicyState) -> torch.Tensor:
            return plain_value(o)  # type: ignore[call-arg]

    if is_torch_env(envs):
        if invalid_from_infos:
            raise ValueError("invalid_from_infos needs a numpy-backend (Gymnasium) vector env")
        steps: _EnvSteps = _TorchEnvSteps(envs, buffer, state, stats)
    else:
        steps = _NumpyEnvSteps(envs, buffer, state, stats, invalid_from_infos)
    T = buffer.num_steps
    pstate = state.policy_state
    buffer.policy_state = map_state(torch.clone, pstate)
    with torch.inference_mode():
        for t in range(T):
            action, logp, value, pstate = step(index_obs(buffer.obs, t), buffer.masks[t], pstate)
            buffer.actions[t] = action
            buffer.logprobs[t] = logp
            buffer.values[t] = value
            done = steps.step(t, action, pstate, value_of)
            if done is not None:  # only asked for (and only a tensor) with a policy state
                pstate = reset_state_rows(pstate, done)
        invalid = steps.finish(pstate, value_of)
    state.policy_state = pstate
    state.invalid_actions += int(invalid)
    state.steps += T * buffer.num_envs


class _EnvSteps:
    """The env side of one rollout, for :func:`collect_rollout`'s single loop.

    :meth:`step` steps the env with the actions of step ``t`` and writes what it
    returned into the buffer (observation and mask ``t + 1``, reward, episode-end
    flags, the value of a truncated episode's final observation); it returns the
    envs whose episode ended as a bool tensor on the buffer's device when there is a
    policy state to reset (else None). :meth:`finish` does the once-per-rollout
    part (checks, bootstrap value, episode statistics) and returns the number of
    invalid actions.
    """

    def step(
        self, t: int, action: torch.Tensor, pstate: PolicyState, value_of: StatefulValueFn
    ) -> torch.Tensor | None:
        raise NotImplementedError

    def finish(self, pstate: PolicyState, value_of: StatefulValueFn) -> int:
        raise NotImplementedError


class _NumpyEnvSteps(_EnvSteps):
    """A numpy (Gymnasium) vector env, adapted to tensors at the boundary.

    Actions go to the host, observations and masks (validated by
    :func:`read_masks`) come back into the buffer's tensors; rewards and flags
    are gathered on the host and copied once per rollout; a truncated episode's
    final observation is valued at once (any number of truncations per rollout).
    """

    def __init__(
        self,
        envs: Any,
        buf: RolloutBuffer,
        state: RolloutState,
        stats: EpisodeStats,
        invalid_from_infos: bool,
    ) -> None:
        self.envs, self.buf, self.state, self.stats = envs, buf, state, stats
        self.invalid_from_infos = invalid_from_infos
        self.invalid = 0
        with torch.inference_mode():
            buf.final_values.zero_()  # once per rollout; truncated steps are filled in step

    def step(
        self, t: int, action: torch.Tensor, pstate: PolicyState, value_of: StatefulValueFn
    ) -> torch.Tensor | None:
        buf, state, N = self.buf, self.state, self.buf.num_envs
        host = buf.host_scalars
        next_obs, reward, terminated, truncated, infos = self.envs.step(action.cpu().numpy())
        mask = read_masks(infos, N, buf.n_logits, buf.nvec)
        if self.invalid_from_infos:
            self.invalid += invalid_actions_in_infos(infos, N)
        copy_obs_(index_obs(buf.obs, t + 1), next_obs)
        buf.masks[t + 1].copy_(torch.from_numpy(mask), non_blocking=True)
        trunc = np.asarray(truncated, dtype=bool) & ~np.asarray(terminated, dtype=bool)
        host[0, t] = reward
        host[1, t] = terminated
        host[2, t] = trunc
        if trunc.any():
            dev = buf.device
            idx = np.flatnonzero(trunc)
            final = obs_to_tensor(_final_obs_batch(infos, idx), dev, buf.obs_spec)
            rows = torch.as_tensor(idx, device=dev)
            final_state = None if pstate is None else select_state_rows(pstate, rows)
            buf.final_values[t, rows] = value_of(final, final_state).float()
        state.episode_returns += reward
        state.episode_lengths += 1
        done = np.logical_or(terminated, truncated)
        if not done.any():
            return None
        stats = self.stats
        for i in np.flatnonzero(done):
            stats.returns.append(float(state.episode_returns[i]))
            stats.lengths.append(int(state.episode_lengths[i]))
            stats.game_ids.append(int(state.game_ids[i]))
        state.episode_returns[done] = 0.0
        state.episode_lengths[done] = 0
        return None if pstate is None else torch.from_numpy(done).to(buf.device)

    def finish(self, pstate: PolicyState, value_of: StatefulValueFn) -> int:
        buf, T = self.buf, self.buf.num_steps
        host = buf.host_scalars
        check_rollout_finite(buf, self.state.steps, torch.from_numpy(host[0]))
        buf.next_value.copy_(value_of(index_obs(buf.obs, T), pstate))
        # Counted once per rollout, never corrected: a policy that picks a masked
        # action is a bug the invalid_action_rate chart must show.
        invalid = self.invalid if self.invalid_from_infos else buf.count_invalid_actions()
        scalars = torch.from_numpy(host)
        buf.rewards.copy_(scalars[0])
        buf.terminated.copy_(scalars[1])
        buf.truncated.copy_(scalars[2])
        return invalid


class _TorchEnvSteps(_EnvSteps):
    """A torch-backend env: nothing leaves the device per step.

    Observations, masks, rewards and episode-end flags are copied device to device
    into the buffer. The final observation of a *truncated* episode is kept in a
    per-env slot (selected with ``torch.where``, no host sync) -- with the policy
    state of that step, when there is one -- and its value is computed once at the
    end of the rollout; an env can be truncated at most once per rollout as long as
    ``num_steps`` is below the time limit (checked). Episode statistics and the
    non-finite, empty-mask and invalid-action checks cost one host transfer each
    per rollout. An env truncated twice within one rollout (only possible when
    ``num_steps`` exceeds the env's time limit, 10,000 steps for the MinAtar ids)
    is refused with a ValueError rather than bootstrapped wrongly.
    """

    def __init__(
        self, envs: Any, buf: RolloutBuffer, state: RolloutState, stats: EpisodeStats
    ) -> None:
        self.envs, self.buf, self.state, self.stats = envs, buf, state, stats
        T, N = buf.num_steps, buf.num_envs
        self.ep_r = torch.zeros((T, N), device=buf.device)
        self.ep_l = torch.zeros((T, N), dtype=torch.int64, device=buf.device)
        self.ep_done = torch.zeros((T, N), dtype=torch.bool, device=buf.device)
        self.final = alloc_obs(buf.obs_spec, (N,), buf.device)
        # The policy state after a truncated episode's last step (its final value's state).
        self.final_state = map_state(torch.zeros_like, state.policy_state)

    def step(
        self, t: int, action: torch.Tensor, pstate: PolicyState, value_of: StatefulValueFn
    ) -> torch.Tensor | None:
        buf, N, final = self.buf, self.buf.num_envs, self.final
        next_obs, reward, terminated, truncated, infos = self.envs.step(action)
        _copy_tensor_obs_(index_obs(buf.obs, t + 1), next_obs)
        buf.masks[t + 1].copy_(infos["action_mask"])
        trunc = truncated & ~terminated
        buf.rewards[t] = reward
        buf.terminated[t] = terminated
        buf.truncated[t] = trunc
        if isinstance(final, dict):
            for k, v in final.items():
                sel = trunc.view((N,) + (1,) * (v.dim() - 1))
                v.copy_(torch.where(sel, infos["final_obs"][k], v))
        else:
            keep = trunc.view((N,) + (1,) * (final.dim() - 1))
            final.copy_(torch.where(keep, infos["final_obs"], final))
        self.ep_done[t] = infos["_episode"]
        self.ep_r[t] = infos["episode"]["r"]
        self.ep_l[t] = infos["episode"]["l"]
        if pstate is None:
            return None
        self.final_state = _where_rows(trunc, pstate, self.final_state)
        return terminated | truncated

    def finish(self, pstate: PolicyState, value_of: StatefulValueFn) -> int:
        buf, T = self.buf, self.buf.num_steps
        truncs = buf.truncated.sum(0)
        if bool((truncs > 1).any()):
            raise ValueError(
                f"an env was truncated twice in one rollout of {T} steps: num_steps must be "
                "below the env's time limit"
            )
        final_values = value_of(self.final, self.final_state).float().unsqueeze(0)
        buf.final_values.copy_(buf.truncated * final_values)
        check_rollout_finite(buf, self.state.steps, buf.rewards)
        buf.next_value.copy_(value_of(index_obs(buf.obs, T), pstate))
        if not bool(buf.masks[1:].any(dim=-1).all()):
            t, i = _first_bad(~buf.masks[1:].any(dim=-1)) or (0, 0)
            raise ValueError(f"action mask has no valid action for env index {i} at step {t}")
        invalid = buf.count_invalid_actions()
        ep_done = self.ep_done
        idx = torch.nonzero(ep_done)  # [E, 2] (t, env), in time order
        if idx.numel():
            r = self.ep_r[ep_done].cpu().tolist()
            ln = self.ep_l[ep_done].cpu().tolist()
            envs_idx = idx[:, 1].cpu().numpy()
            stats = self.stats
            stats.returns.extend(float(x) for x in r)
            stats.lengths.extend(int(x) for x in ln)
            stats.game_ids.extend(int(self.state.game_ids[i]) for i in envs_idx)
        return invalid
