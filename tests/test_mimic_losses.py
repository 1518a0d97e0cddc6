"""Tests for the Actor-Mimic losses (maskrl.agents.mimic_losses)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import maskrl.agents.mimic_losses
from maskrl.agents.mimic_losses import (
    FeatureRegressionHeads,
    expert_policy,
    feature_regression_loss,
    greedy_agreement,
    policy_regression_loss,
)

NAN = math.nan
LN3 = math.log(3.0)


def hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, three actions, tau = 2 (float64).

    Row 0, mask [T, T, F]: expert / tau = [ln 3, 0] -> p = [3/4, 1/4, 0];
    student [0, ln 3] -> q = [1/4, 3/4];
    CE = -(3/4 ln 1/4 + 1/4 ln 3/4) = ln 4 - (1/4) ln 3.
    Row 1, mask [F, T, T]: expert / tau = [0, 0] -> p = [0, 1/2, 1/2];
    student [0, ln 3] -> q = [0, 1/4, 3/4];
    CE = -(1/2 ln 1/4 + 1/2 ln 3/4) = ln 4 - (1/2) ln 3.
    Mean over the batch: ln 4 - (3/8) ln 3 = 0.97431...
    The gradient of the mean CE w.r.t. the student's logits is (q - p) / B on
    valid entries: row 0 [-1/4, 1/4, 0], row 1 [0, -1/8, 1/8].
    Masked entries hold NaN and inf: they must not matter.
    """
    student = torch.tensor([[0.0, LN3, NAN], [math.inf, 0.0, LN3]], dtype=torch.float64)
    expert = torch.tensor([[2 * LN3, 0.0, NAN], [math.inf, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    return student, expert, mask


def test_policy_regression_matches_hand_computed_cross_entropy_and_gradient() -> None:
    student, expert, mask = hand_case()
    student.requires_grad_(True)
    loss = policy_regression_loss(student, expert, mask, tau=2.0)
    assert loss.item() == pytest.approx(math.log(4.0) - 3.0 / 8.0 * LN3, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, student)
    expected = torch.tensor([[-0.25, 0.25, 0.0], [0.0, -0.125, 0.125]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


def test_expert_policy_is_the_tau_softmax_over_valid_actions() -> None:
    _, expert, mask = hand_case()
    p = expert_policy(expert, mask, tau=2.0)
    expected = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(p, expected, atol=1e-12, rtol=0)
    assert (p[~mask] == 0).all()


def test_masked_student_logits_get_exactly_zero_gradient_and_expert_gets_none() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 6, generator=g, requires_grad=True)
    expert = torch.randn(5, 6, generator=g, requires_grad=True)
    mask = torch.rand(5, 6, generator=g) < 0.5
    mask[:, 0] = True
    loss = policy_regression_loss(student, expert, mask, tau=0.5)
    loss.backward()
    assert student.grad is not None
    assert (student.grad[~mask] == 0).all()
    assert (student.grad[mask] != 0).any()
    # The expert is a target: the loss has no path back to it.
    assert expert.grad is None
    loss2 = policy_regression_loss(student, expert, mask, tau=0.5)
    assert torch.autograd.grad(loss2, expert, allow_unused=True) == (None,)


@pytest.mark.parametrize("tau", [0.1, 1.0, 3.0])
def test_gradient_vanishes_when_student_matches_expert_at_tau(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    expert = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0]]
    ).bool()
    # student = expert / tau on valid actions (plus a per-row shift, which no
    # softmax sees), arbitrary values on masked ones.
    shift = torch.randn(4, 1, generator=g, dtype=torch.float64)
    junk = torch.randn(4, 6, generator=g, dtype=torch.float64) * 1e3
    student = torch.where(mask, expert / tau + shift, junk).requires_grad_(True)
    loss = policy_regression_loss(student, expert, mask, tau=tau)
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.abs().max().item() < 1e-12
    p = expert_policy(expert, mask, tau)
    entropy = -(p * torch.where(mask, p.log(), 0.0)).sum(-1).mean()
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-12)


@st.composite
def distill_case(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    b = draw(st.integers(1, 4))
    n = draw(st.integers(1, 6))
    logits = st.floats(-8.0, 8.0, allow_nan=False)
    student = torch.tensor(draw(st.lists(logits, min_size=b * n, max_size=b * n)))
    expert = torch.tensor(draw(st.lists(logits, min_size=b * n, max_size=b * n)))
    bits = draw(st.lists(st.booleans(), min_size=b * n, max_size=b * n))
    mask = torch.tensor(bits).view(b, n)
    # At least one valid action per row.
    first = draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b))
    mask[torch.arange(b), torch.tensor(first)] = True
    tau = draw(st.floats(0.1, 5.0))
    return (
        student.view(b, n).double(),
        expert.view(b, n).double(),
        mask,
        tau,
    )


@settings(max_examples=200, deadline=None)
@given(distill_case())
def test_cross_entropy_bounds_the_target_entropy_with_equality_iff_equal(
    case: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float],
) -> None:
    student, expert, mask, tau = case
    p = expert_policy(expert, mask, tau)
    q = torch.softmax(student.masked_fill(~mask, -math.inf), dim=-1)
    entropy_rows = -(p * torch.where(p > 0, p.log(), 0.0)).sum(-1)
    loss = policy_regression_loss(student, expert, mask, tau)
    gap = loss.item() - entropy_rows.mean().item()  # the mean KL(p || q)
    # Pinsker: KL(p || q) >= 1/2 ||p - q||_1^2 in every row, so the gap is zero
    # only when the two distributions match.
    pinsker = (0.5 * (p - q).abs().sum(-1) ** 2).mean().item()
    assert gap >= pinsker - 1e-9
    assert gap >= -1e-12
    matched = torch.where(mask, expert / tau, student)
    equal = policy_regression_loss(matched, expert, mask, tau).item()
    assert equal == pytest.approx(entropy_rows.mean().item(), abs=1e-9)


def test_row_with_no_valid_action_is_a_value_error_naming_rows() -> None:
    logits = torch.zeros(4, 3)
    mask = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0]]).bool()
    for fn in (
        lambda: policy_regression_loss(logits, logits, mask),
        lambda: greedy_agreement(logits, logits, mask),
        lambda: expert_policy(logits, mask),
    ):
        with pytest.raises(ValueError, match=r"row\(s\) \[1, 3\]"):
            fn()


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf, -math.inf, "warm", None])
def test_bad_tau_is_a_value_error(tau: object) -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="tau"):
        policy_regression_loss(logits, logits, torch.ones(2, 3, dtype=torch.bool), tau)  # type: ignore[arg-type]


def test_bad_shapes_and_dtypes_are_value_errors() -> None:
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="same shape"):
        policy_regression_loss(torch.zeros(2, 3), torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        policy_regression_loss(torch.zeros(3), torch.zeros(3), mask[0])
    with pytest.raises(ValueError, match="floating-point"):
        policy_regression_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), mask)
    with pytest.raises(ValueError, match="empty"):
        policy_regression_loss(torch.zeros(0, 3), torch.zeros(0, 3), torch.ones(0, 3).bool())
    with pytest.raises(ValueError, match="empty"):
        greedy_agreement(torch.zeros(0, 3), torch.zeros(0, 3), torch.ones(0, 3).bool())
    with pytest.raises(ValueError, match="does not broadcast"):
        policy_regression_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4).bool())


@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf, 3e38])
def test_garbage_in_masked_logits_reaches_neither_loss_nor_gradient(bad: float) -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 5, generator=g)
    expert = torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 0, 0, 0], [1, 1, 1, 1, 0]]).bool()

    def run(s: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = s.clone().requires_grad_(True)
        loss = policy_regression_loss(s, e, mask, tau=0.7)
        (grad,) = torch.autograd.grad(loss, s)
        return loss.detach(), grad

    clean_loss, clean_grad = run(student, expert)
    dirty_s = student.masked_fill(~mask, bad)
    dirty_e = expert.masked_fill(~mask, bad)
    loss, grad = run(dirty_s, dirty_e)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == clean_loss.item()
    assert torch.equal(grad, clean_grad)
    assert greedy_agreement(dirty_s, dirty_e, mask) == greedy_agreement(student, expert, mask)


def test_numpy_and_integer_masks_are_accepted() -> None:
    student, expert, mask = hand_case()
    want = policy_regression_loss(student, expert, mask, 2.0)
    assert policy_regression_loss(student, expert, mask.numpy(), 2.0).item() == want.item()
    assert policy_regression_loss(student, expert, mask.long(), 2.0).item() == want.item()
    assert policy_regression_loss(student, expert, np.asarray(mask.long()), 2.0) == want


def test_half_precision_student_gives_a_finite_float32_loss() -> None:
    student, expert, mask = hand_case()
    loss = policy_regression_loss(student.to(torch.bfloat16), expert.float(), mask, 2.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(4.0) - 3.0 / 8.0 * LN3, abs=2e-2)


# -- feature regression -----------------------------------------------------------------


def test_feature_regression_is_mse_and_detaches_the_target() -> None:
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(4, 5, generator=g, requires_grad=True)
    target = torch.randn(4, 5, generator=g, requires_grad=True)
    loss = feature_regression_loss(pred, target)
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(pred, target.detach()))
    loss.backward()
    assert target.grad is None
    torch.testing.assert_close(pred.grad, 2 * (pred - target).detach() / 20)


def test_masked_feature_regression_averages_each_row_over_its_own_features() -> None:
    # Row 0 (2 features): errors 1, 2 -> (1 + 4) / 2 = 2.5.
    # Row 1 (1 feature):  error 2 -> 4. Mean over rows: 3.25 (the padded NaN
    # is ignored, and row 1 counts as much as row 0).
    pred = torch.tensor([[1.0, 2.0], [0.0, 5.0]], requires_grad=True)
    tgt = torch.tensor([[0.0, 0.0], [2.0, NAN]])
    mask = torch.tensor([[True, True], [True, False]])
    loss = feature_regression_loss(pred, tgt, mask)
    assert loss.item() == 3.25
    loss.backward()
    assert pred.grad is not None
    # d/dpred of (1/2)(mean of row 0) + (1/2)(row 1): row 0 2*err/2/2, row 1 2*err/1/2.
    assert pred.grad.tolist() == [[0.5, 1.0], [-2.0, 0.0]]
    with pytest.raises(ValueError, match=r"row\(s\) \[0\]"):
        feature_regression_loss(pred, tgt, torch.tensor([[False, False], [True, True]]))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        feature_regression_loss(pred, tgt[:, :1])


def test_feature_heads_use_each_rows_own_game_head() -> None:
    torch.manual_seed(4)
    heads = FeatureRegressionHeads(6, [3, 5, 2]).double()
    h = torch.randn(7, 6, dtype=torch.float64)
    game_id = torch.tensor([2, 0, 1, 1, 0, 2, 1])
    out = heads(h, game_id)
    assert out.shape == (7, 5)
    for b, g in enumerate(game_id.tolist()):
        d = heads.expert_dims[g]
        torch.testing.assert_close(out[b, :d], heads.heads[g](h[b]))
        assert (out[b, d:] == 0).all()
    assert heads.feature_mask(game_id).sum(1).tolist() == [2, 3, 5, 5, 3, 2, 5]


def test_feature_heads_loss_averages_rows_and_trains_only_present_games() -> None:
    torch.manual_seed(5)
    heads = FeatureRegressionHeads(4, [3, 1, 2]).double()
    h = torch.randn(3, 4, dtype=torch.float64)
    game_id = torch.tensor([0, 1, 0])  # game 2 is absent
    target = torch.full((3, 3), NAN, dtype=torch.float64)
    expert0 = torch.randn(2, 3, dtype=torch.float64)
    expert1 = torch.randn(1, 1, dtype=torch.float64)
    target[game_id == 0, :3] = expert0
    target[game_id == 1, :1] = expert1
    loss = heads.loss(h, game_id, target)
    rows = [
        ((heads.heads[0](h[0]) - expert0[0]) ** 2).mean(),
        ((heads.heads[1](h[1]) - expert1[0]) ** 2).mean(),
        ((heads.heads[0](h[2]) - expert0[1]) ** 2).mean(),
    ]
    torch.testing.assert_close(loss, torch.stack(rows).mean())
    loss.backward()
    grads = [p.grad for p in heads.heads[2].parameters()]
    assert all(gr is not None and (gr == 0).all() for gr in grads)
    assert all(torch.isfinite(p.grad).all() for p in heads.parameters() if p.grad is not None)


def test_feature_heads_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expert_dims"):
        FeatureRegressionHeads(4, [])
    with pytest.raises(ValueError, match="expert_dims"):
        FeatureRegressionHeads(4, [3, 0])
    heads = FeatureRegressionHeads(4, [3])
    with pytest.raises(ValueError, match="h must have shape"):
        heads(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="game_id"):
        heads(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))


# -- greedy agreement --------------------------------------------------------------------


def test_weighted_policy_regression_is_the_weighted_mean_of_the_rows() -> None:
    # hand_case's rows: CE_0 = ln 4 - (1/4) ln 3, CE_1 = ln 4 - (1/2) ln 3.
    student, expert, mask = hand_case()
    student.requires_grad_(True)
    w = torch.tensor([3.0, 0.5], dtype=torch.float64)
    loss = policy_regression_loss(student, expert, mask, tau=2.0, weight=w)
    ce0, ce1 = math.log(4.0) - LN3 / 4, math.log(4.0) - LN3 / 2
    assert loss.item() == pytest.approx((3.0 * ce0 + 0.5 * ce1) / 2, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, student)
    # Each row's gradient (q - p) / B scaled by its weight.
    expected = torch.tensor([[-0.75, 0.75, 0.0], [0.0, -0.0625, 0.0625]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)


def test_unit_weights_give_exactly_the_unweighted_losses() -> None:
    g = torch.Generator().manual_seed(0)
    s, e = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    mask = torch.rand(7, 5, generator=g) < 0.7
    mask[:, 0] = True
    ones = torch.ones(7)
    assert torch.equal(
        policy_regression_loss(s, e, mask, 0.7, ones), policy_regression_loss(s, e, mask, 0.7)
    )
    assert torch.equal(
        feature_regression_loss(s, e, mask, ones), feature_regression_loss(s, e, mask)
    )
    assert torch.allclose(feature_regression_loss(s, e, None, ones), feature_regression_loss(s, e))


def test_weighted_feature_regression_hand_case() -> None:
    # Row errors (own features only): row 0 (1 + 4) / 2 = 2.5, row 1 (0 - 2)^2 = 4.
    pred = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
    tgt = torch.tensor([[0.0, 0.0], [2.0, NAN]])
    mask = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([2.0, 0.0])
    assert feature_regression_loss(pred, tgt, mask, w).item() == pytest.approx((2 * 2.5 + 0) / 2)


def test_a_weight_of_the_wrong_shape_is_a_value_error() -> None:
    student, expert, mask = hand_case()
    with pytest.raises(ValueError, match=r"weight must have shape \[B\] = \(2,\), got \(3,\)"):
        policy_regression_loss(student, expert, mask, 2.0, torch.ones(3))
    with pytest.raises(ValueError, match="weight must have shape"):
        feature_regression_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, torch.ones(2, 1))


def test_greedy_agreement_hand_case() -> None:
    # Row 0: student's best valid action is 1 (index 2 is masked), expert's is 1.
    # Row 1: student picks 0, expert picks 1. Row 2: ties go to the first index.
    s = torch.tensor([[0.0, 1.0, 9.0], [2.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    e = torch.tensor([[0.0, 3.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    assert greedy_agreement(s, e, mask).item() == pytest.approx(2 / 3)
    assert greedy_agreement(s, s, mask).item() == 1.0


def test_doctests() -> None:
    result = doctest.testmod(maskrl.agents.mimic_losses, extraglobs={"math": math})
    assert result.attempted > 0 and result.failed == 0
