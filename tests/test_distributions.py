"""Tests for MaskedCategorical and MaskedMultiCategorical."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sb3_contrib.common.maskable.distributions import (
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)
from torch.distributions import Categorical

import maskrl.distributions
from maskrl import MaskedCategorical, MaskedMultiCategorical


def random_mask(rows: int, n: int, p: float, g: torch.Generator) -> torch.Tensor:
    """Random mask with at least one valid entry per row."""
    mask = torch.rand(rows, n, generator=g) < p
    mask[torch.arange(rows), torch.randint(n, (rows,), generator=g)] = True
    return mask


def assert_frequencies_match(samples: torch.Tensor, probs: torch.Tensor) -> None:
    """Each outcome's frequency lies within 5 standard errors of its probability."""
    n = samples.numel()
    counts = torch.bincount(samples.reshape(-1), minlength=probs.numel()).double()
    freq = counts / n
    p = probs.double()
    bound = 5 * torch.sqrt(p * (1 - p) / n) + 1e-12
    assert ((freq - p).abs() <= bound).all(), (freq.tolist(), p.tolist())
    assert (counts[p == 0] == 0).all()


# -- MaskedCategorical: answers worked out by hand -----------------------------------


def test_classic_case() -> None:
    logits = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.0]])
    d = MaskedCategorical(logits=logits, mask=torch.tensor([[True, True, False, False, False]]))
    assert d.probs[0].tolist() == pytest.approx([0.47502, 0.52498, 0, 0, 0], abs=1e-4)
    assert d.log_prob(torch.tensor([1])).item() == pytest.approx(math.log(0.52498), abs=1e-4)
    h = -(0.47502 * math.log(0.47502) + 0.52498 * math.log(0.52498))
    assert d.entropy().item() == pytest.approx(h, abs=1e-4)
    assert d.mode.tolist() == [1]
    assert torch.equal(d.raw_logits, logits)


def test_first_masked_renormalises() -> None:
    d = MaskedCategorical(
        logits=torch.tensor([0.2, 0.2, 0.6]).log(), mask=torch.tensor([False, True, True])
    )
    assert d.probs.tolist() == pytest.approx([0.0, 0.25, 0.75], abs=1e-6)
    assert d.probs[0].item() == 0.0
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert d.entropy().item() == pytest.approx(h, abs=1e-6)


@pytest.mark.parametrize("n_valid", [1, 2, 3, 7, 10])
def test_uniform_logits_entropy_counts_valid_actions(n_valid: int) -> None:
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :n_valid] = True
    mask[1, 10 - n_valid :] = True
    d = MaskedCategorical(logits=torch.zeros(2, 10), mask=mask)
    assert d.entropy().exp().tolist() == pytest.approx([n_valid, n_valid], rel=1e-6)
    unmasked = MaskedCategorical(logits=torch.zeros(2, 10))
    assert unmasked.entropy().exp().tolist() == pytest.approx([10, 10], rel=1e-6)


def test_masked_action_log_prob_is_finfo_min() -> None:
    d = MaskedCategorical(logits=torch.zeros(3), mask=torch.tensor([True, False, True]))
    assert d.log_prob(torch.tensor(1)).item() == torch.finfo(torch.float32).min
    assert d.log_prob(torch.tensor(0)).item() == pytest.approx(math.log(0.5))


def test_mode_ignores_larger_masked_logit() -> None:
    logits = torch.tensor([[5.0, 1.0, 2.0], [0.0, 9.0, -3.0]])
    mask = torch.tensor([[False, True, True], [True, False, True]])
    assert MaskedCategorical(logits=logits, mask=mask).mode.tolist() == [2, 0]


def test_no_mask_behaves_like_categorical() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, generator=g)
    d, ref = MaskedCategorical(logits=logits), Categorical(logits=logits)
    actions = torch.randint(6, (4,), generator=g)
    assert torch.allclose(d.log_prob(actions), ref.log_prob(actions))
    assert torch.allclose(d.entropy(), ref.entropy())
    assert torch.equal(d.mode, ref.mode)
    assert d.mask is None


def test_masking_is_undoable() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    d = MaskedCategorical(logits=logits, mask=torch.tensor([[True, False, False]]))
    undone = MaskedCategorical(logits=d.raw_logits)
    assert torch.allclose(undone.probs, torch.softmax(logits, -1))


# -- errors -------------------------------------------------------------------------


def test_row_without_valid_action_is_named() -> None:
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[3] = False
    mask[5] = False
    with pytest.raises(ValueError) as info:
        MaskedCategorical(logits=torch.zeros(6, 4), mask=mask)
    assert str(info.value) == (
        "action mask has no valid action in row(s) [3, 5] "
        "(for a vector env, the row is the env index)"
    )


def test_row_index_is_flat_over_batch_dims() -> None:
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[1, 2] = False  # flat row 1 * 3 + 2 = 5
    with pytest.raises(ValueError, match=r"row\(s\) \[5\]"):
        MaskedCategorical(logits=torch.zeros(2, 3, 4), mask=mask)


def test_bad_mask_shape_and_dtype() -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 5\)"):
        MaskedCategorical(logits=torch.zeros(4, 5), mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        MaskedCategorical(logits=torch.zeros(5), mask=torch.ones(5))


def test_numpy_mask_from_a_vector_env() -> None:
    info_mask = np.array([[True, False, True], [False, False, True]])
    d = MaskedCategorical(logits=torch.zeros(2, 3), mask=info_mask)
    assert d.probs.tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        MaskedCategorical(logits=torch.zeros(2, 3), mask=np.array([[1, 0, 0], [0, 0, 0]]))


def test_mask_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        MaskedCategorical(torch.zeros(3), torch.ones(3, dtype=torch.bool))  # type: ignore[misc]


# -- sampling -------------------------------------------------------------------------


def test_sample_frequencies_match_renormalised_probabilities() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([0.5, 3.0, -1.0, 0.0, 1.0, 2.0])
    mask = torch.tensor([True, False, True, True, False, True])
    d = MaskedCategorical(logits=logits, mask=mask)
    expected = torch.softmax(logits.masked_fill(~mask, -math.inf), -1)
    samples = d.sample((40_000,))
    assert samples.shape == (40_000,) and samples.dtype == torch.int64
    assert_frequencies_match(samples, expected)


def test_never_samples_a_masked_action_even_against_huge_logits() -> None:
    torch.manual_seed(1)
    logits = torch.full((64, 5), 3e38)
    logits[:, 2] = -3e38  # the only valid action is by far the least likely a priori
    mask = torch.zeros(64, 5, dtype=torch.bool)
    mask[:, 2] = True
    mask[::2, 4] = True
    logits[::2, 4] = -3e38
    samples = MaskedCategorical(logits=logits, mask=mask).sample((500,))
    assert mask.gather(-1, samples.T).all()


def test_sample_and_expand_shapes() -> None:
    d = MaskedCategorical(logits=torch.zeros(3, 4), mask=torch.tensor([True, False, True, True]))
    assert d.sample().shape == (3,)
    assert d.sample((2, 5)).shape == (2, 5, 3)
    e = d.expand((7, 3))
    assert e.batch_shape == (7, 3) and e.raw_logits.shape == (7, 3, 4)
    assert e.mask is not None and e.mask.shape == (7, 3, 4)
    assert (e.sample((50,)) != 1).all()


# -- gradients ------------------------------------------------------------------------


def test_masked_logits_get_exactly_zero_gradient() -> None:
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(5, 6, generator=g) * 3).requires_grad_(True)
    mask = random_mask(5, 6, 0.5, g)
    d = MaskedCategorical(logits=logits, mask=mask)
    actions = d.sample()
    (d.log_prob(actions).sum()).backward(retain_graph=True)
    assert logits.grad is not None
    assert (logits.grad[~mask] == 0).all()
    assert (logits.grad[mask] != 0).any()
    logits.grad = None
    d.entropy().sum().backward()
    assert (logits.grad[~mask] == 0).all()
    assert torch.isfinite(logits.grad).all()


def test_gradients_match_categorical_over_the_subset() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(7, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, False, False, True])
    full = logits.clone().requires_grad_(True)
    d = MaskedCategorical(logits=full, mask=mask)
    (d.log_prob(torch.tensor(3)) + 0.3 * d.entropy()).backward()
    sub = logits[mask].clone().requires_grad_(True)
    ref = Categorical(logits=sub)
    (ref.log_prob(torch.tensor(2)) + 0.3 * ref.entropy()).backward()
    assert full.grad is not None and sub.grad is not None
    assert torch.allclose(full.grad[mask], sub.grad, atol=1e-12)


# -- half precision and extremes --------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "big"),
    [(torch.float16, 6e4), (torch.bfloat16, 3e38), (torch.float32, 3e38)],
)
def test_extreme_logits_stay_finite_and_correct(dtype: torch.dtype, big: float) -> None:
    torch.manual_seed(2)
    logits = torch.tensor(
        [[big, 0.0, 1.0, -big], [-big, big, big, 0.0], [big, -big, 0.0, 0.0]], dtype=dtype
    ).requires_grad_(True)
    mask = torch.tensor(
        [[False, True, True, True], [True, False, True, True], [False] * 3 + [True]]
    )
    d = MaskedCategorical(logits=logits, mask=mask)
    probs = d.probs.float()
    # Row 0: the masked +big takes nothing; e^1 / (e^0 + e^1) = 0.7311.
    assert probs[0].tolist() == pytest.approx([0.0, 0.2689, 0.7311, 0.0], abs=5e-3)
    assert probs[1].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0], abs=1e-3)
    assert probs[2].tolist() == [0.0, 0.0, 0.0, 1.0]
    h = d.entropy()
    assert torch.isfinite(h).all()
    assert h.float().tolist() == pytest.approx([0.5822, 0.0, 0.0], abs=1e-2)
    lp = d.log_prob(torch.tensor([2, 2, 3]))
    assert torch.isfinite(lp).all()
    samples = d.sample((300,))
    assert mask.gather(-1, samples.T).all()
    assert d.mode.tolist() == [2, 2, 3]
    (lp.sum() + h.sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(8, 12, generator=g) * 4
    mask = random_mask(8, 12, 0.5, g)
    d32 = MaskedCategorical(logits=logits, mask=mask)
    dh = MaskedCategorical(logits=logits.to(dtype), mask=mask)
    assert torch.allclose(dh.probs.float(), d32.probs, atol=2e-2)
    assert torch.allclose(dh.entropy().float(), d32.entropy(), atol=5e-2)


# -- agreement with sb3-contrib ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    n=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 10.0, 50.0]),
    p_valid=st.floats(0.0, 1.0),
)
def test_agrees_with_sb3_contrib_maskable_categorical(
    rows: int, n: int, seed: int, scale: float, p_valid: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, n, generator=g) * scale
    mask = random_mask(rows, n, p_valid, g)
    ours = MaskedCategorical(logits=logits, mask=mask)
    ref = MaskableCategoricalDistribution(n).proba_distribution(action_logits=logits)
    ref.apply_masking(mask.numpy())
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-5)
    assert torch.allclose(ours.probs, ref.distribution.probs, atol=1e-6)
    # log_prob of every valid action, one column at a time.
    for a in range(n):
        actions = torch.full((rows,), a)
        valid = mask[:, a]
        assert torch.allclose(
            ours.log_prob(actions)[valid], ref.log_prob(actions)[valid], atol=1e-5
        )
    assert mask.gather(-1, ours.sample((20,)).T).all()


# -- MaskedMultiCategorical -------------------------------------------------------------


def test_multi_hand_worked() -> None:
    # nvec = (3, 2): dimension 0 owns logits[:3], dimension 1 owns logits[3:].
    logits = torch.tensor([[0.2, 0.2, 0.6, 0.0, 0.0]]).log()
    logits[0, 3:] = 0.0
    mask = torch.tensor([[False, True, True, True, True]])
    d = MaskedMultiCategorical(logits=logits, mask=mask, nvec=[3, 2])
    assert d.probs[0].tolist() == pytest.approx([0.0, 0.25, 0.75, 0.5, 0.5], abs=1e-6)
    lp = d.log_prob(torch.tensor([[2, 1]]))
    assert lp.item() == pytest.approx(math.log(0.75) + math.log(0.5), abs=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)
    assert d.entropy().item() == pytest.approx(h, abs=1e-6)
    assert d.mode.tolist() == [[2, 0]]
    assert d.batch_shape == (1,) and d.event_shape == (2,)


def test_multi_uniform_entropy_counts_joint_valid_actions() -> None:
    mask = torch.tensor([[1, 1, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 1]]).bool()
    d = MaskedMultiCategorical(logits=torch.zeros(2, 7), mask=mask, nvec=[3, 4])
    assert d.entropy().exp().tolist() == pytest.approx([2 * 3, 1 * 2], rel=1e-6)


def test_multi_empty_dimension_is_named() -> None:
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False  # row 1, dimension 1
    mask[3, :3] = False  # row 3, dimension 0
    mask[3, 3:] = False  # row 3, dimension 1
    with pytest.raises(ValueError) as info:
        MaskedMultiCategorical(logits=torch.zeros(4, 5), mask=mask, nvec=[3, 2])
    assert str(info.value) == (
        "action mask has no valid action in row(s) [1, 3] "
        "(for a vector env, the row is the env index); "
        "empty (row, dimension) pair(s): [(1, 1), (3, 0), (3, 1)]"
    )


def test_multi_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"sum\(nvec\).*6.*\(2, 5\)"):
        MaskedMultiCategorical(logits=torch.zeros(2, 5), nvec=[3, 3])
    with pytest.raises(ValueError, match="positive"):
        MaskedMultiCategorical(logits=torch.zeros(2, 3), nvec=[3, 0])
    d = MaskedMultiCategorical(logits=torch.zeros(2, 5), nvec=np.array([3, 2]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        d.log_prob(torch.zeros(2, 3, dtype=torch.int64))


def test_multi_sample_frequencies_and_validity() -> None:
    torch.manual_seed(7)
    nvec = [4, 3, 2]
    logits = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0, 1.0, -0.5, 0.0, 5.0])
    mask = torch.tensor([True, True, False, True, True, False, True, True, False])
    d = MaskedMultiCategorical(logits=logits, mask=mask, nvec=nvec)
    samples = d.sample((30_000,))
    assert samples.shape == (30_000, 3)
    start = 0
    for dim, n in enumerate(nvec):
        m = mask[start : start + n]
        expected = torch.softmax(logits[start : start + n].masked_fill(~m, -math.inf), -1)
        assert_frequencies_match(samples[:, dim], expected)
        start += n


def test_multi_masked_logits_get_zero_gradient() -> None:
    g = torch.Generator().manual_seed(8)
    nvec = [2, 5, 3]
    logits = torch.randn(6, 10, generator=g).requires_grad_(True)
    mask = torch.cat([random_mask(6, n, 0.4, g) for n in nvec], dim=-1)
    d = MaskedMultiCategorical(logits=logits, mask=mask, nvec=nvec)
    (d.log_prob(d.sample()).sum() + d.entropy().sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(
    nvec=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 20.0]),
    p_valid=st.floats(0.0, 1.0),
)
def test_multi_agrees_with_sb3_contrib(
    nvec: list[int], rows: int, seed: int, scale: float, p_valid: float
) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, sum(nvec), generator=g) * scale
    mask = torch.cat([random_mask(rows, n, p_valid, g) for n in nvec], dim=-1)
    ours = MaskedMultiCategorical(logits=logits, mask=mask, nvec=nvec)
    ref = MaskableMultiCategoricalDistribution(nvec).proba_distribution(action_logits=logits)
    ref.apply_masking(mask.numpy())
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-5)
    actions = ours.sample((10,))  # [10, rows, k], valid by construction
    assert actions.shape == (10, rows, len(nvec))
    offsets = torch.tensor([0, *nvec[:-1]]).cumsum(0)
    for dim in range(len(nvec)):
        assert mask.gather(-1, (actions[..., dim] + offsets[dim]).T).all()
    for draw in actions:
        assert torch.allclose(ours.log_prob(draw), ref.log_prob(draw), atol=1e-4)
    ref_mode = ref.mode()
    ours_mode = ours.mode
    assert torch.allclose(ours.log_prob(ours_mode), ours.log_prob(ref_mode), atol=1e-6)


def test_multi_built_first_under_inference_mode_then_trained() -> None:
    nvec = [7, 2, 4]  # a layout no other test uses, so it is first built here
    logits = torch.randn(3, 13)
    with torch.inference_mode():
        actions = MaskedMultiCategorical(logits=logits, nvec=nvec).sample()
    trainable = logits.clone().requires_grad_(True)
    d = MaskedMultiCategorical(logits=trainable, nvec=nvec)
    d.log_prob(actions.clone()).sum().backward()
    assert trainable.grad is not None and torch.isfinite(trainable.grad).all()


def test_multi_extreme_half_precision() -> None:
    torch.manual_seed(9)
    logits = torch.tensor([[6e4, 0.0, 1.0, -6e4, 6e4]], dtype=torch.float16).requires_grad_(True)
    mask = torch.tensor([[False, True, True, True, False]])
    d = MaskedMultiCategorical(logits=logits, mask=mask, nvec=[3, 2])
    assert d.probs.float()[0].tolist() == pytest.approx([0.0, 0.2689, 0.7311, 1.0, 0.0], abs=5e-3)
    assert (d.sample((200,))[..., 1] == 0).all()
    (d.log_prob(torch.tensor([[2, 0]])).sum() + d.entropy().sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()


def test_docstring_examples() -> None:
    result = doctest.testmod(maskrl.distributions, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
