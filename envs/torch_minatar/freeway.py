"""Freeway (MinAtar ``freeway.py``) as a batched tensor program.

State (``N`` envs): ``pos`` (chicken row), ``move_timer``, ``terminate_timer``;
cars ``(8, N)`` (slot-major): ``car_x``, ``car_timer``, ``car_speed`` (signed,
|speed| in 1..5; car ``i`` drives in row ``i + 1``); ``terminal`` bool.
Channels: chicken, car, speed1..speed5 (the trail behind a car, by its speed).

Draws (per step and per reset): 8 uniforms for the speeds (``randint(1, 6, 8)``)
and 8 for the directions (``sign(rand(8) - 0.5)``). MinAtar gives a car speed 0
when its direction draw is exactly 0.5 (probability 2**-53 per draw); the
torch-generator mode never does (its uniforms are float32 and the comparison is
``u < 0.5``), which no test can observe.
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
    randint_as_uniform,
    render_points,
)

__all__ = ["Freeway"]

_PLAYER_SPEED = 3
_TIME_LIMIT = 2500


def _speeds(draws: Tensor) -> Tensor:
    """``(N, 16)`` uniforms -> signed speeds int64 ``(8, N)``."""
    d = draws.t().contiguous()
    magnitude = 1 + torch.floor(d[:8] * 5).to(torch.int64).clamp(0, 4)
    direction = torch.sign(d[8:16] - 0.5).to(torch.int64)
    return magnitude * direction


@functools.lru_cache(maxsize=8)
def _lanes(device: torch.device) -> Tensor:
    """The row each car drives in, ``(8, 1)``."""
    return torch.arange(1, 9, device=device)[:, None]


def _draws_from_calls(calls: Sequence[Call]) -> list[float]:
    (m1, a1, speeds), (m2, a2, dirs) = calls
    assert m1 == "randint" and a1 == (1, 6, 8) and m2 == "rand" and a2 == (8,), calls
    return [randint_as_uniform(int(s) - 1, 5) for s in speeds] + [float(d) for d in dirs]


class Freeway(TorchMinAtarGame):
    """Batched MinAtar Freeway (no difficulty ramping in this game)."""

    name = "freeway"
    channels = 7
    minimal_actions = (0, 2, 4)
    step_draws = 16  # new car speeds when the chicken reaches the top
    reset_draws = 16
    slot_major = frozenset({"car_x", "car_timer", "car_speed"})

    def reset(self, n: int, draws: Tensor, device: torch.device) -> State:
        """Cars at column 0 with random speeds; chicken at row 9."""
        speed = _speeds(draws)

        def full(v: int) -> Tensor:
            return torch.full((n,), v, dtype=torch.int64, device=device)

        return {
            "pos": full(9),
            "move_timer": full(_PLAYER_SPEED),
            "terminate_timer": full(_TIME_LIMIT),
            "car_x": torch.zeros(8, n, dtype=torch.int64, device=device),
            "car_timer": speed.abs(),
            "car_speed": speed,
            "terminal": torch.zeros(n, dtype=torch.bool, device=device),
        }

    def step(self, state: State, action: Tensor, draws: Tensor) -> tuple[State, Tensor, Tensor]:
        """One ``Env.act`` for every env (see freeway.py for the rules)."""
        pos, move_timer = state["pos"], state["move_timer"]
        ready = move_timer == 0
        up = (action == 2) & ready
        down = (action == 4) & ready
        moved = up | down
        move_timer = torch.where(moved, torch.full_like(move_timer, _PLAYER_SPEED), move_timer)
        pos = torch.where(up, (pos - 1).clamp_min(0), pos)
        pos = torch.where(down, (pos + 1).clamp_max(9), pos)

        win = pos == 0
        reward = win.to(torch.float32)
        car_speed, car_timer = state["car_speed"], state["car_timer"]
        # New speeds where the chicken got across (on CPU, where reading a flag is
        # free, only in steps where one did: a win is rare).
        if pos.device.type != "cpu" or bool(win.any()):
            new_speed = _speeds(draws)
            car_speed = torch.where(win, new_speed, car_speed)
            car_timer = torch.where(win, new_speed.abs(), car_timer)
        pos = torch.where(win, torch.full_like(pos, 9), pos)

        # Cars move one at a time in freeway.py, but a hit only sends the chicken to
        # row 9, where no car drives: any hit, before or after a car's move, is the same.
        car_x = state["car_x"]
        in_lane = _lanes(pos.device) == pos  # (8, N)
        hit = ((car_x == 4) & in_lane).any(dim=0)
        go = car_timer == 0
        moved_x = (car_x + torch.where(car_speed > 0, 1, -1)).remainder(10)  # wraps around
        car_x = torch.where(go, moved_x, car_x)
        hit = hit | (go & (car_x == 4) & in_lane).any(dim=0)
        car_timer = torch.where(go, car_speed.abs(), car_timer - 1)
        pos = torch.where(hit, torch.full_like(pos, 9), pos)

        move_timer = move_timer - (move_timer > 0).to(move_timer.dtype)
        terminate_timer = state["terminate_timer"] - 1
        terminal = state["terminal"] | (terminate_timer < 0)
        new_state = {
            "pos": pos,
            "move_timer": move_timer,
            "terminate_timer": terminate_timer,
            "car_x": car_x,
            "car_timer": car_timer,
            "car_speed": car_speed,
            "terminal": terminal,
        }
        return new_state, reward, terminal

    def render(self, state: State, out: Tensor | None = None) -> Tensor:
        """Observation float32 ``(N, 7, 10, 10)``."""
        pos, car_x, speed = state["pos"], state["car_x"], state["car_speed"]
        lane = _lanes(pos.device).expand_as(car_x)
        back = (car_x - torch.where(speed > 0, 1, -1)).remainder(10)
        return render_points(
            pos.shape[0],
            self.channels,
            [
                (0, pos, torch.full_like(pos, 4), None),
                (1, lane, car_x, None),
                (1 + speed.abs(), lane, back, None),
            ],
            pos.device,
            out,
        )

    def step_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """Speed and direction draws of a win (filler 0.5 when there was none)."""
        return _draws_from_calls(calls) if calls else [0.5] * self.step_draws

    def reset_draws_from_calls(self, calls: Sequence[Call]) -> list[float]:
        """Speed and direction draws of a reset."""
        return _draws_from_calls(calls)
