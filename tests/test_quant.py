"""Quantization-aware training: fake quantization, QAT layers, int8 conversion, specs."""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import maskrl.quant as Q
from maskrl import masked_log_softmax, masked_softmax
from maskrl.init import layer_init
from maskrl.networks import (
    ActorCritic,
    AtariCNN,
    ChannelsLast,
    MinAtarCNN,
    MLPEncoder,
    MultiGameActorCritic,
    OneHotEncoder,
    SetActorCritic,
)
from maskrl.quant import FakeQuant, convert_int8, fake_quantize, prepare_qat, set_qat_step
from maskrl.tokens import GridTokenEncoder

ROOT = Path(__file__).resolve().parents[1]


def tf_nudge(lo: float, hi: float, num_bits: int, narrow: bool) -> tuple[float, int, float, float]:
    """TF's Nudge, step by step in float32: (scale, zero_point, nudged_min, nudged_max)."""
    f = np.float32
    qmin, qmax = (1 if narrow else 0), 2**num_bits - 1
    scale = (f(hi) - f(lo)) / f(qmax - qmin)
    zp_from_min = f(qmin) - f(lo) / scale
    zp = (
        qmin
        if zp_from_min < qmin
        else qmax
        if zp_from_min > qmax
        else int(np.floor(zp_from_min + f(0.5)))
    )
    return float(scale), zp, float(f(qmin - zp) * scale), float(f(qmax - zp) * scale)


# ---------------------------------------------------------------------------
# fake_quantize: forward
# ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    lo=st.floats(-8.0, 8.0),
    width=st.floats(1e-3, 16.0),
    num_bits=st.integers(2, 8),
    narrow=st.booleans(),
    spread=st.floats(0.1, 20.0),
)
def test_forward_equals_torch_fake_quantize(
    seed: int, lo: float, width: float, num_bits: int, narrow: bool, spread: float
) -> None:
    hi = lo + width
    x = torch.randn(257, generator=torch.Generator().manual_seed(seed)) * spread
    scale, zp, _, _ = tf_nudge(lo, hi, num_bits, narrow)
    qmin, qmax = (1 if narrow else 0), 2**num_bits - 1
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    got = fake_quantize(x, torch.tensor(lo), torch.tensor(hi), num_bits, narrow)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # bits, signs of 0 too


def test_nudging_moves_ranges_without_zero_to_zero() -> None:
    # [0.5, 2.5] with 3 bits: scale 2/7, zero point 0 - 0.5 / (2/7) = -1.75,
    # clamped to 0, so the range becomes [0, 2] (same width, starting at 0).
    scale, zp, nmin, nmax = tf_nudge(0.5, 2.5, 3, False)
    assert (zp, nmin) == (0, 0.0) and nmax == pytest.approx(2.0) and scale == pytest.approx(2 / 7)
    x = torch.tensor([-1.0, 0.0, 0.3, 1.1, 2.4])
    # 0.3 / (2/7) = 1.05 -> level 1; 1.1 / (2/7) = 3.85 -> 4; 2.4 is clamped to 2.
    expected = torch.tensor([0.0, 0.0, 2 / 7, 8 / 7, 2.0])
    torch.testing.assert_close(fake_quantize(x, 0.5, 2.5, num_bits=3), expected)
    # Below zero: [-2.5, -0.5] -> zero point 0 + 2.5 * 3.5 = 8.75, clamped to 7: [-2, 0].
    assert tf_nudge(-2.5, -0.5, 3, False)[1] == 7
    torch.testing.assert_close(
        fake_quantize(torch.tensor([-3.0, -1.1, 0.4]), -2.5, -0.5, num_bits=3),
        torch.tensor([-2.0, -8 / 7, 0.0]),
    )
    # Straddling zero: [-0.5, 1.0] -> scale 1.5/7, zero point 2.333 -> 2:
    # nudged to [-2 * 1.5/7, 5 * 1.5/7] = [-0.428571, 1.071429].
    _, zp, nmin, nmax = tf_nudge(-0.5, 1.0, 3, False)
    assert zp == 2
    assert nmin == pytest.approx(-0.428571, abs=1e-6) and nmax == pytest.approx(1.071429, abs=1e-6)
    y = fake_quantize(torch.tensor([-0.5, 0.0, 1.05]), -0.5, 1.0, num_bits=3)
    torch.testing.assert_close(y, torch.tensor([-3.0 / 7, 0.0, 7.5 / 7]))


def test_symmetric_narrow_range_gives_int8_weights() -> None:
    w = torch.tensor([-1.0, -0.5, 0.0, 0.3, 1.0])
    y = fake_quantize(w, -1.0, 1.0, num_bits=8, narrow_range=True)
    levels = y * 127
    torch.testing.assert_close(levels, levels.round())
    assert levels.min() == -127 and levels.max() == 127


def test_argument_errors() -> None:
    x = torch.randn(4)
    with pytest.raises(ValueError, match="x_min must be <= x_max"):
        fake_quantize(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="num_bits"):
        fake_quantize(x, 0.0, 1.0, num_bits=1)
    with pytest.raises(ValueError, match="floating-point"):
        fake_quantize(torch.arange(4), 0.0, 1.0)
    with pytest.raises(ValueError, match="mode"):
        FakeQuant(mode="magic")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# fake_quantize: straight-through gradients
# ---------------------------------------------------------------------------


def test_straight_through_gradients_by_hand() -> None:
    # [0.5, 2.5], 3 bits -> nudged [0, 2]. Upstream gradients 1..6.
    x = torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.4, 3.0], requires_grad=True)
    lo = torch.tensor(0.5, requires_grad=True)
    hi = torch.tensor(2.5, requires_grad=True)
    up = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    (fake_quantize(x, lo, hi, num_bits=3) * up).sum().backward()
    # Inside [0, 2] (ends included): 1 x upstream; outside: 0.
    assert x.grad is not None and lo.grad is not None and hi.grad is not None
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0, 0.0]))
    assert lo.grad.item() == 1.0  # only -1.0 lies below 0
    assert hi.grad.item() == 11.0  # 2.4 and 3.0 lie above 2: 5 + 6


def test_straight_through_gradients_per_channel() -> None:
    x = torch.tensor([[-2.0, 0.5, 3.0], [-0.1, 0.2, 0.9]], requires_grad=True)
    lo = torch.tensor([[-1.0], [0.0]], requires_grad=True)
    hi = torch.tensor([[1.0], [0.5]], requires_grad=True)
    fake_quantize(x, lo, hi, num_bits=8).sum().backward()
    assert x.grad is not None and lo.grad is not None and hi.grad is not None
    # Row 0: [-1, 1] (zero point 127.5 -> 128 moves it by half a step, to
    # [-1.0039, 0.9961]): -2 below, 3 above. Row 1: [0, 0.5]: -0.1 below, 0.9 above.
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(lo.grad, torch.tensor([[1.0], [1.0]]))
    torch.testing.assert_close(hi.grad, torch.tensor([[1.0], [1.0]]))


@pytest.mark.parametrize(
    ("seed", "end", "count"),
    [(11, "max", 2), (10, "min", 3), (49, "max", 4), (30, "min", 5)],
)
def test_gradient_through_own_min_and_max(seed: int, end: str, count: int) -> None:
    """x.grad is 1 inside, 0 at clamped entries, and k at the extreme of the clamped end.

    With x_min = x.min() and x_max = x.max(), nudging moves one end of the
    range inside the data by up to half a step. The k entries beyond it get 0
    through the straight-through path; that end collects their summed
    gradient, k, and passes it back through min() / max() to the single
    extreme entry, itself one of the k: it ends at 0 + k.
    """
    x = torch.randn(10, 10, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    fake_quantize(x, x.min(), x.max(), num_bits=3).sum().backward()
    assert x.grad is not None
    grad = x.grad.flatten()
    v = x.detach().flatten()
    # The expected gradient, from TF's nudging computed independently.
    _, _, nmin, nmax = tf_nudge(v.min().item(), v.max().item(), 3, False)
    below, above = v < nmin, v > nmax
    assert not (below.any() and above.any())  # only one end moves inside the data
    expected = (~(below | above)).float()
    expected[v.argmin()] += below.sum()
    expected[v.argmax()] += above.sum()
    assert torch.equal(grad, expected)
    # And the exact counts for this sample.
    clamped = below if end == "min" else above
    extreme = v.argmin() if end == "min" else v.argmax()
    assert int(clamped.sum()) == count
    assert grad[extreme].item() == count
    assert int((grad == 0).sum()) == count - 1
    assert int((grad == 1).sum()) == 100 - count


# ---------------------------------------------------------------------------
# FakeQuant
# ---------------------------------------------------------------------------


def test_observed_moving_average_by_hand() -> None:
    fq = FakeQuant(num_bits=8, averaging_constant=0.5)
    x1, x2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-2.0, 4.0])
    assert fq(x1) is x1  # disabled: observes, passes through
    assert (fq.min_val.item(), fq.max_val.item()) == (0.0, 2.0)  # first batch: taken as is
    fq(x2)
    # min: 0 + 0.5 * (-2 - 0) = -1; max: 2 + 0.5 * (4 - 2) = 3
    assert (fq.min_val.item(), fq.max_val.item()) == (-1.0, 3.0)
    fq.eval()
    fq(torch.tensor([-100.0, 100.0]))  # eval mode: no update
    assert (fq.min_val.item(), fq.max_val.item()) == (-1.0, 3.0)
    fq.set_enabled(True)
    x = torch.linspace(-3, 5, 50)
    assert torch.equal(fq(x), fake_quantize(x, -1.0, 3.0))


def test_observed_per_channel_weights_are_symmetric() -> None:
    w = torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, 0.3]])
    fq = FakeQuant(per_channel=2, symmetric=True, averaging_constant=1.0)
    fq.set_enabled(True)
    y = fq(w)
    # Row 0: scale 2/127, row 1: scale 0.3/127; values on the integer grid [-127, 127].
    scale, zp = fq.qparams()
    torch.testing.assert_close(scale, torch.tensor([2 / 127, 0.3 / 127]))
    assert torch.equal(zp, torch.tensor([128.0, 128.0]))
    levels = y / scale[:, None]
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels.abs().max().round() == 127


def test_learned_step_size_gets_lsq_gradient() -> None:
    fq = FakeQuant(num_bits=8, mode="learned")
    fq(torch.tensor([0.0, 1.0]))  # observed range [0, 1]
    fq.eval()  # keep that range (in training mode the next batch would be observed first)
    fq.set_enabled(True)
    x = torch.tensor([0.31, 2.0])
    y = fq(x)  # step initialised from the range: 1/255, zero point 0
    assert fq.step is not None
    assert fq.step.item() == pytest.approx(1 / 255)
    y.sum().backward()
    assert fq.step.grad is not None
    # LSQ: d y / d s = round(x/s) - x/s inside (79 - 79.05), qmax - z = 255 when
    # clamped above; scaled by g = 1 / sqrt(N * qmax), N = 2 elements.
    expected = ((79 - 0.31 * 255) + 255) / np.sqrt(2 * 255)
    assert fq.step.grad.item() == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(y, torch.tensor([79 / 255, 1.0]))
    # Per-channel learned weights: one step per row, each with a gradient.
    wq = FakeQuant(
        num_bits=4, mode="learned", per_channel=3, symmetric=True, averaging_constant=1.0
    )
    wq.set_enabled(True)
    wq(torch.randn(3, 5)).square().sum().backward()
    assert wq.step is not None and wq.step.grad is not None
    assert wq.step.grad.shape == (3,) and bool((wq.step.grad != 0).all())


# ---------------------------------------------------------------------------
# prepare_qat on every network
# ---------------------------------------------------------------------------


def _set_obs(b: int, n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(b, n, generator=g) > 0.3
    mask[:, 0] = True
    return {
        "item_features": torch.randn(b, n, 3, generator=g),
        "item_mask": mask,
        "capacity": torch.rand(b, 1, generator=g),
    }


def _with_random_relative_bias(net: nn.Module) -> nn.Module:
    """A token network whose relative-position bias is not the zeros it starts at."""
    with torch.no_grad():
        net.encoder.relative_bias.normal_()  # type: ignore[union-attr, operator]
    return net


NETWORKS = {
    "minatar": (
        lambda: ActorCritic(MinAtarCNN(4), 6),
        lambda b: (torch.rand(b, 4, 10, 10) > 0.8).float(),
        6,
    ),
    "atari": (
        lambda: ActorCritic(AtariCNN(4), 18),
        lambda b: torch.randint(0, 256, (b, 4, 84, 84), dtype=torch.uint8),
        18,
    ),
    "mlp": (lambda: ActorCritic(MLPEncoder(8), 5), lambda b: torch.randn(b, 8), 5),
    "onehot": (lambda: ActorCritic(OneHotEncoder(16), 4), lambda b: torch.randint(0, 16, (b,)), 4),
    "channels_last": (
        lambda: ActorCritic(ChannelsLast(MinAtarCNN(2, 6, 7)), 7),
        lambda b: (torch.rand(b, 6, 7, 2) > 0.5).float(),
        7,
    ),
    "multigame": (
        lambda: MultiGameActorCritic(MinAtarCNN(4), 6, 3),
        lambda b: {"obs": (torch.rand(b, 4, 10, 10) > 0.8).float(), "game_id": torch.arange(b) % 3},
        6,
    ),
    "multigame_tokens": (
        lambda: MultiGameActorCritic(GridTokenEncoder([4, 6], 10, 10, dim=32), 6, 2),
        lambda b: {"obs": (torch.rand(b, 6, 10, 10) > 0.9).float(), "game_id": torch.arange(b) % 2},
        6,
    ),
    "multigame_tokens_attention": (
        lambda: MultiGameActorCritic(
            GridTokenEncoder([4, 6], 10, 10, dim=32, layers=2, attention_heads=4), 6, 2
        ),
        lambda b: {"obs": (torch.rand(b, 6, 10, 10) > 0.9).float(), "game_id": torch.arange(b) % 2},
        6,
    ),
    "multigame_tokens_relpos": (
        lambda: _with_random_relative_bias(
            MultiGameActorCritic(
                GridTokenEncoder(
                    [4, 6], 10, 10, dim=32, layers=2, attention_heads=4, relative_position=True
                ),
                6,
                2,
            )
        ),
        lambda b: {"obs": (torch.rand(b, 6, 10, 10) > 0.9).float(), "game_id": torch.arange(b) % 2},
        6,
    ),
    "multigame_tokens_nb3": (
        lambda: _with_random_relative_bias(
            MultiGameActorCritic(
                GridTokenEncoder(
                    [4, 6],
                    10,
                    10,
                    dim=32,
                    layers=1,
                    attention_heads=4,
                    relative_position=True,
                    neighbourhood=3,
                ),
                6,
                2,
            )
        ),
        lambda b: {"obs": (torch.rand(b, 6, 10, 10) > 0.9).float(), "game_id": torch.arange(b) % 2},
        6,
    ),
    "set_attention": (
        lambda: SetActorCritic(
            3, ("capacity",), 1, items_key="item_features", layers=2, attention_heads=2
        ),
        _set_obs,
        5,
    ),
    "set_additive": (
        lambda: SetActorCritic(3, ("capacity",), 1, items_key="item_features"),
        _set_obs,
        5,
    ),
    "set_multihead": (
        lambda: SetActorCritic(
            3, ("capacity",), 1, pool="multihead", num_heads=2, items_key="item_features"
        ),
        _set_obs,
        5,
    ),
}


def _layer_count(net: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net.modules())


@pytest.mark.parametrize("name", list(NETWORKS))
def test_prepare_qat_every_network(name: str) -> None:
    build, make_obs, n = NETWORKS[name]
    torch.manual_seed(0)
    net = build()
    float_net = build()
    float_net.load_state_dict(net.state_dict())
    n_layers = _layer_count(net)
    n_embeddings = sum(isinstance(m, nn.Embedding) for m in net.modules())
    assert prepare_qat(net) is net
    qat = [m for m in net.modules() if isinstance(m, Q.QAT_LAYERS)]
    assert len(qat) == n_layers  # every Linear / Conv2d, attention projections included
    assert _layer_count(net) == n_layers  # and nothing float of that kind is left
    assert sum(isinstance(m, nn.Embedding) for m in net.modules()) == n_embeddings  # float
    assert all(m.input_quant.enabled for m in qat)

    obs = make_obs(8)
    net(obs)  # training mode: observe the ranges
    net.eval()
    float_net.eval()
    with torch.no_grad():
        logits, value = net(obs)
        f_logits, f_value = float_net(obs)
    assert logits.shape == f_logits.shape == (8, n) and value.shape == f_value.shape == (8,)
    assert not torch.equal(logits, f_logits)  # quantization is on
    # The masked head stays exact: masked actions get probability exactly 0.
    mask = torch.rand(8, n, generator=torch.Generator().manual_seed(2)) > 0.5
    mask[:, 1] = True
    probs = masked_softmax(logits, mask)
    assert bool((probs[~mask] == 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(8))

    # And the int8 conversion computes the same outputs: each layer agrees to
    # float rounding (~1e-6); through a deep network such a difference can
    # move an activation across a rounding boundary, one level (~1% of its
    # range), which the next layers carry on.
    int8 = convert_int8(net)
    with torch.no_grad():
        i_logits, i_value = int8(obs)
    torch.testing.assert_close(i_logits, logits, atol=1e-2, rtol=0)
    torch.testing.assert_close(i_value, value, atol=1e-2, rtol=0)


def test_attention_pool_projections_are_quantized() -> None:
    net = prepare_qat(SetActorCritic(3, pool="multihead", num_heads=2, items_key="item_features"))
    names = {n for n, m in net.named_modules() if isinstance(m, Q.QATLinear)}
    assert {"encoder.pool.key", "encoder.pool.value", "encoder.pool.out"} <= names
    net = prepare_qat(SetActorCritic(3, items_key="item_features"))
    assert isinstance(net.get_submodule("encoder.pool.proj"), Q.QATLinear)


def test_delay_turns_fake_quantization_on_later() -> None:
    torch.manual_seed(0)
    net = ActorCritic(MinAtarCNN(4), 6)
    ref = ActorCritic(MinAtarCNN(4), 6)
    ref.load_state_dict(net.state_dict())
    prepare_qat(net, start_after=100)
    obs = (torch.rand(16, 4, 10, 10) > 0.8).float()
    assert set_qat_step(net, 0) is False
    out = net(obs)[0]
    assert torch.equal(out, ref(obs)[0])  # float until the delay has passed
    fc = net.get_submodule("encoder.fc")
    assert isinstance(fc, Q.QATLinear)
    assert fc.input_quant.max_val.item() > 0  # but the observers watch from the start
    assert Q.check_convertible(net) and not Q.is_convertible(net)
    assert set_qat_step(net, 99) is False
    assert set_qat_step(net, 100) is True
    assert not torch.equal(net(obs)[0], ref(obs)[0])
    assert Q.is_convertible(net)


# ---------------------------------------------------------------------------
# int8 conversion
# ---------------------------------------------------------------------------


def _breakout_batch(steps: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from maskrl.envs import make_vec

    envs = make_vec("maskrl/MinAtar-Breakout-v0", 8, seed=0)
    rng = np.random.default_rng(0)
    obs, info = envs.reset(seed=0)
    all_obs, all_masks = [], []
    for _ in range(steps):
        mask = info["action_mask"]
        all_obs.append(obs)
        all_masks.append(mask)
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in mask])
        obs, _, _, _, info = envs.step(actions)
    envs.close()
    return torch.as_tensor(np.concatenate(all_obs)).float(), torch.as_tensor(
        np.concatenate(all_masks)
    )


def test_int8_greedy_actions_match_on_breakout() -> None:
    obs, mask = _breakout_batch()
    torch.manual_seed(0)
    net = ActorCritic(MinAtarCNN(obs.shape[1]), 6)
    # A policy head with the spread of a trained one (the 0.01 init gain makes
    # every logit nearly equal, which says nothing about greedy agreement).
    layer_init(net.policy_head, std=1.0)
    prepare_qat(net)
    net(obs)
    net.eval()
    int8 = convert_int8(net)
    with torch.no_grad():
        fq_logits, fq_value = net(obs)
        i_logits, i_value = int8(obs)
    fq_act = masked_log_softmax(fq_logits, mask).argmax(-1)
    i_act = masked_log_softmax(i_logits, mask).argmax(-1)
    assert torch.equal(fq_act, i_act)
    assert bool(mask.gather(1, i_act[:, None]).all())
    torch.testing.assert_close(i_value, fq_value, atol=1e-4, rtol=1e-4)
    assert isinstance(int8.get_submodule("encoder.fc"), Q.Int8Linear)
    assert int8.get_submodule("encoder.fc").weight.dtype == torch.int8
    assert isinstance(net.get_submodule("encoder.fc"), Q.QATLinear)  # original untouched


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(buf.getvalue())


def test_int8_is_at_least_3_5x_smaller() -> None:
    torch.manual_seed(0)
    net = ActorCritic(MinAtarCNN(7), 6)
    float_bytes = _nbytes(net.state_dict())
    prepare_qat(net)
    net((torch.rand(4, 7, 10, 10) > 0.5).float())
    int8_bytes = _nbytes(convert_int8(net).state_dict())
    assert float_bytes / int8_bytes >= 3.5, (float_bytes, int8_bytes)


def test_int8_copies_carry_integers_not_packed_kernels() -> None:
    net = prepare_qat(ActorCritic(MinAtarCNN(4), 6))
    x = (torch.rand(8, 4, 10, 10) > 0.8).float()
    net(x)
    int8 = convert_int8(net)
    y = int8(x)[0]  # packs the kernels' weights
    fc = int8.get_submodule("encoder.fc")
    assert isinstance(fc, Q.Int8Linear) and fc._cache is not None
    clone = copy.deepcopy(int8)
    assert clone.get_submodule("encoder.fc")._cache is None
    assert torch.equal(clone(x)[0], y)


def test_int8_conv_with_padding_and_zero_point() -> None:
    # Large enough for the oneDNN kernel; signed input, so the zero point is
    # not 0 and the padding must hold the zero point, not level 0.
    net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Flatten(), nn.Linear(32 * 25, 64))
    prepare_qat(net)
    x = torch.randn(3, 16, 5, 5)
    net(x)
    net.eval()
    int8 = convert_int8(net)
    conv = int8.get_submodule("0")
    assert isinstance(conv, Q.Int8Conv2d) and conv.int8_kernel
    assert 0 < conv.input_zero_point.item() < 255
    with torch.no_grad():
        torch.testing.assert_close(int8(x), net(x), atol=1e-4, rtol=1e-4)


def test_convert_refuses_with_reasons() -> None:
    with pytest.raises(ValueError, match="no QAT layer"):
        convert_int8(ActorCritic(MLPEncoder(4), 3))
    net = prepare_qat(ActorCritic(MLPEncoder(4), 3), num_bits=12)
    net(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"layer 'encoder.net.0' \(QATLinear\): 12-bit"):
        convert_int8(net)
    unseen = prepare_qat(ActorCritic(MLPEncoder(4), 3))
    assert any("never observed" in p for p in Q.check_convertible(unseen))
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(unseen)
    with pytest.raises(ValueError, match="MultiheadAttention"):
        prepare_qat(nn.Sequential(nn.MultiheadAttention(8, 2)))


def test_library_leaves_process_state_alone() -> None:
    engine, threads = torch.backends.quantized.engine, torch.get_num_threads()
    net = prepare_qat(ActorCritic(MinAtarCNN(4), 6))
    net((torch.rand(64, 4, 10, 10) > 0.5).float())
    convert_int8(net)((torch.rand(64, 4, 10, 10) > 0.5).float())
    assert torch.backends.quantized.engine == engine and torch.get_num_threads() == threads
    if "qnnpack" in torch.backends.quantized.supported_engines:
        # A user's engine choice neither breaks conversion nor is overwritten.
        torch.backends.quantized.engine = "qnnpack"
        try:
            x = (torch.rand(8, 4, 10, 10) > 0.5).float()
            net.eval()
            torch.testing.assert_close(convert_int8(net)(x), net(x), atol=1e-2, rtol=0)
            assert torch.backends.quantized.engine == "qnnpack"
        finally:
            torch.backends.quantized.engine = engine


# ---------------------------------------------------------------------------
# specs and checkpoints
# ---------------------------------------------------------------------------


def _roundtrip(obj: object) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("mode", ["observed", "learned"])
def test_spec_roundtrip_through_weights_only_checkpoint(mode: str) -> None:
    torch.manual_seed(0)
    net = prepare_qat(MultiGameActorCritic(MinAtarCNN(4), 6, 2), mode=mode, start_after=10)  # type: ignore[arg-type]
    obs = {"obs": (torch.rand(8, 4, 10, 10) > 0.8).float(), "game_id": torch.arange(8) % 2}
    net(obs)
    set_qat_step(net, 10)
    net(obs)
    net.eval()
    spec = Q.quant_spec(net)
    assert spec is not None and spec["mode"] == mode and spec["start_after"] == 10
    ckpt = _roundtrip({"model": net.state_dict(), "quant": spec})

    fresh = MultiGameActorCritic(MinAtarCNN(4), 6, 2)
    assert Q.quant_spec(fresh) is None and Q.apply_quant_spec(fresh, None) is fresh
    Q.apply_quant_spec(fresh, ckpt["quant"])
    fresh.load_state_dict(ckpt["model"])
    fresh.eval()
    assert Q.quant_spec(fresh) == spec
    with torch.no_grad():
        torch.testing.assert_close(fresh(obs), net(obs), atol=0, rtol=0)
        # Learned steps convert as observed ranges do.
        torch.testing.assert_close(convert_int8(fresh)(obs), net(obs), atol=1e-2, rtol=0)


def test_spec_roundtrip_of_an_int8_model() -> None:
    torch.manual_seed(0)
    net = prepare_qat(ActorCritic(MinAtarCNN(4), 6))
    obs = (torch.rand(8, 4, 10, 10) > 0.8).float()
    net(obs)
    int8 = convert_int8(net)
    spec = Q.quant_spec(int8)
    assert spec is not None and spec["converted"] is True
    ckpt = _roundtrip({"model": int8.state_dict(), "quant": spec})
    fresh = Q.apply_quant_spec(ActorCritic(MinAtarCNN(4), 6), ckpt["quant"])
    fresh.load_state_dict(ckpt["model"])
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(obs), int8(obs), atol=0, rtol=0)


def test_spec_rejects_mismatched_networks() -> None:
    spec = Q.quant_spec(prepare_qat(ActorCritic(MinAtarCNN(4), 6)))
    with pytest.raises(ValueError, match="no float nn.Linear"):
        Q.apply_quant_spec(ActorCritic(MLPEncoder(4), 6), spec)
    with pytest.raises(ValueError, match="version"):
        Q.apply_quant_spec(ActorCritic(MinAtarCNN(4), 6), {"version": 99})


def test_latency_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "quant_latency", ROOT / "benchmarks" / "quant_latency.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rc = bench.main(["--repeats", "1", "--calls", "1", "--steps", "2", "--networks", "minatar"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "MinAtar Breakout (CNN)" in out and "greedy agree" in out


@pytest.mark.parametrize("mode", ["observed", "learned"])
def test_small_int8_layers_equal_the_fake_quantized_ones_bit_for_bit(mode: str) -> None:
    # Below MIN_INT8_KERNEL_WEIGHTS a layer multiplies its integers in float:
    # the same arithmetic as the fake-quantized layer, after training moved
    # the learned steps away from their initial values.
    torch.manual_seed(0)
    net = prepare_qat(nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)), mode=mode)  # type: ignore[arg-type]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(32, 16)).square().mean().backward()
        opt.step()
    net.eval()
    x = torch.randn(64, 16)
    with torch.no_grad():
        assert torch.equal(convert_int8(net)(x), net(x))


# ---------------------------------------------------------------------------
# int8 kernels on every kind of CPU
# ---------------------------------------------------------------------------

KERNEL_KINDS = ("fbgemm_linear", "onednn_linear", "onednn_conv")


@pytest.fixture(params=["probed", "float_only"])
def kernel_setting(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the kernels this CPU's probe allows, and again with none.

    ``float_only`` is what a CPU whose integer kernels are all inexact (or
    missing) runs: every layer on the exact float path.
    """
    if request.param == "float_only":
        monkeypatch.setattr(Q.kernels, "_DISABLED_KERNELS", set(KERNEL_KINDS))
    return str(request.param)


def _worst_case_layers(bits: int) -> tuple[nn.Module, torch.Tensor]:
    """A linear and a conv layer whose integer sums are the largest any layer makes.

    Every weight at +-127 and every input at the top level: on AVX2-only x86,
    ``u8 x s8`` kernels add pairs of such products in saturating 16 bits.
    """
    net = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 9, 64))
    prepare_qat(net, num_bits=bits)
    x = torch.rand(4, 16, 5, 5)
    x[0] = 1.0
    net(x)
    with torch.no_grad():
        for layer in (net[0], net[2]):
            sign = torch.where(torch.rand_like(layer.weight) < 0.5, -1.0, 1.0)
            layer.weight.copy_(sign * layer.weight.abs().amax())
    net.eval()
    return net, x


@pytest.mark.parametrize("bits", [8, 7])
def test_int8_worst_case_sums_are_exact(bits: int, kernel_setting: str) -> None:
    # Fails on AVX2-only CPUs if a saturating kernel is used.
    torch.manual_seed(0)
    net, x = _worst_case_layers(bits)
    int8 = convert_int8(net)
    with torch.no_grad():
        torch.testing.assert_close(int8(x), net(x), atol=1e-4, rtol=1e-5)
    if kernel_setting == "float_only":
        assert Q.int8_kernels(bits) == {"linear": "float", "conv": "float"}
        with torch.no_grad():  # the float path is the fake-quantized layer, bit for bit
            assert torch.equal(int8(x), net(x))


@pytest.mark.parametrize("name", ["atari", "mlp", "onehot", "multigame"])
def test_int8_agrees_with_fake_quantization_on_any_kernel(name: str, kernel_setting: str) -> None:
    torch.manual_seed(0)
    make_net, make_obs, n = NETWORKS[name]
    net = make_net()
    layer_init(net.policy_head, std=1.0)
    prepare_qat(net)
    obs = make_obs(64)
    net(obs)
    net.eval()
    int8 = convert_int8(net)
    with torch.no_grad():
        logits, _ = net(obs)
        i_logits, _ = int8(obs)
    torch.testing.assert_close(i_logits, logits, atol=1e-2, rtol=0)
    agree = (i_logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
    assert agree >= 0.98, agree


def test_int8_kernels_report() -> None:
    report = Q.int8_kernels(8)
    assert set(report) == {"linear", "conv"}
    assert report["linear"] in ("fbgemm", "onednn", "float")
    assert report["conv"] in ("onednn", "float")
    with pytest.raises(ValueError, match="num_bits"):
        Q.int8_kernels(12)


AVX2_ONLY_ENV = {
    # Make this process's kernels behave as on an AVX2-only x86 CPU (no VNNI):
    # FBGEMM, oneDNN and ATen each read their own switch.
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 instruction sets"
)
def test_int8_exact_on_an_avx2_only_cpu() -> None:
    # On a VNNI CPU this runs the kernels as an AVX2-only CPU does; on an
    # AVX2-only CPU it runs them natively. Either way the probe must reject
    # the saturating 8-bit kernels and the int8 model must match.
    script = textwrap.dedent(
        """
        import torch, maskrl.quant as Q
        from torch import nn
        assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT"), \\
            torch.backends.cpu.get_cpu_capability()
        torch.manual_seed(0)
        for bits in (8, 7):
            net = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 9, 64))
            Q.prepare_qat(net, num_bits=bits)
            x = torch.rand(4, 16, 5, 5)
            x[0] = 1.0
            net(x)
            with torch.no_grad():
                for layer in (net[0], net[2]):
                    sign = torch.where(torch.rand_like(layer.weight) < 0.5, -1.0, 1.0)
                    layer.weight.copy_(sign * layer.weight.abs().amax())
            net.eval()
            with torch.no_grad():
                err = (Q.convert_int8(net)(x) - net(x)).abs().max().item()
            print(bits, Q.int8_kernels(bits), err)
            assert err < 1e-3, (bits, err)
        assert Q.int8_kernels(7) != {"linear": "float", "conv": "float"} or not Q.kernels._ONEDNN
        """
    )
    env = {**os.environ, **AVX2_ONLY_ENV, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------
# non-finite ranges and inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fake_quantize_refuses_a_non_finite_range(bad: float) -> None:
    x = torch.randn(10)
    with pytest.raises(ValueError, match="must be finite"):
        fake_quantize(x, bad, 1.0)
    with pytest.raises(ValueError, match="must be finite"):
        fake_quantize(x, -1.0, bad if bad != -float("inf") else float("nan"))
    with pytest.raises(ValueError, match="must be finite"):
        fake_quantize(torch.randn(3, 4), torch.tensor([[-1.0], [bad], [-1.0]]), 1.0)


def test_fake_quantize_equals_torch_except_nan_inputs() -> None:
    x = torch.tensor([float("inf"), -float("inf"), 1.0, -0.3, 5.0, float("nan")])
    ours = fake_quantize(x, -1.0, 2.0)
    scale, zp = Q.fake._nudge(torch.tensor(-1.0), torch.tensor(2.0), 0, 255)[:2]
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), 0, 255)
    assert torch.equal(ours[:5], ref[:5])  # +-inf clamp to the ends in both
    assert torch.isnan(ours[5])  # NaN stays visible; torch's kernel hides it
    assert not torch.isnan(ref[5])


@pytest.mark.parametrize("per_channel", [None, 3])
def test_observer_ignores_non_finite_batches(per_channel: int | None) -> None:
    fq = FakeQuant(per_channel=per_channel)
    fq.train()
    fq(torch.full((3, 4), float("nan")))  # nothing usable before the first finite batch
    assert not fq._observed
    x = torch.randn(3, 4)
    fq(x)
    lo, hi = fq.min_val.clone(), fq.max_val.clone()
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    poisoned = torch.randn(3, 4)
    poisoned[1, 2] = float("nan")
    poisoned[0, 0] = float("inf")
    fq(poisoned)
    if per_channel is None:  # the whole batch is skipped
        assert torch.equal(fq.min_val, lo) and torch.equal(fq.max_val, hi)
    else:  # the broken channels are skipped, the clean one is updated
        assert torch.equal(fq.min_val[:2], lo[:2]) and torch.equal(fq.max_val[:2], hi[:2])
        assert not torch.equal(fq.min_val[2], lo[2])
    assert torch.isfinite(fq.min_val).all() and torch.isfinite(fq.max_val).all()
    fq.set_enabled(True)
    assert torch.isfinite(fq(torch.randn(3, 4))).all()


def test_docstring_examples() -> None:
    import doctest

    import maskrl.quant.fake
    import maskrl.quant.kernels

    for mod in (Q, maskrl.quant.fake, maskrl.quant.kernels):
        result = doctest.testmod(mod, extraglobs={"torch": torch})
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_fake_quantize_range_shape_and_kernel_bits_are_checked() -> None:
    with pytest.raises(ValueError, match=r"x_min of shape \(5, 1\) does not broadcast"):
        fake_quantize(torch.randn(3, 4), torch.zeros(5, 1), torch.ones(5, 1))
    with pytest.raises(ValueError, match=r"x_max of shape \(3, 4, 1\)"):
        fake_quantize(torch.randn(3, 4), torch.zeros(()), torch.ones(3, 4, 1))
    for bad in ("8", 8.0, True, 9):
        with pytest.raises(ValueError, match="num_bits"):
            Q.int8_kernels(bad)  # type: ignore[arg-type]
