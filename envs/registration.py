"""Gymnasium ids registered by ``import maskrl.envs``.

Every entry point is a ``"module:attr"`` string, so registering imports nothing
heavy: MinAtar, ale-py and PettingZoo are imported only when an id is made.
"""

from __future__ import annotations

import importlib.util
import sys

import gymnasium as gym

from maskrl.envs.atari import ATARI_GAMES, atari_game_name
from maskrl.envs.minatar_games import MINATAR_GAMES, MINATAR_MAX_EPISODE_STEPS

__all__ = [
    "atari_ids",
    "install_hint",
    "minatar_ids",
    "missing_dependency",
    "optional_extra",
    "register_envs",
    "registered_ids",
]

#: id prefix -> the maskrl extra (``[project.optional-dependencies]`` in
#: pyproject.toml) that installs what the id imports when it is made.
_ID_EXTRAS: dict[str, str] = {
    "maskrl/Atari-": "atari",
    "maskrl/ConnectFour-": "pettingzoo",
    "maskrl/TicTacToe-": "pettingzoo",
}

#: extra -> the modules its ids import (PettingZoo's classic games import pygame).
_EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "atari": ("ale_py", "cv2"),
    "pettingzoo": ("pettingzoo", "pygame"),
}


def minatar_ids() -> list[str]:
    """``["maskrl/MinAtar-Asterix-v0", ...]``, the five MinAtar ids."""
    return [f"maskrl/MinAtar-{name}-v0" for name in MINATAR_GAMES]


def atari_ids() -> list[str]:
    """``["maskrl/Atari-Adventure-v0", ...]``, one id per game in ``ATARI_GAMES``."""
    return [f"maskrl/Atari-{atari_game_name(rom)}-v0" for rom in ATARI_GAMES]


def registered_ids() -> list[str]:
    """All ids this package registers."""
    return [k for k in gym.registry if k.startswith("maskrl/")]


def optional_extra(env_id: str) -> str | None:
    """The maskrl extra an id needs (``"atari"``, ``"pettingzoo"``), or None if it needs none.

    Accepts Gymnasium's ``"module:id"`` form too (the part after the colon is the id).

    >>> optional_extra("maskrl/Atari-Pong-v0"), optional_extra("maskrl/MinAtar-Breakout-v0")
    ('atari', None)
    """
    base_id = env_id.rpartition(":")[2]
    return next((extra for prefix, extra in _ID_EXTRAS.items() if base_id.startswith(prefix)), None)


def install_hint(extra: str) -> str:
    """How to install a maskrl extra, from PyPI or from a checkout (one line).

    >>> install_hint("atari")
    'pip install "maskrl[atari]" (or pip install -e ".[atari]" from a checkout)'
    """
    return f'pip install "maskrl[{extra}]" (or pip install -e ".[{extra}]" from a checkout)'


def missing_dependency(env_id: str) -> str | None:
    """One line saying what an id needs that is not installed, or None if nothing is missing.

    Modules are looked up with :func:`importlib.util.find_spec`, never imported,
    so the check is cheap and has no side effects; an installed module that fails
    to import is reported when the id is made (:func:`maskrl.envs.make_vec`).
    Accepts Gymnasium's ``"module:id"`` form.

    >>> missing_dependency("maskrl/MinAtar-Breakout-v0") is None
    True
    """
    extra = optional_extra(env_id)
    if extra is None:
        return None
    missing = [m for m in _EXTRA_MODULES[extra] if not _module_present(m)]
    if not missing:
        return None
    return (
        f"{env_id.rpartition(':')[2]} needs maskrl's {extra!r} extra, which is not installed "
        f"(missing module{'s' if len(missing) > 1 else ''}: {', '.join(missing)}): "
        f"{install_hint(extra)}"
    )


def _module_present(module: str) -> bool:
    """Whether ``module`` can be found (without importing it).

    ``sys.modules[module] = None`` (how Python marks a module as blocked) counts
    as absent; ``find_spec`` raises ValueError for a module object that sits in
    ``sys.modules`` without a ``__spec__``, which is present.
    """
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:
        return sys.modules.get(module) is not None


def _register(env_id: str, entry_point: str, **kwargs: object) -> None:
    if env_id not in gym.registry:  # idempotent: a re-import must not warn
        gym.register(env_id, entry_point=entry_point, **kwargs)  # type: ignore[arg-type]


def register_envs() -> None:
    """Register every ``maskrl/...`` id (done on ``import maskrl.envs``; idempotent)."""
    for name, module in MINATAR_GAMES.items():
        _register(
            f"maskrl/MinAtar-{name}-v0",
            "maskrl.envs.minatar_games:MinAtarEnv",
            kwargs={"game": module},
            max_episode_steps=MINATAR_MAX_EPISODE_STEPS,
        )
    _register("maskrl/Knapsack-v0", "maskrl.envs.knapsack:KnapsackEnv")
    _register("maskrl/Recall-v0", "maskrl.envs.recall:RecallEnv")
    # Board games import PettingZoo only in the env's constructor.
    _register(
        "maskrl/ConnectFour-v0",
        "maskrl.envs.board_games:TurnBasedGameEnv",
        kwargs={"game": "connect_four"},
    )
    _register(
        "maskrl/TicTacToe-v0",
        "maskrl.envs.board_games:TurnBasedGameEnv",
        kwargs={"game": "tictactoe"},
    )
    for rom in ATARI_GAMES:
        _register(
            f"maskrl/Atari-{atari_game_name(rom)}-v0",
            "maskrl.envs.atari:make_atari_env",
            kwargs={"game": rom},
        )
