"""Shared pieces of the batched MinAtar games: the game interface and rendering helpers.

A game is a set of pure tensor functions over a *state*, a ``dict`` of tensors
whose leading dimension is the env index ``N``, except the keys a game lists in
``slot_major``: object slots stored ``(K, N)``, slot first. On a CPU an
elementwise op between a ``(N, K)`` tensor and a per-env ``(N, 1)`` one runs an
inner loop of ``K`` elements per env, several times slower than the same op on
``(K, N)`` and ``(N,)``, whose inner loop runs over all envs.

* ``reset(n, draws, device) -> state``: ``n`` fresh episodes; ``draws`` is
  ``(n, reset_draws)`` uniforms in ``[0, 1)``.
* ``step(state, action, draws) -> (state, reward, terminal)``: one MinAtar
  ``act`` for every env; ``action`` int64 ``(N,)`` (sticky actions already
  applied), ``draws`` ``(N, step_draws)``; ``reward`` float32 ``(N,)``,
  ``terminal`` bool ``(N,)``.
* ``render(state) -> obs``: float32 ``(N, C, 10, 10)``, MinAtar's ``state()``
  transposed to channels first.

Every random event of MinAtar (``RandomState.rand``/``randint``) is one column of
``draws``: a uniform ``u`` that the kernel turns into the event exactly as
MinAtar does (``u < 1/2``, ``1 + floor(5 u)`` for ``randint(1, 6)``, ...). The
kernel draws every column on every step and uses it only where the event
happens, so a step is a fixed sequence of tensor operations. Replaying a
reference run means filling the columns with what MinAtar's ``RandomState``
returned (:mod:`maskrl.envs.torch_minatar.reference`): ``rand()`` values as they
are (float64, so comparisons round the same way), ``randint(n) = k`` as
``u = (k + 0.5) / n``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Call",
    "State",
    "TorchMinAtarGame",
    "env_offsets",
    "merge_states",
    "move_x",
    "move_y",
    "on_screen",
    "render_points",
]

#: One batched game state: name -> tensor with leading env dimension.
State = dict[str, Tensor]

#: One recorded ``RandomState`` call: (method name, arguments, result).
Call = tuple[str, tuple[Any, ...], Any]


class TorchMinAtarGame:
    """Interface of one batched MinAtar game (see the module docstring).

    Attributes:
        name: MinAtar's module name (``"breakout"``, ...).
        channels: ``C``, the number of observation channels.
        minimal_actions: indices of the game's minimal action set in MinAtar's
            ``[noop, left, up, right, down, fire]``.
        step_draws: uniforms a step consumes (sticky actions not included).
        reset_draws: uniforms a reset consumes.
        ramping: MinAtar's ``difficulty_ramping``.
        stale_after_reset: state keys an autoreset may leave as they were: fields of
            object slots that the game reads only where the slot's alive flag is
            set (the flag itself is reset, so the slot is empty in the new episode).
        slot_major: state keys stored ``(K, N)`` (env index last; see the module
            docstring).
        reset_variants: games whose reset draws pick one of a few starts set this to
            their number (and implement :meth:`reset_variant` and
            :meth:`variant_reset_draws`), so that autoresets copy cached starts
            instead of building new ones; 0: none.
    """

    name: str = ""
    channels: int = 0
    minimal_actions: tuple[int, ...] = ()
    step_draws: int = 0
    reset_draws: int = 0
    stale_after_reset: frozenset[str] = frozenset()
    slot_major: frozenset[str] = frozenset()
    reset_variants: int = 0

    def __init__(self, ramping: bool = True) -> None:
        self.ramping = ramping

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """``n`` fresh episodes; ``draws``: ``(n, reset_draws)`` uniforms."""
        raise NotImplementedError

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One MinAtar ``act`` per env: ``(new_state, reward f32 (N,), terminal bool (N,))``."""
        raise NotImplementedError

    def render(self, state: State, out: Tensor | None = None) -> Tensor:
        """Observation float32 ``(N, C, 10, 10)``; drawn into ``out`` when given
        (a zeroed flat float32 buffer of ``N * C * 100 + 1`` elements)."""
        raise NotImplementedError

    def reset_variant(self, draws: Tensor) -> Tensor:
        """Which start (int64 ``(k,)`` in ``[0, reset_variants)``) reset draws
        ``(k, reset_draws)`` give."""
        raise NotImplementedError

    def variant_reset_draws(self, variant: int) -> list[float]:
        """Reset draws (one row) that give start ``variant``."""
        raise NotImplementedError

    def match_shapes(self, fresh: State, like: State) -> State:
        """``fresh`` (reset rows) shaped like ``like`` for row copies; games whose
        object lists grow (Seaquest on CPU) pad here."""
        return fresh

    # Replay: recorded RandomState calls of one act()/reset() -> this game's draw columns.
    def step_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """The ``step_draws`` columns reproducing ``calls`` (those after the sticky draw)."""
        if calls:
            raise AssertionError(f"{self.name}: unexpected random calls in a step: {calls}")
        return []

    def reset_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """The ``reset_draws`` columns reproducing the calls of one ``reset()``."""
        if calls:
            raise AssertionError(f"{self.name}: unexpected random calls in a reset: {calls}")
        return []


def randint_as_uniform(k: int, n: int) -> float:
    """The uniform ``u`` with ``floor(u * n) == k`` (centre of the bin, exact in float64)."""
    return (k + 0.5) / n


def uniform_to_int(u: Tensor, n: Tensor | int) -> Tensor:
    """``floor(u * n)`` as int64, clamped to ``[0, n - 1]`` (MinAtar's ``randint(n)``)."""
    k = torch.floor(u * n).to(torch.int64)
    hi = (n - 1) if isinstance(n, int) else (n - 1).clamp_min(0)
    return torch.minimum(k.clamp_min(0), torch.as_tensor(hi, device=u.device))


def merge_states(
    where: Tensor, new: State, old: State, slot_major: frozenset[str] = frozenset()
) -> State:
    """Rows of ``new`` where ``where`` (bool ``(N,)``) is True, of ``old`` elsewhere.

    Keys in ``slot_major`` are ``(K, N)``: ``where`` broadcasts along their last dim.
    """
    out: State = {}
    for key, value in old.items():
        w = where if key in slot_major else where.view(-1, *([1] * (value.dim() - 1)))
        out[key] = torch.where(w, new[key], value)
    return out


def render_points(
    n: int,
    channels: int,
    points: Sequence[tuple[int | Tensor, Tensor, Tensor, Tensor | None]],
    device: torch.device,
    out: Tensor | None = None,
) -> Tensor:
    """Draw point objects into a float32 ``(n, channels, 10, 10)`` observation.

    Fills one contiguous buffer (cheaper than one-hot comparisons per object, and
    the result needs no copy).

    Args:
        points: ``(channel, y, x, valid)`` per group of objects; ``channel`` an int or
            an int64 tensor shaped like ``y``; ``y``/``x`` int64 ``(n,)`` or
            slot-major ``(k, n)``; ``valid`` bool of the same shape, or None when
            every object of the group is drawn. Coordinates must be on screen
            wherever ``valid`` (callers fold their bounds checks into ``valid``).
        out: a zeroed float32 buffer of ``n * channels * 100 + 1`` elements to draw
            into (reused memory; see :class:`~maskrl.envs.torch_minatar.GameBatch`);
            None: a new one.
    """
    size = channels * 100
    trash = n * size  # one extra element takes the objects that are not drawn
    flat = torch.zeros(trash + 1, dtype=torch.float32, device=device) if out is None else out
    base, trash_t = env_offsets(n, size, device)
    for ch, y, x, valid in points:
        cell = torch.add(x, y, alpha=10)  # y * 10 + x in one op
        if isinstance(ch, Tensor):
            flat_idx = cell + (base + ch * 100)
        else:
            flat_idx = cell + _channel_offsets(n, size, ch, device)
        if valid is not None:
            flat_idx = torch.where(valid, flat_idx, trash_t)
        # One small fill per group: concatenating the indices first costs more, and
        # index_fill_ is faster than scatter_ of a scalar on CPU.
        flat.index_fill_(0, flat_idx.flatten(), 1.0)
    return flat[:trash].view(n, channels, 10, 10)


@functools.lru_cache(maxsize=64)
def env_offsets(n: int, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(arange(n) * size, n * size)``: each env's offset in a flat buffer of ``size``
    elements per env, ``(n,)``, and one scratch index past the end (0-dim); cached and
    shared, so never modified in place."""
    base = torch.arange(0, n * size, size, device=device)
    return base, torch.tensor(n * size, device=device)


@functools.lru_cache(maxsize=256)
def _channel_offsets(n: int, size: int, channel: int, device: torch.device) -> Tensor:
    """Flat index of cell 0 of ``channel`` in each env's observation, ``(n,)``."""
    return env_offsets(n, size, device)[0] + channel * 100


#: x and y steps of MinAtar's actions ``[noop, left, up, right, down, fire]``.
_MOVE_X = (0, -1, 0, 1, 0, 0)
_MOVE_Y = (0, 0, -1, 0, 1, 0)


@functools.lru_cache(maxsize=8)
def _move_tables(device: torch.device) -> tuple[Tensor, Tensor]:
    return (
        torch.tensor(_MOVE_X, dtype=torch.int64, device=device),
        torch.tensor(_MOVE_Y, dtype=torch.int64, device=device),
    )


def move_x(action: Tensor) -> Tensor:
    """The x step (-1, 0 or 1) of each MinAtar action in ``action`` (int64)."""
    return _move_tables(action.device)[0][action]


def move_y(action: Tensor) -> Tensor:
    """The y step (-1, 0 or 1) of each MinAtar action in ``action`` (int64)."""
    return _move_tables(action.device)[1][action]


def on_screen(x: Tensor) -> Tensor:
    """bool: column ``x`` is inside ``[0, 9]`` (two ops, one fewer than two compares)."""
    return x.clamp(0, 9) == x


def arange_grid(device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column index grids, int64 ``(10, 10)`` each."""
    r = torch.arange(10, device=device)
    return r.view(10, 1).expand(10, 10), r.view(1, 10).expand(10, 10)
