"""Gymnasium ids registered by ``import maskrl.envs``.

Every entry point is a ``"module:attr"`` string, so registering imports nothing
heavy: MinAtar, ale-py and PettingZoo are imported only when an id is made.
"""

from __future__ import annotations

import gymnasium as gym

from maskrl.envs.atari import ATARI_GAMES, atari_game_name
from maskrl.envs.minatar_games import MINATAR_GAMES, MINATAR_MAX_EPISODE_STEPS

__all__ = ["atari_ids", "minatar_ids", "missing_dependency", "register_envs", "registered_ids"]

#: id prefix -> (modules needed, pip requirement that provides them).
_OPTIONAL: dict[str, tuple[tuple[str, ...], str]] = {
    "maskrl/Atari-": (("ale_py", "cv2"), "ale-py and opencv-python (gymnasium[other])"),
    "maskrl/ConnectFour-": (("pettingzoo", "pygame"), "pettingzoo[classic]"),
    "maskrl/TicTacToe-": (("pettingzoo", "pygame"), "pettingzoo[classic]"),
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


def missing_dependency(env_id: str) -> str | None:
    """What an id needs that is not installed, or None (looks modules up without importing them).

    >>> missing_dependency("maskrl/MinAtar-Breakout-v0") is None
    True
    """
    import importlib.util

    for prefix, (modules, requirement) in _OPTIONAL.items():
        if env_id.startswith(prefix):
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                return f"{env_id} needs {requirement}; missing: {', '.join(missing)}"
    return None


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
