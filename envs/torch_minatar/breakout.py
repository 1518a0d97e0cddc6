"""Breakout (MinAtar ``breakout.py``) as a batched tensor program.

State (``N`` envs): ``ball_x``, ``ball_y``, ``ball_dir`` (0..3: up-left, up-right,
down-right, down-left), ``pos`` (paddle column), ``last_x``/``last_y`` (trail),
``strike`` bool, ``bricks`` bool ``(N, 10, 10)``, ``n_bricks`` (how many are
left: a counter is much cheaper than reducing the map every step), ``terminal``
bool; all int64 unless noted. Channels: paddle, ball, trail, brick.
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
    randint_as_uniform,
    render_points,
)

__all__ = ["Breakout"]

# Direction tables of breakout.py, indexed by ball_dir.
_DX = (-1, 1, 1, -1)
_DY = (-1, -1, 1, 1)
_FLIP_X = (1, 0, 3, 2)  # wall
_FLIP_Y = (3, 2, 1, 0)  # ceiling, brick, paddle centre
_PADDLE_EDGE = (2, 3, 0, 1)  # paddle hit by the ball's new column


def _lut(table: tuple[int, ...], index: Tensor) -> Tensor:
    return _table(table, index.device)[index]


@functools.lru_cache(maxsize=32)
def _table(table: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor(table, dtype=torch.int64, device=device)


class Breakout(TorchMinAtarGame):
    """Batched MinAtar Breakout (no difficulty ramping in this game)."""

    name = "breakout"
    channels = 4
    minimal_actions = (0, 1, 3)
    step_draws = 0
    reset_draws = 1  # ball_start = randint(2)
    reset_variants = 2  # the ball starts on the left or on the right

    def reset_variant(self, draws: Tensor) -> Tensor:
        """``randint(2)``: 0, ball on the left; 1, on the right."""
        return torch.floor(draws[:, 0] * 2).to(torch.int64).clamp(0, 1)

    def variant_reset_draws(self, variant: int) -> list[float]:
        """The reset draw of start ``variant``."""
        return [randint_as_uniform(variant, 2)]

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """Ball at row 3, column 0 moving down-right or column 9 moving down-left."""
        right = self.reset_variant(draws)
        ball_x = right * 9
        ball_dir = 2 + right
        bricks = torch.zeros(n, 10, 10, dtype=torch.bool, device=device)
        bricks[:, 1:4, :] = True
        ball_y = torch.full((n,), 3, dtype=torch.int64, device=device)
        return {
            "ball_x": ball_x,
            "ball_y": ball_y,
            "ball_dir": ball_dir,
            "pos": torch.full((n,), 4, dtype=torch.int64, device=device),
            "last_x": ball_x.clone(),
            "last_y": ball_y.clone(),
            "strike": torch.zeros(n, dtype=torch.bool, device=device),
            "bricks": bricks,
            "n_bricks": torch.full((n,), 30, dtype=torch.int64, device=device),
            "terminal": torch.zeros(n, dtype=torch.bool, device=device),
        }

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One ``Env.act`` for every env (see breakout.py for the rules)."""
        pos = (state["pos"] + move_x(action)).clamp(0, 9)

        bx, by, d = state["ball_x"], state["ball_y"], state["ball_dir"]
        bricks = state["bricks"]
        new_x = bx + _lut(_DX, d)
        new_y = by + _lut(_DY, d)

        wall = (new_x < 0) | (new_x > 9)
        new_x = new_x.clamp(0, 9)
        d = torch.where(wall, _lut(_FLIP_X, d), d)

        # The branches of breakout.py's if/elif chain, in order.
        top = new_y < 0
        n = bx.shape[0]
        cell = torch.add(new_x, new_y.clamp(0, 9), alpha=10)[:, None]
        brick_here = bricks.reshape(n, 100).gather(1, cell)[:, 0]
        brick = ~top & brick_here
        bottom = ~top & ~brick & (new_y == 9)

        hit = brick & ~state["strike"]  # a brick breaks only on the first strike in a row
        reward = hit.to(torch.float32)
        flip_y = _lut(_FLIP_Y, d)
        d_new = torch.where(top | hit, flip_y, d)
        new_y_out = torch.where(top, torch.zeros_like(new_y), new_y)
        new_y_out = torch.where(hit, by, new_y_out)
        # Clear the struck brick with a scatter (boolean indexing would sync a GPU).
        flat = bricks.reshape(n, 100).clone()
        flat.scatter_(1, cell, (brick_here & ~hit)[:, None])
        bricks = flat.view(n, 10, 10)

        # Bottom row: refill an empty wall, then the paddle bounces the ball or the game ends.
        n_bricks = state["n_bricks"] - hit.long()
        refill = bottom & (n_bricks == 0)
        # (as uint8: a broadcast bool op is ~10x slower on CPU)
        bricks.view(torch.uint8)[:, 1:4, :] |= refill.view(torch.uint8)[:, None, None]
        n_bricks = torch.where(refill, 30, n_bricks)
        centre = bottom & (bx == pos)
        edge = bottom & ~centre & (new_x == pos)
        d_new = torch.where(centre, flip_y, d_new)
        d_new = torch.where(edge, _lut(_PADDLE_EDGE, d), d_new)
        new_y_out = torch.where(centre | edge, by, new_y_out)
        terminal = state["terminal"] | (bottom & ~centre & ~edge)

        new_state = {
            "ball_x": new_x,
            "ball_y": new_y_out,
            "ball_dir": d_new,
            "pos": pos,
            "last_x": bx,
            "last_y": by,
            "strike": brick,  # strike_toggle
            "bricks": bricks,
            "n_bricks": n_bricks,
            "terminal": terminal,
        }
        return new_state, reward, terminal

    def render(self, state: State, out: Tensor | None = None) -> Tensor:
        """Observation float32 ``(N, 4, 10, 10)``: paddle, ball, trail, bricks."""
        bx = state["ball_x"]
        nine = torch.full_like(bx, 9)
        obs = render_points(
            bx.shape[0],
            self.channels,
            [
                (0, nine, state["pos"], None),
                (1, state["ball_y"], bx, None),
                (2, state["last_y"], state["last_x"], None),
            ],
            bx.device,
            out,
        )
        obs[:, 3] = state["bricks"].view(torch.uint8)  # (a bool-to-float copy is ~4x slower)
        return obs

    def reset_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """``[randint(2)]`` -> its uniform."""
        ((method, _args, value),) = calls
        assert method == "randint"
        return [randint_as_uniform(int(value), 2)]
