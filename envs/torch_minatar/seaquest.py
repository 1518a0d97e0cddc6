"""Seaquest (MinAtar ``seaquest.py``) as a batched tensor program.

MinAtar keeps Seaquest's objects in Python lists, iterates some of them in
reverse while removing items, and lets the first match in list order win a
collision. Here every list is a fixed number of slots, stored slot-major
``(K, N)`` (see :mod:`maskrl.envs.torch_minatar._base`), with an ``alive`` flag and
a ``seq`` number (the step-wide counter at append time), so list order is
``seq`` order without compaction. A slot's other fields (``x``, ``y``, ``dx`` the
direction as +1/-1, timers) are read only where it is alive, so a dead slot's are
stale (an autoreset leaves them):

* friendly bullets ``fb_*`` (2 slots: one shot per 5 steps, and a bullet is gone
  by the end of its 9th step, so a third shot never meets the first), divers
  ``dv_*`` (4 slots; one spawn per 30 steps, each gone after at most 61), and the
  enemy fish and enemy subs together in ``en_*`` with an ``en_sub`` flag
  (:data:`ENEMY_SLOTS` on a GPU: at most one enemy spawns per step and each
  leaves the screen after at most 61 steps at the slowest speed or 31 at the
  fastest, which is only reached at the fastest spawn rate, so 32 slots are never
  all used in any reachable state; on CPU the list starts with
  :data:`CPU_ENEMY_SLOTS` slots and doubles whenever a spawn finds it full, which
  costs a device read per step -- free on CPU -- and keeps every op small);
* enemy bullets are a bool grid per direction ``(N, 2, 10, 10)``: they interact
  only with the player, so their order and multiplicity never matter.

The sequential loops of seaquest.py become:

* friendly bullets (reverse order, each hits the first fish, else the first sub,
  at its cell): a loop over the 2 bullet ranks, vectorised over enemies;
* divers (reverse order, collected while ``diver_count < 6``): a count of the
  earlier candidates in processing order decides (the cap is greedy);
* enemy subs, then enemy fish (reverse order, each takes the first bullet at its
  cell): the same matching computed bullet-major (bullets in list order, each
  taken by the first unmatched sub, else fish, in processing order) -- within one
  cell every bullet meets every enemy, so both greedy orders pair the k-th enemy
  with the k-th bullet, subs first. Fish and subs share one slot list because
  nothing else in a step depends on which of the two loops runs first: collisions
  with the player only set the termination flag, and MinAtar's enemy-bullet loop
  between them only reads the player's position.

Where fish and subs both match (a friendly bullet's target), the fish comes first,
as in seaquest.py. Kept quirks of seaquest.py: a sub that leaves the screen or is shot still fires
if its shot timer is due; surfacing with 6 divers leaves ``diver_count == -1``
(later surfacings then never end the game and keep lowering it).

Not reproduced: seaquest.py removes list items *by value*; if two objects of one
list were equal in every field (position, direction and timers), MinAtar could
remove the other one and then visit the survivor twice. Such twins need two
enemies spawned in the same cell whose timers coincide; no conformance run has
produced one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from maskrl.envs.torch_minatar._base import (
    Call,
    State,
    TorchMinAtarGame,
    env_offsets,
    move_x,
    move_y,
    on_screen,
    randint_as_uniform,
    render_points,
)

__all__ = ["CPU_ENEMY_SLOTS", "ENEMY_SLOTS", "Seaquest"]

_MAX_OXYGEN = 200
_INIT_SPAWN_SPEED = 20
_DIVER_SPAWN_SPEED = 30
_INIT_MOVE_INTERVAL = 5
_SHOT_COOL_DOWN = 5
_ENEMY_SHOT_INTERVAL = 10
_DIVER_MOVE_INTERVAL = 5

#: Enemy slots (fish and subs together), fixed, off the CPU: 32 of each kind.
ENEMY_SLOTS = 64
#: Initial enemy slots on CPU (grown on demand).
CPU_ENEMY_SLOTS = 8
_ENEMY_FIELDS = ("alive", "dx", "sub", "x", "y", "seq", "timer", "shot")
_BULLET_SLOTS = 2
_DIVER_SLOTS = 4
# Priorities are compared as int32: seq grows by at most 3 a step, so an episode of
# fewer than 350 million steps keeps seq below _SUB_RANK and every priority below _BIG.
_BIG = (1 << 31) - 1
_SUB_RANK = 1 << 30  # above any seq: orders fish before subs (or subs before fish)


def _append(
    alive: Tensor, cond: Tensor, fields: dict[str, tuple[Tensor, Tensor | int]]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Put a new object in the first free slot where ``cond`` (bool ``(N,)``).

    ``fields`` maps a name to ``(slots (K, N), value (N,) or a number)``; returns the
    new alive mask and the updated slots.
    """
    free = ~alive
    place = free & (torch.cumsum(free, dim=0) == 1) & cond
    out = {k: torch.where(place, v, s) for k, (s, v) in fields.items()}
    return alive | place, out


def _grow(state: State, extra: int) -> None:
    """Add ``extra`` empty enemy slots (in place in ``state``)."""
    for name in _ENEMY_FIELDS:
        key = f"en_{name}"
        old = state[key]
        pad = torch.zeros(extra, old.shape[1], dtype=old.dtype, device=old.device)
        state[key] = torch.cat([old, pad], dim=0)


def _take_first(m: Tensor, priority: Tensor) -> tuple[Tensor, Tensor]:
    """The slot of least ``priority`` among ``m`` (bool ``(K, N)``), per env.

    Returns ``(chosen, hit)``: bool ``(K, N)`` with at most one True per env (priorities
    of live slots are distinct), and bool ``(N,)`` whether the env had any.
    """
    # Timings on CPU shaped these ops: where with a tensor (not a Python int) for the
    # else-value; the minimum in int32 (int64 amin is ~40x slower, min(dim) ~4x);
    # any() as a uint8 amax (2x faster).
    p = torch.where(m, priority, _big(m.device)).to(torch.int32)
    chosen = (p == p.amin(dim=0)) & m
    return chosen, chosen.view(torch.uint8).amax(dim=0).view(torch.bool)


@functools.lru_cache(maxsize=8)
def _big(device: torch.device) -> Tensor:
    return torch.tensor(_BIG, device=device)


@functools.lru_cache(maxsize=8)
def _bars(device: torch.device) -> tuple[Tensor, Tensor]:
    """The bottom row's oxygen bar by filled columns (0-10), ``(11, 10)``, and its
    diver bar by diver count (0-6), ``(7, 10)``, as uint8."""
    col = torch.arange(10, device=device)
    oxygen = col[None, :] < torch.arange(11, device=device)[:, None]
    count = torch.arange(7, device=device)[:, None]
    divers = (col[None, :] >= 9 - count) & (col[None, :] < 9)
    return oxygen.to(torch.uint8), divers.to(torch.uint8)


# The phases of a step, in seaquest.py's order (its numbers). Each is a pure function
# of the state: it returns a new dict with the entries it changes replaced (and, where
# a later phase needs them, values it computed), and writes no tensor in place.


def _spawn_enemy(s: State, u_dir: Tensor, u_sub: Tensor, u_row: Tensor, grow: bool) -> State:
    """1. Enemy spawn: none in a row where an enemy moves the other way.

    ``u_dir``, ``u_sub``, ``u_row``: the draws ``(N,)`` of its direction, kind (fish or
    sub) and row. ``grow``: first double the enemy slots where a spawn finds them
    full (CPU; costs a device read).
    """
    seq = s["seq"]
    spawn = s["e_spawn_timer"] == 0
    lr = u_dir < 0.5
    dx = torch.where(lr, 1, -1)
    is_sub = u_sub < 1.0 / 3.0
    y = (u_row * 8).long().clamp_max(7) + 1  # draws >= 0: long() is floor
    clash = s["en_alive"] & (s["en_y"] == y) & (s["en_dx"] != dx)
    do = spawn & ~clash.any(dim=0)
    if grow and bool((do & s["en_alive"].all(dim=0)).any()):
        s = dict(s)
        _grow(s, s["en_alive"].shape[0])
    alive, upd = _append(
        s["en_alive"],
        do,
        {
            "en_x": (s["en_x"], torch.where(lr, 0, 9)),
            "en_y": (s["en_y"], y),
            "en_dx": (s["en_dx"], dx),
            "en_sub": (s["en_sub"], is_sub),
            "en_timer": (s["en_timer"], s["move_speed"]),
            "en_shot": (s["en_shot"], _ENEMY_SHOT_INTERVAL),
            "en_seq": (s["en_seq"], seq),
        },
    )
    return {
        **s,
        **upd,
        "en_alive": alive,
        "seq": seq + do,
        "e_spawn_timer": torch.where(spawn, s["e_spawn_speed"], s["e_spawn_timer"]),
    }


def _spawn_diver(s: State, u_dir: Tensor, u_row: Tensor) -> State:
    """2. Diver spawn; ``u_dir``, ``u_row``: the draws ``(N,)`` of its direction and row."""
    seq = s["seq"]
    dspawn = s["d_spawn_timer"] == 0
    dlr = u_dir < 0.5
    dy = (u_row * 8).long().clamp_max(7) + 1
    alive, upd = _append(
        s["dv_alive"],
        dspawn,
        {
            "dv_x": (s["dv_x"], torch.where(dlr, 0, 9)),
            "dv_y": (s["dv_y"], dy),
            "dv_dx": (s["dv_dx"], torch.where(dlr, 1, -1)),
            "dv_timer": (s["dv_timer"], _DIVER_MOVE_INTERVAL),
            "dv_seq": (s["dv_seq"], seq),
        },
    )
    return {
        **s,
        **upd,
        "dv_alive": alive,
        "seq": seq + dspawn,
        "d_spawn_timer": torch.where(dspawn, _DIVER_SPAWN_SPEED, s["d_spawn_timer"]),
    }


def _player(s: State, action: Tensor) -> tuple[State, Tensor]:
    """3. Player: fires (from where it was), then moves.

    Returns the new state and the sub's new cell ``x + 10 y`` ``(N,)``.
    """
    sx, sy, sor = s["sub_x"], s["sub_y"], s["sub_or"]
    shot_timer = s["shot_timer"]
    seq = s["seq"]
    fire = (action == 5) & (shot_timer == 0)
    alive, upd = _append(
        s["fb_alive"],
        fire,
        {
            "fb_x": (s["fb_x"], sx),
            "fb_y": (s["fb_y"], sy),
            "fb_dx": (s["fb_dx"], torch.where(sor, 1, -1)),
            "fb_seq": (s["fb_seq"], seq),
        },
    )
    left, right = action == 1, action == 3
    sx = (sx + move_x(action)).clamp(0, 9)
    sor = (sor | right) & ~left
    sy = (sy + move_y(action)).clamp(0, 8)
    out = {
        **s,
        **upd,
        "fb_alive": alive,
        "seq": seq + fire,
        "shot_timer": torch.where(fire, _SHOT_COOL_DOWN, shot_timer),
        "sub_x": sx,
        "sub_y": sy,
        "sub_or": sor,
    }
    return out, torch.add(sx, sy, alpha=10)


def _friendly_bullets(s: State) -> tuple[State, Tensor, Tensor, Tensor, Tensor]:
    """4. Friendly bullets move; in reverse list order each hits the first fish,
    else the first sub, at its cell.

    A dead slot's fields are stale, so its cell becomes -1 (no enemy's); with two
    slots, when both are live the one with the larger seq is the later-appended.
    Returns ``(state, fb_cell, later1, shot_fb, en_cell)``: the new state, the
    bullets' new cells ``(2, N)``, whether slot 1 is the later-appended ``(N,)``, the
    live bullets before any hit ``(2, N)`` (for the reward) and the enemies' cells
    before their move ``(K, N)``.
    """
    fb_x = s["fb_x"] + s["fb_dx"]
    fb_alive = s["fb_alive"] & on_screen(fb_x)
    fb_cell = torch.add(fb_x, s["fb_y"], alpha=10)
    fb_seq = s["fb_seq"]
    later1 = fb_seq[1] > fb_seq[0]  # slot 1 is the later-appended
    en_alive = s["en_alive"]
    en_cell = torch.add(s["en_x"], s["en_y"], alpha=10)
    fish_first = s["en_sub"] * _SUB_RANK + s["en_seq"]
    cell = torch.where(fb_alive, fb_cell, -1)
    hits = []
    for first in (later1, ~later1):  # slot 1 first where later1
        c = torch.where(first, cell[1], cell[0])
        chosen, hit = _take_first(en_alive & (en_cell == c), fish_first)
        en_alive = en_alive & ~chosen
        hits.append(hit)
    # hits[0] belongs to slot 1 where later1, else to slot 0.
    gone1 = torch.where(later1, hits[0], hits[1])
    gone0 = torch.where(later1, hits[1], hits[0])
    out = {
        **s,
        "fb_x": fb_x,
        "fb_alive": fb_alive & ~torch.stack([gone0, gone1]),
        "en_alive": en_alive,
    }
    return out, fb_cell, later1, fb_alive, en_cell


def _divers(s: State, sub_cell: Tensor) -> State:
    """5. Divers: collected (while diver_count < 6, in reverse list order) when at
    the sub before or after their move."""
    count = s["diver_count"]
    dv_alive, dv_x, dv_y, dv_timer = s["dv_alive"], s["dv_x"], s["dv_y"], s["dv_timer"]
    at_before = dv_alive & (torch.add(dv_x, dv_y, alpha=10) == sub_cell)
    due = dv_alive & (dv_timer == 0)
    moved_x = torch.where(due, dv_x + s["dv_dx"], dv_x)
    off = due & ~on_screen(moved_x)
    at_after = due & ~off & (torch.add(moved_x, dv_y, alpha=10) == sub_cell)
    cand = at_before | at_after
    dv_seq = s["dv_seq"]
    # earlier[i, n]: candidates j of env n processed before slot i (larger seq).
    earlier = (cand[None, :, :] & (dv_seq[None, :, :] > dv_seq[:, None, :])).sum(dim=1)
    collect = cand & (count + earlier < 6)
    return {
        **s,
        "diver_count": count + collect.sum(dim=0),
        "dv_alive": dv_alive & ~collect & ~off,
        "dv_x": moved_x,
        "dv_timer": torch.where(due, _DIVER_MOVE_INTERVAL, dv_timer - 1),
    }


def _enemies(
    s: State, sub_cell: Tensor, en_cell: Tensor, fb_cell: Tensor, later1: Tensor
) -> tuple[State, Tensor, Tensor]:
    """6.+8. Enemy subs, then enemy fish: touch the player before or after their
    move; each moved enemy still on screen takes a bullet at its cell.

    ``en_cell``: the enemies' cells before the move; ``fb_cell``, ``later1``: as
    :func:`_friendly_bullets` returns them. Returns ``(state, shooters, en_cell)``:
    the new state, the subs in the list when their loop starts, and the enemies'
    cells after the move.
    """
    en_alive = s["en_alive"]
    terminal = s["terminal"] | (en_alive & (en_cell == sub_cell)).any(dim=0)
    due = en_alive & (s["en_timer"] == 0)
    en_x = torch.where(due, s["en_x"] + s["en_dx"], s["en_x"])
    en_cell = torch.add(en_x, s["en_y"], alpha=10)
    off = due & ~on_screen(en_x)
    at = due & ~off & (en_cell == sub_cell)
    terminal = terminal | at.any(dim=0)
    eligible = due & ~off & ~at
    en_timer = torch.where(due, s["move_speed"], s["en_timer"] - 1)
    shooters = en_alive & s["en_sub"]  # the subs in the list when their loop starts
    en_alive = en_alive & ~off
    subs_first = (~s["en_sub"]) * _SUB_RANK - s["en_seq"]
    # Bullets in list order (slot 0 first where later1); subs before fish, the
    # reverse loop's last-appended first.
    fb_alive = s["fb_alive"]
    cell = torch.where(fb_alive, fb_cell, -1)
    hits = []
    for first in (~later1, later1):  # slot 1 first where not later1
        c = torch.where(first, cell[1], cell[0])
        chosen, hit = _take_first(eligible & (en_cell == c), subs_first)
        eligible = eligible & ~chosen
        en_alive = en_alive & ~chosen
        hits.append(hit)
    gone1 = torch.where(later1, hits[1], hits[0])
    gone0 = torch.where(later1, hits[0], hits[1])
    out = {
        **s,
        "terminal": terminal,
        "en_timer": en_timer,
        "fb_alive": fb_alive & ~torch.stack([gone0, gone1]),
        "en_alive": en_alive,
        "en_x": en_x,
    }
    return out, shooters, en_cell


def _enemy_shots(s: State, shooters: Tensor, en_cell: Tensor) -> State:
    """(6.) Shots: every sub that was in the list, even one that just left or was
    shot, fires when its timer is due; ``en_cell``: the enemies' cells after the move."""
    n = s["sub_x"].shape[0]
    device = en_cell.device
    shot = s["en_shot"]
    shoot = shooters & (shot == 0)
    base, trash = env_offsets(n, 200, device)
    at = (s["en_dx"] + 1) * 50 + en_cell + base  # flat index in (N, 2, 10, 10)
    idx = torch.where(shoot & on_screen(s["en_x"]), at, trash)
    flat = torch.zeros(n * 200 + 1, dtype=torch.bool, device=device)
    new = flat.index_fill_(0, idx.flatten(), True)[: n * 200].view(n, 2, 10, 10)
    return {
        **s,
        "en_shot": torch.where(shoot, _ENEMY_SHOT_INTERVAL, shot - 1),
        "eb": s["eb"] | new,
    }


def _enemy_bullets(s: State, sub_cell: Tensor) -> State:
    """7. Enemy bullets: deadly before and after their move (left-movers shift left)."""
    eb = s["eb"]
    n = eb.shape[0]
    at_sub = sub_cell[:, None, None].expand(n, 2, 1)
    terminal = s["terminal"] | eb.view(n, 2, 100).gather(2, at_sub).flatten(1).any(dim=1)
    # Flat shifts, then the column a bullet would wrap into is cleared (faster on
    # CPU than copying (N, 10, 9) blocks).
    flat_eb = eb.view(n, 2, 100)
    moved = torch.empty_like(flat_eb)
    moved[:, 0, :99] = flat_eb[:, 0, 1:]
    moved[:, 0, 9::10] = False
    moved[:, 1, 1:] = flat_eb[:, 1, :99]
    moved[:, 1, 0::10] = False
    terminal = terminal | moved.gather(2, at_sub).flatten(1).any(dim=1)
    return {**s, "terminal": terminal, "eb": moved.view(n, 2, 10, 10)}


def _timers_and_surfacing(s: State, ramping: bool) -> tuple[State, Tensor]:
    """9. Timers, oxygen and surfacing. Returns the new state and the surfacing
    bonus ``(N,)``."""
    oxygen, count, ms = s["oxygen"], s["diver_count"], s["move_speed"]
    terminal = s["terminal"] | (oxygen <= 0)
    below = s["sub_y"] > 0
    oxygen = torch.where(below, oxygen - 1, oxygen)
    arriving = ~below & ~s["surface"]
    terminal = terminal | (arriving & (count == 0))
    surf = arriving & (count != 0)
    surface = (s["surface"] & below.logical_not()) | surf
    six = surf & (count == 6)
    bonus = torch.where(six, oxygen * 10 // _MAX_OXYGEN, 0)
    e_speed, ramp_index = s["e_spawn_speed"], s["ramp_index"]
    ramp = surf & ((e_speed > 1) | (ms > 2)) & ramping
    out = {
        **s,
        "e_spawn_timer": (s["e_spawn_timer"] - 1).clamp_min(0),
        "d_spawn_timer": (s["d_spawn_timer"] - 1).clamp_min(0),
        "shot_timer": (s["shot_timer"] - 1).clamp_min(0),
        "terminal": terminal,
        "surface": surface,
        "diver_count": torch.where(six, 0, count) - surf.long(),
        "oxygen": torch.where(surf, _MAX_OXYGEN, oxygen),
        "move_speed": ms - (ramp & (ms > 2) & (ramp_index % 2 == 1)).long(),
        "e_spawn_speed": e_speed - (ramp & (e_speed > 1)).long(),
        "ramp_index": ramp_index + ramp,
    }
    return out, bonus


class Seaquest(TorchMinAtarGame):
    """Batched MinAtar Seaquest (see the module docstring for the representation)."""

    name = "seaquest"
    channels = 10
    minimal_actions = (0, 1, 2, 3, 4, 5)
    # enemy: direction, is_sub, row; diver: direction, row
    step_draws = 5
    # Every read of a slot field is masked by the slot's alive flag (or only feeds a
    # value that is, such as a dead slot's timer counting down).
    stale_after_reset = frozenset(
        f"{prefix}_{name}"
        for prefix, names in (
            ("fb", ("dx", "x", "y", "seq")),
            ("dv", ("dx", "x", "y", "seq", "timer")),
            ("en", ("dx", "sub", "x", "y", "seq", "timer", "shot")),
        )
        for name in names
    )
    slot_major = frozenset(
        f"{prefix}_{name}"
        for prefix, names in (
            ("fb", ("alive", "dx", "x", "y", "seq")),
            ("dv", ("alive", "dx", "x", "y", "seq", "timer")),
            ("en", _ENEMY_FIELDS),
        )
        for name in names
    )

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """Sub at (0, 5) facing left, full oxygen, nothing else on screen."""

        def full(v: int) -> Tensor:
            return torch.full((n,), v, dtype=torch.int64, device=device)

        state: State = {
            "oxygen": full(_MAX_OXYGEN),
            "diver_count": full(0),
            "sub_x": full(5),
            "sub_y": full(0),
            "sub_or": torch.zeros(n, dtype=torch.bool, device=device),
            "e_spawn_speed": full(_INIT_SPAWN_SPEED),
            "e_spawn_timer": full(_INIT_SPAWN_SPEED),
            "d_spawn_timer": full(_DIVER_SPAWN_SPEED),
            "move_speed": full(_INIT_MOVE_INTERVAL),
            "ramp_index": full(0),
            "shot_timer": full(0),
            "surface": torch.ones(n, dtype=torch.bool, device=device),
            "terminal": torch.zeros(n, dtype=torch.bool, device=device),
            "seq": full(0),
            "eb": torch.zeros(n, 2, 10, 10, dtype=torch.bool, device=device),
        }
        k_enemy = CPU_ENEMY_SLOTS if device.type == "cpu" else ENEMY_SLOTS
        for prefix, k, names in (
            ("fb", _BULLET_SLOTS, ("x", "y", "seq")),
            ("dv", _DIVER_SLOTS, ("x", "y", "seq", "timer")),
            ("en", k_enemy, ("x", "y", "seq", "timer", "shot")),
        ):
            for flag in ("alive",) + (("sub",) if prefix == "en" else ()):
                state[f"{prefix}_{flag}"] = torch.zeros(k, n, dtype=torch.bool, device=device)
            for name in ("dx",) + names:
                state[f"{prefix}_{name}"] = torch.zeros(k, n, dtype=torch.int64, device=device)
        return state

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One ``Env.act`` for every env (see seaquest.py and the module docstring).

        The phases run in seaquest.py's order (its numbers in the phase functions'
        docstrings), except that its enemy-sub loop (6) and enemy-fish loop (8) are
        one pass over the shared enemy list, followed by the subs' shots, before the
        enemy bullets (7), which only the player's position affects.
        """
        s = _spawn_enemy(state, draws[:, 0], draws[:, 1], draws[:, 2], action.device.type == "cpu")
        s = _spawn_diver(s, draws[:, 3], draws[:, 4])
        s, sub_cell = _player(s, action)
        s, fb_cell, later1, shot_fb, en_cell = _friendly_bullets(s)
        s = _divers(s, sub_cell)
        s, shooters, en_cell = _enemies(s, sub_cell, en_cell, fb_cell, later1)
        reward = (shot_fb & ~s["fb_alive"]).sum(dim=0)  # one point per bullet that hit
        s = _enemy_shots(s, shooters, en_cell)
        s = _enemy_bullets(s, sub_cell)
        s, bonus = _timers_and_surfacing(s, self.ramping)
        reward = reward + bonus
        return s, reward.to(torch.float32), s["terminal"]

    def match_shapes(self, fresh: State, like: State) -> State:
        """``fresh`` with as many enemy slots as ``like`` (after growth on CPU)."""
        extra = like["en_alive"].shape[0] - fresh["en_alive"].shape[0]
        if extra <= 0:
            return fresh
        out = dict(fresh)
        _grow(out, extra)
        return out

    def render(self, state: State, out: Tensor | None = None) -> Tensor:
        """Observation float32 ``(N, 10, 10, 10)``."""
        sx, sy = state["sub_x"], state["sub_y"]
        n = sx.shape[0]
        dev = sx.device
        back = torch.where(state["sub_or"], sx - 1, sx + 1)
        back = torch.where(back < 0, back + 10, back)  # numpy's index -1 is column 9
        points: list[tuple[int | Tensor, Tensor, Tensor, Tensor | None]] = [
            (0, sy, sx, None),
            (1, sy, back, None),
            (2, state["fb_y"], state["fb_x"], state["fb_alive"]),
        ]
        enemy_channel = state["en_sub"] + 5  # fish 5, sub 6
        for p, ch in (("en", enemy_channel), ("dv", 9)):
            alive, x, y = state[f"{p}_alive"], state[f"{p}_x"], state[f"{p}_y"]
            points.append((ch, y, x, alive))
            back = x - state[f"{p}_dx"]
            points.append((3, y, back, alive & on_screen(back)))
        obs = render_points(n, self.channels, points, dev, out)
        eb = state["eb"]
        # (a reduction over the pair is much slower, a bool-to-float copy ~4x slower)
        obs[:, 4] = (eb[:, 0] | eb[:, 1]).view(torch.uint8)
        # Bottom row: oxygen left (10 columns = full) and divers held (a negative
        # count, after surfacing with six, shows none).
        oxygen_bar, diver_bar = _bars(dev)
        obs[:, 7, 9] = oxygen_bar[state["oxygen"].clamp(0, _MAX_OXYGEN) * 10 // _MAX_OXYGEN]
        obs[:, 8, 9] = diver_bar[state["diver_count"].clamp(0, 6)]
        return obs

    def step_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """Calls of an enemy spawn (3), a diver spawn (2) or both (5), in that order."""
        enemy = [0.5, 0.5, 0.5]
        diver = [0.5, 0.5]
        if len(calls) in (3, 5):
            (m1, _, lr), (m2, _, is_sub), (m3, _, y) = calls[:3]
            assert (m1, m2, m3) == ("rand", "rand", "randint"), calls
            enemy = [float(lr), float(is_sub), randint_as_uniform(int(y) - 1, 8)]
            calls = calls[3:]
        if len(calls) == 2:
            (m1, _, lr), (m2, _, y) = calls
            assert (m1, m2) == ("rand", "randint"), calls
            diver = [float(lr), randint_as_uniform(int(y) - 1, 8)]
        elif calls:
            raise AssertionError(f"unexpected random calls in a Seaquest step: {calls}")
        return enemy + diver
