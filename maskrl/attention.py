"""Attention pooling over zero-padded variable-size sets.

A batch of sets of different sizes arrives padded to a common length ``N``,
``x: [B, N, dim]``, with ``mask: [B, N]`` (``True = present``). Padding must
not matter: the pooled output of a padded set equals that of the same set
unpadded, whatever sits in the padded slots (zeros, garbage, NaN). Hence:

* padded slots are replaced by zeros with ``torch.where`` before any
  arithmetic -- multiplying by the mask would not do, ``NaN * 0`` is NaN;
* the attention scores of padded slots are masked out of the softmax
  (:func:`maskrl.masked_softmax`), so the weights of the present items sum to
  1 and padded slots weigh exactly 0;
* an empty set (all padding) is legitimate and pools to zeros, with finite
  gradients for the whole batch.

:class:`SelfAttentionBlock` relates the items of such a set to each other
(a pre-norm transformer block, masked the same way) before they are pooled.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrl.masking import as_bool_mask, masked_softmax

__all__ = ["AttentionPool", "SelfAttentionBlock"]


class AttentionPool(nn.Module):
    """Pool a padded set ``[B, N, dim]`` into one vector per set by attention.

    Args:
        dim: Size of each item's feature vector.
        num_heads: Number of heads for ``kind="multihead"``; ``dim`` must be
            divisible by it. ``kind="additive"`` has a single context vector
            and requires ``num_heads == 1``.
        kind: ``"additive"`` -- hierarchical-attention-network pooling (Yang
            et al. 2016): ``u_i = tanh(W x_i + b)``, score ``u_i . c`` with a
            learned context vector ``c``, softmax over the present items,
            output ``sum_i a_i x_i``. ``"multihead"`` -- a learned query per
            head attends over the set by scaled dot-product attention on
            projected keys and values; the heads' outputs are concatenated and
            passed through an output projection ``dim -> dim``.
        out_dim: ``None``: the output is the pooled context itself, size
            ``dim``. Otherwise the pooled context is passed through a learned
            ``nn.Linear(dim, out_dim)`` (the "attention layer size"). Only the
            context is projected: the query (``c``, or the per-head queries)
            is a learned constant shared by all sets, so appending it to the
            input of the projection would only add a second bias.

    Empty sets:
        A set with no present item outputs exactly zeros, with or without
        ``out_dim`` (the projection is not applied to it, so an empty set
        never turns into the projection's bias), and its attention weights
        are all zero.

    Shapes:
        ``forward(x, mask)``: ``x`` ``[B, N, dim]``, ``mask`` ``[B, N]``
        (bool or 0/1 integers, ``True = present``) -> ``[B, out_dim or dim]``.
        With ``return_weights=True`` also the weights, ``[B, N]`` (additive)
        or ``[B, num_heads, N]`` (multihead); they sum to 1 over the present
        items of a non-empty set and are exactly 0 on padding.

    Example:
        >>> pool = AttentionPool(8, num_heads=2, kind="multihead", out_dim=4)
        >>> x = torch.randn(3, 5, 8)
        >>> mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]).bool()
        >>> out, w = pool(x, mask, return_weights=True)
        >>> out.shape, w.shape
        (torch.Size([3, 4]), torch.Size([3, 2, 5]))
        >>> bool((out[2] == 0).all())
        True
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        kind: Literal["additive", "multihead"] = "additive",
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if out_dim is not None and out_dim < 1:
            raise ValueError(f"out_dim must be positive or None, got {out_dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.kind = kind
        self.out_dim = out_dim
        if kind == "additive":
            if num_heads != 1:
                raise ValueError(
                    f'kind="additive" has one context vector; num_heads must be 1, got {num_heads}'
                )
            self.proj = nn.Linear(dim, dim)
            # Same scale as a Linear(dim, 1) weight row, so the initial
            # scores are moderate and the initial weights near-uniform.
            self.context = nn.Parameter(torch.empty(dim).uniform_(-1, 1) / math.sqrt(dim))
        elif kind == "multihead":
            if dim % num_heads != 0:
                raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
            self.head_dim = dim // num_heads
            self.query = nn.Parameter(
                torch.randn(num_heads, self.head_dim) / math.sqrt(self.head_dim)
            )
            self.key = nn.Linear(dim, dim)
            self.value = nn.Linear(dim, dim)
            self.out = nn.Linear(dim, dim)
        else:
            raise ValueError(f'kind must be "additive" or "multihead", got {kind!r}')
        self.head: nn.Linear | None = None if out_dim is None else nn.Linear(dim, out_dim)

    @overload
    def forward(
        self, x: Tensor, mask: Tensor, return_weights: Literal[False] = False
    ) -> Tensor: ...

    @overload
    def forward(
        self, x: Tensor, mask: Tensor, return_weights: Literal[True]
    ) -> tuple[Tensor, Tensor]: ...

    def forward(
        self, x: Tensor, mask: Tensor, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool ``x`` ``[B, N, dim]`` over the items where ``mask`` ``[B, N]`` is True.

        Returns ``[B, out_dim or dim]``, or ``(pooled, weights)`` with
        ``return_weights=True`` (see the class docstring for the shapes).
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [B, N, {self.dim}], got {tuple(x.shape)}")
        if not isinstance(mask, Tensor) or mask.shape != x.shape[:2]:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must have shape [B, N] = {tuple(x.shape[:2])}, got {got}")
        mask = as_bool_mask(mask, x[..., 0])
        # torch.where, not x * mask: NaN or inf in a padded slot would survive
        # a multiplication by 0 and poison every sum below.
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))

        if self.kind == "additive":
            u = torch.tanh(self.proj(x))  # [B, N, dim]
            scores = u @ self.context  # [B, N]
            weights = masked_softmax(scores, mask)  # [B, N], 0 on padding
            pooled = (weights[..., None] * x).sum(dim=1)  # [B, dim]
        else:
            b, n, _ = x.shape
            h, hd = self.num_heads, self.head_dim
            k = self.key(x).view(b, n, h, hd).transpose(1, 2)  # [B, h, N, hd]
            v = self.value(x).view(b, n, h, hd).transpose(1, 2)  # [B, h, N, hd]
            scores = (k @ self.query[:, :, None]).squeeze(-1) / math.sqrt(hd)  # [B, h, N]
            weights = masked_softmax(scores, mask[:, None, :])  # [B, h, N]
            context = (weights[..., None] * v).sum(dim=2)  # [B, h, hd]
            pooled = self.out(context.reshape(b, h * hd))  # [B, dim]

        if self.head is not None:
            pooled = self.head(pooled)
        # Empty sets give zeros: their weights are all 0, and the bias of any
        # projection after the weighting is discarded here.
        has_item = mask.any(dim=1, keepdim=True)
        pooled = torch.where(
            has_item, pooled, torch.zeros((), dtype=pooled.dtype, device=pooled.device)
        )
        return (pooled, weights) if return_weights else pooled


class SelfAttentionBlock(nn.Module):
    """Masked multi-head self-attention over a padded set, then a feed-forward layer.

    A pre-norm transformer block (as in the Set Transformer's SAB and the
    entity encoders of AlphaStar and OpenAI Five)::

        h = x + Out(MHA(LayerNorm(x)))          # each present item attends to the present items
        y = h + FF2(relu(FF1(LayerNorm(h))))

    Padding never matters:

    * padded rows are replaced by zeros (``torch.where``) before any
      arithmetic, so whatever they hold (garbage, ``inf``, NaN) cannot reach
      the outputs or the gradients of the present rows;
    * padded keys are masked out of every softmax: they get exactly zero
      weight in every dtype (a boolean mask, i.e. ``-inf`` before the
      softmax, so half precision has no leak either);
    * the outputs at padded rows are exactly zero;
    * a row with no present item (an empty set) outputs zeros with finite
      gradients. (``scaled_dot_product_attention`` gives NaN for a query
      whose keys are all masked; such a row attends over its zeroed slots
      instead, and its outputs are then replaced by zeros.)

    The attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`,
    so PyTorch's fused kernels are used where they apply (e.g. the
    memory-efficient kernel on a GPU, which takes a mask). Every projection is
    an ``nn.Linear`` called as a module, so :func:`maskrl.quant.prepare_qat`
    quantizes all of them (it refuses ``nn.MultiheadAttention``, whose
    weights are read directly).

    Args:
        dim: feature size of each item (input and output).
        num_heads: attention heads; ``dim`` must be divisible by it.
        ff_dim: hidden size of the feed-forward layer (default ``2 * dim``).

    Shapes:
        ``forward(x [B, N, dim], present [B, N]) -> [B, N, dim]``; ``present``
        is bool (or 0/1 integers), ``True`` = the item is in the set. The
        block is equivariant to permutations of the items: permuting the
        rows of ``x`` and ``present`` together permutes the output rows.

    Example:
        >>> block = SelfAttentionBlock(8, num_heads=2)
        >>> x = torch.randn(2, 4, 8)
        >>> present = torch.tensor([[True, True, False, False], [False] * 4])
        >>> x[0, 2:] = float("nan")  # padding may hold anything
        >>> y = block(x, present)
        >>> y.shape, bool((y[0, 2:] == 0).all()), bool((y[1] == 0).all())
        (torch.Size([2, 4, 8]), True, True)
    """

    def __init__(self, dim: int, num_heads: int = 1, ff_dim: int | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"num_heads must be a positive divisor of dim ({dim}), got {num_heads}"
            )
        ff = 2 * dim if ff_dim is None else ff_dim
        if ff < 1:
            raise ValueError(f"ff_dim must be positive or None, got {ff_dim}")
        self.dim, self.num_heads, self.head_dim, self.ff_dim = dim, num_heads, dim // num_heads, ff
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff)
        self.ff2 = nn.Linear(ff, dim)

    def _check_bias(self, bias: Tensor, present: Tensor) -> Tensor:
        """Validate an attention bias's type and shape (see :meth:`_float_mask` for its use)."""
        b, n = present.shape
        if (
            not isinstance(bias, Tensor)
            or bias.dim() != 4
            or bias.shape[0] not in (1, b)
            or bias.shape[1] not in (1, self.num_heads)
            or tuple(bias.shape[2:]) != (n, n)
        ):
            got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(
                f"bias must have shape [B, num_heads, N, N] = [{b}, {self.num_heads}, {n}, {n}] "
                f"(or size 1 in its first two dimensions), got {got}"
            )
        if not bias.is_floating_point():
            raise ValueError(f"bias must be a float tensor, got {bias.dtype}")
        return bias

    @staticmethod
    def _float_mask(bias: Tensor, present: Tensor, key_ok: Tensor) -> Tensor:
        """The additive attention mask ``[B, heads or 1, N, N]`` of a checked ``bias``.

        ``bias`` between present items, 0 from a query to an allowed key
        otherwise, and ``-inf`` (not a large negative number: masked keys keep
        exactly zero weight in every dtype) to a key that is not allowed. One
        ``torch.where``, not a product: NaN in ``bias`` at a padded pair does
        not survive, and no gradient flows to those entries.
        """
        pair = present[:, None, :, None] & present[:, None, None, :]
        base = torch.where(
            key_ok[:, None, None, :],
            torch.zeros((), dtype=bias.dtype, device=bias.device),
            torch.full((), float("-inf"), dtype=bias.dtype, device=bias.device),
        )  # [B, 1, 1, N]
        return torch.where(pair, bias, base)

    def attention(self, h: Tensor, key_ok: Tensor, bias: Tensor | None = None) -> Tensor:
        """Multi-head attention of the normalised items ``h [B, N, dim]``.

        ``key_ok [B, N]`` (bool) marks the keys each query may attend to; every
        row must have at least one. ``bias`` (optional, ``[B, heads, N, N]``,
        finite) is added to the attention logits of the allowed keys. Returns
        the projected context ``[B, N, dim]``.
        """
        if bias is None:
            return self._attend(h, key_ok[:, None, None, :])
        neg = torch.full((), float("-inf"), dtype=bias.dtype, device=bias.device)
        return self._attend(h, torch.where(key_ok[:, None, None, :], bias, neg))

    def _attend(self, h: Tensor, mask: Tensor) -> Tensor:
        """:meth:`attention` with the mask ready: bool ``[B, 1, 1, N]`` (True = allowed)
        or additive float ``[B, heads or 1, N, N]`` (``-inf`` = not allowed)."""
        b, n, _ = h.shape
        heads, hd = self.num_heads, self.head_dim
        q, k, v = self.qkv(h).view(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)  # 3 x [B, h, N, hd]
        if mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # autocast: the projections' dtype
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(context.transpose(1, 2).reshape(b, n, self.dim))

    def forward(self, x: Tensor, present: Tensor, bias: Tensor | None = None) -> Tensor:
        """Relate the present items of ``x [B, N, dim]`` to each other; see the class docstring.

        ``bias`` (optional): ``[B, num_heads, N, N]`` (or broadcastable to it:
        size 1 in the first two dimensions), added to the attention logit of
        query ``i`` for key ``j`` -- e.g. a learned function of the two items'
        relative position (:class:`maskrl.GridTokenEncoder` with
        ``relative_position=True``). Entries at padded items are ignored, as
        the padded items are (they may hold anything, NaN included); entries
        between present items must be finite.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [B, N, {self.dim}], got {tuple(x.shape)}")
        if not isinstance(present, Tensor) or present.shape != x.shape[:2]:
            got = tuple(present.shape) if isinstance(present, Tensor) else type(present).__name__
            raise ValueError(f"present must have shape [B, N] = {tuple(x.shape[:2])}, got {got}")
        present = as_bool_mask(present, x[..., 0], name="present")
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        keep = present[..., None]
        x = torch.where(keep, x, zero)
        # An empty row would mask every key (NaN from the softmax): let it
        # attend over its own zeroed slots, which are finite, and zero it below.
        key_ok = present | ~present.any(dim=1, keepdim=True)
        if bias is None:
            mask = key_ok[:, None, None, :]
        else:
            mask = self._float_mask(self._check_bias(bias, present), present, key_ok)
        h = x + self._attend(self.norm_attn(x), mask)
        h = h + self.ff2(torch.relu(self.ff1(self.norm_ff(h))))
        return torch.where(keep, h, zero)
