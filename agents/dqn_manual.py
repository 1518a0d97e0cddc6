"""The DQN loss of the plain MinAtar network and its gradients, written out by hand.

On a CPU core, a DQN gradient step of the MinAtar network (batch 32) spends a
good part of its time outside the arithmetic: recording the autograd graph,
running the engine over a dozen nodes, accumulating each gradient into its
parameter, and a full matrix product for the policy head's gradient where only
one entry per row (the action taken) is non-zero. :func:`manual_q_gradients`
computes the same loss (Huber on the taken action's value against
:func:`~maskrl.agents.dqn._dqn_target_unchecked`'s target) and writes the same
gradients straight into the parameters' ``.grad`` tensors, with no graph:

* the head: ``dL/dW_head[a_i] += dL/dq_i * h_i`` (an ``index_add`` over the
  batch's actions), and ``dL/dh_i = dL/dq_i * W_head[a_i]``;
* the dense layer and the convolution: the matrix products and
  ``convolution_backward`` autograd would call, written into the gradients.

Only for :class:`~maskrl.networks.ActorCritic` over a plain
:class:`~maskrl.networks.MinAtarCNN`, as :class:`maskrl.host_forward.HostLogits`
recognises it (the trainer checks, at each iteration, that it still is: no
hook, no swapped layer); any other network goes through autograd. The
gradients equal autograd's up to float rounding
(``tests/test_dqn_manual.py``).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskrl.agents.dqn import _dqn_target_unchecked
from maskrl.host_forward import HostLogits
from maskrl.networks import ActorCritic, MinAtarCNN

__all__ = ["manual_q_gradients", "supports_manual"]


def supports_manual(net: torch.nn.Module) -> bool:
    """Whether :func:`manual_q_gradients` knows ``net``'s structure (see the module doc)."""
    return HostLogits.build(net) is not None and type(net.encoder) is MinAtarCNN


def _layers(net: ActorCritic) -> tuple[nn.Conv2d, nn.Linear, nn.Linear]:
    """The convolution, dense layer and policy head of a network :func:`supports_manual` knows."""
    enc = net.encoder
    assert isinstance(enc, MinAtarCNN)
    return cast(nn.Conv2d, enc.conv), cast(nn.Linear, enc.fc), cast(nn.Linear, net.policy_head)


def _q(net: ActorCritic, x: Tensor) -> Tensor:
    conv, fc, head = _layers(net)
    h = torch.relu(F.conv2d(x, conv.weight, conv.bias)).flatten(1)
    return F.linear(torch.relu(F.linear(h, fc.weight, fc.bias)), head.weight, head.bias)


@torch.no_grad()
def manual_q_gradients(
    net: ActorCritic,
    target_net: ActorCritic,
    batch: dict[str, Tensor],
    gamma: float,
    double: bool,
    unmasked_target: bool,
) -> tuple[Tensor, Tensor]:
    """The DQN loss of ``batch`` and its target; writes ``dloss/dparam`` into every
    parameter's ``.grad`` of ``net`` (overwriting it; the value head's is zero).

    ``batch`` holds float32 ``obs`` / ``next_obs`` ``[B, C, H, W]``, int64
    ``actions``, ``rewards``, bool ``terminated`` and ``next_masks``, as the
    replay buffer samples them. Every parameter of ``net`` must have a ``.grad``
    tensor (the trainer's :class:`~maskrl.agents.trainer.FlatParameters` views).
    """
    conv_layer, fc, head = _layers(net)
    x, next_x, actions = batch["obs"], batch["next_obs"], batch["actions"]
    if not x.is_floating_point():
        x, next_x = x.float(), next_x.float()
    mask = batch["next_masks"]
    if unmasked_target:
        mask = torch.ones_like(mask)
    q_next_online = _q(net, next_x) if double else None
    target = _dqn_target_unchecked(
        q_next_online, _q(target_net, next_x), mask, batch["rewards"], batch["terminated"], gamma
    )
    # Forward pass of the online network, keeping what the backward pass needs.
    conv = F.conv2d(x, conv_layer.weight, conv_layer.bias)
    flat = torch.relu(conv).flatten(1)
    pre = F.linear(flat, fc.weight, fc.bias)
    h = torch.relu(pre)
    w_taken = head.weight.index_select(0, actions)  # [B, hidden]: the taken actions' rows
    q = (h * w_taken).sum(1) + head.bias.index_select(0, actions)
    td = q - target
    # Huber (smooth L1, beta 1), mean over the batch, and its derivative in q.
    abs_td = td.abs()
    loss = torch.where(abs_td < 1.0, 0.5 * td * td, abs_td - 0.5).mean()
    dq = td.clamp(-1.0, 1.0) / td.shape[0]
    # Backward pass.
    gw_head, gb_head = head.weight.grad, head.bias.grad
    assert gw_head is not None and gb_head is not None
    gw_head.zero_().index_add_(0, actions, h * dq[:, None])
    gb_head.zero_().index_add_(0, actions, dq)
    d_pre = (w_taken * dq[:, None]).mul_(pre > 0)
    gw_fc, gb_fc = fc.weight.grad, fc.bias.grad
    assert gw_fc is not None and gb_fc is not None
    if gw_fc.t().is_contiguous():  # stored [in, out] (FlatParameters): write it directly
        torch.mm(flat.t(), d_pre, out=gw_fc.t())
    else:
        gw_fc.copy_(d_pre.t() @ flat)
    torch.sum(d_pre, 0, out=gb_fc)
    d_conv = (d_pre @ fc.weight).view_as(conv).mul_(conv > 0)
    w, b = conv_layer.weight, conv_layer.bias
    _, gw_conv, gb_conv = torch.ops.aten.convolution_backward(
        d_conv, x, w, [w.shape[0]], list(conv_layer.stride), [0, 0], list(conv_layer.dilation),
        False, [0, 0], conv_layer.groups, [False, True, True],
    )  # fmt: skip
    assert w.grad is not None and b is not None and b.grad is not None
    w.grad.copy_(gw_conv)
    b.grad.copy_(gb_conv)
    for p in net.value_head.parameters():
        assert p.grad is not None
        p.grad.zero_()
    return loss, target
