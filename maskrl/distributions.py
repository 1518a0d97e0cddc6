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

__all__ = [
    "MaskedCategorical",
    "MaskedMultiCategorical",
    "MaskedPolicyHead",
    "gumbel_argmax",
    "masked_entropy",
]

_ROW_HINT = "(for a vector env, the row is the env index)"


def gumbel_argmax(
    log_p: Tensor, mask: Tensor | None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw from ``softmax(log_p)`` restricted to ``mask`` by the Gumbel-max trick.

    ``argmax(log_p + G)``, ``G = -log(E)``, ``E ~ Exp(1)``, is a draw from the
    softmax of ``log_p`` (unnormalised log-probabilities are fine). The noise is
    added first and masked entries are set to ``-inf`` afterwards, so a masked
    action can never win, whatever its logit or noise (even ``inf`` noise from
    an ``E`` of 0 could not make ``-inf + inf = NaN`` there). ``E`` is clamped
    to the smallest positive float so the noise is finite. Every row must have
    a valid entry (callers check). The one sampling path of maskrl: the
    distributions' ``sample`` and the trainers' rollouts both call it.

    Args:
        log_p: ``[..., n]`` floating logits or log-probabilities.
        mask: bool ``[..., n]`` (True = valid), or None.
        generator: the torch generator to draw from (None: torch's default).

    Returns:
        ``int64`` ``[...]``.
    """
    x = log_p.to(torch.promote_types(log_p.dtype, torch.float32))
    e = torch.empty_like(x).exponential_(generator=generator)
    scores = x - e.clamp_(min=torch.finfo(x.dtype).tiny).log_()
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return scores.argmax(dim=-1)


def masked_entropy(log_p: Tensor, mask: Tensor | None) -> Tensor:
    """Entropy ``-sum p log p`` over the valid entries of normalised ``log_p`` ``[..., n]``.

    ``log_p`` comes from :func:`maskrl.masked_log_softmax` (masked entries at the
    finite ``finfo.min``). The ``where`` before the product keeps masked entries
    out of the sum and of its gradient: they add exactly ``0``, never
    ``0 * -inf = NaN``.
    """
    if mask is None:
        return -(log_p.exp() * log_p).sum(dim=-1)
    safe = torch.where(mask, log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))
    p_log_p = torch.where(
        mask, safe.exp() * safe, torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    )
    return -p_log_p.sum(dim=-1)


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

        Uses the Gumbel-max trick (:func:`gumbel_argmax`), with masked entries
        set to ``-inf`` after the noise (safe: every row has a valid, finite
        entry), so a masked action can never win -- a structural guarantee
        rather than a property of a zero-width interval in an inverse-CDF
        search.
        """
        shape = torch.Size(sample_shape) + self.logits.shape
        with torch.no_grad():
            mask = None if self.mask is None else self.mask.expand(shape)
            return gumbel_argmax(self.logits.expand(shape), mask)

    def entropy(self) -> Tensor:
        """Entropy over the valid actions, shape ``batch_shape``."""
        if self.mask is None:
            return super().entropy()
        return masked_entropy(self.logits, self.mask)

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


class MaskedPolicyHead:
    """Masked action sampling and scoring for ``Discrete`` and ``MultiDiscrete`` actions.

    The functional form of :class:`MaskedCategorical` /
    :class:`MaskedMultiCategorical` for a trainer's hot loop: it works on raw
    logits ``[B, sum(nvec)]`` and a bool mask of the same shape (True = valid;
    per-dimension masks concatenated for ``MultiDiscrete``), without building a
    distribution object on every step, and draws from an explicit
    ``torch.Generator``. It computes with the same functions as the
    distributions (:func:`gumbel_argmax`, :func:`maskrl.masked_log_softmax`,
    :func:`masked_entropy`), so there is one masking path; ``distribution``
    returns the equivalent distribution object.

    Every row (every dimension of every row, for ``MultiDiscrete``) must have a
    valid action: rollouts check this when they read an env's masks, and
    ``predict`` before it samples.

    Example:
        >>> head = MaskedPolicyHead([3])
        >>> logits = torch.zeros(2, 3)
        >>> mask = torch.tensor([[True, False, True], [False, True, False]])
        >>> action, logp = head.sample(logits, mask, deterministic=True)
        >>> action.tolist(), logp.exp().tolist()
        ([0, 1], [0.5, 1.0])
    """

    def __init__(self, nvec: Sequence[int]) -> None:
        self.nvec = list(_as_nvec(nvec))
        self.multi = len(self.nvec) > 1

    def _split(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x,) if not self.multi else torch.split(x, self.nvec, dim=-1)

    def log_probs(self, logits: Tensor, mask: Tensor) -> list[Tensor]:
        """Per-dimension masked log-softmax, each ``[B, nvec[d]]``."""
        return [
            _masked_log_softmax(lg, m, -1)
            for lg, m in zip(self._split(logits), self._split(mask), strict=True)
        ]

    def sample(
        self,
        logits: Tensor,
        mask: Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Return ``(action, log_prob)``: action ``[B]`` (Discrete) or ``[B, len(nvec)]``."""
        actions, logps = [], []
        for lp in self.log_probs(logits, mask):
            # Masked entries of lp are finfo.min: with every row holding a valid (finite)
            # entry, neither the argmax nor finfo.min plus Gumbel noise (at most
            # -log(finfo.tiny), about 87 in float32) can pick them, so the mask needs
            # no second application here (one kernel less on the rollout's hot path).
            a = lp.argmax(-1) if deterministic else gumbel_argmax(lp, None, generator)
            actions.append(a)
            logps.append(lp.gather(-1, a.unsqueeze(-1)).squeeze(-1))
        if not self.multi:
            return actions[0], logps[0]
        return torch.stack(actions, -1), torch.stack(logps, -1).sum(-1)

    def evaluate(self, logits: Tensor, mask: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(log_prob [B], entropy [B])`` of ``action`` under ``mask``."""
        acts = action.unsqueeze(-1) if not self.multi else action
        logp: Tensor | None = None
        ent: Tensor | None = None
        for d, (lp, m) in enumerate(
            zip(self.log_probs(logits, mask), self._split(mask), strict=True)
        ):
            lpa = lp.gather(-1, acts[:, d : d + 1].long()).squeeze(-1)
            e = masked_entropy(lp, m)
            logp = lpa if logp is None else logp + lpa
            ent = e if ent is None else ent + e
        assert logp is not None and ent is not None
        return logp, ent

    def distribution(
        self, logits: Tensor, mask: Tensor
    ) -> MaskedCategorical | MaskedMultiCategorical:
        """The equivalent :mod:`torch.distributions` object (checks the mask)."""
        if self.multi:
            return MaskedMultiCategorical(logits=logits, mask=mask, nvec=self.nvec)
        return MaskedCategorical(logits=logits, mask=mask)
