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

from maskrl.quant.fake import fake_quantize
from maskrl.quant.int8 import (
    INT8_LAYERS,
    MIN_INT8_KERNEL_WEIGHTS,
    Int8Conv2d,
    Int8Linear,
    check_convertible,
    convert_int8,
    is_convertible,
)
from maskrl.quant.kernels import int8_kernels
from maskrl.quant.observer import MODES, FakeQuant, Mode
from maskrl.quant.qat import (
    QAT_LAYERS,
    SPEC_VERSION,
    QATConv2d,
    QATLinear,
    apply_quant_spec,
    prepare_qat,
    quant_spec,
    set_qat_step,
)

__all__ = [
    "INT8_LAYERS",
    "MIN_INT8_KERNEL_WEIGHTS",
    "MODES",
    "QAT_LAYERS",
    "SPEC_VERSION",
    "FakeQuant",
    "Mode",
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
