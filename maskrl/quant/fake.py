"""``fake_quantize``: TensorFlow's ``fake_quant_with_min_max_vars`` (nudged range, straight-through gradients)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from maskrl.masking import broadcasts_to

# ---------------------------------------------------------------------------
# fake_quantize: TF's fake_quant_with_min_max_vars
# ---------------------------------------------------------------------------


def _quant_bounds(num_bits: int, narrow_range: bool) -> tuple[int, int]:
    """The integer grid ``[qmin, qmax]``: ``[0, 2**b - 1]``, or ``[1, 2**b - 1]`` when narrow."""
    return (1 if narrow_range else 0), (1 << num_bits) - 1


def _nudge(
    x_min: Tensor, x_max: Tensor, qmin: int, qmax: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nudge ``[x_min, x_max]`` so that zero lies on the grid (TF's ``Nudge``).

    Returns ``(scale, zero_point, nudged_min, nudged_max)``, float32 tensors of
    the broadcast shape of ``x_min`` and ``x_max``; ``zero_point`` holds an
    integer in ``[qmin, qmax]``.

    TensorFlow (``tensorflow/core/kernels/fake_quant_ops_functor.h``) computes
    ``scale = (max - min) / (qmax - qmin)`` and the real-valued zero point
    ``qmin - min / scale``, rounds it half away from zero into ``[qmin, qmax]``,
    and moves both ends by the same amount, so the range keeps its width and
    ``0.0`` becomes the grid point ``zero_point``. A range that does not contain
    zero is thereby moved to start or end at zero (``[0.5, 2.5]`` becomes
    ``[0, 2]``). A zero-width range (``min == max``) would divide by zero in TF;
    here its scale is floored at the smallest normal float, which quantizes
    everything to zero's neighbourhood instead of to NaN.
    """
    x_min = x_min.float()
    x_max = x_max.float()
    scale = ((x_max - x_min) / float(qmax - qmin)).clamp_min(torch.finfo(torch.float32).tiny)
    zero_point_from_min = qmin - x_min / scale
    # Clamping to the integer ends first, then floor(z + 0.5), is TF's
    # round-half-away-from-zero of a value that is never negative here.
    zero_point = torch.floor(zero_point_from_min.clamp(qmin, qmax) + 0.5)
    nudged_min = (qmin - zero_point) * scale
    nudged_max = (qmax - zero_point) * scale
    return scale, zero_point, nudged_min, nudged_max


def _quantize_grid(
    x: Tensor, inv_scale: Tensor, zero_point: Tensor, qmin: int, qmax: int
) -> Tensor:
    """Integer levels ``clamp(round(x * inv_scale) + zero_point, qmin, qmax)`` as floats.

    This is exactly the arithmetic of ``torch.fake_quantize_per_tensor_affine``
    on CPU (``x * (1 / scale)`` in float32, round half to even, then clamp), so
    the two agree bit for bit; :class:`Int8Linear` quantizes its input with the
    same expression, so the integer model sees the same integers.
    """
    return torch.round(x * inv_scale).add_(zero_point).clamp_(qmin, qmax)


def _fake_quantize_grid(
    x: Tensor,
    inv_scale: Tensor | float,
    scale: Tensor | float,
    zero_point: Tensor | float,
    qmin: int,
    qmax: int,
) -> Tensor:
    """``(clamp(round(x * inv_scale) + z, qmin, qmax) - z) * scale`` in four passes.

    Clamping ``round(x / s)`` to ``[qmin - z, qmax - z]`` is the same, exactly,
    as adding the integer ``z``, clamping and subtracting it again; equal bit
    for bit to ``torch.fake_quantize_per_tensor_affine``, and several times
    faster than it on large CPU tensors (its kernel also writes a mask).
    """
    # "+ 0.0" turns the -0.0 that round() gives small negative inputs into
    # +0.0, as torch's kernel (integer arithmetic) has it.
    if isinstance(zero_point, Tensor):
        lo: Tensor | float = qmin - zero_point
        hi: Tensor | float = qmax - zero_point
        q = torch.round(x * inv_scale).clamp_(lo, hi).add_(0.0)  # type: ignore[arg-type]
    else:
        q = torch.round(x * inv_scale).clamp_(qmin - zero_point, qmax - zero_point).add_(0.0)
    return q.mul_(scale)


class _FakeQuantMinMax(torch.autograd.Function):
    """Forward: quantize-dequantize on the nudged grid. Backward: TF's straight-through rule."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, x_min: Tensor, x_max: Tensor, qmin: int, qmax: int
    ) -> Tensor:
        scale, zero_point, nudged_min, nudged_max = _nudge(x_min, x_max, qmin, qmax)
        xf = x.float()
        out = _fake_quantize_grid(xf, 1.0 / scale, scale, zero_point, qmin, qmax).to(x.dtype)
        ctx.save_for_backward(xf, nudged_min, nudged_max)
        ctx.min_shape, ctx.max_shape = x_min.shape, x_max.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xf, nudged_min, nudged_max = ctx.saved_tensors
        below = xf < nudged_min
        above = xf > nudged_max
        # Straight-through estimator (TF's FakeQuantWithMinMaxVarsGradient):
        # round() is treated as the identity inside the nudged range, and the
        # clamp cuts the gradient outside it.
        grad_x = grad.masked_fill(below | above, 0) if ctx.needs_input_grad[0] else None
        grad_min = grad_max = None
        g = grad.float()
        # A clamped input equals the range end, so its gradient goes to that
        # end: summed over the elements each end stands for (all of them per
        # tensor, one channel's per channel).
        if ctx.needs_input_grad[1]:
            grad_min = torch.where(below, g, 0.0).sum_to_size(ctx.min_shape)
        if ctx.needs_input_grad[2]:
            grad_max = torch.where(above, g, 0.0).sum_to_size(ctx.max_shape)
        return grad_x, grad_min, grad_max, None, None


def _as_range_tensor(v: Tensor | float, like: Tensor, name: str) -> Tensor:
    if isinstance(v, Tensor):
        if not v.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor or a float, got {v.dtype}")
        return v
    return torch.tensor(float(v), dtype=torch.float32, device=like.device)


def _short(t: Tensor) -> str:
    """A tensor in an error message: its value if small, else its shape and extremes."""
    if t.numel() <= 4:
        return str(t.detach().cpu().tolist())
    return f"tensor of shape {tuple(t.shape)} with values in [{t.min().item()}, {t.max().item()}]"


def _check_bits(num_bits: int) -> None:
    if not isinstance(num_bits, int) or not 2 <= num_bits <= 16:
        raise ValueError(f"num_bits must be an integer in [2, 16] (as in TF), got {num_bits!r}")


def fake_quantize(
    x: Tensor,
    x_min: Tensor | float,
    x_max: Tensor | float,
    num_bits: int = 8,
    narrow_range: bool = False,
) -> Tensor:
    """Fake-quantize ``x`` on ``[x_min, x_max]`` as TF's ``fake_quant_with_min_max_vars``.

    Args:
        x: Floating-point tensor of any shape.
        x_min, x_max: The range; floats, or tensors broadcastable to ``x``
            (0-dim for a per-tensor range, ``[C, 1, ..., 1]`` for a per-channel
            one) that may require grad. ``x_min <= x_max`` elementwise.
        num_bits: Bits of the grid, 2 to 16: levels ``0 .. 2**num_bits - 1``.
        narrow_range: Use levels ``1 .. 2**num_bits - 1`` (symmetric ranges
            then put zero on level ``2**(num_bits - 1)``, and the integer
            weights span ``[-127, 127]`` for 8 bits).

    Returns:
        A tensor of ``x``'s shape and dtype whose every entry is a grid point
        ``(q - zero_point) * scale``.

    Semantics:
        * **Nudging.** ``scale = (x_max - x_min) / (qmax - qmin)``; the range
          is shifted (keeping its width) so that ``0.0`` is a grid point:
          ``zero_point = round(qmin - x_min / scale)`` clamped to
          ``[qmin, qmax]``, ``nudged_min = (qmin - zero_point) * scale``,
          ``nudged_max = (qmax - zero_point) * scale``. A range above zero
          slides down to start at 0, one below zero slides up to end at 0.
        * **Forward.** ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``
          (``x * (1 / scale)`` in float32, round half to even), output
          ``(q - zero_point) * scale``: the same as
          ``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin,
          qmax)``, bit for bit, for every input but NaN (``+-inf`` clamp to
          the range ends in both). A NaN input stays NaN here, so that a
          broken activation is seen, where torch's kernel turns it into the
          lowest grid point. (TF rounds ties up; the two differ only for
          inputs exactly halfway between grid points.)
        * **Backward** (straight-through estimator, Bengio et al. 2013, as in
          TF): ``dx = dy`` where ``nudged_min <= x <= nudged_max``, else 0;
          ``d x_min = sum(dy where x < nudged_min)``, ``d x_max = sum(dy where
          x > nudged_max)`` (summed over the elements each end covers).

    Gradients of 2, 3 or 4 when the range is the input's own min and max:
        With ``y = fake_quantize(x, x.min(), x.max(), num_bits=3)`` and
        ``y.sum().backward()``, most entries of ``x.grad`` are 1, a few are 0
        and one may be 2, 3, 4, ... Nudging moves the range by up to half a
        step (``scale / 2``, about 0.36 for a normal 10x10 sample with 3 bits),
        so one end of the nudged range moves *inside* ``[x.min(), x.max()]``:
        when the zero point rounds down the range slides up and the ``k``
        smallest entries fall below ``nudged_min``; when it rounds up, the
        ``k`` largest rise above ``nudged_max``. Those ``k`` entries get 0
        through the straight-through path, and the range end collects their
        summed gradient, ``k``. That gradient then flows through ``x.min()``
        (or ``x.max()``) into the single argmin (argmax) element, which is one
        of the ``k``: it ends with ``0 + k``. So ``x.grad`` is 1 inside,
        0 at the other ``k - 1`` clamped entries, and ``k`` at the extreme one
        (1 when only the extreme itself is clamped). The other end lies
        outside the data and receives nothing. ``tests/test_quant.py`` checks
        the exact counts.

    Raises:
        ValueError: for a non-floating ``x``, ``num_bits`` outside ``[2, 16]``,
            a NaN or infinite ``x_min`` or ``x_max``, or ``x_min > x_max``
            anywhere (checking reads the range back from the device:
            :class:`FakeQuant` skips it, its ranges are finite and ordered by
            construction: it never observes a non-finite batch).

    Example:
        >>> x = torch.tensor([-1.0, -0.1, 0.0, 0.26, 2.0])
        >>> fake_quantize(x, 0.5, 2.5, num_bits=3)  # nudged to [0, 2]: step 2/7
        tensor([0.0000, 0.0000, 0.0000, 0.2857, 2.0000])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor, got {what}")
    _check_bits(num_bits)
    lo = _as_range_tensor(x_min, x, "x_min")
    hi = _as_range_tensor(x_max, x, "x_max")
    for name, t in (("x_min", lo), ("x_max", hi)):
        if not broadcasts_to(t.shape, x.shape):
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not broadcast to x's shape "
                f"{tuple(x.shape)} (0-dim per tensor, [C, 1, ..., 1] per channel)"
            )
    # One read-back for both checks.
    bad_range, non_finite = torch.stack(
        [(lo > hi).any(), ~(torch.isfinite(lo).all() & torch.isfinite(hi).all())]
    ).tolist()
    if non_finite:
        raise ValueError(
            f"x_min and x_max must be finite, got x_min={_short(lo)}, x_max={_short(hi)}"
        )
    if bad_range:
        raise ValueError("x_min must be <= x_max (elementwise)")
    qmin, qmax = _quant_bounds(num_bits, narrow_range)
    out: Tensor = _FakeQuantMinMax.apply(x, lo, hi, qmin, qmax)
    return out
