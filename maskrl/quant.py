"""Quantization-aware training (QAT) and int8 export.

The pieces, bottom up:

* :func:`fake_quantize` -- TensorFlow's ``fake_quant_with_min_max_vars``: the
  range ``[x_min, x_max]`` is *nudged* so that zero is exactly representable,
  the forward pass rounds onto the ``2**num_bits``-level grid and clamps, and
  the backward pass is the straight-through estimator (gradient 1 inside the
  nudged range, 0 outside), with the range ends receiving the summed gradients
  of the inputs clamped at them.
* :class:`FakeQuant` -- a module that fake-quantizes with a range that is
  either *observed* (moving-average min/max, as TF's QAT does for activations;
  the current min/max for weights) or *learned* (an LSQ step size, Esser et
  al. 2020), per tensor (activations) or per output channel (weights).
* :class:`QATLinear` / :class:`QATConv2d` -- ``nn.Linear`` / ``nn.Conv2d``
  that fake-quantize their input (per tensor, 8-bit unsigned with a zero point)
  and their weight (per output channel, symmetric, narrow range ``[-127, 127]``
  for 8 bits); their output stays float, so the logits of a policy head are
  never rounded (a rounded logit would turn near-ties into exact ties).
* :func:`prepare_qat` swaps every ``nn.Linear`` / ``nn.Conv2d`` of a network
  for those, in place; :func:`set_qat_step` turns fake quantization on after
  ``start_after`` steps (QuaRL, Krishnan et al. 2019/2022, train in float for a
  while, then quantize: the observers keep observing during the delay, so the
  ranges are already warm when quantization starts).
* :func:`convert_int8` turns a prepared network into a real integer one:
  int8 weights with per-channel scales, uint8 activations, int32 accumulation
  in FBGEMM's and oneDNN's quantized kernels, float output; layers under
  :data:`MIN_INT8_KERNEL_WEIGHTS` weights (policy and value heads, MinAtar's
  3x3 convolution) multiply the same integers in float, which is cheaper
  there, and so do all layers on CPUs whose kernels are not exact (8 bits on
  AVX2-only x86: :func:`int8_kernels`). It computes the same numbers as the fake-quantized network (the
  integer products are exact; only the float rescaling may differ in the last
  bit), so its greedy actions match.
* :func:`quant_spec` / :func:`apply_quant_spec` describe a prepared network as
  plain data, so that a checkpoint read with ``torch.load(weights_only=True)``
  can rebuild it from a fresh float network.

What stays float: ``nn.Embedding`` tables (a lookup, no arithmetic; the
multi-game embedding is ``num_games x features`` floats, small against the
layers), activation-by-activation products (attention weights times values),
and activation-by-parameter products that are not a layer (the additive
attention pool's context vector ``u @ c`` and the multi-head pool's queries
``k @ q``: vectors of ``dim`` floats). Softmax, masking, ReLU and tanh run in
float on dequantized values.

In a trainer:

1. ``prepare_qat(net, num_bits=8, start_after=delay)`` right after building
   the network and *before* building the optimizer (learned mode adds
   step-size parameters; the weights are the same ``Parameter`` objects);
2. ``set_qat_step(net, global_step)`` once per update;
3. checkpoints store ``quant_spec(net)`` (plain data) next to
   ``net.state_dict()``; loading builds the float network,
   ``apply_quant_spec(net, spec)``, then ``net.load_state_dict(state)``;
4. for deployment, ``convert_int8(net)`` (after the delay, so that the
   fake-quantized network it must match is actually quantized;
   :func:`check_convertible` says why not otherwise).

Example:
    >>> from maskrl.networks import ActorCritic, MinAtarCNN
    >>> net = prepare_qat(ActorCritic(MinAtarCNN(4), 6), start_after=0)
    >>> _ = net(torch.rand(8, 4, 10, 10))  # observes ranges, then fake-quantizes
    >>> int8 = convert_int8(net.eval())
    >>> bool((int8(torch.rand(2, 4, 10, 10))[0].argmax(-1) >= 0).all())
    True
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FakeQuant",
    "Int8Conv2d",
    "Int8Linear",
    "QATConv2d",
    "QATLinear",
    "apply_quant_spec",
    "check_convertible",
    "convert_int8",
    "fake_quantize",
    "int8_kernels",
    "is_convertible",
    "prepare_qat",
    "quant_spec",
    "set_qat_step",
]

Mode = Literal["observed", "learned"]
MODES = ("observed", "learned")
SPEC_VERSION = 1

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


# ---------------------------------------------------------------------------
# FakeQuant module: observed or learned range
# ---------------------------------------------------------------------------


def _round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: Tensor, factor: float) -> Tensor:
    """``x`` forward, gradient times ``factor`` backward (LSQ's step-size gradient scaling).

    Written as ``x + (y - y.detach())`` with ``y = x * factor``, whose forward
    value is ``x`` exactly (``y - y`` is 0); ``(x - y).detach() + y`` could be
    off by one unit in the last place, and the int8 model must see the same scale.
    """
    y = x * factor
    return x.detach() + (y - y.detach())


class FakeQuant(nn.Module):
    """Fake-quantize a tensor with an observed or a learned range.

    Args:
        num_bits: Bits per value (2 to 16; :func:`convert_int8` needs <= 8).
        mode: ``"observed"``: the range is the moving average of each batch's
            min and max (TF's ``MovingAvgQuantize``), used through
            :func:`fake_quantize` with its nudging. ``"learned"``: LSQ (Esser
            et al. 2020, "Learned Step Size Quantization"): the step size is a
            parameter trained through the straight-through estimator, its
            gradient scaled by ``1 / sqrt(N * qmax)`` (``N`` the elements per
            step) so it learns at the pace of the weights. The step and the
            zero point start from the observed range when quantization is
            switched on; the zero point then stays fixed (LSQ has none for
            unsigned data; here it also covers signed activations such as
            tanh outputs or raw observations).
        per_channel: ``None`` for one range over the tensor (activations), or
            the number of channels along dim 0 (weights: one range per output
            channel of a Linear or Conv2d).
        symmetric: Symmetric range ``[-a, a]`` on the narrow grid (zero point
            exactly in the middle, the integer values ``[-127, 127]`` for 8
            bits): what int8 weight kernels expect. Weights use it.
        averaging_constant: Weight of a new batch in the moving average of
            the observed min/max (``0.01``, as torch's moving-average
            observer; TF's ``MovingAvgQuantize`` decays by 0.999, i.e.
            0.001); ``1.0`` keeps the latest batch's range (what weights use:
            they are known exactly).

    State (all tensors, in ``state_dict``): ``min_val`` and ``max_val`` (``[]``
    or ``[C]``), ``zero_point`` and, in learned mode, the parameter ``step``,
    plus the flags ``observed`` (a range has been seen), ``enabled`` (fake
    quantization is on) and ``step_ready`` (learned step initialised).

    Behaviour:
        * While ``training`` (and always before the first batch has been
          seen) the module observes its input's range -- also while
          fake quantization is still off, so the range is warm when it starts.
          In learned mode observation stops once the step is initialised.
        * Fake quantization is applied only when :attr:`enabled`; otherwise the
          input passes through unchanged. :func:`set_qat_step` switches it.

    Shapes: any ``[C, ...]`` (per channel) or any shape (per tensor) -> same.
    """

    min_val: Tensor
    max_val: Tensor
    zero_point: Tensor
    observed: Tensor
    enabled_flag: Tensor
    step_ready: Tensor

    def __init__(
        self,
        num_bits: int = 8,
        mode: Mode = "observed",
        per_channel: int | None = None,
        symmetric: bool = False,
        averaging_constant: float = 0.01,
    ) -> None:
        super().__init__()
        _check_bits(num_bits)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if per_channel is not None and per_channel < 1:
            raise ValueError(
                f"per_channel must be None or a positive channel count, got {per_channel}"
            )
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.num_bits = num_bits
        self.mode: Mode = mode
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.averaging_constant = averaging_constant
        self.qmin, self.qmax = _quant_bounds(num_bits, narrow_range=symmetric)
        shape = () if per_channel is None else (per_channel,)
        self.register_buffer("min_val", torch.zeros(shape))
        self.register_buffer("max_val", torch.zeros(shape))
        self.register_buffer("zero_point", torch.zeros(shape))
        self.step: nn.Parameter | None = (
            nn.Parameter(torch.ones(shape)) if mode == "learned" else None
        )
        self.register_buffer("observed", torch.tensor(False))
        self.register_buffer("enabled_flag", torch.tensor(False))
        self.register_buffer("step_ready", torch.tensor(False))
        # Python mirrors of the flags, so forward never reads a tensor back
        # from the device; refreshed after load_state_dict.
        self._observed = False
        self._enabled = False
        self._step_ready = False
        self.register_load_state_dict_post_hook(_refresh_flags)

    # -- flags ---------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether fake quantization is applied (see :func:`set_qat_step`)."""
        return self._enabled

    def set_enabled(self, flag: bool) -> None:
        """Switch fake quantization on or off (observation goes on either way)."""
        self._enabled = bool(flag)
        self.enabled_flag.fill_(self._enabled)

    # -- range ---------------------------------------------------------------
    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        """Reshape a per-channel ``[C]`` tensor to broadcast along dim 0 of ``x``."""
        if self.per_channel is None:
            return t
        return t.view(-1, *([1] * (x.dim() - 1)))

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        """Fold a batch's min/max into the range; a non-finite batch (channel) is skipped.

        One NaN or infinite value would otherwise poison the moving average
        for good. Skipping is done on the device (no read-back), except until
        the first finite batch has been seen.
        """
        x = x.detach().float()
        if self.per_channel is None:
            lo, hi = torch.aminmax(x)
        else:
            if x.shape[0] != self.per_channel:
                raise ValueError(
                    f"FakeQuant expects {self.per_channel} channels along dim 0, got {x.shape[0]}"
                )
            lo, hi = torch.aminmax(x.reshape(x.shape[0], -1), dim=1)
        finite = torch.isfinite(lo) & torch.isfinite(hi)
        if not self._observed:
            if not bool(finite.all()):
                return  # nothing usable yet: wait for a finite batch
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self._observed = True
            self.observed.fill_(True)
        else:
            c = self.averaging_constant
            self.min_val.copy_(
                torch.where(finite, self.min_val + c * (lo - self.min_val), self.min_val)
            )
            self.max_val.copy_(
                torch.where(finite, self.max_val + c * (hi - self.max_val), self.max_val)
            )

    def _range(self) -> tuple[Tensor, Tensor]:
        """The range handed to :func:`fake_quantize` (symmetric ranges: ``[-a, a]``)."""
        if self.symmetric:
            a = torch.maximum(self.min_val.abs(), self.max_val.abs())
            return -a, a
        return self.min_val, self.max_val

    def qparams(self) -> tuple[Tensor, Tensor]:
        """Current ``(scale, zero_point)`` (float32, ``[]`` or ``[C]``), as the forward uses them."""
        if self.mode == "learned" and self._step_ready:
            assert self.step is not None
            return self.step.detach().abs().clamp_min(_MIN_STEP), self.zero_point.clone()
        lo, hi = self._range()
        scale, zero_point, _, _ = _nudge(lo, hi, self.qmin, self.qmax)
        return scale, zero_point

    @torch.no_grad()
    def _init_step(self) -> None:
        assert self.step is not None
        scale, zero_point = self.qparams()
        self.step.copy_(scale)
        self.zero_point.copy_(zero_point)
        self._step_ready = True
        self.step_ready.fill_(True)

    # -- forward -------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` (or return it unchanged while disabled)."""
        learned_ready = self.mode == "learned" and self._step_ready
        if (self.training and not learned_ready) or not self._observed:
            self._observe(x)
        if not self._enabled:
            return x
        if self.mode == "observed":
            lo, hi = self._range()
            return _FakeQuantMinMax.apply(
                x, self._view(lo, x), self._view(hi, x), self.qmin, self.qmax
            )
        if not self._step_ready:
            self._init_step()
        return self._lsq(x)

    def _lsq(self, x: Tensor) -> Tensor:
        """LSQ fake quantization: ``round(clamp(x / s, qmin - z, qmax - z)) * s``, ``s`` trained."""
        assert self.step is not None
        n = x.numel() if self.per_channel is None else x[0].numel()
        if self.per_channel is None and x.dim() > 1:
            n //= x.shape[0]  # per-tensor activations: features per sample (LSQ's N_F)
        g = 1.0 / math.sqrt(max(n, 1) * self.qmax)
        s = self._view(_grad_scale(self.step.abs().clamp_min(_MIN_STEP), g), x)
        z = self._view(self.zero_point, x)
        xf = x.float()
        # Same arithmetic as the observed path (x * (1 / s), then clamped to
        # the integer levels around the zero point), so that the int8 model's
        # input quantization reproduces it exactly; clamping before rounding
        # gives the same integers (the bounds are integers) and LSQ's
        # gradients: d/dx = 1 inside and 0 outside, d/ds = round(x/s) - x/s
        # inside and qmin - z or qmax - z at the clamped ends.
        q = _round_ste(torch.clamp(xf * (1.0 / s), self.qmin - z, self.qmax - z))
        return (q * s).to(x.dtype)

    def extra_repr(self) -> str:
        chan = "per_tensor" if self.per_channel is None else f"per_channel={self.per_channel}"
        return (
            f"num_bits={self.num_bits}, mode={self.mode}, {chan}, symmetric={self.symmetric}, "
            f"enabled={self._enabled}"
        )


_MIN_STEP = 1e-8


def _refresh_flags(module: nn.Module, incompatible_keys: Any) -> None:
    """Re-read the Python mirrors of a :class:`FakeQuant`'s flags after ``load_state_dict``."""
    assert isinstance(module, FakeQuant)
    module._observed = bool(module.observed)
    module._enabled = bool(module.enabled_flag)
    module._step_ready = bool(module.step_ready)


# ---------------------------------------------------------------------------
# QAT layers
# ---------------------------------------------------------------------------


class _QATMixin:
    """Fake quantization of a layer's input (per tensor) and weight (per output channel)."""

    input_quant: FakeQuant
    weight_quant: FakeQuant
    start_after: int

    def _init_quant(
        self,
        out_channels: int,
        num_bits: int,
        mode: Mode,
        start_after: int,
        averaging_constant: float,
        device: torch.device,
    ) -> None:
        self.input_quant = FakeQuant(num_bits, mode, None, False, averaging_constant).to(device)
        # Weights: symmetric per-channel on the narrow grid ([-127, 127] for
        # 8 bits), the layout int8 kernels take; their range is the current
        # one (averaging constant 1), since the weight is known exactly.
        self.weight_quant = FakeQuant(num_bits, mode, out_channels, True, 1.0).to(device)
        self.start_after = int(start_after)


class QATLinear(nn.Linear, _QATMixin):
    """``nn.Linear`` with fake-quantized input and weight (output float).

    Shapes: ``[*, in_features]`` -> ``[*, out_features]``, like ``nn.Linear``.
    ``state_dict`` keeps ``weight`` and ``bias`` under their usual names and
    adds ``input_quant.*`` and ``weight_quant.*``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        num_bits: int = 8,
        mode: Mode = "observed",
        start_after: int = 0,
        averaging_constant: float = 0.01,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        quant_device = torch.device("cpu") if self.weight.is_meta else self.weight.device
        self._init_quant(
            out_features, num_bits, mode, start_after, averaging_constant, quant_device
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class QATConv2d(nn.Conv2d, _QATMixin):
    """``nn.Conv2d`` with fake-quantized input and weight (output float).

    Shapes: as ``nn.Conv2d``. ``state_dict`` as :class:`QATLinear`.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        num_bits: int = 8,
        mode: Mode = "observed",
        start_after: int = 0,
        averaging_constant: float = 0.01,
    ) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self._init_quant(
            conv.out_channels, num_bits, mode, start_after, averaging_constant, conv.weight.device
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


def _qat_linear_from(linear: nn.Linear, **cfg: Any) -> QATLinear:
    """A :class:`QATLinear` sharing ``linear``'s parameters (an optimizer built before keeps them)."""
    q = QATLinear(
        linear.in_features, linear.out_features, linear.bias is not None, device="meta", **cfg
    )
    q.weight = linear.weight
    q.bias = linear.bias
    q.input_quant.to(linear.weight.device)  # built on the CPU next to the meta weight
    q.weight_quant.to(linear.weight.device)
    return q


QAT_LAYERS = (QATLinear, QATConv2d)


# ---------------------------------------------------------------------------
# prepare_qat / set_qat_step / spec
# ---------------------------------------------------------------------------


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _float_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every float ``nn.Linear`` / ``nn.Conv2d`` (not yet prepared)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, QAT_LAYERS) and name
    ]


def prepare_qat(
    model: nn.Module,
    num_bits: int = 8,
    start_after: int = 0,
    mode: Mode = "observed",
    averaging_constant: float = 0.01,
    layers: list[str] | None = None,
) -> nn.Module:
    """Put fake quantization on every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, in place.

    Each layer is replaced by a :class:`QATLinear` / :class:`QATConv2d` that
    shares its weight and bias (the same ``Parameter`` objects) and
    fake-quantizes its input (per tensor) and weight (per output channel).
    Nothing else changes: the forward signature, the other modules, the
    ``weight``/``bias`` keys of ``state_dict``. ``nn.Embedding`` stays float
    (see the module docstring).

    Fake quantization starts switched off unless ``start_after <= 0``: the
    trainer calls :func:`set_qat_step` once per update with its global step,
    and quantization turns on once ``step >= start_after`` (QuaRL's delay).
    The observers watch the ranges from the first forward pass on.

    Args:
        model: A network whose layers are called as modules (all of maskrl's
            are). The root module itself is not replaced, so pass a container.
        num_bits: Bits for weights and activations (<= 8 to convert to int8).
        start_after: Step at which fake quantization starts.
        mode: ``"observed"`` or ``"learned"`` ranges (see :class:`FakeQuant`).
            In learned mode, build the optimizer after this call so that it
            sees the new step-size parameters.
        averaging_constant: Moving-average weight of each batch's activation range.
        layers: Only these qualified names (default: every Linear/Conv2d).

    Returns:
        ``model`` itself, prepared.

    Raises:
        ValueError: for bad arguments, a model already prepared, a name in
            ``layers`` that is not a float Linear/Conv2d, a model with none,
            or one holding an ``nn.MultiheadAttention`` (it does not call its
            projections as modules).
    """
    _check_bits(num_bits)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if any(isinstance(m, (*QAT_LAYERS, *INT8_LAYERS)) for m in model.modules()):
        raise ValueError("model is already prepared for QAT (or converted); prepare a float model")
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise ValueError(
            "prepare_qat replaces layers inside a model: wrap a bare layer in a module"
        )
    # nn.MultiheadAttention hands its projection weights to a functional
    # kernel instead of calling them as modules: a swapped layer would never run.
    mha = [n or "<root>" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if mha:
        raise ValueError(
            f"nn.MultiheadAttention at {mha} reads its projection weights directly, so "
            "fake quantization cannot see them; use maskrl.AttentionPool or nn.Linear layers"
        )
    found = dict(_float_layers(model))
    if layers is None:
        names = list(found)
    else:
        missing = [n for n in layers if n not in found]
        if missing:
            raise ValueError(f"no float nn.Linear / nn.Conv2d named {missing} in the model")
        names = list(layers)
    if not names:
        raise ValueError("model has no nn.Linear or nn.Conv2d layer to quantize")
    cfg: dict[str, Any] = dict(
        num_bits=num_bits,
        mode=mode,
        start_after=start_after,
        averaging_constant=averaging_constant,
    )
    for name in names:
        m = found[name]
        new: nn.Module
        if isinstance(m, nn.Conv2d):
            new = QATConv2d(m, **cfg)
        else:
            assert isinstance(m, nn.Linear)
            new = _qat_linear_from(m, **cfg)
        new.train(m.training)
        _swap(model, name, new)
    set_qat_step(model, 0)
    return model


def _qat_layers(model: nn.Module) -> list[tuple[str, QATLinear | QATConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QAT_LAYERS)]


def set_qat_step(model: nn.Module, step: int) -> bool:
    """Switch fake quantization on where ``step >= start_after`` (off before).

    Call once per update with the trainer's global step (in whatever unit
    ``start_after`` was given). Cheap: no tensor is read back from the device.

    Returns:
        Whether fake quantization is on (in any layer) after the call.
    """
    on = False
    for _, layer in _qat_layers(model):
        flag = step >= layer.start_after
        layer.input_quant.set_enabled(flag)
        layer.weight_quant.set_enabled(flag)
        on = on or flag
    return on


def quant_spec(model: nn.Module) -> dict[str, Any] | None:
    """Plain data describing how ``model`` is quantized, or None for a float model.

    The dict holds only strings, numbers, booleans and lists, so it can sit in
    a checkpoint read with ``torch.load(weights_only=True)``; pass it to
    :func:`apply_quant_spec` on a freshly built float network of the same
    architecture to make it accept the saved ``state_dict``. Keys:
    ``version``, ``num_bits``, ``mode``, ``start_after``,
    ``averaging_constant``, ``layers`` (qualified names of the quantized
    layers) and ``converted`` (True for a :func:`convert_int8` model).
    """
    qat = _qat_layers(model)
    int8 = [(n, m) for n, m in model.named_modules() if isinstance(m, INT8_LAYERS)]
    if not qat and not int8:
        return None
    if qat and int8:
        raise ValueError("model mixes QAT and int8 layers; quant_spec cannot describe it")
    if qat:
        first = qat[0][1]
        cfg = {
            "num_bits": first.input_quant.num_bits,
            "mode": first.input_quant.mode,
            "start_after": first.start_after,
            "averaging_constant": first.input_quant.averaging_constant,
        }
        for name, m in qat:
            other = {
                "num_bits": m.input_quant.num_bits,
                "mode": m.input_quant.mode,
                "start_after": m.start_after,
                "averaging_constant": m.input_quant.averaging_constant,
            }
            if other != cfg:
                raise ValueError(f"layer {name!r} is quantized differently ({other} vs {cfg})")
        names = [n for n, _ in qat]
        converted = False
    else:
        i8: Int8Linear | Int8Conv2d = int8[0][1]
        cfg = {
            "num_bits": i8.num_bits,
            "mode": "observed",
            "start_after": 0,
            "averaging_constant": 0.01,
        }
        names = [n for n, _ in int8]
        converted = True
    return {"version": SPEC_VERSION, **cfg, "layers": names, "converted": converted}


def apply_quant_spec(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    """Re-prepare a freshly built float ``model`` as :func:`quant_spec` described it.

    After this, ``model.load_state_dict(saved_state)`` loads the saved QAT (or
    int8) weights, ranges and flags. ``spec=None`` leaves the model float.

    Raises:
        ValueError: for a spec of another version or with missing keys, or a
            model whose float layers do not match the spec's layer names.
    """
    if spec is None:
        return model
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise ValueError(f"not a quant spec of version {SPEC_VERSION}: {spec!r}")
    keys = ("num_bits", "mode", "start_after", "averaging_constant", "layers", "converted")
    missing = [k for k in keys if k not in spec]
    if missing:
        raise ValueError(f"quant spec lacks {missing}")
    prepare_qat(
        model,
        num_bits=int(spec["num_bits"]),
        start_after=int(spec["start_after"]),
        mode=spec["mode"],
        averaging_constant=float(spec["averaging_constant"]),
        layers=list(spec["layers"]),
    )
    if spec["converted"]:
        return _convert(model, copy_model=False, check=False)
    return model


# ---------------------------------------------------------------------------
# int8 layers and conversion
# ---------------------------------------------------------------------------


def _onednn_available() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.onednn, "qlinear_pointwise")
        and hasattr(torch.ops.onednn, "qconv2d_pointwise")
    )


_ONEDNN = _onednn_available()

# ---------------------------------------------------------------------------
# Which integer kernels are exact on this CPU
# ---------------------------------------------------------------------------
#
# Integer kernels on x86 multiply uint8 activations by int8 weights. With
# AVX-512 VNNI (or AVX-VNNI, AMX) each product is accumulated in 32 bits:
# exact. Without VNNI (AVX2-only x86, AVX-512 without VNNI) the kernels use
# ``vpmaddubsw``, which adds *pairs* of products in 16 bits with saturation:
# ``255 * 127 * 2 = 64770`` does not fit ``int16``, so large activations times
# large weights come out wrong (oneDNN may instead halve the weights, which is
# also inexact for odd weights). Other CPUs (ARM) have other kernels again.
#
# Rather than trusting a CPU-feature name, each kernel is *probed* once per
# process with the worst case (every input level at its maximum times every
# weight at +-127: the largest pair sums any layer can produce, so if they are
# exact every input is) and with random levels, weights and zero points,
# against exact integer arithmetic. A kernel that fails is never used: its
# layers take the exact float path (the same integers multiplied in float,
# bit for bit the fake-quantized layer). With activations of at most 7 bits,
# pair sums stay below ``127 * 127 * 2 = 32258 < 32767``, so on AVX2 the
# oneDNN kernels pass the probe and remain in use (``prepare_qat(num_bits=7)``,
# ``train.py --qat-bits 7``).

_KERNEL_OK: dict[tuple[str, int], bool] = {}

#: Kernels forced off (tests use it to check the float path as a CPU without
#: exact kernels runs it). Not part of the public API.
_DISABLED_KERNELS: set[str] = set()


def _probe_cases(num_bits: int, k: int, seed: int) -> list[tuple[Tensor, Tensor, int]]:
    """``(levels [n, k] uint8, weight [2, k] int8, zero_point)`` cases for a kernel probe."""
    qmax = 2**num_bits - 1
    g = torch.Generator().manual_seed(seed)
    w_worst = torch.full((2, k), 127, dtype=torch.int8)
    w_worst[1].fill_(-127)
    worst = torch.full((3, k), qmax, dtype=torch.uint8)
    levels = torch.randint(0, qmax + 1, (5, k), generator=g).to(torch.uint8)
    w_rand = torch.randint(-127, 128, (2, k), generator=g).to(torch.int8)
    zp = int(torch.randint(0, qmax + 1, (), generator=g))
    return [(worst, w_worst, 0), (levels, w_rand, zp), (levels, w_worst, zp)]


def _exact(levels: Tensor, weight: Tensor, zp: int) -> Tensor:
    """``(q - z) @ w.T`` in float64 (exact for probe sizes), as float32."""
    return ((levels.double() - zp) @ weight.double().t()).float()


def _probe_fbgemm_linear() -> bool:
    k = 64
    for levels, weight, zp in _probe_cases(8, k, seed=1):
        packed = _fbgemm_pack(weight, torch.ones(2), None)
        if packed is None:
            return False
        # Input levels given as floats with scale 1: FBGEMM quantizes them back
        # to the same integers.
        x = levels.float() - zp
        y = getattr(torch.ops.quantized, _FBGEMM_OP)(x.contiguous(), 1.0, zp, packed)
        if not torch.equal(y, _exact(levels, weight, zp)):
            return False
    return True


def _probe_onednn_linear(num_bits: int) -> bool:
    k = 64
    for levels, weight, zp in _probe_cases(num_bits, k, seed=2):
        packed = torch.ops.onednn.qlinear_prepack(weight, None)
        y = torch.ops.onednn.qlinear_pointwise(
            levels, 1.0, zp, packed, torch.ones(2), torch.zeros(2, dtype=torch.int64),
            None, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        if not torch.equal(y, _exact(levels, weight, zp)):
            return False
    return True


def _probe_onednn_conv(num_bits: int) -> bool:
    c = 16  # 3x3 over 16 channels: 144 products per output
    for levels, weight, zp in _probe_cases(num_bits, c * 9, seed=3):
        n = levels.shape[0]
        x = levels.view(n, c, 3, 3)
        w = weight.view(2, c, 3, 3)
        packed = torch.ops.onednn.qconv_prepack(
            w, torch.ones(2), 1.0, zp, [1, 1], [0, 0], [1, 1], 1, None
        )
        y = torch.ops.onednn.qconv2d_pointwise(
            x, 1.0, zp, packed, torch.ones(2), torch.zeros(2, dtype=torch.int64), None,
            [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], None,
        )  # fmt: skip
        if not torch.equal(y.reshape(n, 2), _exact(levels, weight, zp)):
            return False
    return True


def _kernel_exact(kind: str, num_bits: int) -> bool:
    """Whether integer kernel ``kind`` computes exact products here (probed once, cached).

    ``kind``: ``"fbgemm_linear"`` (8 bits only), ``"onednn_linear"`` or
    ``"onednn_conv"``. Any error in a probe counts as "not exact".
    """
    if kind in _DISABLED_KERNELS:
        return False
    key = (kind, num_bits)
    if key not in _KERNEL_OK:
        ok = False
        if _ONEDNN or kind == "fbgemm_linear":
            try:
                with torch.no_grad():
                    if kind == "fbgemm_linear":
                        ok = num_bits == 8 and _probe_fbgemm_linear()
                    elif kind == "onednn_linear":
                        ok = _probe_onednn_linear(num_bits)
                    else:
                        ok = _probe_onednn_conv(num_bits)
            except (RuntimeError, AttributeError, NotImplementedError, TypeError):
                ok = False
        _KERNEL_OK[key] = ok
    return _KERNEL_OK[key]


def int8_kernels(num_bits: int = 8) -> dict[str, str]:
    """Which kernel the int8 layers of ``num_bits``-bit activations use on this CPU.

    Returns ``{"linear": ..., "conv": ...}``, each ``"fbgemm"``, ``"onednn"``
    or ``"float"`` (the exact float path: the same integers multiplied in
    float). A kernel is used only if a probe found its products exact here
    (see the comment above :func:`_kernel_exact`): on CPUs with VNNI, every
    kernel; on AVX2-only x86, 8-bit layers run the float path and 7-bit
    layers oneDNN. Layers under :data:`MIN_INT8_KERNEL_WEIGHTS` weights always
    take the float path. The first call probes the kernels (milliseconds).

    Example:
        >>> sorted(int8_kernels(8))
        ['conv', 'linear']
    """
    if not 2 <= num_bits <= 8:
        raise ValueError(f"num_bits must be in [2, 8] for int8 kernels, got {num_bits!r}")
    if num_bits == 8 and _kernel_exact("fbgemm_linear", 8):
        linear = "fbgemm"
    elif _kernel_exact("onednn_linear", num_bits):
        linear = "onednn"
    else:
        linear = "float"
    conv = "onednn" if _kernel_exact("onednn_conv", num_bits) else "float"
    return {"linear": linear, "conv": conv}


#: Layers with fewer weights than this multiply their integers in float (the
#: dequantized int8 weight against the dequantized input levels: the same
#: numbers, bit for bit, as the fake-quantized layer). A oneDNN int8 call costs
#: about 15 us of fixed overhead on a small CPU, several times a float GEMM of
#: a 128 x 6 policy head; the integer kernel pays off only for larger layers.
MIN_INT8_KERNEL_WEIGHTS = 4096

# Below this many elements a single fused call beats three cheaper passes.
_SMALL_TENSOR = 2048


class _Int8Base(nn.Module):
    """Shared state of the int8 layers: integer weight, scales, input quantization.

    Buffers (all in ``state_dict``): ``weight`` (int8, the layer's weight
    shape, values in ``[-(2**(b-1) - 1), 2**(b-1) - 1]``), ``weight_scale``
    (float32 ``[out]``), ``bias`` (float32 ``[out]`` or absent),
    ``input_scale`` and ``input_zero_point`` (0-dim float32; the zero point
    holds an integer in ``[0, 2**num_bits - 1]``).

    Kernel: u8 x s8 -> s32 kernels with fp32 output on CPU (FBGEMM for 8-bit
    linear layers, oneDNN otherwise; see :func:`convert_int8`) for layers of
    at least :data:`MIN_INT8_KERNEL_WEIGHTS` weights, where this CPU computes
    them exactly (:func:`int8_kernels`); otherwise (small layers, other
    devices, builds without those kernels, kernels that saturate) the same
    integers multiplied in float. Whatever is derived for the kernel (packed weight, Python copies of
    the scales) is cached outside ``state_dict`` and dropped whenever buffers
    are loaded or moved.
    """

    weight: Tensor
    weight_scale: Tensor
    bias: Tensor | None
    input_scale: Tensor
    input_zero_point: Tensor

    def __init__(self, weight_shape: tuple[int, ...], has_bias: bool, num_bits: int) -> None:
        super().__init__()
        out = weight_shape[0]
        self.num_bits = num_bits
        self.qmin, self.qmax = _quant_bounds(num_bits, narrow_range=False)
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("bias", torch.zeros(out) if has_bias else None)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("input_zero_point", torch.tensor(0.0))
        self.int8_kernel = math.prod(weight_shape) >= MIN_INT8_KERNEL_WEIGHTS
        self._cache: dict[str, Any] | None = None
        self.register_load_state_dict_post_hook(_drop_cache)

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles carry the integers, not the kernel's packed copy
        # of them (rebuilt on first use, for the engine at hand).
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _set_from(self, layer: QATLinear | QATConv2d) -> None:
        """Take the integer weight and the scales from a prepared layer."""
        with torch.no_grad():
            w_scale, w_zp = layer.weight_quant.qparams()
            w = layer.weight.detach().float()
            view = (-1,) + (1,) * (w.dim() - 1)
            # Symmetric narrow grid: zero point 2**(b-1) on levels [1, 2**b - 1],
            # i.e. signed integers in [-(2**(b-1) - 1), 2**(b-1) - 1].
            q = _quantize_grid(
                w,
                (1.0 / w_scale).view(view),
                w_zp.view(view),
                layer.weight_quant.qmin,
                layer.weight_quant.qmax,
            )
            self.weight.copy_((q - w_zp.view(view)).to(torch.int8))
            self.weight_scale.copy_(w_scale)
            if self.bias is not None:
                assert layer.bias is not None
                self.bias.copy_(layer.bias.detach().float())
            x_scale, x_zp = layer.input_quant.qparams()
            self.input_scale.copy_(x_scale)
            self.input_zero_point.copy_(x_zp)
        self._cache = None

    def _kernel(self, x: Tensor, c: dict[str, Any], kind: str) -> str:
        """The kernel for this call: ``"fbgemm"``, ``"onednn"`` or ``"float"`` (see :func:`int8_kernels`)."""
        if not (self.int8_kernel and x.device.type == "cpu" and self.weight.device.type == "cpu"):
            return "float"
        if "kernel" not in c:
            c["kernel"] = int8_kernels(self.num_bits)[kind]
        return str(c["kernel"])

    def _base_cache(self) -> dict[str, Any]:
        """Python copies of the input's quantization, read once, not on every call."""
        # 1 / scale as a float32 tensor op, then kept as a Python float: the
        # very value the fake-quantized layer multiplies by.
        inv = float(1.0 / self.input_scale)
        return {
            "x_scale": float(self.input_scale),
            "x_inv": inv,
            "x_zp": int(self.input_zero_point),
        }

    def _levels_u8(self, x: Tensor, c: dict[str, Any]) -> Tensor:
        """``uint8`` input levels ``clamp(round(x / s) + z)``, as the fake-quantized layer rounds."""
        q = torch.round(x.float() * c["x_inv"])
        if c["x_zp"]:  # after a ReLU the zero point is 0: one pass fewer
            q.add_(c["x_zp"])
        return q.clamp_(self.qmin, self.qmax).to(torch.uint8)

    def _float_inputs(self, x: Tensor, c: dict[str, Any]) -> Tensor:
        """Dequantized input levels ``(q - z) * s``, as the fake-quantized layer computes them."""
        x = x.float()
        if x.numel() < _SMALL_TENSOR:
            # One call: torch's fused kernel has the least fixed cost; it does
            # the same arithmetic bit for bit (tests/test_quant.py).
            return torch.fake_quantize_per_tensor_affine(
                x, c["x_scale"], c["x_zp"], self.qmin, self.qmax
            )
        return _fake_quantize_grid(x, c["x_inv"], c["x_scale"], c["x_zp"], self.qmin, self.qmax)

    def _float_weight(self) -> Tensor:
        view = (-1,) + (1,) * (self.weight.dim() - 1)
        return self.weight.float() * self.weight_scale.view(view)

    def extra_repr(self) -> str:
        kernel = "int8" if self.int8_kernel else "float-on-int8-values"
        return (
            f"weight={tuple(self.weight.shape)}, num_bits={self.num_bits}, "
            f"bias={self.bias is not None}, kernel={kernel}"
        )


def _drop_cache(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, _Int8Base)
    module._cache = None


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` (process-wide) for the block only."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


_FBGEMM_OP = "linear_with_input_q_dq_qweight_dq_output_fp32"


def _fbgemm_pack(weight: Tensor, scale: Tensor, bias: Tensor | None) -> Any | None:
    """FBGEMM's packed weight for its fused fp32-output linear, or None where it is missing.

    The packing step needs a ``qint8`` tensor, a dtype torch now deprecates:
    the tensor lives only here, its warning is silenced here, and if a later
    torch drops it, the layer falls back to oneDNN.
    """
    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "fbgemm" if "fbgemm" in engines else None
    if engine is None or not hasattr(torch.ops.quantized, _FBGEMM_OP):
        return None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qw = torch._make_per_channel_quantized_tensor(
                weight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
            )
            with _quantized_engine(engine):
                return torch.ops.quantized.linear_prepack(qw, bias)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


class Int8Linear(_Int8Base):
    """A linear layer on integers: uint8 input levels x int8 weights -> int32 -> float.

    ``y = (sum_k (q_x - z_x) q_w) * s_x * s_w + b`` with per-tensor ``s_x, z_x``
    and per-output-channel ``s_w``. On CPU, 8-bit layers use FBGEMM's
    ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``, which
    quantizes the float input with the given scale and zero point, multiplies
    u8 x s8 into int32 and rescales to fp32 in one call (the quantization
    fused into the kernel makes it 2-4x faster than quantizing first and
    calling oneDNN, ``benchmarks/quant_latency.py --kernels``); other bit
    widths, and builds without FBGEMM, use oneDNN's ``qlinear_pointwise`` on
    levels quantized here; small layers multiply the same integers in float
    (see :data:`MIN_INT8_KERNEL_WEIGHTS`).

    Shapes: ``[*, in_features]`` (float) -> ``[*, out_features]`` (float32).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, num_bits: int) -> None:
        super().__init__((out_features, in_features), bias, num_bits)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        if self._cache is None:
            self._cache = self._base_cache()
        c = self._cache
        kernel = self._kernel(x, c, "linear")
        if kernel == "fbgemm" and "fbgemm" not in c:
            # FBGEMM quantizes onto [0, 255]: only for 8-bit activations
            # (int8_kernels never picks it for fewer bits).
            c["fbgemm"] = _fbgemm_pack(self.weight, self.weight_scale, self.bias)
            if c["fbgemm"] is None:  # packing failed (e.g. a torch without qint8)
                exact = _kernel_exact("onednn_linear", self.num_bits)
                kernel = c["kernel"] = "onednn" if exact else "float"
        if kernel == "float":
            if "w" not in c:
                c["w"] = self._float_weight()
            return F.linear(self._float_inputs(x, c), c["w"], self.bias)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if kernel == "fbgemm":
            y = getattr(torch.ops.quantized, _FBGEMM_OP)(
                x2.float().contiguous(), c["x_scale"], c["x_zp"], c["fbgemm"]
            )
            return y.reshape(*lead, self.out_features)
        if "packed" not in c:
            c["packed"] = torch.ops.onednn.qlinear_prepack(self.weight, None)
            c["w_zp"] = torch.zeros(self.out_features, dtype=torch.int64)
        q = self._levels_u8(x2, c)
        y = torch.ops.onednn.qlinear_pointwise(
            q, c["x_scale"], c["x_zp"], c["packed"], self.weight_scale, c["w_zp"],
            self.bias, 1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip
        return y.reshape(*lead, self.out_features)


class Int8Conv2d(_Int8Base):
    """A 2-D convolution on integers (oneDNN ``qconv2d_pointwise``), float in and out.

    Zero padding pads with the input's zero point (the real value 0), as the
    fake-quantized convolution does. Shapes: as ``nn.Conv2d``; the output may
    be laid out channels-last (oneDNN's choice), which ``flatten``/``reshape``
    handle.
    """

    def __init__(self, conv: nn.Conv2d, num_bits: int) -> None:
        super().__init__(tuple(conv.weight.shape), conv.bias is not None, num_bits)
        if isinstance(conv.padding, str):
            raise ValueError(f"padding={conv.padding!r}: give the padding as numbers to convert")
        self.stride = [int(v) for v in conv.stride]
        self.padding = [int(v) for v in conv.padding]
        self.dilation = [int(v) for v in conv.dilation]
        self.groups = conv.groups

    def forward(self, x: Tensor) -> Tensor:
        if self._cache is None:
            self._cache = self._base_cache()
        c = self._cache
        if self._kernel(x, c, "conv") == "float":
            if "w" not in c:
                c["w"] = self._float_weight()
            xf = self._float_inputs(x, c)
            return F.conv2d(
                xf, c["w"], self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        if "packed" not in c:
            c["packed"] = torch.ops.onednn.qconv_prepack(
                self.weight, self.weight_scale, c["x_scale"], c["x_zp"],
                self.stride, self.padding, self.dilation, self.groups, None,
            )  # fmt: skip
            c["w_zp"] = torch.zeros(self.weight.shape[0], dtype=torch.int64)
        return torch.ops.onednn.qconv2d_pointwise(
            self._levels_u8(x, c), c["x_scale"], c["x_zp"], c["packed"], self.weight_scale,
            c["w_zp"], self.bias, self.stride, self.padding, self.dilation, self.groups,
            1.0, 0, torch.float32, "none", [], None,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, padding={self.padding}"


INT8_LAYERS = (Int8Linear, Int8Conv2d)


def check_convertible(model: nn.Module) -> list[str]:
    """Why :func:`convert_int8` would refuse ``model``: one line per problem, empty if none.

    A model converts when it has at least one prepared layer and every
    prepared layer uses at most 8 bits, has fake quantization switched on
    (otherwise the fake-quantized model is still the float one, and there is
    nothing for the integer model to match), has seen data (its input range is
    known), and, for convolutions, uses zero padding.
    """
    layers = _qat_layers(model)
    if not layers:
        return ["model has no QAT layer: call prepare_qat first"]
    problems = []
    for name, m in layers:
        why = []
        if m.input_quant.num_bits > 8:
            why.append(f"{m.input_quant.num_bits}-bit quantization does not fit int8")
        if not m.input_quant.enabled:
            why.append(
                f"fake quantization is not on yet (start_after={m.start_after}; "
                "call set_qat_step with a later step)"
            )
        if not m.input_quant._observed:
            why.append("its input range was never observed (run a forward pass first)")
        if isinstance(m, QATConv2d) and m.padding_mode != "zeros":
            why.append(f"padding_mode={m.padding_mode!r} (only 'zeros' converts)")
        if isinstance(m, QATConv2d) and isinstance(m.padding, str):
            why.append(f"padding={m.padding!r} (give the padding as numbers)")
        problems += [f"layer {name!r} ({type(m).__name__}): {w}" for w in why]
    return problems


def is_convertible(model: nn.Module) -> bool:
    """Whether :func:`convert_int8` accepts ``model`` (see :func:`check_convertible`)."""
    return not check_convertible(model)


def convert_int8(model: nn.Module) -> nn.Module:
    """A real int8 copy of a prepared model: same forward signature, integer layers.

    Every :class:`QATLinear` / :class:`QATConv2d` becomes an
    :class:`Int8Linear` / :class:`Int8Conv2d` holding its int8 weight, the
    per-channel weight scales, the float bias and the input's scale and zero
    point; everything else is copied as is. The copy is in eval mode and the
    original is left untouched.

    Numerics: each integer layer computes exactly what the fake-quantized layer
    computes (same input levels by the same arithmetic, exact integer dot
    products), up to float rounding in the final rescaling, so the greedy
    actions agree on real observations.

    Kernels (CPU; measured by ``benchmarks/quant_latency.py --kernels``):
    linear layers of 8 bits use FBGEMM's fused
    ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32`` (float input
    quantized with the layer's own scale and zero point inside the kernel,
    u8 x s8 -> s32, fp32 output); convolutions, and linear layers of fewer
    bits, use oneDNN's ``torch.ops.onednn.qlinear_pointwise`` /
    ``qconv2d_pointwise`` (plain ``uint8``/``int8`` tensors, fp32 output; the
    kernels behind PyTorch's x86 quantization). Both use VNNI where the CPU has
    it. The alternatives lose: dynamic quantization picks its own input scale
    per batch, so it does not reproduce the trained ranges; ``torch._int_mm``
    needs the zero-point correction and rescaling as extra passes (slower
    than FBGEMM at both batch sizes); ``torch._weight_int8pack_mm`` (int8
    weights, float activations) was about 30x slower than float at batch 64.
    Layers smaller than :data:`MIN_INT8_KERNEL_WEIGHTS` weights, other devices
    and builds without these kernels multiply the same integers in float: the
    same answer, bit for bit the fake-quantized one. No process-wide setting
    changes (FBGEMM's weight packing sets the quantized engine inside a block
    that restores it).

    Every CPU: a kernel is used only where a probe (once per process, see
    :func:`int8_kernels`) found its products exact. On CPUs without VNNI
    (AVX2-only x86), u8 x s8 kernels add pairs of products in saturating 16
    bits (``255 * 127 * 2`` does not fit), so there 8-bit layers take the exact
    float path instead (no int8 speed-up, but the same answer); layers of at
    most 7 bits (``prepare_qat(num_bits=7)``) cannot saturate and keep the
    oneDNN kernels. ``benchmarks/quant_latency.py`` prints which kernels ran.

    Raises:
        ValueError: naming each layer that cannot be converted and why
            (see :func:`check_convertible`).
    """
    return _convert(model, copy_model=True, check=True)


def _convert(model: nn.Module, copy_model: bool, check: bool) -> nn.Module:
    if check:
        problems = check_convertible(model)
        if problems:
            raise ValueError("cannot convert to int8: " + "; ".join(problems))
    elif not _qat_layers(model):
        raise ValueError("model has no QAT layer: call prepare_qat first")
    out = copy.deepcopy(model) if copy_model else model
    for name, m in _qat_layers(out):
        if m.input_quant.num_bits > 8:
            raise ValueError(f"layer {name!r}: {m.input_quant.num_bits} bits do not fit int8")
        new: Int8Linear | Int8Conv2d
        if isinstance(m, QATConv2d):
            new = Int8Conv2d(m, m.input_quant.num_bits)
        else:
            new = Int8Linear(
                m.in_features, m.out_features, m.bias is not None, m.input_quant.num_bits
            )
        new.to(m.weight.device)
        if check:
            new._set_from(m)
        _swap(out, name, new)
    return out.eval() if copy_model else out
