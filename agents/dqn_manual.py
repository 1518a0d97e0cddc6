"""The DQN gradient step of the plain MinAtar network, written out by hand on the CPU.

On a CPU core, a DQN gradient step of the MinAtar network (batch 32) spends
most of its time outside the arithmetic: recording the autograd graph, running
the engine over a dozen nodes, accumulating each gradient into its parameter,
torch's fixed cost per operation (several microseconds, against about one for
NumPy), and a convolution (forward and backward) whose library kernels are
tuned for far larger images than 10 x 10. :class:`ManualQStep` computes the
same loss (Huber on the taken action's value against
:func:`~maskrl.agents.dqn._dqn_target_unchecked`'s target) and writes the
same gradients straight into the parameters' ``.grad`` tensors, with no graph:

* every activation is kept **feature-major** (``[features, batch]``), so that
  each layer, forward and backward, is one matrix product: the convolution is
  a gather of 3 x 3 patches (``[C*9, P*B]``, the batch innermost) times the
  weight ``[F, C*9]``, its output is already the flattened features
  ``[F*P, B]`` in torch's channel-major order, and its weight gradient is one
  product ``[F, P*B] @ [P*B, C*9]`` (no ``convolution_backward``);
* the head: only the taken action's row of ``W_head`` receives gradient
  (``dL/dW_head[a_i] += dL/dq_i * h_i``), and ``dL/dh_i = dL/dq_i * W_head[a_i]``;
* the matrix products run in torch on NumPy views (so they use the trainer's
  torch thread count, not the BLAS library's own); the small element-wise
  steps in NumPy.

Only for :class:`~maskrl.networks.ActorCritic` over a plain
:class:`~maskrl.networks.MinAtarCNN` whose parameters are float32 on the CPU,
as :class:`maskrl.host_forward.HostLogits` recognises it; before each use,
:meth:`ManualQStep.usable` says whether both networks are still as built (no
hook, no swapped layer, no replaced parameter). Any other network goes
through autograd. The gradients equal autograd's up to float rounding
(``tests/test_dqn_manual.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from maskrl.host_forward import HostLogits
from maskrl.networks import ActorCritic, MinAtarCNN

__all__ = ["ManualQStep", "supports_manual"]


def supports_manual(net: torch.nn.Module) -> bool:
    """Whether :class:`ManualQStep` knows ``net``'s structure (see the module doc)."""
    return HostLogits.build(net) is not None and type(getattr(net, "encoder", None)) is MinAtarCNN


def _mm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` (2-D) in torch, written into ``out`` (any layout) when given."""
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if out is None:
        return torch.mm(ta, tb).numpy()
    if out.flags.c_contiguous:
        torch.mm(ta, tb, out=torch.from_numpy(out))
    elif out.T.flags.c_contiguous:  # e.g. a Linear weight stored [in, out]: write (b.T @ a.T)
        torch.mm(tb.t(), ta.t(), out=torch.from_numpy(out.T))
    else:
        out[...] = torch.mm(ta, tb).numpy()
    return out


def _as_array(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class ManualQStep:
    """The DQN loss of a batch and its gradients for the plain MinAtar network, by hand.

    Build with :meth:`build` (None for a network it does not know). Calling it
    on a batch writes ``dloss/dparam`` into every parameter's ``.grad`` of the
    online network (overwriting it; the value head's is zero) and returns
    ``(loss, target)``: the Huber loss as a float and the target as a float32
    ``[B]`` array.

    Args:
        host: :class:`~maskrl.host_forward.HostLogits` of the online network.
        target_host: the same of the target network (same shapes).
    """

    def __init__(self, host: HostLogits, target_host: HostLogits) -> None:
        self.host, self.target_host = host, target_host
        self.net: ActorCritic = host.net

    @classmethod
    def build(
        cls, net: torch.nn.Module, target_net: torch.nn.Module, host: HostLogits | None = None
    ) -> ManualQStep | None:
        """A :class:`ManualQStep` of ``net`` and ``target_net`` (``host``: an existing
        :class:`~maskrl.host_forward.HostLogits` of ``net`` to share), or None if
        either is not a network this module knows, or their shapes differ."""
        if not (supports_manual(net) and supports_manual(target_net)):
            return None
        host = host if host is not None and host.net is net else HostLogits.build(net)
        target_host = HostLogits.build(target_net)
        if host is None or target_host is None:
            return None
        if [a.shape for a in host.arrays] != [a.shape for a in target_host.arrays]:
            return None
        return cls(host, target_host)

    def usable(self) -> bool:
        """Whether both networks are still as built (no hook, no swapped layer or parameter)."""
        return self.host.usable() and self.target_host.usable()

    def _grads(self) -> list[np.ndarray]:
        """NumPy views of the online network's gradients, in the order of ``host.arrays``."""
        out = []
        for p in self.host.parameters:
            if p.grad is None:
                raise ValueError("ManualQStep needs a .grad tensor on every parameter")
            out.append(p.grad.numpy())
        return out

    def _forward(
        self, params: list[np.ndarray], xt: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Feature-major forward pass of observations ``xt`` ``[C*H*W, B]`` (float32).

        Returns the patches ``[C*9, P*B]``, the convolution's pre-activation
        ``[F, P*B]``, the flattened features ``[F*P, B]`` and the dense layer's
        pre-activation ``[hidden, B]``.
        """
        wc, bc, w1, b1 = params[:4]
        f = wc.shape[0]
        cols = np.take(xt, rows, axis=0).reshape(wc[0].size, -1)
        conv = _mm(wc.reshape(f, -1), cols)
        conv += bc[:, None]
        flat = np.maximum(conv, 0.0).reshape(-1, xt.shape[1])
        pre = _mm(w1, flat)
        pre += b1[:, None]
        return cols, conv, flat, pre

    def _q(self, params: list[np.ndarray], xt: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Q-values ``[B, n]`` of observations ``xt`` ``[C*H*W, B]``."""
        pre = self._forward(params, xt, rows)[3]
        q = (params[4] @ np.maximum(pre, 0.0, out=pre)).T
        q += params[5]
        return q  # type: ignore[no-any-return]

    def __call__(
        self, batch: dict[str, Any], gamma: float, double: bool, unmasked_target: bool
    ) -> tuple[float, np.ndarray]:
        """The loss and target of ``batch``; the gradients go into the online network.

        ``batch`` holds (NumPy arrays or CPU tensors) ``obs`` / ``next_obs``
        ``[B, C, H, W]`` of any numeric dtype, int64 ``actions``, float32
        ``rewards``, bool ``terminated`` and ``next_masks``, as the replay buffer
        samples them; every non-terminal row has a valid next action (the
        replay checks it when storing). Every parameter of the online network
        must have a ``.grad`` tensor (the trainer's
        :class:`~maskrl.agents.trainer.FlatParameters` views).
        """
        obs, next_obs = _as_array(batch["obs"]), _as_array(batch["next_obs"])
        actions = _as_array(batch["actions"])
        rewards = _as_array(batch["rewards"]).astype(np.float32, copy=False)
        terminated = _as_array(batch["terminated"]).astype(bool, copy=False)
        mask = _as_array(batch["next_masks"])
        b = obs.shape[0]
        rows = self.host.patch_index(obs.shape[1:]).reshape(-1)
        # Observations feature-major, [C*H*W, B], as float32 (one copy each).
        xt = np.ascontiguousarray(obs.reshape(b, -1).T, dtype=np.float32)
        next_xt = np.ascontiguousarray(next_obs.reshape(b, -1).T, dtype=np.float32)
        p, tp = self.host.arrays, self.target_host.arrays
        with np.errstate(all="ignore"):  # non-finite values are the trainer's to report
            # The target: the best valid next action's value (double DQN: chosen by
            # the online network, valued by the target network).
            q_next = self._q(tp, next_xt, rows)
            chooser = self._q(p, next_xt, rows) if double else q_next
            if not unmasked_target:
                chooser = np.where(mask, chooser, -np.inf)
            best = chooser.argmax(axis=1)
            bootstrap = q_next[np.arange(b), best]
            bootstrap[terminated] = 0.0
            target = rewards + np.float32(gamma) * bootstrap
            # The online network's forward pass, keeping what the backward pass needs.
            cols, conv, flat, pre = self._forward(p, xt, rows)
            h = np.maximum(pre, 0.0)  # [hidden, B]
            wh, bh = p[4], p[5]
            w_taken = wh[actions].T  # [hidden, B]: the taken actions' rows
            q = np.einsum("hb,hb->b", h, w_taken) + bh[actions]
            td = q - target
            abs_td = np.abs(td)
            loss = float(np.where(abs_td < 1.0, 0.5 * td * td, abs_td - 0.5).mean())
            dq = np.clip(td, -1.0, 1.0) / np.float32(b)  # Huber (beta 1)'s derivative, mean
            # Backward pass, written into the gradients' views.
            g_wc, g_bc, g_w1, g_b1, g_wh, g_bh = self._grads()
            d_q = np.zeros(wh.shape[0:1] + (b,), dtype=np.float32)  # [n, B]: dq at (a_i, i)
            d_q[actions, np.arange(b)] = dq
            _mm(d_q, h.T, out=g_wh)
            np.sum(d_q, axis=1, out=g_bh)
            d_pre = w_taken * dq
            d_pre *= pre > 0
            _mm(d_pre, flat.T, out=g_w1)
            np.sum(d_pre, axis=1, out=g_b1)
            d_conv = _mm(p[2].T, d_pre).reshape(conv.shape)
            d_conv *= conv > 0
            g_wc[...] = _mm(d_conv, cols.T).reshape(g_wc.shape)
            np.sum(d_conv, axis=1, out=g_bc)
        for param in self.net.value_head.parameters():
            assert param.grad is not None
            param.grad.zero_()
        return loss, target
