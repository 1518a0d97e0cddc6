"""Integer layers (``Int8Linear``, ``Int8Conv2d``) and ``convert_int8``."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrl.quant.fake import _fake_quantize_grid, _quant_bounds, _quantize_grid
from maskrl.quant.kernels import _FBGEMM_OP, _fbgemm_pack, _kernel_exact, int8_kernels
from maskrl.quant.qat import QATConv2d, QATLinear, _qat_layers, _swap

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
    actions agree on real observations. The promise is for finite inputs: a
    NaN input is a grid point to some kernels and NaN to others (maskrl's
    trainers and wrappers refuse non-finite observations before they get
    here).

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
