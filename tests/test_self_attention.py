"""Tests for the masked self-attention block and the networks that stack it."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import maskrl
import maskrl.attention
from maskrl import SelfAttentionBlock, masked_softmax
from maskrl.networks import SetActorCritic
from maskrl.tokens import GridTokenEncoder

GARBAGE = {
    "zeros": 0.0,
    "large": 1e30,
    "nan": math.nan,
    "inf": math.inf,
}


def make_block(dim: int = 8, heads: int = 2, seed: int = 0) -> SelfAttentionBlock:
    torch.manual_seed(seed)
    return SelfAttentionBlock(dim, num_heads=heads).double()


def masks(b: int, n: int, seed: int, p: float = 0.6) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, generator=g) < p


def reference_block(
    block: SelfAttentionBlock, x: Tensor, present: Tensor, bias: Tensor | None = None
) -> Tensor:
    """The block written out: explicit scores, masked softmax, weighted sum of values."""
    keep = present[..., None]
    x = torch.where(keep, x, torch.zeros((), dtype=x.dtype))
    b, n, d = x.shape
    heads, hd = block.num_heads, block.head_dim
    h = torch.nn.functional.layer_norm(
        x, (d,), block.norm_attn.weight, block.norm_attn.bias, block.norm_attn.eps
    )
    qkv = h @ block.qkv.weight.T + block.qkv.bias
    q, k, v = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # [B, h, N, N]
    if bias is not None:
        scores = scores + bias
    weights = masked_softmax(scores, present[:, None, None, :])
    context = (weights @ v).transpose(1, 2).reshape(b, n, d)
    y = x + context @ block.out.weight.T + block.out.bias
    z = torch.nn.functional.layer_norm(
        y, (d,), block.norm_ff.weight, block.norm_ff.bias, block.norm_ff.eps
    )
    y = (
        y
        + torch.relu(z @ block.ff1.weight.T + block.ff1.bias) @ block.ff2.weight.T
        + block.ff2.bias
    )
    return torch.where(keep, y, torch.zeros((), dtype=y.dtype))


# ---------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 7),
    heads=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**16),
    garbage=st.sampled_from(list(GARBAGE)),
)
def test_block_ignores_whatever_padding_holds(
    b: int, n: int, heads: int, seed: int, garbage: str
) -> None:
    block = make_block(8, heads, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 8, generator=g, dtype=torch.float64)
    present = masks(b, n, seed)
    dirty = x.clone()
    dirty[~present] = GARBAGE[garbage]
    clean = x.clone()
    clean[~present] = torch.randn(int((~present).sum()), 8, generator=g, dtype=torch.float64)
    out, out_dirty, out_clean = block(x, present), block(dirty, present), block(clean, present)
    assert torch.equal(out, out_dirty) and torch.equal(out, out_clean)
    assert bool((out[~present] == 0).all())
    assert bool(torch.isfinite(out).all())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), extra=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_padded_set_equals_the_unpadded_set(n: int, extra: int, seed: int) -> None:
    block = make_block(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, 8, generator=g, dtype=torch.float64)
    padded = torch.cat([x, torch.full((1, extra, 8), math.nan, dtype=torch.float64)], dim=1)
    present = torch.arange(n + extra)[None] < n
    torch.testing.assert_close(block(padded, present)[:, :n], block(x, torch.ones(1, n).bool()))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_block_is_permutation_equivariant(b: int, n: int, seed: int) -> None:
    block = make_block(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 8, generator=g, dtype=torch.float64)
    present = masks(b, n, seed)
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(block(x[:, perm], present[:, perm]), block(x, present)[:, perm])


def test_empty_rows_give_zeros_and_finite_gradients() -> None:
    block = make_block()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x[1] = math.nan  # row 1 is all padding, and NaN
    present = masks(3, 5, 1)
    present[0, 0] = True
    present[1] = False
    present[2, 1] = True
    x = x.requires_grad_(True)
    out = block(x, present)
    assert bool((out[1] == 0).all()) and bool(torch.isfinite(out).all())
    out.pow(2).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert bool((x.grad[~present] == 0).all())  # padding gets no gradient either
    for name, p in block.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    # A batch of nothing but empty rows too.
    empty = block(torch.randn(2, 4, 8, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.bool))
    assert bool((empty == 0).all())


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 6),
    heads=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**16),
)
def test_fused_attention_agrees_with_the_explicit_reference(
    b: int, n: int, heads: int, seed: int
) -> None:
    block = make_block(8, heads, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 8, generator=g, dtype=torch.float64)
    present = masks(b, n, seed)
    torch.testing.assert_close(block(x, present), reference_block(block, x, present))
    # With an attention bias (added to the logits), per row and head and broadcast.
    bias = 3 * torch.randn(b, heads, n, n, generator=g, dtype=torch.float64)
    torch.testing.assert_close(block(x, present, bias), reference_block(block, x, present, bias))
    shared = bias[:1, :1]
    torch.testing.assert_close(
        block(x, present, shared), reference_block(block, x, present, shared.expand_as(bias))
    )
    torch.testing.assert_close(block(x, present, torch.zeros_like(bias)), block(x, present))
    # float32, the training dtype: the fused kernel to float rounding.
    block32 = block.float()
    torch.testing.assert_close(
        block32(x.float(), present),
        reference_block(block32, x.float(), present),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_padding_at_exactly_zero(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = SelfAttentionBlock(16, num_heads=4).to(dtype)
    x = torch.randn(4, 6, 16).to(dtype)
    present = masks(4, 6, 3)
    present[:, 0] = True
    present[3] = False
    dirty = x.clone()
    dirty[~present] = math.nan
    out = block(dirty, present)
    assert out.dtype == dtype
    assert bool((out[~present] == 0).all()) and bool(torch.isfinite(out).all())
    assert torch.equal(out, block(x, present))
    # The softmax itself: padded keys with large (finite) values take exactly
    # zero weight -- the output is bit for bit that of zeros there. (The
    # block zeroes padded rows first, so its keys there are always finite.)
    h = torch.randn(4, 6, 16).to(dtype)
    key_ok = present | ~present.any(dim=1, keepdim=True)
    loud = h.clone()
    loud[~key_ok] = 1e3
    with torch.no_grad():
        quiet_out = block.attention(h.masked_fill(~key_ok[..., None], 0), key_ok)
        loud_out = block.attention(loud, key_ok)
    assert torch.equal(quiet_out[key_ok], loud_out[key_ok])
    # With an attention bias (float32, cast to the block's dtype): the same.
    bias = torch.randn(4, 4, 6, 6)
    out_bias = block(dirty, present, bias)
    assert out_bias.dtype == dtype and bool(torch.isfinite(out_bias).all())
    assert bool((out_bias[~present] == 0).all())
    assert torch.equal(out_bias, block(x, present, bias))
    # And the half-precision block computes what the float32 one does.
    block = block.float()
    torch.testing.assert_close(out.float(), block(x.float(), present), atol=0.1, rtol=0.05)
    torch.testing.assert_close(
        out_bias.float(), block(x.float(), present, bias), atol=0.1, rtol=0.05
    )


def test_block_argument_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="num_heads must be a positive divisor of dim"):
        SelfAttentionBlock(10, num_heads=3)
    with pytest.raises(ValueError, match="dim must be positive"):
        SelfAttentionBlock(0)
    block = SelfAttentionBlock(8, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, N, 8\]"):
        block(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="present must have shape"):
        block(torch.zeros(2, 3, 8), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="present"):
        block(torch.zeros(2, 3, 8), torch.full((2, 3), 2))


def test_block_is_exported_and_its_example_runs() -> None:
    assert maskrl.SelfAttentionBlock is SelfAttentionBlock
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(maskrl.attention) if "SelfAttentionBlock" in t.name]
    runner = doctest.DocTestRunner()
    for t in tests:
        runner.run(t)
    assert tests and runner.failures == 0


# ---------------------------------------------------------------------------
# The set network (Knapsack) with self-attention
# ---------------------------------------------------------------------------


def set_net(layers: int = 2, seed: int = 0) -> SetActorCritic:
    torch.manual_seed(seed)
    return SetActorCritic(
        2, ("capacity",), 1, hidden=16, items_key="item_features", layers=layers, attention_heads=2
    )


def set_obs(b: int, n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, n, generator=g) < 0.7
    mask[:, 0] = True
    return {
        "item_features": torch.rand(b, n, 2, generator=g),
        "item_mask": mask,
        "capacity": torch.rand(b, 1, generator=g),
    }


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    garbage=st.sampled_from(list(GARBAGE)),
)
def test_set_network_padding_invariance_and_permutation_equivariance(
    b: int, n: int, seed: int, garbage: str
) -> None:
    net = set_net(seed=seed % 4)
    obs = set_obs(b, n, seed)
    mask = obs["item_mask"]
    logits, value = net(obs)
    dirty = dict(obs, item_features=obs["item_features"].clone())
    dirty["item_features"][~mask] = GARBAGE[garbage]
    d_logits, d_value = net(dirty)
    assert torch.equal(d_logits[mask], logits[mask]) and torch.equal(d_value, value)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    permuted = dict(obs, item_features=obs["item_features"][:, perm], item_mask=mask[:, perm])
    p_logits, p_value = net(permuted)
    torch.testing.assert_close(p_logits[mask[:, perm]], logits[:, perm][mask[:, perm]])
    torch.testing.assert_close(p_value, value)
    per_item, _ = net._encode(obs)
    assert per_item.shape == (b, n, 16)
    assert bool((per_item[~mask] == 0).all())  # padded rows of the blocks' output


def test_set_network_items_attend_to_each_other_and_to_the_capacity() -> None:
    net = set_net()
    obs = set_obs(1, 5, 0)
    obs["item_mask"][:] = True
    per_item, _ = net._encode(obs)
    other = dict(obs, item_features=obs["item_features"].clone())
    other["item_features"][0, 4] += 0.5  # change item 4 only
    per_item_other, _ = net._encode(other)
    assert not torch.allclose(per_item[0, 0], per_item_other[0, 0])  # item 0 sees item 4
    cap = dict(obs, capacity=obs["capacity"] + 0.3)
    assert not torch.allclose(per_item[0, 0], net._encode(cap)[0][0, 0])  # and the capacity
    flat, _ = set_net(layers=0)._encode(obs)
    flat_other, _ = set_net(layers=0)._encode(other)
    assert torch.equal(flat[0, 0], flat_other[0, 0])  # without blocks: each item on its own


def test_set_network_empty_set_is_finite_with_finite_gradients() -> None:
    net = set_net()
    obs = set_obs(2, 4, 0)
    obs["item_mask"][1] = False
    obs["item_features"][1] = math.nan
    logits, value = net(obs)
    assert bool(torch.isfinite(logits).all()) and bool(torch.isfinite(value).all())
    (logits.sum() + value.sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all()), name


def test_set_network_masked_actions_get_probability_zero() -> None:
    net = set_net()
    obs = set_obs(4, 6, 2)
    logits, _ = net(obs)
    probs = masked_softmax(logits, obs["item_mask"])
    assert bool((probs[~obs["item_mask"]] == 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


# ---------------------------------------------------------------------------
# The token encoder with self-attention
# ---------------------------------------------------------------------------


def test_token_encoder_with_blocks_ignores_padded_channels_and_token_order() -> None:
    torch.manual_seed(0)
    enc = GridTokenEncoder([4, 6], 5, 5, dim=16, layers=2, attention_heads=4).double()
    assert len(enc.blocks) == 2
    g = torch.Generator().manual_seed(0)
    game_id = torch.tensor([0, 1, 0])
    obs = (torch.rand(3, 6, 5, 5, generator=g) < 0.2).double()
    obs[0, 4:] = 0
    obs[2] = 0  # an empty screen
    out = enc(obs, game_id)
    assert bool((out[2] == 0).all())
    dirty = obs.clone()
    dirty[0, 4:] = math.nan  # game 0's padded channels
    assert torch.equal(enc(dirty, game_id), out)
    tokens, present = enc.tokenize(obs, game_id)
    perm = torch.randperm(tokens.shape[1], generator=g)
    torch.testing.assert_close(enc.encode(tokens[:, perm], present[:, perm]), out)
    # The blocks relate the tokens: without them (layers=0) a token's own
    # encoding ignores the others; with them the pooled output differs.
    torch.manual_seed(0)
    flat = GridTokenEncoder([4, 6], 5, 5, dim=16).double()
    assert not torch.allclose(flat(obs, game_id), out)


def test_layers_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="layers must be >= 0"):
        GridTokenEncoder([4], 5, 5, layers=-1)
    with pytest.raises(ValueError, match="layers must be >= 0"):
        SetActorCritic(2, layers=-1)


def test_knapsack_item_range_is_set_per_env_and_the_optimum_stays_exact() -> None:
    """Evaluation beyond the training sizes: ``n_min = n_max = 100`` items, exact optimum."""
    import gymnasium as gym
    import numpy as np

    import maskrl.envs  # noqa: F401

    env = gym.make("maskrl/Knapsack-v0", n_min=100, n_max=100)
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        assert obs["item_features"].shape == (100, 2) and int(obs["item_mask"].sum()) == 100
        inner = env.unwrapped
        w, v, cap = inner.weights, inner.values, inner.capacity  # type: ignore[attr-defined]
        # An independent exact method: the least weight reaching each total value.
        least = np.full(int(v.sum()) + 1, np.iinfo(np.int64).max // 2)
        least[0] = 0
        for wi, vi in zip(w, v, strict=True):
            least[vi:] = np.minimum(least[vi:], least[: len(least) - vi] + wi)
        assert info["optimal_value"] == int(np.flatnonzero(least <= cap).max())
    env.close()


# ---------------------------------------------------------------------------
# An attention bias (the token encoder's relative positions)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_block_bias_at_padded_items_is_ignored_and_gets_no_gradient(garbage: str) -> None:
    block = make_block(8, 2, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    present = masks(3, 5, 4)
    present[0, :2] = True
    present[2] = False  # an empty row
    bias = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    # (bias requires grad in both calls: torch may pick another kernel otherwise)
    clean = block(x, present, bias.clone().requires_grad_(True))
    pair = present[:, None, :, None] & present[:, None, None, :]
    dirty_x = x.clone()
    dirty_x[~present] = GARBAGE[garbage]
    dirty_bias = bias.clone().masked_fill(~pair, GARBAGE[garbage]).requires_grad_(True)
    out = block(dirty_x, present, dirty_bias)
    assert torch.equal(out, clean)
    assert bool((out[~present] == 0).all()) and bool((out[2] == 0).all())
    out.pow(2).sum().backward()
    grad = dirty_bias.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert bool((grad.masked_select(~pair) == 0).all())
    assert bool((grad.masked_select(pair) != 0).any())


def test_block_bias_shape_errors() -> None:
    block = SelfAttentionBlock(8, 2)
    x, present = torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    for bad in (torch.zeros(2, 3, 3), torch.zeros(2, 3, 3, 3), torch.zeros(2, 2, 3, 4)):
        with pytest.raises(ValueError, match=r"bias must have shape \[B, num_heads, N, N\]"):
            block(x, present, bad)
    with pytest.raises(ValueError, match="bias must be a float tensor"):
        block(x, present, torch.zeros(2, 2, 3, 3, dtype=torch.long))


def relpos_encoder(seed: int = 0, **kwargs: object) -> GridTokenEncoder:
    torch.manual_seed(seed)
    enc = GridTokenEncoder(
        [4, 6], 5, 5, dim=16, layers=2, attention_heads=4, relative_position=True, **kwargs
    ).double()
    with torch.no_grad():
        enc.relative_bias.normal_(generator=torch.Generator().manual_seed(seed))
    return enc


def test_relative_position_starts_at_zero_and_is_the_plain_encoder_there() -> None:
    torch.manual_seed(0)
    enc = GridTokenEncoder(
        [4, 6], 5, 5, dim=16, layers=2, attention_heads=4, relative_position=True
    )
    assert enc.relative_bias.shape == (2, 4, 9, 9) and bool((enc.relative_bias == 0).all())
    torch.manual_seed(0)
    plain = GridTokenEncoder([4, 6], 5, 5, dim=16, layers=2, attention_heads=4)
    g = torch.Generator().manual_seed(1)
    obs = (torch.rand(3, 6, 5, 5, generator=g) < 0.3).float()
    game_id = torch.tensor([0, 1, 1])
    torch.testing.assert_close(enc(obs, game_id), plain(obs, game_id), atol=1e-6, rtol=1e-6)


def test_relative_biases_read_the_table_at_each_pair_offset() -> None:
    enc = relpos_encoder()
    # Slot 0 at (row 0, col 0), slot 1 at (1, 2), slot 2 at (4, 4); W = 5.
    cells = torch.tensor([[0, 7, 24]])
    got = enc.relative_biases(cells, (1, 3))  # [layers, B, heads, K, K]
    assert got.shape == (2, 1, 4, 3, 3)
    table = (
        enc.relative_bias
    )  # [layers, heads, 2H - 1, 2W - 1]; offset (dr, dc) at [dr + 4, dc + 4]
    rc = [(0, 0), (1, 2), (4, 4)]
    for i, (ri, ci) in enumerate(rc):
        for j, (rj, cj) in enumerate(rc):
            assert torch.equal(got[:, 0, :, i, j], table[:, :, ri - rj + 4, ci - cj + 4])


def test_relative_position_relates_tokens_by_their_offset_alone() -> None:
    """With the absolute row and column embeddings zeroed, the encoder sees only relative offsets:
    a translated screen encodes the same; moving one object relative to another changes it."""
    enc = relpos_encoder(2)
    with torch.no_grad():
        enc.row_embedding.zero_()
        enc.col_embedding.zero_()
    game_id = torch.tensor([0])

    def screen(a: tuple[int, int], b: tuple[int, int]) -> Tensor:
        obs = torch.zeros(1, 6, 5, 5, dtype=torch.float64)
        obs[0, 0, a[0], a[1]] = 1.0  # channel 0: the "ball"
        obs[0, 1, b[0], b[1]] = 1.0  # channel 1: the "paddle"
        return obs

    base = enc(screen((1, 1), (3, 2)), game_id)
    torch.testing.assert_close(enc(screen((2, 2), (4, 3)), game_id), base)  # shifted by (1, 1)
    torch.testing.assert_close(enc(screen((0, 2), (2, 3)), game_id), base)  # shifted by (-1, 1)
    assert not torch.allclose(enc(screen((1, 1), (3, 3)), game_id), base)  # one column further
    # Without the bias the same network cannot tell the two apart: no position at all.
    flat = relpos_encoder(2)
    with torch.no_grad():
        flat.row_embedding.zero_()
        flat.col_embedding.zero_()
        flat.relative_bias.zero_()
    torch.testing.assert_close(
        flat(screen((1, 1), (3, 3)), game_id), flat(screen((1, 1), (3, 2)), game_id)
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_relative_position_encoder_ignores_padding_and_token_order(seed: int) -> None:
    enc = relpos_encoder(seed % 7)
    g = torch.Generator().manual_seed(seed)
    game_id = torch.tensor([0, 1, 0, 1])
    obs = (torch.rand(4, 6, 5, 5, generator=g) < 0.25).double()
    obs[3] = 0  # an empty screen
    out = enc(obs, game_id)
    assert bool((out[3] == 0).all())
    dirty = obs.clone()
    dirty[0, 4:] = math.nan  # game 0's padded channels
    dirty[2, 4:] = 7.0
    assert torch.equal(enc(dirty, game_id), out)
    tokens, present, cells = enc.tokenize_cells(obs, game_id)
    perm = torch.randperm(tokens.shape[1], generator=g)
    torch.testing.assert_close(enc.encode(tokens[:, perm], present[:, perm], cells[:, perm]), out)
    # Absent slots may hold any token and any cell.
    garbage_tokens = tokens.masked_fill(~present[..., None], math.nan)
    garbage_cells = torch.where(present, cells, torch.randint(0, 25, cells.shape, generator=g))
    torch.testing.assert_close(enc.encode(garbage_tokens, present, garbage_cells), out)


def test_relative_position_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="needs layers >= 1"):
        GridTokenEncoder([4], 5, 5, relative_position=True)
    enc = relpos_encoder()
    obs = torch.zeros(2, 6, 5, 5, dtype=torch.float64)
    obs[:, 0, 1, 1] = 1
    tokens, present, cells = enc.tokenize_cells(obs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="encode needs cells"):
        enc.encode(tokens, present)
    with pytest.raises(ValueError, match="cells must be an integer tensor of shape"):
        enc.encode(tokens, present, cells.double())
    with pytest.raises(ValueError, match=r"cells must be in \[0, H\*W = 25\)"):
        enc.encode(tokens, present, cells + 25)
    # tokenize keeps its two results.
    assert len(enc.tokenize(obs, torch.tensor([0, 1]))) == 2
