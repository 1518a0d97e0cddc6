"""PettingZoo classic turn-based games as single-agent Gymnasium envs against a fixed opponent.

Registered ids: ``maskrl/ConnectFour-v0`` (``connect_four_v3``) and
``maskrl/TicTacToe-v0`` (``tictactoe_v3``). PettingZoo (optional extra
``pettingzoo``; its classic games also need ``pygame``) is imported only when
one of these ids is made.

* Observation: the game's own observation for the agent's seat as ``float32``
  0/1 (Connect Four ``(6, 7, 2)``, Tic-Tac-Toe ``(3, 3, 2)``; channel 0 = the
  agent's pieces, channel 1 = the opponent's).
* Action: ``Discrete(7)`` (a column) / ``Discrete(9)`` (a cell); the legal moves
  are the mask (``info["action_mask"]``, ``action_masks()``).
* One ``step`` = the agent's move, then (unless the game is over) the opponent's
  reply. Reward: +1 win, -1 loss, 0 draw or game still going (PettingZoo's).
* An illegal move (a full column, a taken cell) ends the game as a loss for the
  agent, as PettingZoo's classic games rule it (their ``TerminateIllegalWrapper``):
  reward -1, ``terminated``, the board unchanged, ``info["invalid_action"] = True``.
  ``check_actions=True`` raises :class:`ValueError` instead, to debug an agent's
  masking. An action outside the action space always raises ``ValueError``.
* Opponent: ``opponent(observation, action_mask, rng) -> action`` with the
  opponent's own view, its legal moves and the env's generator; default
  :func:`random_opponent`, a uniformly random legal move drawn from the env's
  own ``np_random`` (never the global ``np.random``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["BOARD_GAMES", "Opponent", "TurnBasedGameEnv", "random_opponent"]

Opponent = Callable[[np.ndarray, np.ndarray, np.random.Generator], int]
"""``opponent(observation, action_mask, rng) -> action`` for the other seat."""

#: game name -> (PettingZoo registry id, PettingZoo classic module name).
BOARD_GAMES: dict[str, tuple[str, str]] = {
    "connect_four": ("classic/connect_four-v3", "connect_four_v3"),
    "tictactoe": ("classic/tictactoe-v3", "tictactoe_v3"),
}


def random_opponent(
    observation: np.ndarray, action_mask: np.ndarray, rng: np.random.Generator
) -> int:
    """A uniformly random legal move, drawn from ``rng``."""
    return int(rng.choice(np.flatnonzero(action_mask)))


def _make_pettingzoo(game: str) -> Any:
    """The game's PettingZoo AEC env (PettingZoo is an optional dependency, imported here)."""
    import pettingzoo

    pz_id, module_name = BOARD_GAMES[game]
    if hasattr(pettingzoo, "make"):  # the registry API; the module API is deprecated there
        return pettingzoo.make("aec", pz_id)
    from importlib import import_module

    return import_module(f"pettingzoo.classic.{module_name}").env()


class TurnBasedGameEnv(gym.Env[np.ndarray, np.int64]):
    """A two-player PettingZoo classic game seen by one player, the other a fixed policy.

    Args:
        game: ``"connect_four"`` or ``"tictactoe"``.
        opponent: the other seat's policy (default :func:`random_opponent`).
        agent_seat: ``"first"`` (default), ``"second"`` or ``"random"`` (drawn per
            episode from the env's generator).
        check_actions: when True an illegal move raises :class:`ValueError` (to
            debug an agent's masking). When False (default) it loses the game, as in
            PettingZoo: reward -1, terminated, the board unchanged and
            ``info["invalid_action"] = True``.

    Example:
        >>> import gymnasium as gym, maskrl.envs
        >>> env = gym.make("maskrl/TicTacToe-v0")
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, int(info["action_mask"].sum())
        ((3, 3, 2), 9)
    """

    # Channels last, as PettingZoo gives them; the default network reads this.
    metadata: dict[str, Any] = {"render_modes": [], "obs_layout": "HWC"}
    follows_mask_convention = True

    def __init__(
        self,
        game: str = "connect_four",
        opponent: Opponent | None = None,
        agent_seat: Literal["first", "second", "random"] = "first",
        check_actions: bool = False,
    ) -> None:
        if game not in BOARD_GAMES:
            raise ValueError(f"unknown game {game!r}; choose one of {sorted(BOARD_GAMES)}")
        if agent_seat not in ("first", "second", "random"):
            raise ValueError(
                f"agent_seat must be 'first', 'second' or 'random', got {agent_seat!r}"
            )
        self.game = game
        self._pz = _make_pettingzoo(game)
        self._opponent: Opponent = opponent if opponent is not None else random_opponent
        self._agent_seat = agent_seat
        self._check_actions = check_actions
        first = self._pz.possible_agents[0]
        pz_obs = self._pz.observation_space(first)["observation"]
        self.observation_space = spaces.Box(0.0, 1.0, pz_obs.shape, np.float32)
        self.action_space = spaces.Discrete(int(self._pz.action_space(first).n))
        self._agent = first
        self._other = self._pz.possible_agents[1]
        self._steps = 0
        self._done = True

    def _view(self, who: str) -> tuple[np.ndarray, np.ndarray]:
        raw = self._pz.observe(who)
        return raw["observation"].astype(np.float32), raw["action_mask"].astype(np.bool_)

    def _opponent_moves(self) -> float:
        """Let the opponent move; return the agent's reward from that move."""
        obs, mask = self._view(self._other)
        action = int(self._opponent(obs, mask, self.np_random))
        if not mask[action]:
            raise ValueError(f"the opponent policy chose illegal move {action} in {self.game}")
        self._pz.step(action)
        return float(self._pz.rewards[self._agent])

    def _over(self) -> bool:
        return bool(self._pz.terminations[self._agent] or self._pz.truncations[self._agent])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a game; if the agent plays second, the opponent has already moved."""
        super().reset(seed=seed)
        self._pz.reset(seed=int(self.np_random.integers(0, 2**31 - 1)))
        seat = self._agent_seat
        if seat == "random":
            seat = "first" if self.np_random.integers(2) == 0 else "second"
        first, second = self._pz.possible_agents
        self._agent, self._other = (first, second) if seat == "first" else (second, first)
        if seat == "second":
            self._opponent_moves()
        self._steps = 0
        self._done = False
        obs, mask = self._view(self._agent)
        return obs, {"action_mask": mask}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Play ``action``, then the opponent's reply; reward +1/-1/0 from the agent's view.

        An illegal move ends the game as a loss (reward -1, terminated, board
        unchanged, ``info["invalid_action"] = True``), as in PettingZoo.

        Raises:
            ValueError: an action outside the action space, or with ``check_actions``
                an illegal move.
            RuntimeError: a step after the game ended, before ``reset``.
        """
        if self._done:
            raise RuntimeError("the game is over: call reset()")
        a = int(action)
        self._steps += 1
        obs, mask = self._view(self._agent)
        if not (0 <= a < mask.shape[0] and mask[a]):
            in_space = 0 <= a < mask.shape[0]
            if self._check_actions or not in_space:
                env_id = self.spec.id if self.spec is not None else self.game
                why = "legal moves are" if in_space else f"not in {self.action_space}; legal moves:"
                raise ValueError(
                    f"invalid action {a} in env '{env_id}' at step {self._steps}: {why} "
                    f"{np.flatnonzero(mask).tolist()}"
                )
            # PettingZoo's rule: the player who moves illegally loses, the game ends.
            self._done = True
            return obs, -1.0, True, False, {"action_mask": mask, "invalid_action": True}
        self._pz.step(a)
        reward = float(self._pz.rewards[self._agent])
        if not self._over():
            reward += self._opponent_moves()
        self._done = self._over()
        obs, mask = self._view(self._agent)
        terminated = bool(self._pz.terminations[self._agent])
        truncated = bool(self._pz.truncations[self._agent]) and not terminated
        return obs, reward, terminated, truncated, {"action_mask": mask}

    def action_masks(self) -> np.ndarray:
        """The agent's legal moves now, ``bool`` of shape ``(n,)``."""
        return self._view(self._agent)[1]

    def close(self) -> None:
        """Close the PettingZoo env."""
        self._pz.close()
