"""Tests for layer_init and the gain constants."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn

import maskrl.init
from maskrl import HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN, layer_init


def assert_orthogonal(weight: torch.Tensor, gain: float) -> None:
    w = weight.detach().reshape(weight.shape[0], -1).double()
    rows, cols = w.shape
    # Rows are orthogonal when there are no more rows than columns, else columns are.
    gram = w @ w.T if rows <= cols else w.T @ w
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    assert torch.allclose(gram, gain**2 * eye, atol=1e-5 * max(gain**2, 1e-4))


def test_gain_constants() -> None:
    assert HIDDEN_GAIN == pytest.approx(math.sqrt(2))
    assert POLICY_GAIN == 0.01
    assert VALUE_GAIN == 1.0


@pytest.mark.parametrize(("fan_in", "fan_out"), [(16, 4), (4, 16), (9, 9)])
@pytest.mark.parametrize("gain", [HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN])
def test_linear_is_orthogonal_with_gain(fan_in: int, fan_out: int, gain: float) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(fan_in, fan_out)
    out = layer_init(layer, std=gain, bias_const=0.25)
    assert out is layer
    assert_orthogonal(layer.weight, gain)
    assert (layer.bias == 0.25).all()


def test_default_is_hidden_gain_and_zero_bias() -> None:
    torch.manual_seed(1)
    layer = layer_init(nn.Linear(32, 8))
    assert_orthogonal(layer.weight, math.sqrt(2))
    assert (layer.bias == 0).all()


def test_conv2d() -> None:
    torch.manual_seed(2)
    conv = layer_init(nn.Conv2d(3, 8, kernel_size=3), std=HIDDEN_GAIN, bias_const=-1.0)
    assert_orthogonal(conv.weight, HIDDEN_GAIN)  # [8, 27]: rows orthogonal
    assert (conv.bias == -1.0).all()
    wide = layer_init(nn.Conv2d(2, 40, kernel_size=2))  # [40, 8]: columns orthogonal
    assert_orthogonal(wide.weight, HIDDEN_GAIN)


def test_layer_without_bias() -> None:
    layer = layer_init(nn.Linear(5, 5, bias=False), std=VALUE_GAIN)
    assert_orthogonal(layer.weight, 1.0)


def test_policy_gain_gives_near_uniform_policy() -> None:
    torch.manual_seed(3)
    head = layer_init(nn.Linear(64, 6), std=POLICY_GAIN)
    probs = torch.softmax(head(torch.randn(128, 64)), dim=-1)
    assert (probs - 1 / 6).abs().max() < 0.01


def test_rejects_layer_without_weight() -> None:
    with pytest.raises(ValueError, match="ReLU"):
        layer_init(nn.ReLU())
    with pytest.raises(ValueError, match="LayerNorm"):
        layer_init(nn.LayerNorm(4))


def test_docstring_examples() -> None:
    result = doctest.testmod(maskrl.init, extraglobs={"torch": torch, "nn": nn})
    assert result.attempted > 0 and result.failed == 0
