"""``FakeQuant``: fake quantization with an observed (moving-average) or learned (LSQ) range."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from maskrl.quant.fake import _check_bits, _FakeQuantMinMax, _nudge, _quant_bounds

Mode = Literal["observed", "learned"]
MODES = ("observed", "learned")

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
