"""Seaquest (MinAtar ``seaquest.py``) as a batched tensor program.

MinAtar keeps Seaquest's objects in Python lists, iterates some of them in
reverse while removing items, and lets the first match in list order win a
collision. Here every list is a fixed number of slots with an ``alive`` flag and
a ``seq`` number (the step-wide counter at append time), so list order is
``seq`` order without compaction:

* friendly bullets ``fb_*`` (2 slots: one shot per 5 steps, and a bullet is gone
  by the end of its 9th step, so a third shot never meets the first), divers ``dv_*`` (4 slots; one spawn per 30 steps,
  each gone after at most 61), enemy fish ``fish_*`` and enemy subs ``esub_*``
  (:data:`ENEMY_SLOTS` each on a GPU: at most one enemy spawns per step and each
  leaves the screen after at most 61 steps at the slowest speed or 31 at the
  fastest, which is only reached at the fastest spawn rate, so 32 slots are never
  all used in any reachable state; on CPU the lists start with
  :data:`CPU_ENEMY_SLOTS` slots and double whenever a spawn finds one full, which
  costs a device read per step -- free on CPU -- and keeps every op small);
* enemy bullets are a bool grid per direction ``(N, 2, 10, 10)``: they interact
  only with the player, so their order and multiplicity never matter.

The sequential loops of seaquest.py become:

* friendly bullets (reverse order, each hits the first fish, else the first sub,
  at its cell): a loop over the 2 bullet ranks, vectorised over enemies;
* divers (reverse order, collected while ``diver_count < 6``): a count of the
  earlier candidates in processing order decides (the cap is greedy);
* enemy subs/fish (reverse order, each takes the first bullet at its cell): the
  same matching computed bullet-major (bullets in list order, each taken by the
  first unmatched enemy in processing order) -- within one cell every bullet
  meets every enemy, so both greedy orders pair the k-th enemy with the k-th bullet.

Kept quirks of seaquest.py: a sub that leaves the screen or is shot still fires
if its shot timer is due; surfacing with 6 divers leaves ``diver_count == -1``
(later surfacings then never end the game and keep lowering it).

Not reproduced: seaquest.py removes list items *by value*; if two objects of one
list were equal in every field (position, direction and timers), MinAtar could
remove the other one and then visit the survivor twice. Such twins need two
enemies spawned in the same cell whose timers coincide; no conformance run has
produced one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from maskrl.envs.torch_minatar._base import (
    Call,
    State,
    TorchMinAtarGame,
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

#: Slots for enemy fish and for enemy subs (each), fixed, off the CPU.
ENEMY_SLOTS = 32
#: Initial slots for each enemy list on CPU (grown on demand).
CPU_ENEMY_SLOTS = 8
_ENEMY_FIELDS = {"fish": ("timer",), "esub": ("timer", "shot")}
_BULLET_SLOTS = 2
_DIVER_SLOTS = 4
_BIG = 1 << 62


def _append(
    alive: Tensor, cond: Tensor, fields: dict[str, tuple[Tensor, Tensor]]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Put a new object in the first free slot where ``cond`` (bool ``(N,)``).

    ``fields`` maps a name to ``(slots (N, K), value (N,))``; returns the new alive
    mask and the updated slots.
    """
    free = ~alive
    first = free & (torch.cumsum(free.to(torch.int64), dim=1) == 1)
    place = cond[:, None] & first
    out = {k: torch.where(place, v[:, None], s) for k, (s, v) in fields.items()}
    return alive | place, out


def _grow(state: State, prefix: str, extra: int) -> None:
    """Add ``extra`` empty slots to enemy list ``prefix`` (in place in ``state``)."""
    for name in ("alive", "right", "x", "y", "seq", *_ENEMY_FIELDS[prefix]):
        key = f"{prefix}_{name}"
        old = state[key]
        pad = torch.zeros(old.shape[0], extra, dtype=old.dtype, device=old.device)
        state[key] = torch.cat([old, pad], dim=1)


def _onehot(index: Tensor, k: int, where: Tensor) -> Tensor:
    """bool ``(N, k)``: True at ``index`` (``(N,)``) in rows where ``where``."""
    return (torch.arange(k, device=index.device)[None, :] == index[:, None]) & where[:, None]


def _step_x(x: Tensor, right: Tensor) -> Tensor:
    return x + torch.where(right, 1, -1)


class Seaquest(TorchMinAtarGame):
    """Batched MinAtar Seaquest (see the module docstring for the representation)."""

    name = "seaquest"
    channels = 10
    minimal_actions = (0, 1, 2, 3, 4, 5)
    # enemy: direction, is_sub, row; diver: direction, row
    step_draws = 5

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """Sub at (0, 5) facing left, full oxygen, nothing else on screen."""

        def full(v: int) -> Tensor:
            return torch.full((n,), v, dtype=torch.int64, device=device)

        def slots(k: int) -> Tensor:
            return torch.zeros(n, k, dtype=torch.int64, device=device)

        def flags(k: int) -> Tensor:
            return torch.zeros(n, k, dtype=torch.bool, device=device)

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
        for prefix, k, extra in (
            ("fb", _BULLET_SLOTS, ()),
            ("dv", _DIVER_SLOTS, ("timer",)),
            ("fish", k_enemy, ("timer",)),
            ("esub", k_enemy, ("timer", "shot")),
        ):
            state[f"{prefix}_alive"] = flags(k)
            state[f"{prefix}_right"] = flags(k)
            for name in ("x", "y", "seq", *extra):
                state[f"{prefix}_{name}"] = slots(k)
        return state

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One ``Env.act`` for every env (see seaquest.py and the module docstring)."""
        s = dict(state)
        n = action.shape[0]
        dev = action.device
        seq = s["seq"]
        reward = torch.zeros(n, dtype=torch.int64, device=dev)

        # 1. Enemy spawn: none in a row where an enemy moves the other way.
        spawn = s["e_spawn_timer"] == 0
        lr = draws[:, 0] < 0.5
        is_sub = draws[:, 1] < 1.0 / 3.0
        y = 1 + torch.floor(draws[:, 2] * 8).to(torch.int64).clamp(0, 7)
        blocked = torch.zeros(n, dtype=torch.bool, device=dev)
        for p in ("fish", "esub"):
            clash = s[f"{p}_alive"] & (s[f"{p}_y"] == y[:, None]) & (s[f"{p}_right"] != lr[:, None])
            blocked = blocked | clash.any(dim=1)
        do = spawn & ~blocked
        if action.device.type == "cpu":
            for p, want in (("esub", do & is_sub), ("fish", do & ~is_sub)):
                if bool((want & s[f"{p}_alive"].all(dim=1)).any()):
                    _grow(s, p, s[f"{p}_alive"].shape[1])
        x0 = torch.where(lr, 0, 9)
        ms = s["move_speed"]
        s["esub_alive"], upd = _append(
            s["esub_alive"],
            do & is_sub,
            {
                "esub_x": (s["esub_x"], x0),
                "esub_y": (s["esub_y"], y),
                "esub_right": (s["esub_right"], lr),
                "esub_timer": (s["esub_timer"], ms),
                "esub_shot": (s["esub_shot"], torch.full_like(ms, _ENEMY_SHOT_INTERVAL)),
                "esub_seq": (s["esub_seq"], seq),
            },
        )
        s.update(upd)
        s["fish_alive"], upd = _append(
            s["fish_alive"],
            do & ~is_sub,
            {
                "fish_x": (s["fish_x"], x0),
                "fish_y": (s["fish_y"], y),
                "fish_right": (s["fish_right"], lr),
                "fish_timer": (s["fish_timer"], ms),
                "fish_seq": (s["fish_seq"], seq),
            },
        )
        s.update(upd)
        seq = seq + do.to(seq.dtype)
        s["e_spawn_timer"] = torch.where(spawn, s["e_spawn_speed"], s["e_spawn_timer"])

        # 2. Diver spawn.
        dspawn = s["d_spawn_timer"] == 0
        dlr = draws[:, 3] < 0.5
        dy = 1 + torch.floor(draws[:, 4] * 8).to(torch.int64).clamp(0, 7)
        s["dv_alive"], upd = _append(
            s["dv_alive"],
            dspawn,
            {
                "dv_x": (s["dv_x"], torch.where(dlr, 0, 9)),
                "dv_y": (s["dv_y"], dy),
                "dv_right": (s["dv_right"], dlr),
                "dv_timer": (s["dv_timer"], torch.full_like(dy, _DIVER_MOVE_INTERVAL)),
                "dv_seq": (s["dv_seq"], seq),
            },
        )
        s.update(upd)
        seq = seq + dspawn.to(seq.dtype)
        s["d_spawn_timer"] = torch.where(
            dspawn, torch.full_like(dy, _DIVER_SPAWN_SPEED), s["d_spawn_timer"]
        )

        # 3. Player.
        sx, sy, sor = s["sub_x"], s["sub_y"], s["sub_or"]
        shot_timer = s["shot_timer"]
        fire = (action == 5) & (shot_timer == 0)
        s["fb_alive"], upd = _append(
            s["fb_alive"],
            fire,
            {
                "fb_x": (s["fb_x"], sx),
                "fb_y": (s["fb_y"], sy),
                "fb_right": (s["fb_right"], sor),
                "fb_seq": (s["fb_seq"], seq),
            },
        )
        s.update(upd)
        seq = seq + fire.to(seq.dtype)
        shot_timer = torch.where(fire, torch.full_like(shot_timer, _SHOT_COOL_DOWN), shot_timer)
        left, right = action == 1, action == 3
        sx = torch.where(left, (sx - 1).clamp_min(0), sx)
        sx = torch.where(right, (sx + 1).clamp_max(9), sx)
        sor = torch.where(left, False, torch.where(right, True, sor))
        sy = torch.where(action == 2, (sy - 1).clamp_min(0), sy)
        sy = torch.where(action == 4, (sy + 1).clamp_max(8), sy)

        # 4. Friendly bullets move; in reverse list order each hits the first fish,
        #    else the first sub, at its cell.
        fb_alive, fb_right = s["fb_alive"], s["fb_right"]
        fb_x = torch.where(fb_alive, _step_x(s["fb_x"], fb_right), s["fb_x"])
        fb_y = s["fb_y"]
        fb_alive = fb_alive & (fb_x >= 0) & (fb_x <= 9)
        order = torch.argsort(torch.where(fb_alive, s["fb_seq"], -1), dim=1, descending=True)
        for rank in range(_BULLET_SLOTS):
            b = order[:, rank]
            live = fb_alive.gather(1, b[:, None])[:, 0]
            bx = fb_x.gather(1, b[:, None])
            by = fb_y.gather(1, b[:, None])
            hit_any = torch.zeros(n, dtype=torch.bool, device=dev)
            for p in ("fish", "esub"):
                m = s[f"{p}_alive"] & (s[f"{p}_x"] == bx) & (s[f"{p}_y"] == by)
                m = m & (live & ~hit_any)[:, None]
                hit = m.any(dim=1)
                first = torch.where(m, s[f"{p}_seq"], _BIG).argmin(dim=1)
                s[f"{p}_alive"] = s[f"{p}_alive"] & ~_onehot(first, m.shape[1], hit)
                hit_any = hit_any | hit
            fb_alive = fb_alive & ~_onehot(b, _BULLET_SLOTS, hit_any)
            reward = reward + hit_any.to(reward.dtype)

        # 5. Divers: collected (while diver_count < 6, in reverse list order) when at
        #    the sub before or after their move.
        count = s["diver_count"]
        dv_alive, dv_x, dv_y, dv_timer = s["dv_alive"], s["dv_x"], s["dv_y"], s["dv_timer"]
        at_before = dv_alive & (dv_x == sx[:, None]) & (dv_y == sy[:, None])
        due = dv_alive & (dv_timer == 0)
        moved_x = torch.where(due, _step_x(dv_x, s["dv_right"]), dv_x)
        off = due & ((moved_x < 0) | (moved_x > 9))
        at_after = due & ~off & (moved_x == sx[:, None]) & (dv_y == sy[:, None])
        cand = at_before | at_after
        dv_seq = s["dv_seq"]
        earlier = (cand[:, None, :] & (dv_seq[:, None, :] > dv_seq[:, :, None])).long().sum(dim=2)
        collect = cand & (count[:, None] + earlier < 6)
        count = count + collect.long().sum(dim=1)
        s["dv_alive"] = dv_alive & ~collect & ~off
        s["dv_x"] = moved_x
        s["dv_timer"] = torch.where(due, _DIVER_MOVE_INTERVAL, dv_timer - 1)

        terminal = s["terminal"]

        def enemies(p: str, fb_alive: Tensor) -> tuple[Tensor, ...]:
            """Move the enemies of list ``p``, detect collisions, match them with bullets.

            Returns ``alive, x, timer, hit_player, reward, fb_alive`` after the loop.
            """
            alive, x, ey = s[f"{p}_alive"], s[f"{p}_x"], s[f"{p}_y"]
            hit_player = (alive & (x == sx[:, None]) & (ey == sy[:, None])).any(dim=1)
            due = alive & (s[f"{p}_timer"] == 0)
            x = torch.where(due, _step_x(x, s[f"{p}_right"]), x)
            off = due & ((x < 0) | (x > 9))
            at = due & ~off & (x == sx[:, None]) & (ey == sy[:, None])
            hit_player = hit_player | at.any(dim=1)
            eligible = due & ~off & ~at
            timer = torch.where(due, ms[:, None], s[f"{p}_timer"] - 1)
            new_alive = alive & ~off
            gained = torch.zeros(n, dtype=torch.int64, device=dev)
            order = torch.argsort(torch.where(fb_alive, s["fb_seq"], _BIG), dim=1)
            for rank in range(_BULLET_SLOTS):
                b = order[:, rank]  # bullets in list order
                live = fb_alive.gather(1, b[:, None])[:, 0]
                bx = fb_x.gather(1, b[:, None])
                by = fb_y.gather(1, b[:, None])
                m = eligible & new_alive & (x == bx) & (ey == by) & live[:, None]
                hit = m.any(dim=1)
                # The reverse loop reaches the last-appended enemy first.
                first = torch.where(m, s[f"{p}_seq"], -1).argmax(dim=1)
                new_alive = new_alive & ~_onehot(first, m.shape[1], hit)
                fb_alive = fb_alive & ~_onehot(b, _BULLET_SLOTS, hit)
                gained = gained + hit.to(gained.dtype)
            return new_alive, x, timer, hit_player, gained, fb_alive

        # 6. Enemy subs, then their shots (from every sub that was in the list).
        alive0 = s["esub_alive"]
        new_alive, x, timer, hit, gained, fb_alive = enemies("esub", fb_alive)
        reward = reward + gained
        terminal = terminal | hit
        shot = s["esub_shot"]
        shoot = alive0 & (shot == 0)
        eb = s["eb"].flatten(2)
        idx = torch.where(
            shoot & (x >= 0) & (x <= 9),
            s["esub_right"].long() * 100 + s["esub_y"] * 10 + x,
            200,
        )
        eb = torch.cat([eb.reshape(n, 200), torch.zeros(n, 1, dtype=torch.bool, device=dev)], 1)
        eb = eb.scatter(1, idx, True)[:, :200].view(n, 2, 10, 10)
        s["esub_shot"] = torch.where(shoot, _ENEMY_SHOT_INTERVAL, shot - 1)
        s["esub_alive"], s["esub_x"], s["esub_timer"] = new_alive, x, timer

        # 7. Enemy bullets: deadly before and after their move.
        rows = torch.arange(n, device=dev)
        terminal = terminal | eb[rows, :, sy, sx].any(dim=1)
        moved = torch.zeros_like(eb)
        moved[:, 0, :, :9] = eb[:, 0, :, 1:]
        moved[:, 1, :, 1:] = eb[:, 1, :, :9]
        eb = moved
        terminal = terminal | eb[rows, :, sy, sx].any(dim=1)

        # 8. Enemy fish.
        new_alive, x, timer, hit, gained, fb_alive = enemies("fish", fb_alive)
        reward = reward + gained
        terminal = terminal | hit
        s["fish_alive"], s["fish_x"], s["fish_timer"] = new_alive, x, timer

        # 9. Timers, oxygen and surfacing.
        s["e_spawn_timer"] = s["e_spawn_timer"] - (s["e_spawn_timer"] > 0).long()
        s["d_spawn_timer"] = s["d_spawn_timer"] - (s["d_spawn_timer"] > 0).long()
        shot_timer = shot_timer - (shot_timer > 0).long()
        oxygen = s["oxygen"]
        terminal = terminal | (oxygen <= 0)
        below = sy > 0
        oxygen = torch.where(below, oxygen - 1, oxygen)
        surface = s["surface"] & ~below
        arriving = ~below & ~s["surface"]
        terminal = terminal | (arriving & (count == 0))
        surf = arriving & (count != 0)
        six = surf & (count == 6)
        reward = reward + torch.where(six, oxygen * 10 // _MAX_OXYGEN, 0)
        count = torch.where(six, 0, count)
        oxygen = torch.where(surf, _MAX_OXYGEN, oxygen)
        count = count - surf.long()
        surface = surface | surf
        e_speed, ramp_index = s["e_spawn_speed"], s["ramp_index"]
        ramp = surf & ((e_speed > 1) | (ms > 2)) & self.ramping
        ms = ms - (ramp & (ms > 2) & (ramp_index % 2 == 1)).long()
        s["e_spawn_speed"] = e_speed - (ramp & (e_speed > 1)).long()
        s["ramp_index"] = ramp_index + ramp.long()

        s.update(
            oxygen=oxygen,
            diver_count=count,
            sub_x=sx,
            sub_y=sy,
            sub_or=sor,
            move_speed=ms,
            shot_timer=shot_timer,
            surface=surface,
            terminal=terminal,
            seq=seq,
            eb=eb,
            fb_alive=fb_alive,
            fb_x=fb_x,
        )
        return s, reward.to(torch.float32), terminal

    def match_shapes(self, fresh: State, like: State) -> State:
        """``fresh`` with as many enemy slots as ``like`` (after growth on CPU)."""
        out = dict(fresh)
        for p in _ENEMY_FIELDS:
            extra = like[f"{p}_alive"].shape[1] - out[f"{p}_alive"].shape[1]
            if extra > 0:
                _grow(out, p, extra)
        return out

    def render(self, state: State) -> Tensor:
        """Observation float32 ``(N, 10, 10, 10)``."""
        sx, sy = state["sub_x"], state["sub_y"]
        n = sx.shape[0]
        dev = sx.device
        back = torch.where(state["sub_or"], sx - 1, sx + 1)
        back = torch.where(back < 0, back + 10, back)  # numpy's index -1 is column 9
        nine = torch.full((n, 10), 9, dtype=torch.int64, device=dev)
        col = torch.arange(10, device=dev)[None, :].expand(n, 10)
        oxygen_cols = state["oxygen"].clamp_min(0) * 10 // _MAX_OXYGEN
        count = state["diver_count"]
        points: list[tuple[int | Tensor, Tensor, Tensor, Tensor | None]] = [
            (0, sy, sx, None),
            (1, sy, back, None),
            (7, nine, col, col < oxygen_cols[:, None]),
            (8, nine, col, (col >= 9 - count[:, None]) & (col < 9)),
            (2, state["fb_y"], state["fb_x"], state["fb_alive"]),
        ]
        for p, ch in (("fish", 5), ("esub", 6), ("dv", 9)):
            alive, x, y = state[f"{p}_alive"], state[f"{p}_x"], state[f"{p}_y"]
            points.append((ch, y, x, alive))
            points.append((3, y, x - torch.where(state[f"{p}_right"], 1, -1), alive))
        obs = render_points(n, self.channels, points, dev)
        obs[:, 4] = state["eb"].any(dim=1).to(torch.float32)
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
