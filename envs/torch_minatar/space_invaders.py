"""Space Invaders (MinAtar ``space_invaders.py``) as a batched tensor program.

State (``N`` envs): ``pos`` (cannon column), bool maps ``(N, 10, 10)`` ``alien``,
``f_bullet``, ``e_bullet``; ``alien_dir`` (-1/+1), ``move_interval``,
``move_timer``, ``shot_timer`` (alien), ``cooldown`` (cannon), ``ramp_index``;
``terminal`` bool. No randomness besides sticky actions.
Channels: cannon, alien, alien_left, alien_right, friendly_bullet, enemy_bullet.

On CPU, an op between a bool map and a per-env ``(N, 1, 1)`` value (``&``,
``torch.where``) is 5-7x slower than the same op on uint8 views, and a roll along
the last dim 3x slower than a flat shift: the map arithmetic below is written that
way (:func:`_select`, :func:`_roll_x`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from maskrl.envs.torch_minatar._base import State, TorchMinAtarGame, render_points

__all__ = ["SpaceInvaders"]

_SHOT_COOL_DOWN = 5
_ENEMY_MOVE_INTERVAL = 12
_ENEMY_SHOT_INTERVAL = 10


_U8 = torch.uint8


def _select(cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.where(cond[:, None, None], a, b)`` for bool maps ``(N, 10, 10)``."""
    au, bu = a.view(_U8), b.view(_U8)
    return (bu ^ ((au ^ bu) & cond.view(_U8)[:, None, None])).view(torch.bool)


def _roll_x(m: Tensor, shift: int) -> Tensor:
    """``torch.roll(m, shift, dims=2)`` for ``(N, 10, 10)`` maps, ``shift`` of +-1."""
    n = m.shape[0]
    f = m.reshape(n, 100)
    out = torch.empty_like(f)
    if shift == -1:
        out[:, :99] = f[:, 1:]
        out[:, 9::10] = f[:, 0::10]
    else:
        out[:, 1:] = f[:, :99]
        out[:, 0::10] = f[:, 9::10]
    return out.view(n, 10, 10)


def _any_row(m: Tensor) -> Tensor:
    """``m.any(dim=1)`` for bool ``(N, 10, 10)`` (a reduction over the middle dim is slow)."""
    u = m.view(_U8)
    half = u[:, 0:5] | u[:, 5:10]
    quarter = half[:, 0:2] | half[:, 2:4]
    return (quarter[:, 0] | quarter[:, 1] | half[:, 4]).view(torch.bool)


def _start_aliens(n: int, device: torch.device) -> Tensor:
    alien = torch.zeros(n, 10, 10, dtype=torch.bool, device=device)
    alien[:, 0:4, 2:8] = True
    return alien


class SpaceInvaders(TorchMinAtarGame):
    """Batched MinAtar Space Invaders."""

    name = "space_invaders"
    channels = 6
    minimal_actions = (0, 1, 3, 5)

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """Aliens in rows 0-3, columns 2-7, moving left; cannon at column 5."""

        def full(v: int) -> Tensor:
            return torch.full((n,), v, dtype=torch.int64, device=device)

        empty = torch.zeros(n, 10, 10, dtype=torch.bool, device=device)
        return {
            "pos": full(5),
            "alien": _start_aliens(n, device),
            "f_bullet": empty,
            "e_bullet": empty.clone(),
            "alien_dir": full(-1),
            "move_interval": full(_ENEMY_MOVE_INTERVAL),
            "move_timer": full(_ENEMY_MOVE_INTERVAL),
            "shot_timer": full(_ENEMY_SHOT_INTERVAL),
            "cooldown": full(0),
            "ramp_index": full(0),
            "terminal": torch.zeros(n, dtype=torch.bool, device=device),
        }

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One ``Env.act`` for every env (see space_invaders.py for the rules)."""
        pos, cooldown = state["pos"], state["cooldown"]
        n = pos.shape[0]
        dev = pos.device
        rows = torch.arange(n, device=dev)
        cols = torch.arange(10, device=dev)

        fire = (action == 5) & (cooldown == 0)
        f_bullet = state["f_bullet"].clone()
        f_bullet[:, 9, :] |= fire[:, None] & (cols[None, :] == pos[:, None])
        cooldown = torch.where(fire, torch.full_like(cooldown, _SHOT_COOL_DOWN), cooldown)
        pos = torch.where(action == 1, (pos - 1).clamp_min(0), pos)
        pos = torch.where(action == 3, (pos + 1).clamp_max(9), pos)

        # Bullets: friendly up (the wrapped row 9 is cleared), enemy down (row 0 cleared).
        f_bullet = torch.roll(f_bullet, -1, dims=1)
        f_bullet[:, 9, :] = False
        e_bullet = torch.roll(state["e_bullet"], 1, dims=1)
        e_bullet[:, 0, :] = False
        terminal = state["terminal"] | e_bullet[rows, 9, pos]

        alien = state["alien"]
        alien_dir = state["alien_dir"]
        move_timer = state["move_timer"]
        interval = state["move_interval"]
        terminal = terminal | alien[rows, 9, pos]
        move = move_timer == 0
        # uint8 sums: reductions over bool maps are several times slower on CPU.
        count = alien.view(_U8).flatten(1).sum(dim=1, dtype=torch.int32)
        move_timer = torch.where(move, torch.minimum(count, interval), move_timer)
        at_left = alien[:, :, 0].any(dim=1)
        at_right = alien[:, :, 9].any(dim=1)
        turn = move & ((at_left & (alien_dir < 0)) | (at_right & (alien_dir > 0)))
        side = move & ~turn
        alien_dir = torch.where(turn, -alien_dir, alien_dir)
        terminal = terminal | (turn & alien[:, 9, :].any(dim=1))
        # np.roll wraps: a turn rolls row 9 back to row 0, exactly as MinAtar does.
        down = torch.roll(alien, 1, dims=1)
        sideways = _select(alien_dir < 0, _roll_x(alien, -1), _roll_x(alien, 1))
        alien = _select(turn, down, alien)
        alien = _select(side, sideways, alien)
        terminal = terminal | (move & alien[rows, 9, pos])

        # The alien nearest the cannon (column distance, ties to the left) fires from
        # its lowest row. The map is never empty here: it is refilled at the end of a step.
        shot_timer = state["shot_timer"]
        shoot = shot_timer == 0
        shot_timer = torch.where(
            shoot, torch.full_like(shot_timer, _ENEMY_SHOT_INTERVAL), shot_timer
        )
        occupied = _any_row(alien)  # (N, 10) columns
        key = (cols[None, :] - pos[:, None]).abs() * 16 + cols[None, :]
        key = torch.where(occupied, key, torch.full_like(key, 1 << 20))
        col = key.argmin(dim=1)
        row_idx = torch.arange(10, device=dev)[None, :]
        in_col = alien[rows, :, col]  # (N, 10)
        row = torch.where(in_col, row_idx, torch.full_like(row_idx, -1)).amax(dim=1)
        # e_bullet is this step's (the roll's) tensor: set the shot's cell in place.
        flat = e_bullet.view(n, 100)
        cell = torch.add(col, row, alpha=10)[:, None]
        flat.scatter_(1, cell, flat.gather(1, cell) | shoot[:, None])

        kill = alien & f_bullet
        kills = kill.view(_U8).flatten(1).sum(dim=1, dtype=torch.int32)
        reward = kills.to(torch.float32)
        alien = alien & ~kill
        f_bullet = f_bullet & ~kill

        cooldown = cooldown - (cooldown > 0).to(cooldown.dtype)
        move_timer = move_timer - 1
        shot_timer = shot_timer - 1
        cleared = count == kills  # moves never lose an alien (np.roll wraps)
        ramp = cleared & (interval > 6) & self.ramping
        interval = interval - ramp.to(interval.dtype)
        ramp_index = state["ramp_index"] + ramp.to(interval.dtype)
        refill = cleared.view(_U8)[:, None, None] & _start_aliens(1, dev).view(_U8)
        alien = (alien.view(_U8) | refill).view(torch.bool)

        new_state = {
            "pos": pos,
            "alien": alien,
            "f_bullet": f_bullet,
            "e_bullet": e_bullet,
            "alien_dir": alien_dir,
            "move_interval": interval,
            "move_timer": move_timer,
            "shot_timer": shot_timer,
            "cooldown": cooldown,
            "ramp_index": ramp_index,
            "terminal": terminal,
        }
        return new_state, reward, terminal

    def render(self, state: State, out: Tensor | None = None) -> Tensor:
        """Observation float32 ``(N, 6, 10, 10)``."""
        pos = state["pos"]
        n = pos.shape[0]
        obs = render_points(
            n, self.channels, [(0, torch.full_like(pos, 9), pos, None)], pos.device, out
        )
        # Grids are copied in as uint8 views: a bool-to-float copy is ~4x slower on CPU.
        alien = state["alien"].view(_U8)
        going_left = (state["alien_dir"] < 0).view(_U8)[:, None, None]
        obs[:, 1] = alien
        obs[:, 2] = alien & going_left
        obs[:, 3] = alien & (going_left ^ 1)
        obs[:, 4] = state["f_bullet"].view(_U8)
        obs[:, 5] = state["e_bullet"].view(_U8)
        return obs
