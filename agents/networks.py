"""The default network for a pair of Gymnasium spaces.

The torch building blocks live in :mod:`maskrl.networks` and know nothing of
Gymnasium; this module reads the spaces (and the observation layout an env
declares) and assembles a network from them.

Image layout is explicit: an env declares ``metadata["obs_layout"]`` as
``"CHW"`` (channels first: MinAtar, Atari) or ``"HWC"`` (channels last:
PettingZoo's board games), and a 3-D ``Box`` of an env that declares nothing
is read as ``"CHW"``. Guessing from the shape would be wrong for small boards:
Connect Four's ``(6, 7, 2)`` is a plausible ``(C, H, W)`` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from maskrl.networks import (
    SET_ITEM_KEYS,
    ActorCritic,
    AtariCNN,
    ChannelsLast,
    MinAtarCNN,
    MLPEncoder,
    MultiGameActorCritic,
    OneHotEncoder,
    RecurrentActorCritic,
    SetActorCritic,
)
from maskrl.tokens import GridTokenEncoder

__all__ = ["MULTIGAME_ENCODERS", "OBS_LAYOUTS", "build_actor_critic", "obs_layout_of"]

#: Image layouts an env may declare in ``metadata["obs_layout"]``.
OBS_LAYOUTS = ("CHW", "HWC")

#: Encoders :func:`build_actor_critic` offers for multi-game observations.
MULTIGAME_ENCODERS = ("cnn", "tokens")


def obs_layout_of(env: Any) -> str:
    """The image layout an env (or vector env) declares; ``"CHW"`` if it declares none.

    Raises:
        ValueError: the env declares a layout other than ``"CHW"`` or ``"HWC"``.
    """
    layout = (getattr(env, "metadata", None) or {}).get("obs_layout", "CHW")
    if layout not in OBS_LAYOUTS:
        raise ValueError(f"env metadata['obs_layout'] must be one of {OBS_LAYOUTS}, got {layout!r}")
    return str(layout)


def _encoder_for_box(
    shape: tuple[int, ...], layout: str, hidden: int | None = None, conv_filters: int | None = None
) -> nn.Module:
    enc: nn.Module
    if len(shape) == 3:
        if layout == "HWC":
            h, w, c = shape
        else:
            c, h, w = shape
        if h <= 16 and w <= 16:
            if min(h, w) >= 3:
                enc = MinAtarCNN(c, h, w, filters=conv_filters or 16, hidden=hidden or 128)
            else:
                enc = MLPEncoder(c * h * w, (hidden or 64,) * 2)
        elif (h, w) == (84, 84):
            enc = AtariCNN(c, hidden=hidden or 512)
        else:
            raise ValueError(
                f"no default encoder for {layout} image observations of shape {shape}; "
                "pass your own network (an ActorCritic around your encoder)"
            )
    else:
        enc = MLPEncoder(int(math.prod(shape)), (hidden or 64,) * 2)
    if conv_filters is not None and not isinstance(enc, MinAtarCNN):
        raise ValueError(
            f"conv_filters={conv_filters} sets the filters of the MinAtar CNN (grids of 3 to 16 "
            f"cells a side); this network reads observations of shape {shape}"
        )
    return ChannelsLast(enc) if layout == "HWC" and not isinstance(enc, MLPEncoder) else enc


def _token_encoder(
    shape: tuple[int, ...],
    layout: str,
    num_games: int,
    channels_per_game: Sequence[int] | None,
    attention_layers: int,
    attention_heads: int,
    relative_position: bool = False,
    token_neighbourhood: int = 1,
) -> GridTokenEncoder:
    if channels_per_game is None:
        raise ValueError(
            'multigame_encoder="tokens" needs channels_per_game, the channel count of each '
            "game's own observation (maskrl.envs.multigame_layout(env_ids) gives the shapes)"
        )
    if len(shape) != 3 or layout != "CHW":
        raise ValueError(
            'multigame_encoder="tokens" reads channels-first (C, H, W) grids; got '
            f"{layout} observations of shape {shape}"
        )
    channels = [int(c) for c in channels_per_game]
    if len(channels) != num_games or max(channels) != shape[0]:
        raise ValueError(
            f"channels_per_game={channels} does not match the observation space: "
            f"{num_games} games, padded to {shape[0]} channels"
        )
    return GridTokenEncoder(
        channels,
        shape[1],
        shape[2],
        layers=attention_layers,
        attention_heads=attention_heads,
        relative_position=relative_position,
        neighbourhood=token_neighbourhood,
    )


def build_actor_critic(
    observation_space: Any,
    action_space: Any,
    obs_layout: str = "CHW",
    *,
    multigame_encoder: Literal["cnn", "tokens"] = "cnn",
    channels_per_game: Sequence[int] | None = None,
    hidden: int | None = None,
    conv_filters: int | None = None,
    attention_layers: int = 0,
    attention_heads: int = 1,
    relative_position: bool = False,
    token_neighbourhood: int = 1,
    lstm_hidden: int | None = None,
) -> nn.Module:
    """Pick a default actor-critic from Gymnasium spaces.

    * ``Box`` images (``(C, H, W)``, or ``(H, W, C)`` with ``obs_layout="HWC"``)
      with ``H, W <= 16``: :class:`~maskrl.networks.MinAtarCNN` (an MLP below
      3x3); ``84 x 84``: :class:`~maskrl.networks.AtariCNN`; any other ``Box``:
      :class:`~maskrl.networks.MLPEncoder`.
    * ``Discrete`` observations: one-hot, then an MLP.
    * ``Dict`` with ``"obs"`` and ``"game_id"`` (the multi-game vector env):
      :class:`~maskrl.networks.MultiGameActorCritic` around the encoder
      ``multigame_encoder`` names: ``"cnn"``, the default encoder of the padded
      ``obs`` as above; ``"tokens"``, a :class:`~maskrl.tokens.GridTokenEncoder`
      that reads each game's own channels as a set of cell tokens (needs
      ``channels_per_game`` and channels-first grids).
    * ``Dict`` with ``"item_features"`` (or ``"items"``) and ``"item_mask"`` (a
      padded set) and a ``Discrete(N)`` action, ``N`` the number of item slots:
      :class:`~maskrl.networks.SetActorCritic`; its other ``Box`` keys are
      global context.

    Args:
        observation_space, action_space: the env's single spaces.
        obs_layout: ``"CHW"`` or ``"HWC"``, how 3-D ``Box`` observations are laid out
            (see :func:`obs_layout_of`).
        multigame_encoder: ``"cnn"`` or ``"tokens"``; only for multi-game
            observations.
        channels_per_game: the channel count of each game's own observation,
            in game-id order (e.g. ``[s[0] for s in
            maskrl.envs.multigame_layout(env_ids)]``); required by
            ``multigame_encoder="tokens"``, unused otherwise.
        hidden: width of the encoder's dense layer(s) (None: the defaults, 128
            for the MinAtar CNN, 512 for the Atari CNN, 64 for MLPs); for the
            set network (Knapsack), the width of its item embeddings, its
            self-attention blocks and its heads (None: 64); not used by the
            token and one-hot encoders.
        conv_filters: filters of the MinAtar CNN's convolution (None: 16, as in
            the MinAtar paper); only for grids the MinAtar CNN reads (a
            multi-game student of several MinAtar games may want more).
        attention_layers: masked self-attention blocks
            (:class:`maskrl.SelfAttentionBlock`) in the set encoder
            (Knapsack) or the token encoder (``multigame_encoder="tokens"``);
            0: none (each item or token encoded on its own). Only for those
            two networks.
        attention_heads: heads of each self-attention block.
        relative_position: the token encoder's self-attention adds a learned
            bias per relative grid offset of two tokens
            (:class:`~maskrl.tokens.GridTokenEncoder`); only with
            ``multigame_encoder="tokens"`` and ``attention_layers >= 1``.
        token_neighbourhood: odd window ``k``: each token of the token
            encoder embeds the ``k x k`` cells around its own (a convolutional
            stem; :class:`~maskrl.tokens.GridTokenEncoder`'s ``neighbourhood``);
            1: its own cell only. Only with ``multigame_encoder="tokens"``.
        lstm_hidden: wrap the network in a
            :class:`~maskrl.networks.RecurrentActorCritic` with an LSTM of this
            many units between its encoder and its heads (recurrent PPO); None:
            feedforward. Not for the set network (Knapsack).

    Raises:
        ValueError: for a space it has no default for (pass your own network);
            ``multigame_encoder="tokens"`` without ``channels_per_game``, with
            channel counts that do not match the space, or for observations
            that are not multi-game grids; ``attention_layers > 0`` for a
            network with no set or token encoder; a negative
            ``attention_layers`` or ``attention_heads < 1``.

    Example:
        >>> import maskrl.envs
        >>> ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"]
        >>> envs = maskrl.envs.make_multigame_vec(ids, 2)
        >>> channels = [s[0] for s in maskrl.envs.multigame_layout(ids)]
        >>> net = build_actor_critic(envs.single_observation_space, envs.single_action_space,
        ...                          multigame_encoder="tokens", channels_per_game=channels)
        >>> type(net.encoder).__name__, channels
        ('GridTokenEncoder', [4, 10])
    """
    from gymnasium import spaces

    if lstm_hidden is not None:
        base = build_actor_critic(
            observation_space, action_space, obs_layout,
            multigame_encoder=multigame_encoder, channels_per_game=channels_per_game,
            hidden=hidden, conv_filters=conv_filters, attention_layers=attention_layers,
            attention_heads=attention_heads, relative_position=relative_position,
            token_neighbourhood=token_neighbourhood,
        )  # fmt: skip
        return RecurrentActorCritic(base, lstm_hidden)
    if obs_layout not in OBS_LAYOUTS:
        raise ValueError(f"obs_layout must be one of {OBS_LAYOUTS}, got {obs_layout!r}")
    if multigame_encoder not in MULTIGAME_ENCODERS:
        raise ValueError(
            f"multigame_encoder must be one of {MULTIGAME_ENCODERS}, got {multigame_encoder!r}"
        )
    if attention_layers < 0:
        raise ValueError(f"attention_layers must be >= 0, got {attention_layers}")
    if attention_heads < 1:
        raise ValueError(f"attention_heads must be >= 1, got {attention_heads}")
    is_multigame = isinstance(observation_space, spaces.Dict) and {"obs", "game_id"} <= set(
        observation_space.spaces
    )
    is_set = (
        isinstance(observation_space, spaces.Dict)
        and not is_multigame
        and "item_mask" in observation_space.spaces
        and any(k in observation_space.spaces for k in SET_ITEM_KEYS)
    )
    if attention_layers and not (is_set or multigame_encoder == "tokens"):
        raise ValueError(
            f"attention_layers={attention_layers} needs a set observation (item_features + "
            'item_mask) or multigame_encoder="tokens"; this network has no set of items or '
            "tokens to attend over"
        )
    if relative_position and not (multigame_encoder == "tokens" and attention_layers >= 1):
        raise ValueError(
            "relative_position=True biases the token encoder's self-attention: it needs "
            f'multigame_encoder="tokens" and attention_layers >= 1, got '
            f"multigame_encoder={multigame_encoder!r}, attention_layers={attention_layers}"
        )
    if token_neighbourhood != 1 and multigame_encoder != "tokens":
        raise ValueError(
            f"token_neighbourhood={token_neighbourhood} sets the token encoder's window: it "
            f'needs multigame_encoder="tokens", got {multigame_encoder!r}'
        )
    if hidden is not None and (
        multigame_encoder == "tokens" or isinstance(observation_space, spaces.Discrete)
    ):
        raise ValueError(
            f"hidden={hidden} sets the dense layer of a grid or vector encoder (or the width "
            "of the set network); this network (a token or one-hot encoder) has none"
        )
    if hidden is not None and hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    if conv_filters is not None and conv_filters < 1:
        raise ValueError(f"conv_filters must be >= 1, got {conv_filters}")
    if conv_filters is not None and (is_set or multigame_encoder == "tokens"):
        raise ValueError(
            f"conv_filters={conv_filters} sets the MinAtar CNN's filters; this network (a set "
            "or token encoder) has no convolution"
        )
    if multigame_encoder == "tokens" and not is_multigame:
        raise ValueError(
            'multigame_encoder="tokens" needs a multi-game observation space (a Dict with '
            f'"obs" and "game_id"), got {observation_space}'
        )
    if isinstance(action_space, spaces.Discrete):
        n_logits = int(action_space.n)
    elif isinstance(action_space, spaces.MultiDiscrete):
        n_logits = int(action_space.nvec.sum())
    else:
        raise ValueError(f"unsupported action space {action_space}: use Discrete or MultiDiscrete")

    if isinstance(observation_space, spaces.Dict):
        keys = set(observation_space.spaces)
        if {"obs", "game_id"} <= keys:
            inner, game = observation_space["obs"], observation_space["game_id"]
            if not isinstance(inner, spaces.Box) or not isinstance(game, spaces.Discrete):
                raise ValueError(
                    'a multi-game observation needs a Box "obs" and a Discrete "game_id", got '
                    f"{observation_space}"
                )
            num_games = int(game.n)
            encoder: nn.Module
            if multigame_encoder == "tokens":
                encoder = _token_encoder(
                    tuple(inner.shape),
                    obs_layout,
                    num_games,
                    channels_per_game,
                    attention_layers,
                    attention_heads,
                    relative_position,
                    token_neighbourhood,
                )
            else:
                encoder = _encoder_for_box(tuple(inner.shape), obs_layout, hidden, conv_filters)
            return MultiGameActorCritic(encoder, n_logits, num_games)
        items_key = next((k for k in SET_ITEM_KEYS if k in keys), None)
        if items_key is not None and "item_mask" in keys:
            items = observation_space[items_key]
            if not isinstance(items, spaces.Box) or len(items.shape) != 2:
                raise ValueError(f"{items_key!r} must have shape (N, F), got {items.shape}")
            if not isinstance(action_space, spaces.Discrete) or action_space.n != items.shape[0]:
                raise ValueError(
                    f"a set observation with {items.shape[0]} item slots needs action space "
                    f"Discrete({items.shape[0]}) (pick an item), got {action_space}"
                )
            ctx_keys = tuple(sorted(keys - {items_key, "item_mask"}))
            ctx_dim = sum(int(math.prod(observation_space[k].shape or ())) for k in ctx_keys)
            return SetActorCritic(
                int(items.shape[1]),
                ctx_keys,
                ctx_dim,
                hidden=hidden or 64,
                items_key=items_key,
                layers=attention_layers,
                attention_heads=attention_heads,
            )
        raise ValueError(
            f"no default network for Dict observations with keys {sorted(keys)}; "
            "pass your own network"
        )
    if isinstance(observation_space, spaces.Discrete):
        if conv_filters is not None:
            raise ValueError(f"conv_filters={conv_filters}: a one-hot encoder has no convolution")
        return ActorCritic(OneHotEncoder(int(observation_space.n)), n_logits)
    if isinstance(observation_space, spaces.MultiBinary | spaces.Box):
        return ActorCritic(
            _encoder_for_box(tuple(observation_space.shape), obs_layout, hidden, conv_filters),
            n_logits,
        )
    raise ValueError(f"no default network for observation space {observation_space}; pass your own")
