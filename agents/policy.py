"""A trained masked policy on its own: network, spaces, env ids, for inference or as a teacher.

:class:`MaskedPolicy` is what a trainer trains and what :func:`load_policy`
gives back from any maskrl checkpoint (a PPO agent, an expert, an Actor-Mimic
student) *without* an optimizer and without touching torch's global random
generator: loading five experts as teachers changes nothing else in the
program.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskrl.agents.checkpoint import load_checkpoint, space_from_dict, space_to_dict
from maskrl.agents.networks import build_actor_critic
from maskrl.agents.rollout import Obs, _empty_message, _space_spec, empty_mask_rows, obs_to_tensor
from maskrl.agents.trainer import TrainerRNG, check_finite_params, resolve_device
from maskrl.distributions import MaskedPolicyHead
from maskrl.quant import apply_quant_spec, quant_spec

__all__ = [
    "CHECKPOINT_FORMATS",  # noqa: F822 (served by the module's __getattr__)
    "MaskedPolicy",
    "action_layout",
    "eval_mode",
    "load_policy",
]


def __getattr__(name: str) -> Any:
    # ``CHECKPOINT_FORMATS``: the checkpoint formats this version reads (``format``
    # key of a checkpoint), read from the trainer registry when asked for, so a
    # registered trainer's checkpoints count too.
    if name == "CHECKPOINT_FORMATS":
        from maskrl.agents.registry import checkpoint_formats

        return checkpoint_formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def action_layout(action_space: Any) -> tuple[list[int], tuple[int, ...]]:
    """``(nvec, action_shape)`` of a ``Discrete`` or ``MultiDiscrete`` space starting at 0.

    Raises:
        ValueError: any other action space, or one whose actions do not start at 0
            (mask entry ``k`` must be action ``k``).
    """
    from gymnasium import spaces

    if isinstance(action_space, spaces.Discrete | spaces.MultiDiscrete) and np.any(
        np.asarray(action_space.start) != 0
    ):
        raise ValueError(
            f"action space {action_space} does not start at 0: mask index k must be action k "
            "(wrap the env with gymnasium.wrappers.TransformAction to shift it)"
        )
    if isinstance(action_space, spaces.Discrete):
        return [int(action_space.n)], ()
    if isinstance(action_space, spaces.MultiDiscrete):
        nvec = [int(n) for n in np.asarray(action_space.nvec).ravel()]
        return nvec, (len(nvec),)
    raise ValueError(f"maskrl supports Discrete and MultiDiscrete actions, got {action_space}")


def _check_seed(seed: Any) -> None:
    from maskrl.agents.config import MAX_SEED

    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Run ``net`` in eval mode for the block, then restore every submodule's own mode.

    What only reads a network (acting, evaluating, labelling as a teacher) goes
    through this: in training mode a QAT network's observers move their ranges
    with every batch (and a batch-norm its statistics), so a "read" would
    change the model and the next answer.
    """
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, training in modes:
            m.training = training


def is_multigame_space(space: Any) -> bool:
    """Whether ``space`` is a multi-game observation space (a ``Dict`` with ``obs`` and ``game_id``)."""
    from gymnasium import spaces

    return isinstance(space, spaces.Dict) and {"obs", "game_id"} <= set(space.spaces)


def _check_discrete(arr: np.ndarray, space: Any, what: str) -> None:
    """ValueError unless every entry of ``arr`` is an integer of the ``Discrete`` ``space``.

    Converting to the network's int64 would silently truncate 0.5 to 0, and an
    index past the end would fail deep inside an embedding (a multi-game
    policy's ``game_id``). Spaces other than ``Discrete`` are not checked here.
    """
    from gymnasium import spaces

    if not isinstance(space, spaces.Discrete) or arr.size == 0:
        return
    lo, hi = int(space.start), int(space.start) + int(space.n) - 1
    name = "game id" if what.endswith("['game_id']") else "value"
    if arr.dtype == np.bool_ or not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
        bad = arr.ravel()[0] if arr.dtype == np.bool_ else _first_non_integer(arr)
        raise ValueError(f"{what} must hold integers in [{lo}, {hi}] (a {name}), got {bad!r}")
    if arr.min() < lo or arr.max() > hi:
        bad = arr.min() if arr.min() < lo else arr.max()
        raise ValueError(
            f"{what} must be in [{lo}, {hi}] (a {name} of {space}), got {bad.item()!r}"
        )


def _first_non_integer(arr: np.ndarray) -> Any:
    flat = arr.ravel()
    bad = ~np.isfinite(flat) | (flat != np.round(flat))
    return flat[np.flatnonzero(bad)[0]].item()


def _shape_of(spec: Any) -> Any:
    if isinstance(spec, dict):
        return {k: _shape_of(v) for k, v in spec.items()}
    return spec[0]


class MaskedPolicy:
    """A network mapping observations to ``(logits, value)``, with what it needs to act.

    Args:
        net: the network (``forward(obs) -> (logits [B, n], value [B])``).
        observation_space, action_space: the env's single spaces.
        env_ids: the ids it was trained on (several: a multi-game policy, in that order).
        network_kwargs: how the default network was built (keyword arguments of
            :func:`maskrl.agents.build_actor_critic`); None for a custom network.
        device: where the network runs.
        seed: seeds the policy's own generator (used by :meth:`predict` when it samples).

    The mask is part of every call: a policy is only defined together with the
    actions that are valid.
    """

    def __init__(
        self,
        net: nn.Module,
        observation_space: Any,
        action_space: Any,
        env_ids: list[str] | None = None,
        network_kwargs: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        _check_seed(seed)
        self.device = resolve_device(device)
        self.observation_space, self.action_space = observation_space, action_space
        self.env_ids = list(env_ids) if env_ids else None
        self.network_kwargs = network_kwargs
        nvec, self.action_shape = action_layout(action_space)
        self.head = MaskedPolicyHead(nvec)
        self.n_logits = sum(nvec)
        self.obs_spec = _space_spec(observation_space)
        self.net = net.to(self.device)
        self.rng = TrainerRNG(seed, self.device)

    @classmethod
    def build(
        cls,
        observation_space: Any,
        action_space: Any,
        env_ids: list[str] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        **network_kwargs: Any,
    ) -> MaskedPolicy:
        """A policy with the default network for the spaces (see :func:`build_actor_critic`).

        The network's initial weights are drawn from a generator seeded with
        ``seed`` (torch's global generator is left as it was).
        """
        _check_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_actor_critic(observation_space, action_space, **network_kwargs)
        return cls(net, observation_space, action_space, env_ids, network_kwargs, device, seed)

    @property
    def is_multigame(self) -> bool:
        """Whether the policy reads multi-game observations (``{"obs", "game_id"}``), even of one game."""
        return is_multigame_space(self.observation_space)

    @property
    def is_recurrent(self) -> bool:
        """Whether the network carries a per-env state (recurrent PPO's LSTM): act with
        :meth:`predict_recurrent` then."""
        return bool(getattr(self.net, "is_recurrent", False))

    def initial_state(self, batch: int) -> Any:
        """The state of ``batch`` envs at the start of an episode (zeros ``(h, c)``; None if feedforward)."""
        if not self.is_recurrent:
            return None
        return self.net.initial_state(batch, self.device)  # type: ignore[operator]

    # ------------------------------------------------------------------ acting
    def _check_obs(self, obs: Any, batch: int, single: bool) -> Any:
        """``obs`` as numpy with a batch dim; ValueError naming expected and given shapes."""
        expected = _shape_of(self.obs_spec)
        if isinstance(expected, dict):
            if not isinstance(obs, dict):
                raise ValueError(
                    f"observation must be a dict with keys {sorted(expected)}, got {type(obs).__name__}"
                )
            missing = sorted(set(expected) - set(obs))
            if missing:
                raise ValueError(f"observation is missing key(s) {missing}")
            out = {k: self._check_leaf(obs[k], s, batch, single, k) for k, s in expected.items()}
            for k, arr in out.items():
                _check_discrete(arr, self.observation_space[k], f"observation[{k!r}]")
            return out
        arr = self._check_leaf(obs, expected, batch, single, None)
        _check_discrete(arr, self.observation_space, "observation")
        return arr

    @staticmethod
    def _check_leaf(
        x: Any, shape: tuple[int, ...], batch: int, single: bool, key: str | None
    ) -> Any:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        want = tuple(shape) if single else (batch, *shape)
        if arr.shape != want:
            what = f"observation[{key!r}]" if key else "observation"
            raise ValueError(
                f"{what} has shape {arr.shape}, expected {want} "
                f"({'one observation' if single else f'a batch of {batch} matching action_mask'})"
            )
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"observation has non-numeric dtype {arr.dtype}")
        batched = arr[None] if single else arr
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            what = f"observation[{key!r}]" if key else "observation"
            rows = np.flatnonzero(~np.isfinite(batched.reshape(len(batched), -1)).all(1))
            raise ValueError(
                f"{what} holds NaN or infinite values (batch row(s) {rows[:8].tolist()}): "
                "an action chosen on it would be meaningless"
            )
        return batched

    def check_mask(self, action_mask: Any) -> tuple[np.ndarray, bool]:
        """``(mask (B, n) bool, single)``; ValueError for a bad shape, dtype or an empty row."""
        mask = np.asarray(action_mask)
        single = mask.ndim == 1
        if single:
            mask = mask[None]
        if mask.ndim != 2 or mask.shape[1] != self.n_logits:
            raise ValueError(
                f"action_mask has shape {np.asarray(action_mask).shape}, expected (n,) or (B, n) "
                f"with n={self.n_logits}"
            )
        if mask.dtype != np.bool_:
            # The package's one rule: boolean, or integers that are all 0/1; floats are refused.
            if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
                raise ValueError(
                    f"action_mask must be boolean or 0/1 integers, got dtype {mask.dtype}"
                )
            mask = mask.astype(bool)
        empty = empty_mask_rows(mask, self.head.nvec)
        if empty:
            raise ValueError(_empty_message(empty, "row(s)", self.head.multi))
        return mask, single

    def predict(self, obs: Any, action_mask: Any, deterministic: bool = False) -> np.ndarray:
        """Choose actions for one observation or a batch; never a masked action.

        Shapes: ``obs`` as the env's observation (or with a leading batch dim
        ``B``), ``action_mask`` ``(n,)`` or ``(B, n)``. Returns a numpy action
        per observation (``int64``).

        Raises:
            ValueError: a mask of the wrong shape or dtype, a row with no valid
                action, or an observation whose shape is not the policy's.
        """
        if self.is_recurrent:
            raise ValueError(
                "this policy is recurrent: act with predict_recurrent(obs, action_mask, state), "
                "which returns the actions and the next state"
            )
        if not isinstance(deterministic, (bool, np.bool_)):
            raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
        mask, single = self.check_mask(action_mask)
        arr = self._check_obs(obs, mask.shape[0], single)
        with torch.inference_mode(), eval_mode(self.net):
            t_obs = obs_to_tensor(arr, self.device, self.obs_spec)
            logits, _ = self.net(t_obs)
            action, _ = self.head.sample(
                logits,
                torch.as_tensor(mask, device=self.device),
                deterministic,
                generator=self.rng.device_gen,
            )
        out = action.cpu().numpy()
        return out[0] if single else out

    def predict_recurrent(
        self,
        obs: Any,
        action_mask: Any,
        state: Any = None,
        deterministic: bool = False,
        episode_start: Any = None,
    ) -> tuple[np.ndarray, Any]:
        """A recurrent policy's step: ``(actions, next_state)``; never a masked action.

        Carry the returned state to the next call. ``state=None`` is the start
        of an episode for every env (:meth:`initial_state`); ``episode_start``
        (bool, one per env) zeroes the state of the envs whose episode begins
        with this observation (after a reset). Shapes as in :meth:`predict`;
        the state is ``(h, c)``, each ``[B, lstm_hidden]`` (``B = 1`` for a
        single observation).

        Raises:
            ValueError: a feedforward policy (use :meth:`predict`), a state of
                the wrong shape, or what :meth:`predict` refuses.
        """
        if not self.is_recurrent:
            raise ValueError("this policy is feedforward: act with predict(obs, action_mask)")
        if not isinstance(deterministic, (bool, np.bool_)):
            raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
        mask, single = self.check_mask(action_mask)
        batch = mask.shape[0]
        arr = self._check_obs(obs, batch, single)
        if state is None:
            state = self.initial_state(batch)
        want = (batch, int(self.net.lstm_hidden))  # type: ignore[arg-type]
        if (
            not isinstance(state, tuple | list)
            or len(state) != 2
            or any(not isinstance(x, torch.Tensor) or tuple(x.shape) != want for x in state)
        ):
            got = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in state] if isinstance(state, tuple | list) else type(state).__name__  # fmt: skip
            raise ValueError(f"state must be (h, c), two tensors of shape {want}, got {got}")
        h, c = (x.to(self.device) for x in state)
        if episode_start is not None:
            start = np.asarray(episode_start, dtype=bool).reshape(-1)
            if start.shape != (batch,):
                raise ValueError(
                    f"episode_start has {start.size} entries, expected one per env ({batch})"
                )
            keep = torch.as_tensor(~start, device=self.device).to(h.dtype).unsqueeze(1)
            h, c = h * keep, c * keep
        with torch.inference_mode(), eval_mode(self.net):
            t_obs = obs_to_tensor(arr, self.device, self.obs_spec)
            logits, _, (h, c) = self.net(t_obs, (h, c))
            action, _ = self.head.sample(
                logits,
                torch.as_tensor(mask, device=self.device),
                deterministic,
                generator=self.rng.device_gen,
            )
        out = action.cpu().numpy()
        return (out[0] if single else out), (h, c)

    def logits_and_features(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, n], features [B, F])`` of a batch of tensor observations (a teacher's labels).

        Computed in eval mode: labelling never changes the teacher.
        """
        logits, features, _ = self.teacher_outputs(obs)
        return logits, features

    def teacher_outputs(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, n], features [B, F], value [B])``: everything a student can copy.

        Computed in eval mode: labelling never changes the teacher.
        """
        with eval_mode(self.net):
            features = self.net.features(obs)  # type: ignore[operator]
            logits, value = self.net(obs)
        return logits, features, value

    # ------------------------------------------------------------- persistence
    def checkpoint_entries(self) -> dict[str, Any]:
        """The checkpoint keys that describe the policy (shared by every trainer's checkpoint)."""
        return {
            "env_ids": self.env_ids,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "custom_network": self.network_kwargs is None,
            "network_kwargs": self.network_kwargs,
            "obs_layout": (self.network_kwargs or {}).get("obs_layout", "CHW"),
            "model": self.net.state_dict(),
            # Whether and how the network is quantized (plain data, None for float).
            "quant": quant_spec(self.net),
        }


def policy_from_checkpoint(
    ckpt: dict[str, Any],
    path: str | Path,
    device: str | torch.device,
    network: nn.Module | None,
    seed: int = 0,
) -> MaskedPolicy:
    """Rebuild the policy stored in a loaded checkpoint dict (see :meth:`MaskedPolicy.checkpoint_entries`)."""
    from maskrl.agents.registry import checkpoint_formats

    fmt = ckpt.get("format")
    formats = checkpoint_formats()
    if fmt not in formats:
        raise ValueError(
            f"checkpoint {path} has format {fmt!r}, which this version of maskrl does not read "
            f"(it reads {', '.join(formats)})"
        )
    obs_space = _stored_space(ckpt, "observation_space", path)
    act_space = _stored_space(ckpt, "action_space", path)
    try:
        kwargs = ckpt.get("network_kwargs")
        if kwargs is None and not ckpt.get("custom_network"):
            kwargs = {"obs_layout": ckpt.get("obs_layout", "CHW")}  # format maskrl.ppo/1
        if network is None:
            if kwargs is None:
                raise ValueError(
                    f"checkpoint {path} was trained with a custom network; pass network="
                )
            policy = MaskedPolicy.build(
                obs_space, act_space, ckpt.get("env_ids"), device, seed, **dict(kwargs)
            )
        else:
            policy = MaskedPolicy(
                network, obs_space, act_space, ckpt.get("env_ids"), None, device, seed
            )
        # A QAT checkpoint: re-prepare the float network, then load its state.
        apply_quant_spec(policy.net, ckpt.get("quant"))
        policy.net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"checkpoint {path} is not a valid maskrl checkpoint: {e}") from e
    bad = check_finite_params(policy.net)
    if bad is not None:
        raise ValueError(
            f"checkpoint {path} holds non-finite weights (in {bad}); it cannot be used"
        )
    policy.net.eval()  # a loaded policy only reads its network (trainers switch it back)
    return policy


def _stored_space(ckpt: dict[str, Any], key: str, path: str | Path) -> Any:
    """The Gymnasium space a checkpoint stores under ``key``; ValueError naming it if malformed."""
    if key not in ckpt:
        raise ValueError(f"checkpoint {path} is not a valid maskrl checkpoint: it has no {key}")
    try:
        space = space_from_dict(ckpt[key])
        if key == "observation_space":
            _space_spec(space)  # a dtype the trainers cannot hold is malformed too
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(
            f"checkpoint {path} has a malformed {key} {ckpt[key]!r:.200} ({detail})"
        ) from e
    return space


def load_policy(
    path: str | Path,
    device: str | torch.device = "auto",
    network: nn.Module | None = None,
    seed: int = 0,
) -> MaskedPolicy:
    """Load the policy of any maskrl checkpoint for inference or as a teacher.

    No optimizer is built and torch's global random generator is untouched.
    The network is in eval mode, and :meth:`MaskedPolicy.predict` keeps it
    there, so acting never changes it (a QAT network's ranges stay fixed).

    Args:
        path: a ``checkpoint.pt`` (PPO, expert or Actor-Mimic student).
        device: where the network runs.
        network: required if the policy was trained with a custom network.
        seed: seeds the policy's own sampling generator.

    Raises:
        ValueError: a missing, corrupt, unknown-format or non-finite checkpoint.

    Example::

        policy = load_policy("runs/breakout/checkpoint.pt", device="cpu")
        action = policy.predict(obs, info["action_mask"])
    """
    _check_seed(seed)
    ckpt = load_checkpoint(path)
    return policy_from_checkpoint(ckpt, path, device, network, seed)
