"""Tests for AttentionPool."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import maskrl.attention
from maskrl import AttentionPool

CONFIGS = [
    ("additive", 1, None),
    ("additive", 1, 3),
    ("multihead", 1, None),
    ("multihead", 2, None),
    ("multihead", 4, 5),
]
DIM = 8


def make_pool(kind: str, heads: int, out_dim: int | None, seed: int = 0) -> AttentionPool:
    torch.manual_seed(seed)
    pool = AttentionPool(DIM, num_heads=heads, kind=kind, out_dim=out_dim)  # type: ignore[arg-type]
    return pool.double()


def fill_padding(
    x: torch.Tensor, mask: torch.Tensor, kind: str, g: torch.Generator
) -> torch.Tensor:
    pad = {
        "zeros": torch.zeros_like(x),
        "nan": torch.full_like(x, math.nan),
        "inf": torch.full_like(x, math.inf),
        "huge": torch.randn(x.shape, generator=g, dtype=x.dtype) * 1e300,
        "noise": torch.randn(x.shape, generator=g, dtype=x.dtype) * 10,
    }[kind]
    return torch.where(mask[..., None], x, pad)


# -- hand-worked values and an independent implementation ---------------------------


def test_additive_with_zero_scores_is_the_mean_of_present_items() -> None:
    pool = AttentionPool(3, kind="additive")
    with torch.no_grad():
        pool.proj.weight.zero_()
        pool.proj.bias.zero_()  # u = tanh(0) = 0, every score 0, uniform weights
    x = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [100.0, 100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    out, w = pool(x, mask, return_weights=True)
    assert out.tolist() == [[2.0, 3.0, 4.0]]
    assert w.tolist() == [[0.5, 0.5, 0.0]]


def test_additive_matches_formula() -> None:
    torch.manual_seed(0)
    pool = AttentionPool(4, kind="additive").double()
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True, False]])
    out, w = pool(x, mask, return_weights=True)
    real = x[0, mask[0]]
    scores = torch.tanh(real @ pool.proj.weight.T + pool.proj.bias) @ pool.context
    a = torch.softmax(scores, dim=0)
    assert torch.allclose(out[0], a @ real, atol=1e-12)
    assert torch.allclose(w[0, mask[0]], a, atol=1e-12)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_multihead_matches_torch_multihead_attention(heads: int) -> None:
    torch.manual_seed(1)
    pool = AttentionPool(DIM, num_heads=heads, kind="multihead").double()
    mha = nn.MultiheadAttention(DIM, heads, batch_first=True).double()
    with torch.no_grad():
        # Identity query projection, so MHA's per-head queries are ours.
        mha.in_proj_weight.copy_(
            torch.cat([torch.eye(DIM, dtype=torch.float64), pool.key.weight, pool.value.weight])
        )
        mha.in_proj_bias.copy_(
            torch.cat([torch.zeros(DIM, dtype=torch.float64), pool.key.bias, pool.value.bias])
        )
        mha.out_proj.weight.copy_(pool.out.weight)
        mha.out_proj.bias.copy_(pool.out.bias)
    x = torch.randn(3, 6, DIM, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 1, 0]]).bool()
    out, w = pool(x, mask, return_weights=True)
    query = pool.query.reshape(1, 1, DIM).expand(3, 1, DIM)
    # PyTorch's key_padding_mask is True = padding: the opposite of maskrl's.
    ref, ref_w = mha(
        query, x, x, key_padding_mask=~mask, need_weights=True, average_attn_weights=False
    )
    assert torch.allclose(out, ref[:, 0], atol=1e-10)
    assert torch.allclose(w, ref_w[:, :, 0], atol=1e-12)


# -- padding invariance ----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    extra=st.integers(0, 5),
    padding=st.sampled_from(["zeros", "nan", "inf", "huge", "noise"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_padding_does_not_matter(
    config: tuple[str, int, int | None], sizes: list[int], extra: int, padding: str, seed: int
) -> None:
    pool = make_pool(*config)
    g = torch.Generator().manual_seed(seed)
    n = max(sizes) + extra
    sets = [torch.randn(s, DIM, generator=g, dtype=torch.float64) for s in sizes]
    x = torch.zeros(len(sizes), n, DIM, dtype=torch.float64)
    mask = torch.zeros(len(sizes), n, dtype=torch.bool)
    for b, items in enumerate(sets):
        # Items at random positions, padding in between and around them.
        slots = torch.randperm(n, generator=g)[: len(items)].sort().values
        x[b, slots] = items
        mask[b, slots] = True
    x = fill_padding(x, mask, padding, g)
    out, w = pool(x, mask, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    for b, items in enumerate(sets):
        alone = pool(items[None], torch.ones(1, len(items), dtype=torch.bool))
        assert torch.allclose(out[b], alone[0], atol=1e-10)
    # Weights: exactly 0 on padding, summing to 1 over the present items.
    weights = w if w.dim() == 3 else w[:, None]
    assert (weights.masked_select(~mask[:, None]) == 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-12)


@pytest.mark.parametrize(("kind", "heads", "out_dim"), CONFIGS)
def test_permutation_invariance(kind: str, heads: int, out_dim: int | None) -> None:
    pool = make_pool(kind, heads, out_dim)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 7, DIM, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=g) < 0.6
    mask[:, 0] = True
    perm = torch.randperm(7, generator=g)
    out, w = pool(x, mask, return_weights=True)
    out_p, w_p = pool(x[:, perm], mask[:, perm], return_weights=True)
    assert torch.allclose(out, out_p, atol=1e-12)
    assert torch.allclose(w[..., perm], w_p, atol=1e-12)


# -- empty sets ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "heads", "out_dim"), CONFIGS)
def test_empty_set_pools_to_zeros_with_finite_gradients(
    kind: str, heads: int, out_dim: int | None
) -> None:
    pool = make_pool(kind, heads, out_dim).float()
    x = torch.randn(3, 5, DIM)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()
    x[~mask] = math.nan  # padding is NaN, including the whole empty set
    x.requires_grad_(True)
    out, w = pool(x, mask, return_weights=True)
    assert out.shape == (3, out_dim or DIM)
    assert (out[1] == 0).all()
    assert (out[[0, 2]] != 0).any()
    assert (w[1] == 0).all()
    loss = (out**2).sum() + out.sum()
    loss.backward()
    for name, param in pool.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert (param.grad != 0).any(), name
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[~mask] == 0).all()


def test_all_empty_batch() -> None:
    pool = AttentionPool(DIM, kind="multihead", num_heads=2, out_dim=4)
    x = torch.randn(2, 3, DIM, requires_grad=True)
    out = pool(x, torch.zeros(2, 3, dtype=torch.bool))
    assert out.tolist() == [[0.0] * 4, [0.0] * 4]
    out.sum().backward()
    assert x.grad is not None and (x.grad == 0).all()


# -- shapes and errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "heads", "out_dim"), CONFIGS)
def test_output_shapes(kind: str, heads: int, out_dim: int | None) -> None:
    pool = make_pool(kind, heads, out_dim)
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.uint8)  # 0/1 integers are accepted
    out, w = pool(x, mask, return_weights=True)
    assert out.shape == (2, out_dim or DIM)
    assert w.shape == ((2, 5) if kind == "additive" else (2, heads, 5))
    assert pool(x, mask).shape == out.shape


def test_shape_errors() -> None:
    pool = AttentionPool(DIM)
    with pytest.raises(ValueError, match=r"\[B, N, 8\].*\(5, 8\)"):
        pool(torch.zeros(5, DIM), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, N, 8\].*\(2, 5, 7\)"):
        pool(torch.zeros(2, 5, 7), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, N\] = \(2, 5\).*\(2, 4\)"):
        pool(torch.zeros(2, 5, DIM), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        pool(torch.zeros(2, 5, DIM), torch.ones(2, 5))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        AttentionPool(6, num_heads=4, kind="multihead")
    with pytest.raises(ValueError, match="num_heads must be 1"):
        AttentionPool(6, num_heads=2, kind="additive")
    with pytest.raises(ValueError, match="kind"):
        AttentionPool(6, kind="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out_dim"):
        AttentionPool(6, out_dim=0)


def test_docstring_examples() -> None:
    result = doctest.testmod(maskrl.attention, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
