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
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import Tensor, nn

from maskrl.masking import as_bool_mask, masked_softmax

__all__ = ["AttentionPool"]


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
