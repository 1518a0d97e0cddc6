"""Network blocks: observation encoders and actor-critics with a masked policy head.

Every actor-critic here maps a batch of observations to ``(logits, value)``
and exposes :meth:`ActorCritic.features`, the hidden features its heads read.
Masking is *not* applied inside the network: the logits are raw, and the
caller applies the step's action mask with :func:`maskrl.masked_log_softmax`
(or :class:`maskrl.MaskedCategorical`). Keeping the two apart means one
network serves every mask (the Actor-Mimic setting: several games, one head
over the union of their actions) and that distillation can read the same
features and logits a PPO update does.

Encoders (:func:`maskrl.agents.build_actor_critic` picks one from Gymnasium
spaces; this module knows nothing of Gymnasium):

* :class:`MinAtarCNN` -- small grids such as MinAtar's ``(C, 10, 10)``;
* :class:`AtariCNN` -- the standard Atari network for ``(4, 84, 84)`` frames;
* :class:`MLPEncoder` -- flat vectors;
* :class:`SetEncoder` -- a zero-padded, variable-size set of items with its
  presence mask, pooled with :class:`maskrl.AttentionPool`.

Observations are tensors, or dicts of tensors for ``Dict`` spaces, channels
first for images; :class:`AtariCNN` scales ``uint8`` frames to ``[0, 1]``, the
other encoders take values as they come (MinAtar grids are already 0/1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maskrl.attention import AttentionPool, SelfAttentionBlock
from maskrl.init import layer_init

Obs = torch.Tensor | dict[str, torch.Tensor]

__all__ = [
    "ActorCritic",
    "AtariCNN",
    "MLPEncoder",
    "MinAtarCNN",
    "MultiGameActorCritic",
    "SetActorCritic",
    "SetEncoder",
    "ChannelsLast",
    "OneHotEncoder",
    "RecurrentActorCritic",
]

#: Keys a padded-set ``Dict`` observation may use for its ``[N, F]`` item rows
#: (``"item_features"`` in maskrl's Knapsack: sb3's ``MultiInputPolicy`` cannot
#: take a key named ``items``, a method of its ``nn.ModuleDict``).
SET_ITEM_KEYS = ("item_features", "items")

HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0


class MinAtarCNN(nn.Module):
    """The MinAtar network: one 3x3 convolution, then a dense layer.

    Args:
        in_channels: channels of the ``(C, H, W)`` grid.
        height, width: grid size (10 x 10 for MinAtar).
        filters: convolution filters (16 in the MinAtar paper).
        hidden: units of the dense layer (128 in the MinAtar paper).

    Shapes: ``[B, C, H, W]`` -> ``[B, hidden]``.
    """

    def __init__(
        self,
        in_channels: int,
        height: int = 10,
        width: int = 10,
        filters: int = 16,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.conv = layer_init(nn.Conv2d(in_channels, filters, kernel_size=3, stride=1))
        flat = filters * (height - 2) * (width - 2)
        self.fc = layer_init(nn.Linear(flat, hidden))
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        # Every layer is called as its module (never F.conv2d on its weight), so
        # that a module swap or forward hook (quantization-aware training) sees
        # it; the module call costs about 1 us more at a batch of 32.
        h = torch.relu(self.conv(x))
        return torch.relu(self.fc(h.flatten(1)))


class AtariCNN(nn.Module):
    """The standard Atari network (Mnih et al. 2015): three convolutions and 512 units.

    Shapes: ``[B, 4, 84, 84]`` (``uint8`` frames or floats in ``[0, 1]``) -> ``[B, 512]``.
    """

    def __init__(self, in_channels: int = 4, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Conv2d(in_channels, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, hidden)),
            nn.ReLU(),
        )
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return self.net(x)


class MLPEncoder(nn.Module):
    """A tanh MLP over flat features. Shapes: ``[B, in_dim]`` -> ``[B, hidden[-1]]``."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [layer_init(nn.Linear(d, h)), nn.Tanh()]
            d = h
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float().flatten(1))


class SetEncoder(nn.Module):
    """Encode a zero-padded set of items: per-item MLP, self-attention, attention pooling.

    Args:
        item_dim: features per item.
        context_dim: size of the global features concatenated to the pooled set
            (e.g. a knapsack's remaining capacity); 0 for none.
        hidden: width of the per-item MLP and of the pooled summary.
        pool: ``"additive"`` or ``"multihead"`` (see :class:`maskrl.AttentionPool`).
        num_heads: heads for ``pool="multihead"``.
        layers: masked self-attention blocks (:class:`maskrl.SelfAttentionBlock`)
            after the per-item MLP, so that each item's embedding is related to
            the other items and to the context; 0: each item is encoded on its
            own. With a context, the context is projected into one more
            token, always present, that the items attend to.
        attention_heads: heads of each self-attention block.

    ``forward(items [B, N, item_dim], mask [B, N] (True = present), context [B, context_dim])``
    returns ``(per_item [B, N, hidden], summary [B, hidden + context_dim])``. Padded
    rows never influence ``summary`` or the present rows of ``per_item``,
    whatever values they hold; with ``layers > 0`` the padded rows of
    ``per_item`` are zero.
    """

    def __init__(
        self,
        item_dim: int,
        context_dim: int = 0,
        hidden: int = 64,
        pool: str = "additive",
        num_heads: int = 1,
        layers: int = 0,
        attention_heads: int = 1,
    ) -> None:
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        self.item_mlp = nn.Sequential(
            layer_init(nn.Linear(item_dim, hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.ReLU(),
        )
        if pool not in ("additive", "multihead"):
            raise ValueError(f"pool must be 'additive' or 'multihead', got {pool!r}")
        self.pool = AttentionPool(hidden, num_heads=num_heads, kind=pool)  # type: ignore[arg-type]
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(hidden, num_heads=attention_heads) for _ in range(layers)
        )
        # The context as one more token (for the blocks only).
        self.context_token = (
            layer_init(nn.Linear(context_dim, hidden)) if layers and context_dim else None
        )
        self.context_dim = context_dim
        self.out_dim = hidden + context_dim
        self.item_dim_out = hidden

    def forward(
        self, items: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = mask.bool()
        # Padded rows may hold anything (even NaN); zero them before the MLP so
        # that nothing non-finite reaches the per-item features or gradients.
        items = torch.where(mask.unsqueeze(-1), items.float(), 0.0)
        per_item = self.item_mlp(items)
        if self.context_dim:
            if context is None:
                raise ValueError(f"SetEncoder expects a context of size {self.context_dim}")
            context = context.float().flatten(1)
        if self.blocks:
            n = per_item.shape[1]
            h, present = per_item, mask
            if self.context_token is not None:
                assert context is not None
                h = torch.cat([h, self.context_token(context).unsqueeze(1)], dim=1)
                present = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            for block in self.blocks:
                h = block(h, present)
            per_item = h[:, :n]
        pooled = self.pool(per_item, mask)
        if context is not None and self.context_dim:
            pooled = torch.cat([pooled, context], dim=-1)
        return per_item, pooled


class ActorCritic(nn.Module):
    """An encoder with a policy head (raw logits) and a value head.

    Args:
        encoder: module mapping observations to ``[B, encoder.out_dim]``.
        n_logits: policy logits (``n`` for ``Discrete(n)``, ``sum(nvec)`` for
            ``MultiDiscrete``).
        obs_key: for ``Dict`` observations, the key the encoder reads (None: the
            observation is a tensor).

    Heads follow the initialisation convention: policy gain 0.01 (a near-uniform
    initial policy over the valid actions), value gain 1.
    """

    def __init__(self, encoder: nn.Module, n_logits: int, obs_key: str | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.obs_key = obs_key
        feat = int(encoder.out_dim)  # type: ignore[arg-type]
        self.policy_head = layer_init(nn.Linear(feat, n_logits), std=POLICY_GAIN)
        self.value_head = layer_init(nn.Linear(feat, 1), std=VALUE_GAIN)

    def features(self, obs: Obs) -> torch.Tensor:
        """Hidden features ``[B, F]`` that both heads read."""
        x = obs[self.obs_key] if self.obs_key is not None else obs  # type: ignore[index]
        return self.encoder(x)

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits [B, n_logits], value [B])``."""
        x = obs[self.obs_key] if self.obs_key is not None else obs  # type: ignore[index]
        h = self.encoder(x)
        return self.policy_head(h), self.value_head(h).squeeze(-1)

    def value(self, obs: Obs) -> torch.Tensor:
        """Value ``[B]`` alone."""
        return self.value_head(self.features(obs)).squeeze(-1)


class MultiGameActorCritic(nn.Module):
    """One network for several games (the Actor-Mimic setting).

    Observations are ``{"obs": [B, ...] padded to a common shape, "game_id": [B]}``.
    A shared encoder reads ``obs``; a learned game embedding is added to its
    features; one policy head spans the union of all games' actions (each game's
    action mask removes the actions it lacks); each game has its own value output,
    because returns differ in scale between games.

    An encoder whose class sets ``uses_game_id = True`` (such as
    :class:`maskrl.tokens.GridTokenEncoder`, which embeds each game's channels
    separately) is called as ``encoder(obs["obs"], obs["game_id"])``; any other
    encoder as ``encoder(obs["obs"])``.
    """

    def __init__(self, encoder: nn.Module, n_logits: int, num_games: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_games = num_games
        feat = int(encoder.out_dim)  # type: ignore[arg-type]
        self.game_embedding = nn.Embedding(num_games, feat)
        nn.init.zeros_(self.game_embedding.weight)
        self.policy_head = layer_init(nn.Linear(feat, n_logits), std=POLICY_GAIN)
        self.value_head = layer_init(nn.Linear(feat, num_games), std=VALUE_GAIN)

    def _check_game_id(self, game_id: torch.Tensor) -> None:
        """ValueError for game ids that are not whole numbers in ``[0, num_games)``.

        ``.long()`` would silently truncate 0.5 to game 0, and an id out of range
        would fail deep inside the embedding. Values are checked on CPU tensors
        only (on an accelerator the check would cost a device sync per call);
        a boolean or complex ``game_id`` is refused on any device.
        """
        if game_id.is_complex() or game_id.dtype == torch.bool:
            raise ValueError(f"game_id must hold integers, got dtype {game_id.dtype}")
        if game_id.device.type != "cpu" or not game_id.numel():
            return
        if game_id.is_floating_point():
            whole = torch.isfinite(game_id) & (game_id == game_id.round())
            if not bool(whole.all()):
                bad = game_id[~whole][0].item()
                raise ValueError(
                    f"game_id must hold integers in [0, {self.num_games - 1}], got {bad}"
                )
        lo, hi = int(game_id.min()), int(game_id.max())
        if lo < 0 or hi >= self.num_games:
            raise ValueError(
                f"game_id must be in [0, {self.num_games - 1}] (this network has "
                f"{self.num_games} games), got {lo if lo < 0 else hi}"
            )

    def features(self, obs: Obs) -> torch.Tensor:
        """Hidden features ``[B, F]``: the encoded screen plus the game embedding.

        Raises:
            ValueError: ``obs["game_id"]`` is boolean or complex, or (on CPU)
                holds a value that is not a whole number in ``[0, num_games)``.
        """
        assert isinstance(obs, dict)
        game_id = obs["game_id"]
        self._check_game_id(game_id)
        # Looked up per call (not cached at init), so swapping the encoder
        # module later (e.g. for quantization-aware training) stays correct.
        if getattr(self.encoder, "uses_game_id", False):
            h = self.encoder(obs["obs"], game_id)
        else:
            h = self.encoder(obs["obs"])
        return h + self.game_embedding(game_id.long())

    def value_of_features(self, h: torch.Tensor, game_id: torch.Tensor) -> torch.Tensor:
        """Each row's value ``[B]`` from its features ``h [B, F]`` (from :meth:`features`) and game."""
        return self.value_head(h).gather(1, game_id.long().view(-1, 1)).squeeze(1)

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(obs, dict)
        h = self.features(obs)
        return self.policy_head(h), self.value_of_features(h, obs["game_id"])

    def value(self, obs: Obs) -> torch.Tensor:
        assert isinstance(obs, dict)
        return self.value_of_features(self.features(obs), obs["game_id"])


class SetActorCritic(nn.Module):
    """Actor-critic for "pick an element of a set" problems (e.g. knapsack).

    Observation: ``{items_key: [B, N, F], "item_mask": [B, N], <context keys>: [B, k]}``
    (``items_key`` is ``"item_features"`` in maskrl's Knapsack).
    Each item's logit is scored from its own embedding and the pooled summary
    of the whole set (a pointer-style head), so the policy is equivariant to
    the order of the items and works for any ``N``; the value reads the summary.
    With ``layers > 0`` (see :class:`SetEncoder`) the item embeddings the
    pointer head reads are the self-attention outputs, each item related to
    the others and to the context (the capacity left).
    """

    def __init__(
        self,
        item_dim: int,
        context_keys: tuple[str, ...] = (),
        context_dim: int = 0,
        hidden: int = 64,
        pool: str = "additive",
        num_heads: int = 1,
        items_key: str = "items",
        mask_key: str = "item_mask",
        layers: int = 0,
        attention_heads: int = 1,
    ) -> None:
        super().__init__()
        self.items_key, self.mask_key = items_key, mask_key
        self.context_keys = context_keys
        self.encoder = SetEncoder(
            item_dim, context_dim, hidden, pool, num_heads, layers, attention_heads
        )
        s = self.encoder.out_dim
        self.score = nn.Sequential(
            layer_init(nn.Linear(hidden + s, hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(hidden, 1), std=POLICY_GAIN),
        )
        self.value_net = nn.Sequential(
            layer_init(nn.Linear(s, hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(hidden, 1), std=VALUE_GAIN),
        )

    def _encode(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(obs, dict)
        ctx = (
            torch.cat([obs[k].float().flatten(1) for k in self.context_keys], dim=-1)
            if self.context_keys
            else None
        )
        return self.encoder(obs[self.items_key], obs[self.mask_key], ctx)

    def features(self, obs: Obs) -> torch.Tensor:
        return self._encode(obs)[1]

    def forward(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        per_item, summary = self._encode(obs)
        n = per_item.shape[1]
        joint = torch.cat([per_item, summary.unsqueeze(1).expand(-1, n, -1)], dim=-1)
        return self.score(joint).squeeze(-1), self.value_net(summary).squeeze(-1)

    def value(self, obs: Obs) -> torch.Tensor:
        return self.value_net(self.features(obs)).squeeze(-1)


class OneHotEncoder(nn.Module):
    """One-hot a ``Discrete`` observation, then a :class:`MLPEncoder`. ``[B]`` -> ``[B, hidden[-1]]``."""

    def __init__(self, n: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.n = n
        self.mlp = MLPEncoder(n, hidden)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(nn.functional.one_hot(x.long().view(-1), self.n).float())


class ChannelsLast(nn.Module):
    """Run an encoder of channels-first images on channels-last ``[B, H, W, C]`` input.

    Board games (PettingZoo's Connect Four, Tic-Tac-Toe) give ``(H, W, C)``
    observations; the convolutional encoders read ``(C, H, W)``.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_dim = encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.permute(0, 3, 1, 2))


def _leading_flat(obs: Obs, n: int) -> Obs:
    """Merge the two leading dims ``[T, B, ...]`` of every leaf into ``[T * B, ...]``."""
    if isinstance(obs, dict):
        return {k: v.reshape((n,) + v.shape[2:]) for k, v in obs.items()}
    return obs.reshape((n,) + obs.shape[2:])


class RecurrentActorCritic(nn.Module):
    """An actor-critic with an LSTM between its encoder and its heads.

    Wraps an :class:`ActorCritic` or a :class:`MultiGameActorCritic`: the
    wrapped network's features (encoder, and game embedding) feed a one-layer
    ``nn.LSTM`` of ``lstm_hidden`` units, whose output feeds new policy and value
    heads of the wrapped network's sizes (they replace the wrapped network's
    heads, with the same initialisation gains).

    The state is ``(h, c)``, each ``[B, lstm_hidden]`` with the batch (env) index
    first; :meth:`initial_state` is zeros, the state at the start of an episode.

    * :meth:`forward` ``(obs, state) -> (logits [B, n], value [B], next_state)``:
      one step (acting).
    * :meth:`forward_sequence` ``(obs [T, B, ...], state, starts [T, B]) ->
      (logits [T, B, n], values [T, B])``: a whole rollout replayed from its
      start state, the state zeroed before every step that begins an episode
      (the update).

    Raises:
        ValueError: another network, or ``lstm_hidden < 1``.
    """

    #: Networks with a per-env state say so; a policy reads this to carry it.
    is_recurrent = True

    def __init__(self, base: nn.Module, lstm_hidden: int) -> None:
        super().__init__()
        if not isinstance(base, ActorCritic | MultiGameActorCritic):
            raise ValueError(
                "a recurrent network wraps an ActorCritic or MultiGameActorCritic (an encoder "
                f"with policy and value heads), not {type(base).__name__}"
            )
        if isinstance(lstm_hidden, bool) or not isinstance(lstm_hidden, int) or lstm_hidden < 1:
            raise ValueError(f"lstm_hidden must be an integer >= 1, got {lstm_hidden!r}")
        feat = int(base.encoder.out_dim)  # type: ignore[arg-type]
        n_logits, n_values = base.policy_head.out_features, base.value_head.out_features
        self.base = base
        self.lstm_hidden = lstm_hidden
        self.lstm = nn.LSTM(feat, lstm_hidden)
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.orthogonal_(p, 1.0)
        base.policy_head = layer_init(nn.Linear(lstm_hidden, n_logits), std=POLICY_GAIN)
        base.value_head = layer_init(nn.Linear(lstm_hidden, n_values), std=VALUE_GAIN)

    def initial_state(
        self, batch: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros ``(h, c)``, each ``[batch, lstm_hidden]`` (on the network's device by default)."""
        dev = device if device is not None else self.base.policy_head.weight.device
        shape = (batch, self.lstm_hidden)
        return torch.zeros(shape, device=dev), torch.zeros(shape, device=dev)

    def _heads(self, y: torch.Tensor, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base
        if isinstance(base, MultiGameActorCritic):
            assert isinstance(obs, dict)
            value = base.value_of_features(y, obs["game_id"])
        else:
            value = base.value_head(y).squeeze(-1)
        return base.policy_head(y), value

    def forward(  # type: ignore[override]
        self, obs: Obs, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step: ``(logits [B, n], value [B], (h, c))`` from ``obs [B, ...]`` and ``state``."""
        h, c = state
        x = self.base.features(obs)  # type: ignore[operator]
        out, (h1, c1) = self.lstm(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
        logits, value = self._heads(out[0], obs)
        return logits, value, (h1[0], c1[0])

    #: The padding (in row-steps) one LSTM call saved is worth (see :meth:`forward_sequence`).
    ROWS_PER_CALL = 128

    def _replay_lstm(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], starts: torch.Tensor
    ) -> torch.Tensor:
        """The LSTM's outputs ``[T, B, H]`` over features ``x [T, B, F]`` (see forward_sequence)."""
        T, B = starts.shape
        h0, c0 = state
        cut_steps = torch.nonzero(starts[1:].any(1)).flatten() + 1
        n_calls = 1 + int(cut_steps.numel())
        if n_calls > 1:
            # Pieces: every env's sequence cut before each of its episode starts (and at
            # 0). In env-major order, piece k of env b starts at step t_k.
            first = starts.clone()
            first[0] = True
            flags = first.t().reshape(-1)  # [B * T], env-major
            where = torch.nonzero(flags).flatten()
            piece_env, piece_t = where // T, where % T
            n_pieces = int(where.numel())
            piece = (torch.cumsum(flags.long(), 0) - 1).view(B, T).t()  # [T, B]
            step = torch.arange(T, device=x.device).view(T, 1)
            offset = step - piece_t[piece]  # [T, B]: step within its piece
            longest = int(offset.max()) + 1
            if n_pieces * longest <= T * B + self.ROWS_PER_CALL * (n_calls - 1):
                dest = (offset * n_pieces + piece).reshape(-1)  # row of (t, b) in the batch
                feat = x.shape[-1]
                padded = x.new_zeros(longest * n_pieces, feat).index_copy(
                    0, dest, x.reshape(T * B, feat)
                )
                # The rollout's state where a piece starts the rollout (its env not
                # starting an episode there), zeros where it starts an episode.
                carry = ((piece_t == 0) & ~starts[0, piece_env]).to(h0.dtype).view(1, -1, 1)
                h = h0.index_select(0, piece_env).unsqueeze(0) * carry
                c = c0.index_select(0, piece_env).unsqueeze(0) * carry
                out, _ = self.lstm(padded.view(longest, n_pieces, feat), (h, c))
                return out.reshape(longest * n_pieces, -1).index_select(0, dest).view(T, B, -1)
        h, c = h0.unsqueeze(0), c0.unsqueeze(0)
        cuts = [0, *[int(t) for t in cut_steps], T]
        outs = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            keep = (~starts[a]).to(h.dtype).view(1, B, 1)
            h, c = h * keep, c * keep
            out, (h, c) = self.lstm(x[a:b], (h, c))
            outs.append(out)
        return torch.cat(outs)

    def forward_sequence(
        self, obs: Obs, state: tuple[torch.Tensor, torch.Tensor], starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay ``T`` steps of ``B`` envs from ``state``: ``(logits [T, B, n], values [T, B])``.

        ``starts [T, B]`` (bool) marks the steps that begin an episode: the
        state of that env is zeroed before the step, as the rollout did.

        The LSTM runs in as few calls as pays: each call of ``nn.LSTM`` has a
        fixed cost (on a CPU core about what 100 row-steps of a 64-unit LSTM
        cost), so where episodes end inside the rollout the envs' sequences
        are cut at their episode starts and the pieces run side by side as
        one padded batch -- one call over ``[longest piece, pieces]`` -- unless
        the padding would cost more than the calls it saves; then the LSTM
        runs over each stretch of steps in which no env starts an episode.
        Either way each row of the LSTM sees exactly the inputs and state the
        rollout gave it (its rows are computed independently).
        """
        T, B = starts.shape
        flat = _leading_flat(obs, T * B)
        x = self.base.features(flat).view(T, B, -1)  # type: ignore[operator]
        y = self._replay_lstm(x, state, starts).reshape(T * B, -1)
        logits, values = self._heads(y, flat)
        return logits.view(T, B, -1), values.view(T, B)
