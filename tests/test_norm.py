"""Tests for InstanceNorm."""

from __future__ import annotations

import doctest
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import maskrl.norm
from maskrl import InstanceNorm


def textbook_instance_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Instance norm with gradients flowing through the mean inside the variance."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


Fn = Callable[[Tensor, Tensor, Tensor], Tensor]


def grads(fn: Fn, x: Tensor, weight: Tensor, bias: Tensor, upstream: Tensor) -> list[Tensor]:
    """Gradients of sum(fn(x, weight, bias) * upstream) w.r.t. x, weight and bias."""
    x, weight, bias = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
    (fn(x, weight, bias) * upstream).sum().backward()
    out = [t.grad for t in (x, weight, bias)]
    assert all(g is not None for g in out)
    return out  # type: ignore[return-value]


@pytest.fixture
def case() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) * 3 + 1
    weight = torch.randn(3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    return x, weight, bias, upstream


def ours(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """InstanceNorm with its parameters replaced by ``weight`` and ``bias``."""
    norm = InstanceNorm(3, eps=1e-5).double()
    return torch.func.functional_call(norm, {"weight": weight, "bias": bias}, (x,))


def test_forward_matches_functional_instance_norm(case: tuple[Tensor, ...]) -> None:
    x, weight, bias, _ = case
    ref = F.instance_norm(x, weight=weight, bias=bias, eps=1e-5)
    assert torch.allclose(ours(x, weight, bias), ref, atol=1e-12)


def test_gradients_equal_functional_and_non_detached(case: tuple[Tensor, ...]) -> None:
    x, weight, bias, upstream = case
    got = grads(ours, x, weight, bias, upstream)
    functional = grads(
        lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-5), x, weight, bias, upstream
    )
    textbook = grads(
        lambda x, w, b: textbook_instance_norm(x, w, b, 1e-5), x, weight, bias, upstream
    )
    for a, b, c in zip(got, functional, textbook, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
        assert torch.allclose(a, c, atol=1e-10)
    # Not trivially equal: the input gradient is substantial.
    assert got[0].abs().max() > 0.1


def test_output_has_zero_mean_unit_variance() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 2, 6, 6) * 7 - 3
    y = InstanceNorm(2, affine=False)(x)
    assert torch.allclose(y.mean(dim=(2, 3)), torch.zeros(4, 2), atol=1e-5)
    assert torch.allclose(y.var(dim=(2, 3), unbiased=False), torch.ones(4, 2), atol=1e-3)
    assert list(InstanceNorm(2, affine=False).parameters()) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close_to_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    # Values near 300: their squares (9e4) overflow float16's 65504, so the
    # moments must not be computed in the input dtype.
    x32 = torch.randn(2, 3, 16, 16) * 5 + 300
    xh = x32.to(dtype)
    norm = InstanceNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        norm.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
    yh = norm(xh.requires_grad_(True))
    assert yh.dtype == dtype
    assert torch.isfinite(yh).all()
    y32 = norm(xh.float())  # the same (rounded) input, in float32
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    assert torch.allclose(yh.float(), y32, atol=tol * 2)
    yh.float().sum().backward()
    assert xh.grad is not None and torch.isfinite(xh.grad).all()


def test_half_precision_module_parameters() -> None:
    torch.manual_seed(3)
    x = torch.randn(1, 2, 4, 4)
    norm = InstanceNorm(2)
    ref = norm(x)
    out = norm.half()(x.half())
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), ref, atol=1e-2)


def test_other_spatial_ranks() -> None:
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    out = InstanceNorm(3).double()(x)
    assert torch.allclose(out, F.instance_norm(x, eps=1e-5), atol=1e-12)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(2, 4, 5, 5\)"):
        InstanceNorm(3)(torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        InstanceNorm(3)(torch.zeros(2, 3))


def test_docstring_examples() -> None:
    result = doctest.testmod(maskrl.norm, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0
