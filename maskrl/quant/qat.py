"""QAT layers (``QATLinear``, ``QATConv2d``), ``prepare_qat``, ``set_qat_step`` and the plain-data spec of a prepared network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrl.quant.fake import _check_bits
from maskrl.quant.observer import MODES, FakeQuant, Mode

if TYPE_CHECKING:
    from maskrl.quant.int8 import Int8Conv2d, Int8Linear

#: Version of the plain-data description written by :func:`quant_spec`.
SPEC_VERSION = 1

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
    from maskrl.quant.int8 import INT8_LAYERS  # int8 builds on this module

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
    from maskrl.quant.int8 import INT8_LAYERS

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
        from maskrl.quant.int8 import _convert

        return _convert(model, copy_model=False, check=False)
    return model
