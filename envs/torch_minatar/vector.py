"""Gymnasium vector envs over the batched MinAtar games, on CPU or CUDA.

Everything stays on the env's device: observations, rewards, flags, masks and
episode statistics are tensors, and a step is a fixed sequence of tensor
operations over all envs (no Python loop over envs). Autoreset is same-step:
where an episode ended, ``obs`` and ``infos["action_mask"]`` already belong to
the new episode and ``infos["final_obs"]`` holds the last observation.

Infos after ``reset`` and ``step`` (always present, so nothing waits on a
device-to-host sync to decide which keys exist):

* ``"action_mask"``: bool ``(N, 6)``, the game's minimal action set per slot.
* ``"final_obs"`` (step only): float32 ``(N, C, 10, 10)`` (a dict like ``obs``
  for several games): the last observation of the episodes that ended this step,
  where ``"_final_obs"`` (bool ``(N,)``) is True, i.e. where
  ``terminated | truncated``; zero elsewhere.
* ``"episode"`` (step only): ``{"r": float32 (N,), "l": int64 (N,)}``, the return
  and length of the episodes that ended this step, where ``"_episode"`` is True
  (zero elsewhere).
* ``"game_id"`` (several games only): int64 ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from maskrl.device import resolve_device
from maskrl.envs.torch_minatar._base import State, TorchMinAtarGame, merge_states
from maskrl.envs.torch_minatar.asterix import Asterix
from maskrl.envs.torch_minatar.breakout import Breakout
from maskrl.envs.torch_minatar.freeway import Freeway
from maskrl.envs.torch_minatar.seaquest import Seaquest
from maskrl.envs.torch_minatar.space_invaders import SpaceInvaders

__all__ = [
    "TORCH_MINATAR_IDS",
    "GameBatch",
    "TorchMinAtarMultiGameVectorEnv",
    "TorchMinAtarVectorEnv",
    "make_game",
]

#: maskrl id -> batched game class.
TORCH_MINATAR_IDS: dict[str, type[TorchMinAtarGame]] = {
    "maskrl/MinAtar-Asterix-v0": Asterix,
    "maskrl/MinAtar-Breakout-v0": Breakout,
    "maskrl/MinAtar-Freeway-v0": Freeway,
    "maskrl/MinAtar-Seaquest-v0": Seaquest,
    "maskrl/MinAtar-SpaceInvaders-v0": SpaceInvaders,
}

# = maskrl.envs.MINATAR_MAX_EPISODE_STEPS, the registered ids' time limit.
_DEFAULT_MAX_STEPS = 10_000


def make_game(env_id: str, difficulty_ramping: bool = True) -> TorchMinAtarGame:
    """The batched game of a maskrl MinAtar id (``ValueError`` for other ids)."""
    try:
        cls = TORCH_MINATAR_IDS[env_id]
    except KeyError:
        raise ValueError(
            f"no batched torch version of {env_id!r}; backend='torch' supports "
            f"{sorted(TORCH_MINATAR_IDS)}"
        ) from None
    return cls(ramping=difficulty_ramping)


class GameBatch:
    """``n`` envs of one game: sticky actions, time limit, episode statistics, autoreset.

    The building block of the vector envs and of the conformance replay. All
    randomness comes in through ``draws`` arguments, so the same object runs from a
    ``torch.Generator`` or from draws recorded from MinAtar.

    Args:
        game: the batched game.
        n: number of envs.
        device: where the state lives.
        sticky_action_prob: probability of repeating the previous action (MinAtar: 0.1).
        max_episode_steps: truncation after this many steps (the registered ids: 10,000).
        lazy_reset: reset only the envs that ended, found with a device-to-host read
            (default: on CPU, where that read is free). Off, every step resets all envs
            and keeps the ended ones with ``torch.where``: no sync, as a GPU wants.
            Both give the same results.
        reuse_obs: :meth:`step` writes its observations into the same two buffers
            every step, so what one step returns is valid only until the next
            :meth:`step` (see :meth:`_obs_buffer`). Off (default): new tensors.
    """

    def __init__(
        self,
        game: TorchMinAtarGame,
        n: int,
        device: torch.device,
        sticky_action_prob: float = 0.1,
        max_episode_steps: int | None = _DEFAULT_MAX_STEPS,
        lazy_reset: bool | None = None,
        reuse_obs: bool = False,
    ) -> None:
        self.game = game
        self.lazy_reset = device.type == "cpu" if lazy_reset is None else lazy_reset
        self.n = n
        self.device = device
        self.sticky_action_prob = sticky_action_prob
        self.max_episode_steps = max_episode_steps
        #: columns of a step's draws: sticky, the game's step draws, the game's reset draws.
        self.draw_width = 1 + game.step_draws + game.reset_draws
        self.state: State = {}
        self.last_action = torch.zeros(n, dtype=torch.int64, device=device)
        self.ep_return = torch.zeros(n, dtype=torch.float32, device=device)
        self.ep_length = torch.zeros(n, dtype=torch.int64, device=device)
        self._start: tuple[State, Tensor] | None = None
        # Games with a few reset variants: one start per variant (env dim = variant).
        self._variants: tuple[State, Tensor] | None = None
        # (state shapes, per-key fills) of the cached start(s); see _reset_rows.
        self._fills: tuple[tuple[torch.Size, ...], list[tuple[str, str, Any]]] | None = None
        self.reuse_obs = reuse_obs
        # With reuse_obs: the observation and final-observation buffers (see
        # _obs_buffer), and the rows of the latter that the last step wrote.
        self._buffers: list[Tensor | None] = [None, None]
        self._final_rows: Tensor | None = None
        self._obs_numel = n * game.channels * 100
        if game.reset_draws == 0:
            start = game.reset(1, torch.empty(1, 0, device=device), device)
            self._start = (start, game.render(start))
        elif game.reset_variants:
            draws = torch.tensor(
                [game.variant_reset_draws(v) for v in range(game.reset_variants)],
                dtype=torch.float64,
                device=device,
            )
            starts = game.reset(game.reset_variants, draws, device)
            self._variants = (starts, game.render(starts))

    def _obs_buffer(self, final: bool = False) -> Tensor:
        """An all-zero flat float32 buffer for ``n`` observations (+1 scratch element),
        for a step's observations or, with ``final``, its final observations.

        Without ``reuse_obs``, a new zero tensor. With it, the same buffer every
        step, made zero again: all of it for observations (rendering writes
        anywhere), only the rows the last step wrote for final observations. On
        CPU a new multi-megabyte tensor per step costs page faults (the allocator
        hands freed memory back to the system), which at 1,024+ envs take longer
        than the whole game step.
        """
        if not self.reuse_obs:
            return torch.zeros(self._obs_numel + 1, device=self.device)
        i = 1 if final else 0
        buf = self._buffers[i]
        if buf is None:
            buf = torch.zeros(self._obs_numel + 1, device=self.device)
            self._buffers[i] = buf
        elif not final or self._final_rows is None:
            buf.zero_()
        elif self._final_rows.numel():
            buf[: self._obs_numel].view(self.n, -1).index_fill_(0, self._final_rows, 0.0)
        return buf

    def _fresh(self, k: int, draws: Tensor) -> tuple[State, Tensor]:
        """``k`` new episodes and their first observations.

        Games whose reset draws nothing start every episode alike: their one cached
        start is broadcast (as ``k`` expanded rows, or one row where ``k`` is ``n``,
        which ``torch.where`` broadcasts) instead of being rebuilt every step.
        """
        if self._start is None:
            fresh = self.game.reset(k, draws, self.device)
            return fresh, self.game.render(fresh)
        state, obs = self._start
        if k == self.n and not self.lazy_reset:
            return state, obs
        return {key: self._expand(key, v, k) for key, v in state.items()}, obs.expand(
            k, *obs.shape[1:]
        )

    def _expand(self, key: str, v: Tensor, k: int) -> Tensor:
        """One env's value of ``key`` as ``k`` envs' (a view)."""
        if key in self.game.slot_major:
            return v.expand(v.shape[0], k)
        return v.expand(k, *v.shape[1:])

    def _reset_rows(self, state: State, obs: Tensor, rows: Tensor, draws: Tensor | None) -> None:
        """Start new episodes in ``rows`` of ``state`` and ``obs``, in place.

        In place is safe: the step has not returned them yet, and the state is the
        step's new one (or the previous state's tensors, which the step drops).
        Games whose reset draws nothing start alike, and games with ``reset_variants`` start in one of a few
        ways: each key is then filled from the cached start(s) -- a scalar fill
        where the starts are one value throughout, the one start's row, or the row
        of each env's variant -- and the keys the game lists in
        ``stale_after_reset`` (fields of dead object slots) are left alone.
        """
        k = int(rows.numel())
        game = self.game
        slot_major = game.slot_major
        cached = self._start if self._start is not None else self._variants
        if cached is None:
            assert draws is not None
            fresh = game.reset(k, draws, self.device)
            obs.index_copy_(0, rows, game.render(fresh))
            fresh = game.match_shapes(fresh, state)
            for key, v in state.items():
                v.index_copy_(1 if key in slot_major else 0, rows, fresh[key])
            return
        shapes = tuple(v.shape for v in state.values())
        if self._fills is None or self._fills[0] != shapes:
            self._fills = (shapes, self._start_fills(cached[0], state))
        variant = None
        if self._variants is not None:
            assert draws is not None
            variant = game.reset_variant(draws)
            obs.index_copy_(0, rows, cached[1].index_select(0, variant))
        else:
            obs.index_copy_(0, rows, cached[1].expand(k, *cached[1].shape[1:]))
        for key, how, value in self._fills[1]:
            dim = 1 if key in slot_major else 0
            if how == "fill":
                state[key].index_fill_(dim, rows, value)
            elif how == "row":
                state[key].index_copy_(dim, rows, self._expand(key, value, k))
            else:  # one row per variant
                assert variant is not None
                state[key].index_copy_(dim, rows, value.index_select(dim, variant))

    def _start_fills(self, starts: State, like: State) -> list[tuple[str, str, Any]]:
        """Per state key, how a reset row is filled from ``starts`` (one start per
        variant): ``("fill", scalar)``, ``("row", the one start)`` or
        ``("variant", all starts)``."""
        starts = self.game.match_shapes(starts, like)
        fills: list[tuple[str, str, Any]] = []
        for key in like:
            if key in self.game.stale_after_reset:
                continue
            v = starts[key]
            dim = 1 if key in self.game.slot_major else 0
            first = v.select(dim, 0).unsqueeze(dim)
            if bool((v == v.flatten()[0]).all()):
                fills.append((key, "fill", v.flatten()[0].item()))
            elif bool((v == first).all()):
                fills.append((key, "row", first))
            else:
                fills.append((key, "variant", v))
        return fills

    def reset(self, draws: Tensor) -> Tensor:
        """Start all episodes; ``draws`` ``(n, reset_draws)``; returns obs ``(n, C, 10, 10)``."""
        self.state = self.game.reset(self.n, draws, self.device)
        self.last_action.zero_()
        self.ep_return.zero_()
        self.ep_length.zero_()
        return self.game.render(self.state)

    def step(
        self,
        action: Tensor,
        draws: Tensor,
        rand: Callable[[int, int], Tensor] | None = None,
    ) -> tuple[Tensor, ...]:
        """One step of every env with same-step autoreset.

        Args:
            action: int64 ``(n,)``, already validated.
            draws: ``(n, draw_width)`` uniforms: sticky, step draws, reset draws; or,
                with ``rand``, ``(n, 1 + step_draws)`` (no reset columns).
            rand: ``rand(rows, columns)`` -> uniforms; draws the reset columns for
                only the envs that reset (on CPU) instead of every env every step.

        Returns:
            ``obs, reward, terminated, truncated, final_obs, done, episode_r, episode_l``:
            obs/final_obs float32 ``(n, C, 10, 10)``, reward/episode_r float32 ``(n,)``,
            flags bool ``(n,)``, episode_l int64 ``(n,)``; final_obs, episode_r and
            episode_l are zero where not done.
        """
        game = self.game
        sticky = draws[:, 0] < self.sticky_action_prob
        action = torch.where(sticky, self.last_action, action)
        s = 1 + game.step_draws
        state, reward, terminated = game.step(self.state, action, draws[:, 1:s])
        if rand is None:

            def reset_draws(rows: Tensor | None) -> Tensor:
                return draws[:, s:] if rows is None else draws[rows, s:]
        else:

            def reset_draws(rows: Tensor | None) -> Tensor:
                k = self.n if rows is None else int(rows.numel())
                return rand(k, game.reset_draws)

        terminated = terminated.clone()  # it is also state["terminal"], which resets overwrite
        obs = game.render(state, self._obs_buffer())
        self.ep_return += reward
        self.ep_length += 1
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            # As Gymnasium's TimeLimit: truncated at the limit, even if also terminated.
            truncated = self.ep_length >= self.max_episode_steps
        done = terminated | truncated
        if self.lazy_reset:
            # Reset only the envs that ended (knowing which costs a sync: free on CPU).
            ended = torch.nonzero(done).flatten()
            flat = self._obs_buffer(final=True)
            self._final_rows = ended
            final_obs = flat[: self._obs_numel].view_as(obs)
            if ended.numel():
                final_obs.index_copy_(0, ended, obs.index_select(0, ended))
                draws_k = None if self._start is not None else reset_draws(ended)
                self._reset_rows(state, obs, ended, draws_k)
            self.state = state
        else:
            # A fixed sequence of operations, no sync: reset everything, keep what ended.
            fresh, fresh_obs = self._fresh(self.n, reset_draws(None))
            fresh = game.match_shapes(fresh, state)
            self.state = merge_states(done, fresh, state, game.slot_major)
            final_obs = torch.where(done[:, None, None, None], obs, 0.0)
            obs = torch.where(done[:, None, None, None], fresh_obs, obs)
        episode_r = torch.where(done, self.ep_return, 0.0)
        episode_l = torch.where(done, self.ep_length, 0)
        self.ep_return.masked_fill_(done, 0.0)
        self.ep_length.masked_fill_(done, 0)
        # MinAtar's wrapper starts each episode with last_action = 0 (no sticky carry-over).
        self.last_action = action.masked_fill(done, 0)
        return obs, reward, terminated, truncated, final_obs, done, episode_r, episode_l


class _TorchMinAtarBase(VectorEnv[Any, Tensor, Tensor]):
    """Shared body of the one-game and several-game torch vector envs."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "obs_layout": "CHW"}
    #: Read by trainers: observations, rewards and masks are tensors on ``device``.
    backend = "torch"

    def __init__(
        self,
        env_ids: Sequence[str],
        num_envs: int,
        device: str | torch.device,
        seed: int | None,
        sticky_action_prob: float,
        difficulty_ramping: bool,
        max_episode_steps: int | None,
        check_actions: bool,
        copy_obs: bool,
    ) -> None:
        if num_envs < len(env_ids):
            raise ValueError(
                f"num_envs={num_envs} is smaller than the number of games ({len(env_ids)})"
            )
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.device = resolve_device(device)
        self.env_ids = list(env_ids)
        self.num_envs = num_envs
        self.check_actions = check_actions
        if not isinstance(copy_obs, bool):
            raise ValueError(f"copy_obs must be True or False, got {copy_obs!r}")
        #: False: ``step`` may write the next step's observations into the tensors it
        #: returned (see the class docstring).
        self.copy_obs = copy_obs
        games = [make_game(i, difficulty_ramping) for i in self.env_ids]
        k = len(games)
        # Slot i plays game i % k (as the numpy multi-game env); batch g holds slots g::k.
        # With several games the batches' observations are copied into a new tensor
        # (_assemble), so their buffers never reach the caller and can always be reused.
        self._batches = [
            GameBatch(
                g,
                len(range(j, num_envs, k)),
                self.device,
                sticky_action_prob,
                max_episode_steps,
                reuse_obs=not copy_obs or k > 1,
            )
            for j, g in enumerate(games)
        ]
        self._channels = max(g.channels for g in games)
        masks = torch.zeros(num_envs, 6, dtype=torch.bool, device=self.device)
        for j, g in enumerate(games):
            masks[j::k, list(g.minimal_actions)] = True
        self._masks = masks
        # Validity lookup: row 8 * slot's game + action + 1, actions clamped to [-1, 6].
        lut = torch.zeros(k, 8, dtype=torch.bool, device=self.device)
        for j, g in enumerate(games):
            lut[j, [a + 1 for a in g.minimal_actions]] = True
        self._valid_lut = lut.flatten()
        self._action_range = torch.zeros(6, device=self.device)  # indexed to check 0..5
        self._lut_base = (torch.arange(num_envs, device=self.device) % k) * 8 + 1
        self._game_id = torch.arange(num_envs, device=self.device) % k
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()  # nondeterministic; touches no global generator
        else:
            self._generator.manual_seed(seed)
        self._started = False
        self._steps = 0
        self.single_action_space = spaces.Discrete(6)
        self.action_space = batch_space(self.single_action_space, num_envs)

    # -- helpers -------------------------------------------------------------------------
    def _rand(self, n: int, width: int) -> Tensor:
        return torch.rand(n, width, generator=self._generator, device=self.device)

    def _assemble(self, parts: Sequence[Tensor]) -> Tensor:
        """Per-game ``(n_g, C_g, 10, 10)`` -> ``(N, Cmax, 10, 10)``, zero-padded channels."""
        if len(parts) == 1 and parts[0].shape[1] == self._channels:
            return parts[0]
        k = len(parts)
        out = torch.zeros(self.num_envs, self._channels, 10, 10, device=self.device)
        for j, p in enumerate(parts):
            out[j::k, : p.shape[1]] = p
        return out

    def _flat(self, parts: Sequence[Tensor]) -> Tensor:
        """Per-game ``(n_g,)`` -> ``(N,)`` in slot order."""
        if len(parts) == 1:
            return parts[0]
        k = len(parts)
        out = torch.empty(self.num_envs, dtype=parts[0].dtype, device=self.device)
        for j, p in enumerate(parts):
            out[j::k] = p
        return out

    def _wrap_obs(self, obs: Tensor) -> Any:
        return obs

    def _validate(self, actions: Any) -> Tensor:
        if not isinstance(actions, Tensor):
            raise ValueError(
                f"actions must be a torch.Tensor of int64 on {self.device}, got "
                f"{type(actions).__name__}"
            )
        if actions.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},), got {tuple(actions.shape)}"
            )
        if actions.dtype != torch.int64:
            raise ValueError(f"actions must be int64, got {actions.dtype}")
        if actions.device != self.device:
            raise ValueError(f"actions are on {actions.device}, the env is on {self.device}")
        if not self.check_actions:
            # Default: every action of Discrete(6) runs; the games ignore one outside
            # the minimal set (MinAtar's no-op). Only the range is checked: on CPU with
            # a clear error (reading the result costs no device sync); on CUDA by an
            # index into a 6-entry table, which fails on the device, asynchronously,
            # instead of some games silently playing an action 7 as the no-op.
            if self.device.type != "cpu":
                torch.index_select(self._action_range, 0, actions)  # bounds-checked, no sync
                return actions
            low, high = torch.aminmax(actions)
            if int(low) < 0 or int(high) > 5:
                bad = torch.nonzero((actions < 0) | (actions > 5)).flatten()[:5].tolist()
                detail = "; ".join(f"slot {i} took {int(actions[i])}" for i in bad)
                raise ValueError(
                    f"action(s) outside Discrete(6) at vector step {self._steps}: {detail}"
                )
            return actions
        ok = self._valid_lut[actions.clamp(-1, 6) + self._lut_base]
        if not bool(ok.all()):  # one device sync per step, hence opt-in
            bad = torch.nonzero(~ok).flatten()[:5].tolist()
            detail = "; ".join(
                f"slot {i} ({self.env_ids[i % len(self.env_ids)]}) took "
                f"{int(actions[i])}, valid {torch.nonzero(self._masks[i]).flatten().tolist()}"
                for i in bad
            )
            raise ValueError(f"invalid action(s) at vector step {self._steps}: {detail}")
        return actions

    def _extra_infos(self, infos: dict[str, Any]) -> dict[str, Any]:
        return infos

    # -- VectorEnv API ---------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start all episodes; ``seed`` reseeds the env's own ``torch.Generator``.

        Returns:
            ``(obs, infos)``; infos hold ``"action_mask"`` bool ``(N, 6)``.
        """
        if seed is not None:
            if not isinstance(seed, int):
                raise ValueError(f"seed must be an int or None for this env, got {seed!r}")
            self._generator.manual_seed(seed)
        parts = [b.reset(self._rand(b.n, b.game.reset_draws)) for b in self._batches]
        self._started = True
        self._steps = 0
        infos = self._extra_infos({"action_mask": self._masks.clone()})
        return self._wrap_obs(self._assemble(parts)), infos

    def step(self, actions: Tensor) -> tuple[Any, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Step all envs with int64 ``(N,)`` actions on the env's device.

        Raises:
            ValueError: actions of the wrong type, shape, dtype or device; on CPU an
                action outside ``0..5`` (on CUDA a device-side index error); with
                ``check_actions`` (costs one device sync per step) an action outside
                a slot's minimal action set, or outside ``0..5`` on any device.
                Without it (default) an action outside the minimal set acts as the
                no-op, as in MinAtar.
            RuntimeError: ``step`` before ``reset``.
        """
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = self._validate(actions)
        self._steps += 1
        k = len(self._batches)
        outs = [
            b.step(
                actions[j::k] if k > 1 else actions,
                self._rand(b.n, 1 + b.game.step_draws),
                self._rand,
            )
            for j, b in enumerate(self._batches)
        ]
        obs = self._assemble([o[0] for o in outs])
        reward, terminated, truncated = (self._flat([o[i] for o in outs]) for i in (1, 2, 3))
        final_obs = self._assemble([o[4] for o in outs])
        done, ep_r, ep_l = (self._flat([o[i] for o in outs]) for i in (5, 6, 7))
        infos: dict[str, Any] = {
            "action_mask": self._masks.clone(),
            "final_obs": self._wrap_obs(final_obs),
            "_final_obs": done,
            "episode": {"r": ep_r, "l": ep_l},
            "_episode": done.clone(),
        }
        return self._wrap_obs(obs), reward, terminated, truncated, self._extra_infos(infos)

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to release (the state is plain tensors)."""


class TorchMinAtarVectorEnv(_TorchMinAtarBase):
    """``num_envs`` copies of one MinAtar game, stepped as one batched torch program.

    Observations float32 ``(N, C, 10, 10)``; actions int64 ``(N,)``; rewards float32,
    flags bool, all on ``device``. See the module docstring for the infos.

    Args:
        env_id: one of :data:`TORCH_MINATAR_IDS` (``"maskrl/MinAtar-Breakout-v0"``, ...).
        num_envs: number of envs.
        device: ``"cpu"``, ``"cuda"``, ``torch.device(...)``.
        seed: seeds the env's ``torch.Generator`` (the first ``reset()`` continues from
            it); None: a nondeterministic seed. ``reset(seed=s)`` reseeds it.
        sticky_action_prob: MinAtar's sticky actions (default 0.1).
        difficulty_ramping: MinAtar's difficulty ramping (default on).
        max_episode_steps: truncation limit (default 10,000 as the registered ids; None: none).
        check_actions: raise ``ValueError`` on an action outside the minimal set (to
            debug an agent's masking; costs one device sync per step). Default False:
            such an action acts as the no-op, as in MinAtar, and nothing is read
            back from the device. An action outside ``0..5`` is a ``ValueError`` on
            CPU; on CUDA it fails a device-side index check (no sync, so the error
            surfaces at the next synchronisation), or a ``ValueError`` with
            ``check_actions``.
        copy_obs: True (default): every ``step`` returns new observation tensors,
            which stay valid as long as the caller holds them. False: ``obs`` and
            ``infos["final_obs"]`` returned by ``step`` are **valid only until the
            next** ``step`` **or** ``reset``, which may write into the same memory
            (the env reuses its observation buffers, as shared-memory vector envs
            do); ``obs.clone()`` keeps one longer. Much faster on CPU at 1,000+
            envs, where a new multi-megabyte tensor per step costs page faults;
            right for a caller that copies each step's observations before the next
            step, as the trainers' rollout does (they build the env this way).

    Example:
        >>> envs = TorchMinAtarVectorEnv("maskrl/MinAtar-Breakout-v0", 4, seed=0)
        >>> obs, infos = envs.reset()
        >>> tuple(obs.shape), infos["action_mask"][0].nonzero().flatten().tolist()
        ((4, 4, 10, 10), [0, 1, 3])
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = _DEFAULT_MAX_STEPS,
        check_actions: bool = False,
        copy_obs: bool = True,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(
            [env_id],
            num_envs,
            device,
            seed,
            sticky_action_prob,
            difficulty_ramping,
            max_episode_steps,
            check_actions,
            copy_obs,
        )
        self.single_observation_space = spaces.Box(0.0, 1.0, (self._channels, 10, 10), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)


class TorchMinAtarMultiGameVectorEnv(_TorchMinAtarBase):
    """Several MinAtar games in one batch: slot ``i`` plays ``env_ids[i % k]``.

    Observation ``{"obs": float32 (N, Cmax, 10, 10), "game_id": int64 (N,)}``; a
    game with fewer channels than ``Cmax`` gets zero channels at the end. Infos
    also hold ``"game_id"`` int64 ``(N,)``; ``infos["final_obs"]`` has the same
    dict form. Arguments as :class:`TorchMinAtarVectorEnv`, with ``env_ids``
    (``copy_obs=False`` makes the same promise, valid until the next ``step``).
    """

    def __init__(
        self,
        env_ids: Sequence[str],
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        max_episode_steps: int | None = _DEFAULT_MAX_STEPS,
        check_actions: bool = False,
        copy_obs: bool = True,
    ) -> None:
        if not env_ids:
            raise ValueError("make_multigame_vec needs at least one env id")
        super().__init__(
            env_ids,
            num_envs,
            device,
            seed,
            sticky_action_prob,
            difficulty_ramping,
            max_episode_steps,
            check_actions,
            copy_obs,
        )
        self.single_observation_space = spaces.Dict(
            {
                "obs": spaces.Box(0.0, 1.0, (self._channels, 10, 10), np.float32),
                "game_id": spaces.Discrete(len(self.env_ids)),
            }
        )
        self.observation_space = batch_space(self.single_observation_space, num_envs)

    def _wrap_obs(self, obs: Tensor) -> Any:
        return {"obs": obs, "game_id": self._game_id.clone()}

    def _extra_infos(self, infos: dict[str, Any]) -> dict[str, Any]:
        infos["game_id"] = self._game_id.clone()
        return infos
