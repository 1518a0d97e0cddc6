"""Softmax and log-softmax over the valid entries of a tensor.

Every mask in maskrl is boolean with ``True = valid``. Masked entries are
filled with ``torch.finfo(dtype).min`` -- a *finite* value taken from the
dtype, never a literal such as ``-1e8`` (which is ``-inf`` in float16) --
before a single (log-)softmax, and the outputs at masked entries are then set
explicitly, so that:

* a masked entry has probability exactly ``0`` and log-probability exactly
  ``torch.finfo(dtype).min`` (finite, so ``0 * log_prob`` is ``0``, not NaN);
* a masked logit never takes probability from the valid ones, whatever its
  value (``6e4`` in float16, ``3e38`` in float32, ``inf`` or NaN);
* a row with no valid entry gives zeros from :func:`masked_softmax` and
  ``finfo.min`` everywhere from :func:`masked_log_softmax`, with finite values
  and zero gradients, rather than NaN.

The ``exp(x) * mask / (sum + eps)`` form is avoided on purpose: ``exp``
overflows for large logits, and ``eps`` leaks probability.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_bool_mask", "masked_log_softmax", "masked_softmax"]


def as_bool_mask(mask: Tensor | np.ndarray, target: Tensor, *, name: str = "mask") -> Tensor:
    """Check ``mask`` against ``target`` and return it as a boolean tensor.

    Args:
        mask: ``True = valid / present``. A ``bool`` tensor, or an integer
            tensor (``uint8``, ``int64``, ...) whose values are all ``0`` or
            ``1``, which is converted with ``mask.bool()``. A NumPy array (as
            an env's ``info["action_mask"]``) is converted to a tensor first
            and follows the same rules. Its shape must broadcast to
            ``target.shape`` (it is not broadcast here).
        target: The tensor the mask applies to; the mask is moved to its device.
        name: How the mask is called in error messages.

    Returns:
        The mask as a ``bool`` tensor on ``target.device``, with its own shape.

    Raises:
        TypeError: If ``mask`` is neither a tensor nor a NumPy array.
        ValueError: If the shape does not broadcast to ``target.shape`` (both
            shapes are named), if the dtype is floating or complex, or if an
            integer mask holds a value other than 0 or 1.

    Note:
        Checking the values of an integer mask reads them back from the device
        (one synchronisation on a GPU); pass ``bool`` masks in hot loops.

    Example:
        >>> as_bool_mask(torch.tensor([1, 0, 1]), torch.zeros(2, 3))
        tensor([ True, False,  True])
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray, got {type(mask).__name__}"
        )
    # Fast path for the common case (a bool mask of exactly the target's
    # shape, on its device): this runs in every policy step.
    if mask.dtype == torch.bool and mask.shape == target.shape and mask.device == target.device:
        return mask
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise ValueError(
                f"{name} must be a bool tensor (True = valid), or integers 0/1; got dtype {mask.dtype}"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                f"integer {name} must hold only 0 and 1 (True = valid); got other values"
            )
        mask = mask.bool()
    if not broadcasts_to(mask.shape, target.shape):
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to the shape "
            f"{tuple(target.shape)} it applies to"
        )
    return mask.to(target.device)


def broadcasts_to(
    shape: tuple[int, ...] | torch.Size, target: tuple[int, ...] | torch.Size
) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (no growth of ``target``)."""
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 are upcast: the normaliser sum of many small terms loses
    # most of its digits in half precision. float64 stays float64.
    return torch.promote_types(dtype, torch.float32)


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        what = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point tensor, got {what}")


def masked_log_softmax(logits: Tensor, mask: Tensor | np.ndarray, dim: int = -1) -> Tensor:
    """Log-softmax of ``logits`` over the entries where ``mask`` is True.

    Computed in float32 for float16/bfloat16 inputs and returned in the input
    dtype.

    Args:
        logits: Floating-point tensor of any shape ``[..., n, ...]``.
        mask: Boolean (or 0/1 integer) tensor or NumPy array broadcastable
            to ``logits.shape``; ``True = valid`` (see :func:`as_bool_mask`).
        dim: The dimension to normalise over.

    Returns:
        Tensor of ``logits.shape`` and dtype. Valid entries hold the
        log-probabilities of the softmax over the valid entries of their row
        (clamped below at ``torch.finfo(dtype).min`` when they underflow, so
        the result is always finite). Masked entries hold exactly
        ``torch.finfo(dtype).min`` -- a finite value whose ``exp`` is exactly
        ``0``, so ``p * log_p`` is ``0`` rather than NaN. A row with no valid
        entry is ``finfo.min`` throughout. Masked entries get zero gradient.

    Note:
        Valid logits must be above ``finfo(compute dtype).min``: a row whose
        *every* valid logit is ``-inf`` (or the lowest finite float32 value)
        has no meaningful distribution.

    Example:
        >>> logits = torch.tensor([0.1, 0.2, 0.0, 0.0, 0.0])
        >>> mask = torch.tensor([True, True, False, False, False])
        >>> masked_log_softmax(logits, mask).exp()
        tensor([0.4750, 0.5250, 0.0000, 0.0000, 0.0000])
    """
    _check_logits(logits)
    return _masked_log_softmax(logits, as_bool_mask(mask, logits), dim)


def _masked_log_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """:func:`masked_log_softmax` for a mask already checked by :func:`as_bool_mask`."""
    dtype = logits.dtype
    fill = torch.finfo(dtype).min
    x = logits.to(_compute_dtype(dtype))
    # A finite fill (not -inf) keeps a row with no valid entry finite: it
    # becomes a uniform row here and is overwritten below, so neither the
    # value nor the gradient ever sees NaN.
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    out = torch.log_softmax(x, dim=dim).to(dtype)
    # Casting back to half precision can overflow a very negative log-prob to
    # -inf; clamping keeps every output finite, so 0 * log_p stays 0.
    out = out.clamp(min=fill)
    # Set masked entries explicitly: this also cuts their gradient to exactly 0.
    return out.masked_fill(~mask, fill)


def masked_softmax(logits: Tensor, mask: Tensor | np.ndarray, dim: int = -1) -> Tensor:
    """Softmax of ``logits`` over the entries where ``mask`` is True.

    Computed in float32 for float16/bfloat16 inputs and returned in the input
    dtype.

    Args:
        logits: Floating-point tensor of any shape.
        mask: Boolean (or 0/1 integer) tensor or NumPy array broadcastable
            to ``logits.shape``; ``True = valid`` (see :func:`as_bool_mask`).
        dim: The dimension to normalise over.

    Returns:
        Tensor of ``logits.shape`` and dtype. Along ``dim``, the valid entries
        sum to 1 and masked entries are exactly ``0``. **A row with no valid
        entry is all zeros** (not NaN), with zero gradient -- this is what an
        empty set needs in attention pooling. Masked entries get zero gradient.

    Example:
        >>> probs = torch.tensor([0.2, 0.2, 0.6]).log()
        >>> masked_softmax(probs, torch.tensor([False, True, True]))
        tensor([0.0000, 0.2500, 0.7500])
    """
    _check_logits(logits)
    mask = as_bool_mask(mask, logits)
    x = logits.to(_compute_dtype(logits.dtype))
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    # The fill alone already gives masked entries exp(min - max) == 0 in any
    # row with a valid entry; the masked_fill below makes it exact in every
    # case (including rows with no valid entry, which are uniform here) and
    # zeroes the gradient of masked entries.
    return torch.softmax(x, dim=dim).masked_fill(~mask, 0.0).to(logits.dtype)
