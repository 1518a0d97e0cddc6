"""Seaquest's step phases one at a time, on hand-built states (MinAtar's rules in isolation).

The whole step is checked frame by frame against MinAtar in test_torch_minatar.py;
these pin the order-sensitive rules of single phases.
"""

from __future__ import annotations

import torch

from maskrl.envs.torch_minatar import seaquest as sq
from maskrl.envs.torch_minatar._base import State


def _state() -> State:
    """One env at the start of an episode."""
    return sq.Seaquest().reset(1, torch.empty(1, 0), torch.device("cpu"))


def _put(s: State, prefix: str, slot: int, **fields: int) -> None:
    s[f"{prefix}_alive"][slot, 0] = True
    for name, v in fields.items():
        s[f"{prefix}_{name}"][slot, 0] = v


def test_friendly_bullet_hits_the_fish_before_an_earlier_sub() -> None:
    s = _state()
    _put(s, "fb", 0, x=3, y=4, dx=1, seq=0)  # moves to (4, 4)
    _put(s, "en", 0, x=4, y=4, dx=-1, sub=1, seq=1)
    _put(s, "en", 1, x=4, y=4, dx=-1, sub=0, seq=2)
    before = {k: v.clone() for k, v in s.items()}
    s2, fb_cell, later1, shot_fb, en_cell = sq._friendly_bullets(s)
    assert all(torch.equal(v, before[k]) for k, v in s.items())  # the input is left alone
    s = s2
    assert s["fb_x"][0, 0] == 4 and fb_cell[0, 0] == 44
    assert shot_fb[:, 0].tolist() == [True, False]  # live before the hit (the reward counts it)
    assert s["fb_alive"][:, 0].tolist() == [False, False]
    assert s["en_alive"][:2, 0].tolist() == [True, False]  # the fish is gone, the sub stays
    assert en_cell[:2, 0].tolist() == [44, 44] and not later1[0]


def test_the_later_appended_bullet_takes_the_only_fish() -> None:
    # Reverse list order: the bullet appended last (larger seq) is processed first.
    s = _state()
    _put(s, "fb", 0, x=3, y=4, dx=1, seq=5)
    _put(s, "fb", 1, x=5, y=4, dx=-1, seq=3)
    _put(s, "en", 0, x=4, y=4, dx=1, sub=0, seq=4)
    s = sq._friendly_bullets(s)[0]
    assert s["fb_alive"][:, 0].tolist() == [False, True]
    assert not s["en_alive"][:, 0].any()


def test_divers_are_collected_last_appended_first_up_to_six() -> None:
    s = _state()
    s["diver_count"][0] = 5
    sub_cell = torch.tensor([2 + 10 * 3])
    _put(s, "dv", 0, x=2, y=3, dx=1, seq=1, timer=3)
    _put(s, "dv", 1, x=2, y=3, dx=1, seq=4, timer=3)
    s = sq._divers(s, sub_cell)
    assert s["diver_count"].tolist() == [6]
    assert s["dv_alive"][:2, 0].tolist() == [True, False]  # only the later diver fits
    assert s["dv_timer"][:2, 0].tolist() == [2, 2]


def test_enemy_bullets_kill_after_their_move_and_never_wrap() -> None:
    s = _state()
    s["eb"][0, 0, 4, 6] = True  # left-mover, reaches the sub at (5, 4)
    s["eb"][0, 0, 2, 0] = True  # left-mover at the left edge: leaves the screen
    s["eb"][0, 1, 7, 9] = True  # right-mover at the right edge: leaves the screen
    s = sq._enemy_bullets(s, torch.tensor([5 + 10 * 4]))
    assert s["terminal"].tolist() == [True]
    assert torch.nonzero(s["eb"]).tolist() == [[0, 0, 4, 5]]


def test_surfacing_with_six_divers_pays_oxygen_and_keeps_the_minus_one_quirk() -> None:
    s = _state()
    s.update(
        sub_y=torch.tensor([0]),
        surface=torch.tensor([False]),
        diver_count=torch.tensor([6]),
        oxygen=torch.tensor([150]),
    )
    s, bonus = sq._timers_and_surfacing(s, ramping=True)
    assert bonus.tolist() == [150 * 10 // 200]
    assert s["diver_count"].tolist() == [-1]
    assert s["oxygen"].tolist() == [200] and s["surface"].tolist() == [True]
    assert s["e_spawn_speed"].tolist() == [19] and s["ramp_index"].tolist() == [1]
    assert s["terminal"].tolist() == [False]
