"""Tests for masked_softmax / masked_log_softmax / as_bool_mask."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maskrl.masking
from maskrl import as_bool_mask, masked_log_softmax, masked_softmax

HALF_AND_FLOAT = [torch.float16, torch.bfloat16, torch.float32]


def reference_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over the valid subset, row by row, in float64 (zeros for an empty row)."""
    x = logits.double().movedim(dim, -1)
    m = mask.expand(logits.shape).movedim(dim, -1)
    n = x.shape[-1]
    flat_x, flat_m = x.reshape(-1, n), m.reshape(-1, n)
    flat_out = torch.zeros_like(flat_x)
    for row in range(flat_x.shape[0]):
        valid = flat_m[row]
        if valid.any():
            flat_out[row, valid] = torch.softmax(flat_x[row, valid], dim=-1)
    return flat_out.reshape(x.shape).movedim(-1, dim)


# -- answers worked out by hand ------------------------------------------------


def test_classic_case_two_valid_of_five() -> None:
    logits = torch.tensor([0.1, 0.2, 0.0, 0.0, 0.0])
    mask = torch.tensor([True, True, False, False, False])
    unmasked = torch.softmax(logits, dim=-1)
    # e^0.1 / (e^0.1 + e^0.2 + 3) = 0.2075 -- the masked actions take 56%.
    assert unmasked.tolist() == pytest.approx([0.2075, 0.2293, 0.1877, 0.1877, 0.1877], abs=1e-3)
    probs = masked_softmax(logits, mask)
    # e^0.1 / (e^0.1 + e^0.2) = 1 / (1 + e^0.1) = 0.47502
    assert probs.tolist() == pytest.approx([0.47502, 0.52498, 0.0, 0.0, 0.0], abs=1e-4)
    assert (probs[2:] == 0).all()
    logp = masked_log_softmax(logits, mask)
    assert logp[:2].tolist() == pytest.approx([math.log(0.47502), math.log(0.52498)], abs=1e-4)
    assert (logp[2:] == torch.finfo(torch.float32).min).all()


def test_renormalised_probabilities_first_masked() -> None:
    logits = torch.tensor([0.2, 0.2, 0.6]).log()
    probs = masked_softmax(logits, torch.tensor([False, True, True]))
    assert probs.tolist() == pytest.approx([0.0, 0.25, 0.75], abs=1e-6)
    assert probs[0].item() == 0.0


@pytest.mark.parametrize("dtype", HALF_AND_FLOAT)
def test_masked_log_prob_is_finfo_min_and_p_log_p_is_zero(dtype: torch.dtype) -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    mask = torch.tensor([[True, False, True, False]])
    logp = masked_log_softmax(logits, mask)
    p = masked_softmax(logits, mask)
    assert logp.dtype == dtype and p.dtype == dtype
    assert (logp[~mask] == torch.finfo(dtype).min).all()
    assert (p[~mask] == 0).all()
    plogp = p * logp
    assert torch.isfinite(plogp).all()
    assert (plogp[~mask] == 0).all()
    # e^1 / (e^1 + e^3) = 0.1192
    assert p[0, 0].item() == pytest.approx(0.11920, abs=2e-3)


def test_softmax_equals_exp_of_log_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g) * 5
    mask = torch.rand(6, 7, generator=g) < 0.6
    assert torch.allclose(
        masked_softmax(logits, mask), masked_log_softmax(logits, mask).exp(), atol=1e-6
    )


# -- extreme magnitudes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "big"),
    [(torch.float16, 6e4), (torch.bfloat16, 3e38), (torch.float32, 3e38)],
)
def test_huge_masked_logit_takes_no_probability(dtype: torch.dtype, big: float) -> None:
    logits = torch.tensor([[big, 0.5, -0.5, big]], dtype=dtype, requires_grad=True)
    mask = torch.tensor([[False, True, True, False]])
    p = masked_softmax(logits, mask)
    logp = masked_log_softmax(logits, mask)
    # e^0.5 / (e^0.5 + e^-0.5) = 0.7311
    assert p.float()[0].tolist() == pytest.approx([0.0, 0.7311, 0.2689, 0.0], abs=5e-3)
    assert torch.isfinite(logp).all()
    assert logp.float()[0, 1].item() == pytest.approx(math.log(0.7311), abs=1e-2)
    (p[0, 1] + logp[0, 2] + (p * logp).sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()


@pytest.mark.parametrize(
    ("dtype", "big"),
    [(torch.float16, 6e4), (torch.bfloat16, 3e38), (torch.float32, 3e38)],
)
def test_extreme_valid_logits_stay_finite(dtype: torch.dtype, big: float) -> None:
    logits = torch.tensor([[big, -big, 0.0, -big]], dtype=dtype, requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    p = masked_softmax(logits, mask)
    logp = masked_log_softmax(logits, mask)
    assert p.float()[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert logp[0, 0].item() == 0.0
    # The true log-probability of -big is about -2 big, below the dtype's
    # range: it is clamped to finfo.min rather than -inf.
    assert torch.isfinite(logp).all()
    entropy = -(p * logp).sum()
    assert entropy.item() == 0.0
    (entropy + logp[0, 0] + p[0, 2]).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 3].item() == 0.0


def test_fp16_many_entries_normalise_in_float32() -> None:
    # 4096 equal logits: each probability 1/4096; in pure float16 arithmetic
    # the normaliser's running sum stalls well before 4096.
    logits = torch.zeros(1, 4096, dtype=torch.float16)
    mask = torch.ones(1, 4096, dtype=torch.bool)
    mask[0, 0] = False
    p = masked_softmax(logits, mask)
    assert p.float().sum().item() == pytest.approx(1.0, abs=1e-3)
    assert p[0, 1].float().item() == pytest.approx(1 / 4095, rel=1e-3)


# -- rows with no valid entry --------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF_AND_FLOAT)
def test_empty_row_gives_zeros_and_finite_gradients(dtype: torch.dtype) -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=dtype, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    p = masked_softmax(logits, mask)
    logp = masked_log_softmax(logits, mask)
    assert (p[1] == 0).all()
    assert (logp[1] == torch.finfo(dtype).min).all()
    assert p.float()[0].sum().item() == pytest.approx(1.0, abs=1e-2)
    (p.sum() + (p * logp).sum() + logp[0, 0]).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[1] == 0).all()


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_no_nan_under_anomaly_detection() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    with torch.autograd.detect_anomaly(check_nan=True):
        p = masked_softmax(logits, mask)
        logp = masked_log_softmax(logits, mask)
        (-(p * logp).sum()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# -- gradients -----------------------------------------------------------------------


def test_gradient_matches_softmax_over_subset() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False])
    weights = torch.randn(5, generator=g, dtype=torch.float64)

    full = logits.clone().requires_grad_(True)
    (masked_log_softmax(full, mask) * weights * mask).sum().backward()

    sub = logits[mask].clone().requires_grad_(True)
    (torch.log_softmax(sub, -1) * weights[mask]).sum().backward()

    assert full.grad is not None and sub.grad is not None
    assert torch.allclose(full.grad[mask], sub.grad, atol=1e-12)
    assert (full.grad[~mask] == 0).all()


# -- properties over random shapes --------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    p_valid=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_equals_softmax_over_valid_subset(
    shape: list[int], seed: int, scale: float, p_valid: float, data: st.DataObject
) -> None:
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(shape, generator=g) < p_valid
    ref = reference_softmax(logits, mask, dim)
    p = masked_softmax(logits, mask, dim=dim)
    logp = masked_log_softmax(logits, mask, dim=dim)
    assert torch.allclose(p, ref, atol=1e-12)
    assert (p[~mask] == 0).all()
    assert (logp[~mask] == torch.finfo(torch.float64).min).all()
    has_valid = mask.any(dim=dim, keepdim=True).expand(shape)
    sel = mask & (ref > 0)
    assert torch.allclose(logp[sel], ref[sel].log(), atol=1e-9)
    sums = p.sum(dim=dim)
    assert torch.allclose(sums, has_valid.any(dim=dim).double(), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(HALF_AND_FLOAT),
    rows=st.integers(1, 4),
    n=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_extremes_match_float64_reference(dtype: torch.dtype, rows: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    big = 6e4 if dtype == torch.float16 else 3e38
    choices = torch.tensor([-big, -1.0, 0.0, 1.0, big, big / 2, -big / 2], dtype=torch.float64)
    logits = choices[torch.randint(len(choices), (rows, n), generator=g)].to(dtype)
    mask = torch.rand(rows, n, generator=g) < 0.5
    p = masked_softmax(logits, mask)
    logp = masked_log_softmax(logits, mask)
    assert torch.isfinite(p).all() and torch.isfinite(logp).all()
    ref = reference_softmax(logits, mask, -1)
    assert torch.allclose(p.double(), ref, atol=1e-2)
    assert (p[~mask] == 0).all()
    assert (logp[~mask] == torch.finfo(dtype).min).all()


# -- mask checks and broadcasting -----------------------------------------------------


def test_mask_broadcasts_over_batch() -> None:
    logits = torch.randn(4, 3)
    mask = torch.tensor([True, False, True])
    assert torch.equal(masked_softmax(logits, mask), masked_softmax(logits, mask.expand(4, 3)))


def test_integer_zero_one_mask_is_accepted() -> None:
    logits = torch.tensor([0.2, 0.2, 0.6]).log()
    for dtype in (torch.uint8, torch.int32, torch.int64):
        mask = torch.tensor([0, 1, 1], dtype=dtype)
        assert masked_softmax(logits, mask).tolist() == pytest.approx([0.0, 0.25, 0.75])


def test_integer_mask_with_other_values_is_rejected() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        masked_softmax(torch.zeros(3), torch.tensor([0, 2, 1]))


def test_float_mask_is_rejected() -> None:
    with pytest.raises(ValueError, match="bool"):
        masked_log_softmax(torch.zeros(3), torch.tensor([0.0, 1.0, 1.0]))


def test_non_broadcastable_mask_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        masked_softmax(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    # A mask that would broadcast the logits *up* is rejected too.
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(1, 3\)"):
        masked_softmax(torch.zeros(1, 3), torch.ones(5, 3, dtype=torch.bool))


def test_non_float_logits_are_rejected() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        masked_softmax(torch.zeros(3, dtype=torch.int64), torch.ones(3, dtype=torch.bool))


def test_numpy_masks_follow_the_same_rules() -> None:
    logits = torch.tensor([0.2, 0.2, 0.6]).log()
    for mask in (np.array([False, True, True]), np.array([0, 1, 1], dtype=np.uint8)):
        assert masked_softmax(logits, mask).tolist() == pytest.approx([0.0, 0.25, 0.75])
    with pytest.raises(ValueError, match="bool"):
        masked_softmax(logits, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="ndarray"):
        masked_softmax(logits, [False, True, True])  # type: ignore[arg-type]


def test_as_bool_mask_returns_bool() -> None:
    out = as_bool_mask(torch.tensor([1, 0], dtype=torch.uint8), torch.zeros(3, 2))
    assert out.dtype == torch.bool and out.tolist() == [True, False]


def test_docstring_examples() -> None:
    result = doctest.testmod(maskrl.masking, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
