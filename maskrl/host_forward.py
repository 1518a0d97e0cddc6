"""Small-batch forward passes of maskrl's plain networks in NumPy, for acting on the CPU.

Acting in one env at a time (DQN's usual setting) runs the network on a batch of
one. There each torch operation's fixed cost (dispatch, autograd bookkeeping, the
module call) outweighs its arithmetic, and a forward pass of the MinAtar network
costs several times what the same products cost in NumPy. :class:`HostLogits`
computes ``net.policy_head(net.features(obs))`` in NumPy, reading the network's
own parameters through NumPy views (no copy: optimiser steps and
``load_state_dict`` are seen at once), for the networks it knows exactly:

* :class:`~maskrl.networks.ActorCritic` (no ``obs_key``) whose encoder is a
  :class:`~maskrl.networks.MinAtarCNN` or an :class:`~maskrl.networks.MLPEncoder`,
  made of plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.Tanh`` modules with float32
  parameters on the CPU.

Anything else -- another network, a quantization-aware (swapped) layer, a module
with a forward hook, a parameter that was replaced -- is not "usable", and the
caller runs the network in torch as usual. The values equal torch's up to float
rounding (the sums run in another order; differences are ~1e-7 relative): a
greedy action can differ from torch's only where two actions' values tie to
that precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from maskrl.networks import ActorCritic, MinAtarCNN, MLPEncoder

__all__ = ["HostLogits"]


def _global_hooks() -> bool:
    """Whether any process-wide module hook is registered (then every module call runs it)."""
    m = nn.modules.module
    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


class HostLogits:
    """``net.policy_head(net.features(obs))`` in NumPy, for a network this module knows.

    Build with :meth:`build` (None for a network it does not know); before each
    use, :meth:`usable` says whether the network is still as it was built (no
    hook since, no parameter replaced). Calling it on observations ``[B, ...]``
    (any numeric dtype) returns float32 logits ``[B, n]``.
    """

    def __init__(self, net: ActorCritic, layers: list[nn.Module]) -> None:
        self.net = net
        # (parent, name, child) of every module in the network: a swapped module
        # (quantization-aware training) or a hook makes it unusable.
        self._links = [
            (parent, name, child)
            for parent in net.modules()
            for name, child in parent._modules.items()
        ]
        self._params: list[tuple[nn.Module, str, nn.Parameter]] = []
        for m in (*layers, net.policy_head):
            for name in ("weight", "bias"):
                p = m._parameters[name]
                assert p is not None  # build() checked
                self._params.append((m, name, p))
        self._ptrs = [p.data_ptr() for _, _, p in self._params]
        #: The parameters themselves, in the order of :attr:`arrays`.
        self.parameters = [p for _, _, p in self._params]
        #: NumPy views of the parameters (they share the tensors' memory), in order:
        #: weight and bias of each layer (the convolution and dense layers, then the
        #: policy head).
        self.arrays = [p.detach().numpy() for _, _, p in self._params]
        self._conv_index: dict[tuple[int, ...], np.ndarray] = {}

    @classmethod
    def build(cls, net: nn.Module) -> HostLogits | None:
        """A :class:`HostLogits` of ``net``, or None if this module does not know ``net``."""
        if type(net) is not ActorCritic or net.obs_key is not None:
            return None
        enc = net.encoder
        layers: list[nn.Module]
        dense: list[nn.Module]
        if type(enc) is MinAtarCNN:
            conv = enc.conv
            if type(conv) is not nn.Conv2d or not _plain_conv(conv):
                return None
            layers, dense = [conv, enc.fc], [enc.fc]
        elif type(enc) is MLPEncoder:
            mods = list(enc.net)
            linears, acts = mods[0::2], mods[1::2]
            if len(linears) != len(acts) or not all(type(a) is nn.Tanh for a in acts):
                return None
            layers = dense = linears
        else:
            return None
        if not all(type(m) is nn.Linear for m in (*dense, net.policy_head)):
            return None
        params = [p for m in (*layers, net.policy_head) for p in (m.weight, m.bias)]
        if any(p is None or p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
            return None
        if len(list(net.parameters())) != len(params) + 2:  # + the value head's two
            return None
        return cls(net, layers)

    def usable(self) -> bool:
        """Whether the network is still as built: no hook on its modules, the same parameters."""
        if _global_hooks():
            return False
        net = self.net
        if net._forward_hooks or net._forward_pre_hooks:
            return False
        for parent, name, child in self._links:
            if parent._modules.get(name) is not child or child is None:
                return False
            if child._forward_hooks or child._forward_pre_hooks:
                return False
        for (m, name, p), ptr in zip(self._params, self._ptrs, strict=True):
            if m._parameters.get(name) is not p or p.data_ptr() != ptr:
                return False
        return True

    def patch_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Gather indices ``[C*9, OH*OW]`` that lay a ``(C, H, W)`` grid out for a 3x3 convolution.

        Row ``c*9 + dy*3 + dx`` (the order of a convolution weight's flattened
        ``[C, 3, 3]``), column ``y*OW + x``: the flat index into the grid of cell
        ``(c, y + dy, x + dx)``. Cached per shape.
        """
        idx = self._conv_index.get(shape)
        if idx is None:
            c, h, w = shape
            oh, ow = h - 2, w - 2
            ch, dy, dx, y, x = np.meshgrid(np.arange(c), np.arange(3), np.arange(3),
                                           np.arange(oh), np.arange(ow), indexing="ij")  # fmt: skip
            idx = (ch * h * w + (y + dy) * w + (x + dx)).reshape(c * 9, oh * ow)
            self._conv_index[shape] = idx
        return idx

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        b = x.shape[0]
        p = self.arrays
        if type(self.net.encoder) is MinAtarCNN:
            if x.ndim != 4:
                raise ValueError(f"MinAtarCNN expects [B, C, H, W] observations, got {x.shape}")
            wc, bc, w1, b1 = p[0], p[1], p[2], p[3]
            cols = np.take(x.reshape(b, -1), self.patch_index(x.shape[1:]), axis=1)  # [B, C*9, P]
            h: Any = np.matmul(wc.reshape(wc.shape[0], -1), cols)  # [B, F, P]
            h += bc[:, None]
            np.maximum(h, 0.0, out=h)
            h = h.reshape(b, -1) @ w1.T  # channel-major, as torch's flatten
            h += b1
            np.maximum(h, 0.0, out=h)
            rest = 4
        else:
            h, rest = x.reshape(b, -1), len(p) - 2
            for i in range(0, rest, 2):
                h = h @ p[i].T
                h += p[i + 1]
                np.tanh(h, out=h)
        out: np.ndarray = h @ p[rest].T
        out += p[rest + 1]
        return out


def _plain_conv(conv: nn.Conv2d) -> bool:
    """A 3x3, stride-1, unpadded, undilated, ungrouped convolution with a bias."""
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
        and conv.padding_mode == "zeros"
    )
