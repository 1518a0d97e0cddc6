"""Read a multi-game grid screen as a set of tokens, one per occupied cell.

Games with different channel counts share one vector env by zero-padding their
channels at the end (:func:`maskrl.envs.make_multigame_vec`): MinAtar's
Breakout has 4 channels, Seaquest 10, and a CNN over the padded ``[10, H, W]``
grid sees Breakout's channel 2 and Seaquest's channel 2 through the same
filter although they mean different things. :class:`GridTokenEncoder` instead
reads a screen as a set:

* each occupied cell (a cell where one of the game's own channels is nonzero)
  is a token;
* its embedding is the sum, over the game's channels, of the cell's value
  times a per-(game, channel) embedding (for 0/1 grids: the sum of the
  embeddings of the objects in the cell), plus a row and a column embedding;
* ``layers`` masked self-attention blocks (:class:`maskrl.SelfAttentionBlock`)
  relate the tokens to each other (the ball to the paddle), a small per-token
  MLP follows, and :class:`maskrl.AttentionPool` pools the set, with empty
  cells masked out.

So a game's padded channels are never read (whatever they hold, NaN
included), empty cells never matter, an empty screen pools to zeros, and no
channel is shared between games unless the network learns to share it.

This module needs torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrl.attention import AttentionPool, SelfAttentionBlock
from maskrl.init import layer_init

__all__ = ["GridTokenEncoder", "compact_present"]


def compact_present(present: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """Gather indices that move each row's present elements to its front, in order.

    Args:
        present: ``[B, N]`` bool, which elements of each row are present.
        slots: ``K``, the number of slots kept (``1 <= K <= N``); every row
            must have at most ``K`` present elements (the caller checks: the
            error it raises knows what the elements are).

    Returns:
        ``(order [B, K] long, kept [B, K] bool)``: slot ``s`` of row ``b``
        holds element ``order[b, s]`` of that row; the row's present elements
        fill its first slots in their original order and ``kept`` marks them.
        The other slots point at absent elements. ``x.gather(1, order[..., None]
        .expand(-1, -1, D))`` then compacts any ``[B, N, D]`` tensor.

    One scatter of a permutation: present element ``j`` goes to slot "present
    elements before ``j``", absent elements after all present ones. O(N), no
    sort, and unique indices, so it is deterministic on every device.
    """
    if present.dim() != 2 or present.dtype != torch.bool:
        raise ValueError(
            f"present must be a [B, N] bool tensor, got {tuple(present.shape)} {present.dtype}"
        )
    b, n = present.shape
    if not 1 <= slots <= n:
        raise ValueError(f"slots must be in 1..{n} (the row length), got {slots}")
    count = present.sum(dim=1)  # [B]
    absent_rank = count[:, None] + (~present).cumsum(dim=1) - 1
    slot = torch.where(present, present.cumsum(dim=1) - 1, absent_rank)  # [B, N]
    index = torch.arange(n, device=present.device).expand(b, n)
    order = torch.empty(b, n, dtype=torch.long, device=present.device)
    order = order.scatter(1, slot, index)[:, :slots]  # [B, K]
    kept = torch.arange(slots, device=present.device)[None, :] < count[:, None]  # [B, K]
    return order, kept


class GridTokenEncoder(nn.Module):
    """Encode padded multi-game grids ``[B, Cmax, H, W]`` as pooled sets of cell tokens.

    Args:
        channels_per_game: ``channels_per_game[g]`` is the number of channels
            ``C_g`` of game ``g``'s own observation; its channels are the first
            ``C_g`` of the padded grid (``Cmax = max C_g``).
        height, width: the grid size (10 x 10 for MinAtar).
        dim: token width (embeddings, per-token MLP and pooled output).
        max_tokens: the most tokens (occupied cells) a screen may have.
            ``None`` (default): no limit, every one of the ``H * W`` cells can be
            a token, so no screen can overflow; the token set of a batch is
            padded to the largest number of occupied cells in it (MinAtar:
            at most 33 of 100), so the cost follows what is on the screens,
            not the grid size. An integer ``K``: the set is padded to exactly
            ``K`` slots (a fixed shape), and a screen with more than ``K``
            occupied cells raises :class:`ValueError` naming its rows --
            dropping cells would blind the policy to objects with no sign of
            it. Either way the occupied cells are gathered in raster order and
            one number is read back from the device per forward (on a GPU, a
            synchronisation). ``None`` is the default because a limit is a
            property of a game, not of the encoder: a cap that fits Breakout
            today fails on a busier game later, while padding to the batch's
            own maximum costs nothing on sparse screens.
        pool: ``"additive"`` or ``"multihead"`` (see :class:`maskrl.AttentionPool`).
        num_heads: heads for ``pool="multihead"`` (``dim`` divisible by it).
        out_dim: ``None``: the output is the pooled token, size ``dim``.
            Otherwise a linear projection of it (still exactly zero for an
            empty screen).
        layers: masked self-attention blocks over the tokens before the
            per-token MLP (0: each token is encoded on its own, a bag of
            tokens).
        attention_heads: heads of each self-attention block (``dim``
            divisible by it).
        relative_position: add to each self-attention logit a learned bias
            for the two tokens' relative position on the grid (one per layer,
            head and offset ``(dr, dc)``, ``(2H - 1) x (2W - 1)`` of them,
            zero at initialisation: the relative position bias of Swin and T5).
            Additive row and column embeddings tell a token where it is; the
            bias lets a head attend by *where the other token is from it*
            ("the cell just above", "the same column"), which a convolution
            sees by construction. Needs ``layers >= 1``.
        neighbourhood: odd window size ``k``: each token (still one per
            occupied cell) embeds the channels of the ``k x k`` cells around
            its own, one embedding row per game, channel and offset (cells
            past the grid's edge read as empty): a convolutional stem, as
            in vision transformers with early convolutions. 1 (default):
            each token embeds its own cell only. With 3, an object and its
            trail (Seaquest, Asterix) or the sub's front and back meet in one
            token, and a token sees what is next to it before any attention.

    Attributes:
        out_dim: output feature size.
        uses_game_id: ``True``: ``forward`` takes ``(obs, game_id)``, and
            :class:`maskrl.networks.MultiGameActorCritic` passes the game id.

    Shapes:
        ``forward(obs [B, Cmax, H, W], game_id [B]) -> [B, out_dim]``, with
        ``0 <= game_id < len(channels_per_game)``. ``obs`` may be any real
        dtype (``bool``, ``uint8``, float); values are read as floats, so a
        cell's embedding is ``sum_c obs[c] * E[game, c]``. Channels ``>= C_g``
        of a row of game ``g`` are ignored. Each row is encoded on its own:
        its output does not depend on the other rows of the batch.

    Cost:
        No Python loop over the batch or the games. On MinAtar screens (at
        most 33 occupied cells), without self-attention blocks, a forward
        costs a few times the :class:`maskrl.networks.MinAtarCNN`'s on CPU
        (the per-token MLP and the attention pool over ``B x K x dim``); the
        blocks dominate once present: with 2 blocks of 4 heads, relative
        positions and a 3 x 3 window, a training step of the five-game
        Actor-Mimic student costs about 16x the CNN student's on one CPU
        core (``benchmarks/encoder_step_time.py``).

    Example:
        >>> enc = GridTokenEncoder([4, 10], 10, 10, dim=32)
        >>> obs = torch.zeros(2, 10, 10, 10)
        >>> obs[0, 1, 3, 4] = 1.0  # game 0: one object; row 1 (game 1): empty screen
        >>> out = enc(obs, torch.tensor([0, 1]))
        >>> out.shape, bool((out[1] == 0).all())
        (torch.Size([2, 32]), True)
    """

    uses_game_id = True
    channel_index: Tensor  # [G, Cmax] embedding row of each (game, channel); buffer
    channel_valid: Tensor  # [G, Cmax] True for a game's own channels; buffer

    def __init__(
        self,
        channels_per_game: Sequence[int],
        height: int,
        width: int,
        dim: int = 64,
        max_tokens: int | None = None,
        pool: Literal["additive", "multihead"] = "additive",
        num_heads: int = 1,
        out_dim: int | None = None,
        layers: int = 0,
        attention_heads: int = 1,
        relative_position: bool = False,
        neighbourhood: int = 1,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels_per_game]
        if not channels or min(channels) < 1:
            raise ValueError(
                f"channels_per_game must be a non-empty list of positive counts, got {channels}"
            )
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be positive, got {height} x {width}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        if relative_position and layers < 1:
            raise ValueError(
                "relative_position=True biases the self-attention blocks' logits; it needs "
                f"layers >= 1, got layers={layers}"
            )
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd window size >= 1, got {neighbourhood}")
        if neighbourhood > 2 * max(height, width) - 1:
            raise ValueError(
                f"neighbourhood={neighbourhood} is wider than a {height} x {width} grid needs "
                f"(at most 2 * {max(height, width)} - 1 = {2 * max(height, width) - 1})"
            )
        cells = height * width
        if max_tokens is not None and not 1 <= max_tokens <= cells:
            raise ValueError(f"max_tokens must be in [1, H*W = {cells}] or None, got {max_tokens}")
        self.channels_per_game = channels
        self.num_games = len(channels)
        self.max_channels = max(channels)
        self.height, self.width = height, width
        self.dim = dim
        self.max_tokens = max_tokens
        self.neighbourhood = int(neighbourhood)

        # One embedding row per (game, channel, window offset), plus a zero
        # row (padding_idx) that every padded channel of every game points
        # to: it has no gradient, so padded channels own no parameters that
        # could drift. Rows are ordered as F.unfold orders its features
        # (channel-major, then the window's offsets in raster order).
        window = self.neighbourhood**2
        total = sum(channels) * window
        self.channel_embedding = nn.Embedding(total + 1, dim, padding_idx=total)
        if window > 1:
            # A window's worth of cells feeds each token: scale the N(0, 1)
            # rows so a full window of one channel has the variance one cell
            # has with window 1.
            with torch.no_grad():
                self.channel_embedding.weight[:total].mul_(1.0 / self.neighbourhood)
        index = torch.full((self.num_games, self.max_channels * window), total, dtype=torch.long)
        offset = 0
        for g, c in enumerate(channels):
            index[g, : c * window] = torch.arange(offset, offset + c * window)
            offset += c * window
        self.register_buffer("channel_index", index, persistent=False)  # [G, Cmax * k * k]
        valid = torch.arange(self.max_channels)[None, :] < torch.tensor(channels)[:, None]
        self.register_buffer("channel_valid", valid, persistent=False)  # [G, Cmax]
        # Row + column embeddings: an object's position is coded the same way
        # in every row or column, with H + W vectors rather than H * W.
        self.row_embedding = nn.Parameter(torch.randn(height, dim) / math.sqrt(2.0))
        self.col_embedding = nn.Parameter(torch.randn(width, dim) / math.sqrt(2.0))
        # Token embedding (linear in the cell's channels and position) -> ReLU ->
        # Linear -> ReLU: a two-layer per-token MLP whose first layer is the
        # embedding itself, so only one dim x dim product runs per token.
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(dim, num_heads=attention_heads) for _ in range(layers)
        )
        self.relative_position = bool(relative_position)
        if self.relative_position:
            # [layers, heads, 2H - 1, 2W - 1]: entry [l, h, dr + H - 1, dc + W - 1]
            # is layer l, head h's logit bias for a key dr rows and dc columns
            # from its query. Zero: the initial network is the one without it.
            self.relative_bias = nn.Parameter(
                torch.zeros(layers, attention_heads, 2 * height - 1, 2 * width - 1)
            )
        self.token_mlp = layer_init(nn.Linear(dim, dim))
        self.pool = AttentionPool(dim, num_heads=num_heads, kind=pool, out_dim=out_dim)
        self.out_dim = dim if out_dim is None else out_dim

    def _check(self, obs: Tensor, game_id: Tensor) -> None:
        want = (self.max_channels, self.height, self.width)
        if obs.dim() != 4 or tuple(obs.shape[1:]) != want:
            raise ValueError(
                f"obs must have shape [B, Cmax, H, W] = [B, {', '.join(map(str, want))}], "
                f"got {tuple(obs.shape)}"
            )
        if game_id.shape != obs.shape[:1]:
            raise ValueError(
                f"game_id must have shape [B] = ({obs.shape[0]},), got {tuple(game_id.shape)}"
            )
        if game_id.is_floating_point() or game_id.dtype == torch.bool:
            raise ValueError(f"game_id must be an integer tensor, got {game_id.dtype}")

    def tokenize(self, obs: Tensor, game_id: Tensor) -> tuple[Tensor, Tensor]:
        """The screen as token embeddings and their presence mask.

        See :meth:`tokenize_cells`, which also returns each slot's cell.
        """
        tokens, present, _ = self.tokenize_cells(obs, game_id)
        return tokens, present

    def tokenize_cells(self, obs: Tensor, game_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The screen as token embeddings, their presence mask and their cells.

        Args:
            obs: ``[B, Cmax, H, W]`` padded grids, channels first.
            game_id: ``[B]`` integer game index per row.

        Returns:
            ``(tokens [B, K, dim], present [B, K], cells [B, K])``: ``K`` is ``max_tokens``,
            or the largest number of occupied cells in the batch (at least 1)
            when it is ``None``. Row ``b``'s occupied cells fill its first
            slots in raster order and ``present`` marks them; the other slots
            hold values that mean nothing and that :meth:`encode` ignores.
            ``cells`` is the grid cell (``row * W + column``) of each slot
            (any cell at an absent slot).

        Raises:
            ValueError: bad shapes, or (with ``max_tokens``) a screen with more
                occupied cells than slots.
        """
        self._check(obs, game_id)
        game_id = game_id.long()
        b = obs.shape[0]
        cells = self.height * self.width
        dtype = self.row_embedding.dtype
        valid = self.channel_valid[game_id]  # [B, Cmax]
        # torch.where, not a product with the mask: NaN in a padded channel
        # would survive multiplication by 0.
        x = obs.to(dtype) if obs.dtype != dtype else obs
        grid = torch.where(
            valid[:, :, None, None], x, torch.zeros((), dtype=dtype, device=x.device)
        )  # [B, Cmax, H, W]
        x = grid.flatten(2).transpose(1, 2)  # [B, HW, Cmax]
        present = (x != 0).any(dim=-1)  # [B, HW]
        count = present.sum(dim=1)  # [B] occupied cells per screen
        # One host read: the slot count (or the overflow check) depends on the data.
        most = int(count.max()) if b else 0
        if self.max_tokens is None:
            # At least one slot, so that an all-empty batch still has a set to pool.
            k = max(most, 1)
        else:
            k = self.max_tokens
            if most > k:
                rows = (count > k).nonzero().flatten().tolist()
                raise ValueError(
                    f"row(s) {rows} have {count[rows].tolist()} occupied cells, more than "
                    f"max_tokens={k}; raise max_tokens (None: every cell can be a token)"
                )
        # The occupied cells to the front, in raster order.
        order, present = compact_present(present, k)  # [B, K] cell index of each slot
        if self.neighbourhood > 1:
            # Each cell's k x k window, channel-major: [B, HW, Cmax * k * k].
            k_w = self.neighbourhood
            x = F.unfold(grid, k_w, padding=k_w // 2).transpose(1, 2)
        feats = x.shape[-1]
        x = x.gather(1, order[:, :, None].expand(-1, -1, feats))  # [B, K, Cmax (* k * k)]
        pos = (self.row_embedding[:, None, :] + self.col_embedding[None, :, :]).reshape(
            cells, self.dim
        )  # [HW, dim]
        cell_pos = pos[order]  # [B, K, dim]
        emb = self.channel_embedding(self.channel_index[game_id])  # [B, Cmax (* k * k), dim]
        tokens = torch.bmm(x, emb) + cell_pos  # [B, K, dim]
        return tokens, present, order

    def encode(self, tokens: Tensor, present: Tensor, cells: Tensor | None = None) -> Tensor:
        """Self-attention blocks, per-token MLP and attention pooling over the present tokens.

        ``tokens [B, K, dim]``, ``present [B, K]`` -> ``[B, out_dim]``. Tokens
        that are not present may hold anything (NaN included): they are
        replaced by zeros first, so neither the output nor any gradient sees
        them. A row with no present token gives zeros. ``cells [B, K]``, the
        grid cell of each slot (:meth:`tokenize_cells`), is required with
        ``relative_position=True`` and ignored otherwise.
        """
        biases: list[Tensor | None] = [None] * len(self.blocks)
        if self.relative_position:
            if cells is None:
                raise ValueError(
                    "this encoder has relative_position=True: encode needs cells [B, K], the "
                    "grid cell of each token slot (tokenize_cells returns them)"
                )
            biases = list(self.relative_biases(cells, present.shape))
        # Zero absent slots *before* the MLP: NaN there would reach the weight
        # gradients through the linear layer (0 * NaN = NaN).
        zero = torch.zeros((), dtype=tokens.dtype, device=tokens.device)
        h = torch.where(present[..., None], tokens, zero)
        for block, bias in zip(self.blocks, biases, strict=True):
            h = block(h, present, bias)
        h = torch.relu(self.token_mlp(torch.relu(h)))
        return self.pool(h, present)

    def forward(self, obs: Tensor, game_id: Tensor) -> Tensor:
        """Encode ``obs [B, Cmax, H, W]`` of games ``game_id [B]`` into ``[B, out_dim]``."""
        tokens, present, cells = self.tokenize_cells(obs, game_id)
        return self.encode(tokens, present, cells)

    def relative_biases(self, cells: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Each block's logit bias for the token pairs: ``[layers, B, heads, K, K]``.

        ``cells [B, K]`` are the slots' grid cells (``row * W + column``);
        ``shape`` is ``present``'s, ``(B, K)``, checked against them.
        """
        if cells.shape != tuple(shape) or cells.is_floating_point() or cells.dtype == torch.bool:
            raise ValueError(
                f"cells must be an integer tensor of shape [B, K] = {tuple(shape)}, got "
                f"{cells.dtype} of shape {tuple(cells.shape)}"
            )
        cells = cells.long()
        if cells.numel():
            # One host read (on a GPU, one synchronisation) for both bounds.
            low, high = torch.stack(torch.aminmax(cells)).tolist()
            if low < 0 or high >= self.height * self.width:
                raise ValueError(
                    f"cells must be in [0, H*W = {self.height * self.width}), got values in "
                    f"[{low}, {high}]"
                )
        w = self.width
        row, col = cells // w, cells % w
        dr = row[:, :, None] - row[:, None, :] + (self.height - 1)  # [B, K, K] query minus key
        dc = col[:, :, None] - col[:, None, :] + (w - 1)
        offset = dr * (2 * w - 1) + dc  # [B, K, K]
        layers, heads = self.relative_bias.shape[:2]
        table = self.relative_bias.reshape(layers * heads, -1)  # [layers * heads, (2H-1)(2W-1)]
        # index_select, not table[:, offset]: the same values, several times
        # cheaper on the CPU forward and backward (index_add, not index_put).
        picked = table.index_select(1, offset.reshape(-1)).view(layers, heads, *offset.shape)
        return picked.permute(0, 2, 1, 3, 4)  # [layers, B, heads, K, K]
