"""Categorical distributions over the valid actions only.

:class:`MaskedCategorical` (``Discrete`` actions) and
:class:`MaskedMultiCategorical` (``MultiDiscrete`` actions, sb3-contrib's
concatenated-mask convention). Masking is one small, undoable step: the
original logits stay available as ``raw_logits`` and the mask as ``mask``;
``MaskedCategorical(logits=d.raw_logits)`` gives back the unmasked
distribution.

A mask with no valid action in some row is an environment bug, not a state to
sample from: both classes raise a ``ValueError`` that names the offending
rows, e.g. ``action mask has no valid action in row(s) [3, 5] (for a vector
env, the row is the env index)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, constraints

from maskrl.masking import _masked_log_softmax, as_bool_mask

__all__ = ["MaskedCategorical", "MaskedMultiCategorical"]

_ROW_HINT = "(for a vector env, the row is the env index)"


def _empty_rows(mask: Tensor) -> Tensor:
    """Boolean ``mask.shape[:-1]``: True where a row has no valid action."""
    return ~mask.any(dim=-1)


class MaskedCategorical(Categorical):
    """Categorical distribution restricted to the actions where ``mask`` is True.

    Args:
        logits: Unnormalised log-probabilities, shape ``[*batch, n]``, any
            floating dtype.
        mask: Keyword-only. Boolean (or 0/1 integer) tensor or NumPy array
            broadcastable to ``logits.shape``, ``True = valid``. ``None`` means every action is
            valid.
        validate_args: As in :class:`torch.distributions.Distribution`.

    Raises:
        ValueError: If some row of the mask has no valid action. The message
            names the flat row indices into ``logits.reshape(-1, n)``, e.g.
            ``action mask has no valid action in row(s) [3, 5] (for a vector
            env, the row is the env index)``. This costs one ``any``
            reduction (and one device synchronisation on a GPU).

    Behaviour:
        * ``sample()`` never returns a masked action.
        * ``log_prob(a)`` is the log-probability renormalised over the valid
          actions; for a masked ``a`` it is ``torch.finfo(dtype).min``.
        * ``entropy()`` sums over valid actions only (masked ones add exactly
          ``0``, never ``0 * -inf = NaN``); with uniform logits,
          ``exp(entropy)`` is the number of valid actions.
        * ``mode`` is the most probable valid action.
        * Masked logits receive exactly zero gradient from ``log_prob`` and
          ``entropy``.
        * ``logits`` / ``probs`` are the masked, normalised parameters;
          ``raw_logits`` holds the logits as given and ``mask`` the boolean
          mask broadcast to ``logits.shape`` (or ``None``).

    Example:
        >>> logits = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.0]])
        >>> d = MaskedCategorical(logits=logits, mask=torch.tensor([[1, 1, 0, 0, 0]]).bool())
        >>> d.probs
        tensor([[0.4750, 0.5250, 0.0000, 0.0000, 0.0000]])
        >>> bool((d.sample((100,)) < 2).all())
        True
    """

    def __init__(
        self,
        logits: Tensor,
        *,
        mask: Tensor | np.ndarray | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise ValueError("logits must be a floating-point tensor")
        if logits.dim() < 1:
            raise ValueError("logits must have at least one dimension (the actions)")
        if mask is not None:
            mask = as_bool_mask(mask, logits).expand(logits.shape)
            empty = _empty_rows(mask)
            if bool(empty.any()):
                rows = empty.reshape(-1).nonzero().flatten().tolist()
                raise ValueError(f"action mask has no valid action in row(s) {rows} {_ROW_HINT}")
        self._init_unchecked(logits, mask, validate_args)

    def _init_unchecked(
        self, logits: Tensor, mask: Tensor | None, validate_args: bool | None
    ) -> None:
        # ``mask`` is already boolean, expanded to ``logits.shape`` and known
        # to have a valid action in every row.
        self.raw_logits: Tensor = logits
        self.mask: Tensor | None = mask
        if mask is None:
            super().__init__(logits=logits, validate_args=validate_args)
            return
        # The masked log-softmax is normalised already, so set Categorical's
        # fields as its __init__ would, minus its logsumexp subtraction (a
        # no-op here that would cost two more kernels per policy step).
        self.logits = _masked_log_softmax(logits, mask, -1)
        self._param = self.logits
        self._num_events = logits.shape[-1]
        Distribution.__init__(self, logits.shape[:-1], validate_args=validate_args)

    @classmethod
    def _from_checked(
        cls, logits: Tensor, mask: Tensor | None, validate_args: bool | None
    ) -> MaskedCategorical:
        """Build without the empty-row check (the caller did it)."""
        new = cls.__new__(cls)
        new._init_unchecked(logits, mask, validate_args)
        return new

    def expand(
        self, batch_shape: torch.Size | Sequence[int], _instance: MaskedCategorical | None = None
    ) -> MaskedCategorical:
        """Expand the batch shape, as :meth:`Categorical.expand`."""
        new = self._get_checked_instance(MaskedCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.raw_logits.shape[-1:]
        new.raw_logits = self.raw_logits.expand(shape)
        new.mask = None if self.mask is None else self.mask.expand(shape)
        return super().expand(batch_shape, _instance=new)

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        """Draw actions of shape ``sample_shape + batch_shape`` (``int64``).

        Uses the Gumbel-max trick, ``argmax(log_p + Gumbel noise)``, with
        masked entries set to ``-inf`` (safe: every row has a valid, finite
        entry), so a masked action can never win -- a structural guarantee
        rather than a property of a zero-width interval in an inverse-CDF
        search.
        """
        shape = torch.Size(sample_shape) + self.logits.shape
        with torch.no_grad():
            logp = self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))
            u = torch.rand(shape, dtype=logp.dtype, device=logp.device)
            # Keep u inside (0, 1) so the noise is finite: u == 0 would give
            # -inf noise for every entry and an arbitrary argmax.
            tiny = torch.finfo(logp.dtype).tiny
            u = u.clamp_(min=tiny, max=1.0 - torch.finfo(logp.dtype).eps)
            scores = logp - torch.log(-torch.log(u))
            if self.mask is not None:
                scores = scores.masked_fill(~self.mask, -math.inf)
            return scores.argmax(dim=-1)

    def entropy(self) -> Tensor:
        """Entropy over the valid actions, shape ``batch_shape``."""
        if self.mask is None:
            return super().entropy()
        p_log_p = self.probs * self.logits
        # Masked entries are 0 * finfo.min == 0 already; the where makes the
        # "valid actions only" rule explicit and independent of rounding.
        p_log_p = torch.where(self.mask, p_log_p, torch.zeros((), dtype=p_log_p.dtype))
        return -p_log_p.sum(dim=-1)

    @property
    def mode(self) -> Tensor:
        """The most probable valid action, shape ``batch_shape``."""
        # Masked log-probs are finfo.min while the best valid one is at least
        # -log(n), so the argmax is always a valid action.
        return self.logits.argmax(dim=-1)


def _as_nvec(nvec: Sequence[int] | Tensor) -> tuple[int, ...]:
    if isinstance(nvec, Tensor):
        values = [int(v) for v in nvec.reshape(-1).tolist()]
    else:
        values = [int(v) for v in nvec]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"nvec must be a non-empty sequence of positive ints, got {values}")
    return tuple(values)


@functools.lru_cache(maxsize=64)
def _padded_layout(nvec: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Where each ``[len(nvec), max(nvec)]`` slot reads from in ``[..., sum(nvec)]``.

    Returns the flat gather index ``[len(nvec) * max(nvec)]`` and the
    ``[len(nvec), max(nvec)]`` bool map of real (not padding) slots. Cached,
    so a policy step on a GPU does not copy ``nvec`` to the device each time.
    """
    # Built as ordinary tensors even when first called under inference_mode
    # (a rollout): an inference tensor cached here could not be saved for
    # backward by the gather in a later training step.
    with torch.inference_mode(False):
        sizes = torch.tensor(nvec, device=device)
        offsets = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(max(nvec), device=device)
        in_range = slot < sizes[:, None]
        # Padding slots point at the last entry of their dimension (any valid
        # index would do); they are masked out, so they get no gradient.
        index = offsets[:, None] + torch.minimum(slot, sizes[:, None] - 1)
    return index.reshape(-1), in_range


class MaskedMultiCategorical(Distribution):
    """Independent masked categoricals, one per dimension of a ``MultiDiscrete`` space.

    Follows sb3-contrib's convention: the logits of all dimensions, and their
    masks, are concatenated along the last axis.

    Args:
        logits: Shape ``[*batch, sum(nvec)]``: dimension ``d`` owns the
            ``nvec[d]`` entries after the first ``sum(nvec[:d])``.
        mask: Keyword-only. Boolean (or 0/1 integer) tensor or NumPy array
            broadcastable to ``logits.shape``, ``True = valid``; the per-dimension masks
            concatenated. ``None`` means every action is valid.
        nvec: Keyword-only. The number of actions in each dimension, e.g.
            ``MultiDiscrete.nvec``.
        validate_args: As in :class:`torch.distributions.Distribution`.

    Raises:
        ValueError: If some dimension of some row has no valid action; the
            message names the rows and each empty ``(row, dimension)`` pair,
            e.g. ``action mask has no valid action in row(s) [3] (for a vector
            env, the row is the env index); empty (row, dimension) pair(s):
            [(3, 1)]``.

    All dimensions are handled at once: the logits are gathered into a padded
    ``[*batch, len(nvec), max(nvec)]`` tensor (padding masked out) and held in
    one :class:`MaskedCategorical`, available as ``categorical``.

    * ``sample()`` has shape ``sample_shape + [*batch, len(nvec)]``.
    * ``log_prob(actions)`` takes ``[..., len(nvec)]`` and sums the
      per-dimension log-probabilities, shape ``[...]``.
    * ``entropy()`` sums the per-dimension entropies, shape ``batch``.
    * ``mode`` has shape ``[*batch, len(nvec)]``.

    Example:
        >>> logits = torch.zeros(2, 5)  # nvec = (3, 2)
        >>> mask = torch.tensor([[1, 1, 0, 1, 1], [0, 0, 1, 1, 0]]).bool()
        >>> d = MaskedMultiCategorical(logits=logits, mask=mask, nvec=[3, 2])
        >>> d.sample().shape
        torch.Size([2, 2])
        >>> d.entropy().exp()  # 2 * 2 and 1 * 1 joint valid actions
        tensor([4., 1.])
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_enumerate_support = False

    def __init__(
        self,
        logits: Tensor,
        *,
        mask: Tensor | np.ndarray | None = None,
        nvec: Sequence[int] | Tensor,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise ValueError("logits must be a floating-point tensor")
        self.nvec: tuple[int, ...] = _as_nvec(nvec)
        total = sum(self.nvec)
        if logits.dim() < 1 or logits.shape[-1] != total:
            raise ValueError(
                f"logits must have shape [..., sum(nvec)] = [..., {total}] for nvec={list(self.nvec)}, "
                f"got {tuple(logits.shape)}"
            )
        self.raw_logits: Tensor = logits
        k, width = len(self.nvec), max(self.nvec)
        index, in_range = _padded_layout(self.nvec, logits.device)
        batch = logits.shape[:-1]
        padded = logits[..., index].reshape(*batch, k, width)

        padded_mask: Tensor | None
        if mask is None:
            self.mask: Tensor | None = None
            # Equal sizes need no padding, hence no mask at all.
            padded_mask = None if min(self.nvec) == width else in_range.expand(*batch, k, width)
        else:
            self.mask = as_bool_mask(mask, logits).expand(logits.shape)
            padded_mask = self.mask[..., index].reshape(*batch, k, width) & in_range
            empty = _empty_rows(padded_mask).reshape(-1, k)  # [rows, k]
            if bool(empty.any()):
                pairs = empty.nonzero().tolist()
                rows = sorted({r for r, _ in pairs})
                raise ValueError(
                    f"action mask has no valid action in row(s) {rows} {_ROW_HINT}; "
                    f"empty (row, dimension) pair(s): {[tuple(p) for p in pairs]}"
                )
        self.categorical: MaskedCategorical = MaskedCategorical._from_checked(
            padded, padded_mask, validate_args
        )
        super().__init__(batch, torch.Size([k]), validate_args=validate_args)

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        """Draw actions of shape ``sample_shape + batch_shape + [len(nvec)]``."""
        return self.categorical.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """Joint log-probability of ``value`` ``[..., len(nvec)]``, summed over dimensions."""
        if value.shape[-1:] != torch.Size([len(self.nvec)]):
            raise ValueError(
                f"actions must have shape [..., {len(self.nvec)}], got {tuple(value.shape)}"
            )
        if self._validate_args:
            high = torch.tensor(self.nvec, device=value.device)
            if bool(((value < 0) | (value >= high)).any()):
                raise ValueError(f"actions out of range for nvec={list(self.nvec)}")
        return self.categorical.log_prob(value).sum(dim=-1)

    def entropy(self) -> Tensor:
        """Sum of the per-dimension entropies over valid actions, shape ``batch_shape``."""
        return self.categorical.entropy().sum(dim=-1)

    @property
    def mode(self) -> Tensor:
        """The most probable valid action in each dimension, ``batch_shape + [len(nvec)]``."""
        return self.categorical.mode

    @property
    def probs(self) -> Tensor:
        """Per-dimension probabilities concatenated, ``[*batch, sum(nvec)]``."""
        p = self.categorical.probs
        return torch.cat([p[..., d, :n] for d, n in enumerate(self.nvec)], dim=-1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(nvec={list(self.nvec)}, batch_shape={tuple(self.batch_shape)})"
        )
