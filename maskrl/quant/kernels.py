"""The CPU integer kernels (FBGEMM, oneDNN) and which of them are exact on this CPU."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

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
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 2 <= num_bits <= 8:
        raise ValueError(f"num_bits must be in [2, 8] for int8 kernels, got {num_bits!r}")
    if num_bits == 8 and _kernel_exact("fbgemm_linear", 8):
        linear = "fbgemm"
    elif _kernel_exact("onednn_linear", num_bits):
        linear = "onednn"
    else:
        linear = "float"
    conv = "onednn" if _kernel_exact("onednn_conv", num_bits) else "float"
    return {"linear": linear, "conv": conv}


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
