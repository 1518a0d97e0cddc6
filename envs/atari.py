"""Atari 2600 games (ale-py) with the full action space and the minimal action set as the mask.

Registered ids: ``maskrl/Atari-<Game>-v0`` for every single-player game ale-py
ships (:data:`ATARI_GAMES`, the same list ale-py registers as ``ALE/<Game>-v5``;
a test checks it against ``ale_py.roms.get_all_rom_ids()``). The list is static
so that ``import maskrl.envs`` does not import ``ale_py``: it is imported only
when an Atari id is made (optional extra ``atari``).

What an id builds (:func:`make_atari_env`):

* ``ale_py.env.AtariEnv`` with ``full_action_space=True``: ``Discrete(18)`` for
  every game but Skiing and LostLuggage, whose legal set in ale-py is the 9
  actions without fire (``Discrete(9)``); sticky actions
  ``repeat_action_probability=0.25`` and
  ``max_num_frames_per_episode=108_000`` (27,000 agent steps), the settings
  Machado et al. (2018, "Revisiting the Arcade Learning Environment")
  recommend and Gymnasium's ``ALE/*-v5`` ids use;
* ``AtariPreprocessing``: up to 30 no-op starts, frame skip 4 (max-pooled over
  the last two frames), 84x84 grayscale ``uint8``, no end of episode on life loss;
* ``FrameStackObservation`` of 4 frames: observation ``Box(0, 255, (4, 84, 84), uint8)``;
* :class:`~maskrl.envs.ActionMaskWrapper` with the game's
  ``ale.getMinimalActionSet()`` as the (constant) mask, over the legal action
  set (:func:`atari_minimal_mask`). Action ``k`` is ``ale.getLegalActionSet()[k]``,
  which for 18 actions is the ``Action`` enum in order (``Action(k)``).

Every action of the action space is accepted: ALE runs any action of the legal set
(the console's joystick has all 18 positions), and one outside the game's
minimal set does what the game does with that input: the same as a minimal
action, and the no-op for an input the game ignores (Breakout's ``UP``).
``check_actions=True`` raises :class:`ValueError` on it instead, to debug an
agent's masking.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from maskrl.envs.masks import ActionMaskWrapper

__all__ = ["ATARI_GAMES", "atari_game_name", "atari_minimal_mask", "make_atari_env"]

#: ale-py ROM ids of the single-player games (ale-py skips combat, joust,
#: maze_craze and warlords, which have no single-player mode).
ATARI_GAMES: tuple[str, ...] = (
    'adventure', 'air_raid', 'alien', 'amidar', 'assault', 'asterix', 'asteroids', 'atlantis2',
    'atlantis', 'backgammon', 'bank_heist', 'basic_math', 'battle_zone', 'beam_rider',
    'berzerk', 'blackjack', 'bowling', 'boxing', 'breakout', 'carnival', 'casino', 'centipede',
    'chopper_command', 'crazy_climber', 'crossbow', 'darkchambers', 'defender', 'demon_attack',
    'donkey_kong', 'double_dunk', 'earthworld', 'elevator_action', 'enduro', 'entombed', 'et',
    'fishing_derby', 'flag_capture', 'freeway', 'frogger', 'frostbite', 'galaxian', 'gopher',
    'gravitar', 'hangman', 'haunted_house', 'hero', 'human_cannonball', 'ice_hockey',
    'jamesbond', 'journey_escape', 'kaboom', 'kangaroo', 'keystone_kapers', 'king_kong', 'klax',
    'koolaid', 'krull', 'kung_fu_master', 'laser_gates', 'lost_luggage', 'mario_bros',
    'miniature_golf', 'montezuma_revenge', 'mr_do', 'ms_pacman', 'name_this_game', 'othello',
    'pacman', 'phoenix', 'pitfall2', 'pitfall', 'pong', 'pooyan', 'private_eye', 'qbert',
    'riverraid', 'road_runner', 'robotank', 'seaquest', 'sir_lancelot', 'skiing', 'solaris',
    'space_invaders', 'space_war', 'star_gunner', 'superman', 'surround', 'tennis', 'tetris',
    'tic_tac_toe_3d', 'time_pilot', 'trondead', 'turmoil', 'tutankham', 'up_n_down', 'venture',
    'video_checkers', 'video_chess', 'video_cube', 'video_pinball', 'wizard_of_wor',
    'word_zapper', 'yars_revenge', 'zaxxon',
)  # fmt: skip


def atari_game_name(rom: str) -> str:
    """The id's game name for a ROM id, as ale-py names its ids.

    >>> atari_game_name("space_invaders"), atari_game_name("tic_tac_toe_3d")
    ('SpaceInvaders', 'TicTacToe3D')
    """
    return rom.title().replace("_", "")


def atari_minimal_mask(ale: Any) -> np.ndarray:
    """Boolean mask of ``ale.getMinimalActionSet()`` within ``ale.getLegalActionSet()``.

    Entry ``k`` belongs to legal action ``k``, the env's action ``k`` with
    ``full_action_space=True``: shape ``(18,)`` for almost every game, ``(9,)``
    for the two whose legal set has no fire actions (Skiing, LostLuggage).
    """
    legal = [a.value for a in ale.getLegalActionSet()]
    return np.isin(legal, [a.value for a in ale.getMinimalActionSet()])


class _ConstantMask:
    """``mask_fn`` returning one precomputed read-only mask (the minimal set never changes)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.mask.flags.writeable = False

    def __call__(self, env: gym.Env[Any, Any]) -> np.ndarray:
        return self.mask


def make_atari_env(
    game: str,
    *,
    repeat_action_probability: float = 0.25,
    noop_max: int = 30,
    frame_skip: int = 4,
    screen_size: int = 84,
    stack_size: int = 4,
    terminal_on_life_loss: bool = False,
    max_num_frames_per_episode: int = 108_000,
    check_actions: bool = False,
) -> gym.Env[np.ndarray, np.int64]:
    """Build one preprocessed, masked Atari game (entry point of ``maskrl/Atari-*-v0``).

    Args:
        game: ale-py ROM id, e.g. ``"breakout"`` (see :data:`ATARI_GAMES`).
        repeat_action_probability: sticky actions (Machado et al.: 0.25).
        noop_max: at most this many no-ops after a reset (random, from the env's RNG).
        frame_skip: emulator frames per agent step.
        screen_size: side of the square grayscale frame.
        stack_size: frames stacked along the first axis.
        terminal_on_life_loss: end the episode on a lost life (off: whole games).
        max_num_frames_per_episode: truncation, in emulator frames.
        check_actions: raise :class:`ValueError` for an action outside the minimal set
            (to debug an agent's masking). When False (default) ALE executes it: every
            legal action is defined and acts as the game's equivalent minimal action
            (the no-op for an input the game ignores).

    Returns:
        An env with observation ``Box(0, 255, (stack_size, screen_size, screen_size), uint8)``,
        action space ``Discrete(18)`` (``Discrete(9)`` for Skiing and LostLuggage)
        and ``info["action_mask"]`` / ``action_masks()``.
    """
    import ale_py  # optional dependency, imported only when an Atari id is made
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    base = ale_py.env.AtariEnv(
        game=game,
        frameskip=1,  # AtariPreprocessing does the frame skipping (with max-pooling)
        repeat_action_probability=repeat_action_probability,
        full_action_space=True,
        max_num_frames_per_episode=max_num_frames_per_episode,
    )
    mask = atari_minimal_mask(base.ale)
    env: gym.Env[Any, Any] = AtariPreprocessing(
        base,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=terminal_on_life_loss,
        grayscale_obs=True,
        scale_obs=False,
    )
    env = FrameStackObservation(env, stack_size)
    return ActionMaskWrapper(env, mask_fn=_ConstantMask(mask), check_actions=check_actions)
