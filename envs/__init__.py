"""Gymnasium environments and wrappers that follow maskrl's mask convention.

Importing this package registers the ``maskrl/...`` Gymnasium ids (MinAtar,
Atari, Knapsack, PettingZoo board games); the heavy optional dependencies
(ale-py, PettingZoo) are imported only when their ids are made.

The convention: a mask is a boolean numpy array, ``True`` = valid; an env puts
the mask of the observation it returns in ``info["action_mask"]`` after every
``reset`` and ``step`` and answers ``action_masks()``; a vector env carries them
batched, ``infos["action_mask"]`` of shape ``(num_envs, n)``.

:class:`InvalidActionPolicy` is the masking ablation at the env level: what an
action outside the mask does when the agent masks (``mask``), is penalised
(``penalty``) or sees no mask at all (``none``). :class:`Flicker` blanks
observations at random (a partially observed env, for recurrent policies).
"""

from maskrl.envs.flicker import Flicker
from maskrl.envs.invalid_actions import InvalidActionPolicy
from maskrl.envs.masks import (
    ActionMaskWrapper,
    MaskFn,
    action_is_valid,
    mask_size,
    validate_mask,
)
from maskrl.envs.minatar_games import MinAtarEnv
from maskrl.envs.registration import (
    atari_ids,
    minatar_ids,
    missing_dependency,
    register_envs,
    registered_ids,
)
from maskrl.envs.vector import (
    episodes_by_game,
    game_observation,
    make_multigame_vec,
    make_vec,
    multigame_layout,
)

register_envs()

__all__ = [
    "ActionMaskWrapper",
    "Flicker",
    "InvalidActionPolicy",
    "MaskFn",
    "MinAtarEnv",
    "action_is_valid",
    "atari_ids",
    "episodes_by_game",
    "game_observation",
    "make_multigame_vec",
    "make_vec",
    "mask_size",
    "minatar_ids",
    "missing_dependency",
    "multigame_layout",
    "register_envs",
    "registered_ids",
    "validate_mask",
]
