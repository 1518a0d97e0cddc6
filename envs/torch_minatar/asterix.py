"""Asterix (MinAtar ``asterix.py``) as a batched tensor program.

State (``N`` envs): ``player_x``, ``player_y``; entity slots ``(8, N)`` (slot-major;
slot ``i`` lives in row ``i + 1``): ``ent_alive``, ``ent_x``, ``ent_dx`` (+1 moving right, -1 left),
``ent_gold`` (bool); timers ``spawn_timer``, ``spawn_speed``, ``move_timer``,
``move_speed``, ``ramp_timer``, ``ramp_index``; ``terminal`` bool.
Channels: player, enemy, trail, gold.

Step draws: the spawn's direction (``rand() < 1/2``), gold (``rand() < 1/3``) and
slot (``randint(number of free slots)``, the k-th free slot in row order).
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
    move_x,
    move_y,
    on_screen,
    randint_as_uniform,
    render_points,
    uniform_to_int,
)

__all__ = ["Asterix"]

_RAMP_INTERVAL = 100
_INIT_SPAWN_SPEED = 10
_INIT_MOVE_INTERVAL = 5


@functools.lru_cache(maxsize=8)
def _rows(device: torch.device) -> Tensor:
    """The screen row of each entity slot, ``(8, 1)``."""
    return torch.arange(1, 9, device=device)[:, None]


class Asterix(TorchMinAtarGame):
    """Batched MinAtar Asterix."""

    name = "asterix"
    channels = 4
    minimal_actions = (0, 1, 2, 3, 4)
    step_draws = 3
    slot_major = frozenset({"ent_alive", "ent_x", "ent_dx", "ent_gold"})
    # Read only where the slot is alive (a spawn writes all three).
    stale_after_reset = frozenset({"ent_x", "ent_dx", "ent_gold"})

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """Player at (5, 5), no entities, initial timers."""

        def full(v: int) -> Tensor:
            return torch.full((n,), v, dtype=torch.int64, device=device)

        no = torch.zeros(8, n, dtype=torch.bool, device=device)
        return {
            "player_x": full(5),
            "player_y": full(5),
            "ent_alive": no,
            "ent_x": torch.zeros(8, n, dtype=torch.int64, device=device),
            "ent_dx": torch.zeros(8, n, dtype=torch.int64, device=device),
            "ent_gold": no.clone(),
            "spawn_speed": full(_INIT_SPAWN_SPEED),
            "spawn_timer": full(_INIT_SPAWN_SPEED),
            "move_speed": full(_INIT_MOVE_INTERVAL),
            "move_timer": full(_INIT_MOVE_INTERVAL),
            "ramp_timer": full(_RAMP_INTERVAL),
            "ramp_index": full(0),
            "terminal": torch.zeros(n, dtype=torch.bool, device=device),
        }

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One ``Env.act`` for every env (see asterix.py for the rules)."""
        alive, ex = state["ent_alive"], state["ent_x"]
        dx, gold = state["ent_dx"], state["ent_gold"]
        spawn_timer, spawn_speed = state["spawn_timer"], state["spawn_speed"]
        dev = alive.device

        # Spawn in the k-th free row (rows in order), if any is free.
        spawn = spawn_timer == 0
        lr = draws[:, 0] < 0.5
        is_gold = draws[:, 1] < 1.0 / 3.0
        free = ~alive
        n_free = free.sum(dim=0)
        k = uniform_to_int(draws[:, 2], n_free)
        rank = torch.cumsum(free, dim=0) - 1
        new = (spawn & (n_free > 0)) & free & (rank == k)
        alive = alive | new
        ex = torch.where(new, torch.where(lr, 0, 9), ex)
        dx = torch.where(new, torch.where(lr, 1, -1), dx)
        gold = torch.where(new, is_gold, gold)
        spawn_timer = torch.where(spawn, spawn_speed, spawn_timer)

        px = (state["player_x"] + move_x(action)).clamp(0, 9)
        py = (state["player_y"] + move_y(action)).clamp(1, 8)

        # Entities touching the player: gold is collected, an enemy ends the game.
        in_row = _rows(dev) == py  # (8, N)
        touch = alive & in_row & (ex == px)
        reward = (touch & gold).sum(dim=0)
        terminal = state["terminal"] | (touch & ~gold).any(dim=0)
        alive = alive & ~(touch & gold)

        move_timer, move_speed = state["move_timer"], state["move_speed"]
        move = move_timer == 0
        move_timer = torch.where(move, move_speed, move_timer)
        go = move & alive
        ex = torch.where(go, ex + dx, ex)
        alive = alive & ~(go & ((ex < 0) | (ex > 9)))
        touch = go & alive & in_row & (ex == px)
        reward = reward + (touch & gold).sum(dim=0)
        terminal = terminal | (touch & ~gold).any(dim=0)
        alive = alive & ~(touch & gold)

        spawn_timer = spawn_timer - 1
        move_timer = move_timer - 1

        # Difficulty ramp: every ramp_interval + 1 steps, faster spawns, and on odd
        # ramp indices faster moves, until both reach 1.
        ramp_timer, ramp_index = state["ramp_timer"], state["ramp_index"]
        active = ((spawn_speed > 1) | (move_speed > 1)) & self.ramping
        count_down = active & (ramp_timer >= 0)
        ramp = active & ~count_down
        ramp_timer = torch.where(count_down, ramp_timer - 1, ramp_timer)
        slower = ramp & (move_speed > 1) & (ramp_index % 2 == 1)
        move_speed = move_speed - slower.to(move_speed.dtype)
        spawn_speed = spawn_speed - (ramp & (spawn_speed > 1)).to(spawn_speed.dtype)
        ramp_index = ramp_index + ramp.to(ramp_index.dtype)
        ramp_timer = torch.where(ramp, torch.full_like(ramp_timer, _RAMP_INTERVAL), ramp_timer)

        new_state = {
            "player_x": px,
            "player_y": py,
            "ent_alive": alive,
            "ent_x": ex,
            "ent_dx": dx,
            "ent_gold": gold,
            "spawn_speed": spawn_speed,
            "spawn_timer": spawn_timer,
            "move_speed": move_speed,
            "move_timer": move_timer,
            "ramp_timer": ramp_timer,
            "ramp_index": ramp_index,
            "terminal": terminal,
        }
        return new_state, reward.to(torch.float32), terminal

    def render(self, state: State, out: Tensor | None = None) -> Tensor:
        """Observation float32 ``(N, 4, 10, 10)``."""
        alive, ex = state["ent_alive"], state["ent_x"]
        row = _rows(ex.device).expand_as(ex)
        channel = torch.where(state["ent_gold"], 3, 1)
        back = ex - state["ent_dx"]
        px = state["player_x"]
        return render_points(
            px.shape[0],
            self.channels,
            [
                (0, state["player_y"], px, None),
                (channel, row, ex, alive),
                (2, row, back, alive & on_screen(back)),
            ],
            px.device,
            out,
        )

    def step_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """``[rand, rand]`` (rows full) or ``[rand, rand, randint(n)]`` of a spawn."""
        if not calls:
            return [0.5, 0.5, 0.5]
        (m1, _, lr), (m2, _, is_gold), *rest = calls
        assert m1 == "rand" and m2 == "rand", calls
        slot = 0.5
        if rest:
            ((m3, args, k),) = rest
            assert m3 == "randint", calls
            slot = randint_as_uniform(int(k), int(args[0]))
        return [float(lr), float(is_gold), slot]
