"""Actor-Mimic losses: distilling per-game experts into one multi-game student.

Actor-Mimic (Parisotto, Ba & Salakhutdinov, "Actor-Mimic: Deep Multitask and
Transfer Reinforcement Learning", ICLR 2016) trains one network to imitate
several single-game experts with two terms:

* **policy regression** (paper eq. 2): the cross-entropy between the expert's
  Boltzmann policy at temperature ``tau`` and the student's policy,
  ``-sum_a pi_E(a|s) log pi_AMN(a|s)``. Here both distributions live on the
  *game's valid actions* only: the student has one head over the union of all
  games' actions and the game's action mask removes the others.
* **feature regression** (paper eq. 3): a per-game head ``f_i`` maps the
  student's hidden features to expert ``i``'s, trained with a squared error.

Masking follows maskrl's one rule (:mod:`maskrl.masking`): masked logits are
filled with a finite value from the dtype before one (log-)softmax, and masked
outputs are then set explicitly. So masked actions get no probability and
exactly zero gradient, in teacher and student alike, whatever their logits hold
(``inf`` or NaN included). Expert outputs are targets: they are detached, so no
gradient ever reaches an expert.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from maskrl.agents.config import MIN_TAU  # defined with the configs (MimicConfig checks it)
from maskrl.masking import as_bool_mask, masked_log_softmax, masked_softmax

__all__ = [
    "MIN_TAU",
    "FeatureRegressionHeads",
    "expert_policy",
    "feature_regression_loss",
    "greedy_agreement",
    "policy_regression_loss",
]


def _check_pair(student_logits: Tensor, expert_logits: Tensor) -> None:
    for name, t in (("student_logits", student_logits), ("expert_logits", expert_logits)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {what}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [B, n], got {tuple(t.shape)}")
    if student_logits.shape[0] == 0:
        # The mean over no rows is NaN: fail here rather than poison a run.
        raise ValueError("the batch is empty (B = 0)")
    if student_logits.shape != expert_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and expert_logits "
            f"{tuple(expert_logits.shape)} must have the same shape [B, n]"
        )


def _checked_mask(mask: Tensor | np.ndarray, logits: Tensor) -> Tensor:
    """The mask as bool ``[B, n]``; ValueError naming every row with no valid action."""
    mask = as_bool_mask(mask, logits, name="mask").expand(logits.shape)
    # One scalar host read per call: an empty row is an environment bug (design
    # note "all positions masked"), and silently scoring it would hide that.
    has_valid = mask.any(dim=-1)
    if not bool(has_valid.all()):
        empty = (~has_valid).nonzero().flatten().tolist()
        raise ValueError(f"mask has no valid action in row(s) {empty}")
    return mask


def _check_tau(tau: float) -> float:
    why = f"tau must be a finite number >= {MIN_TAU:g}"
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"{why}, got {tau!r}") from None
    if not (math.isfinite(t) and t >= MIN_TAU):
        raise ValueError(
            f"{why} (smaller temperatures overflow expert_logits / tau to inf), got {tau!r}"
        )
    return t


def expert_policy(expert_logits: Tensor, mask: Tensor | np.ndarray, tau: float = 1.0) -> Tensor:
    """The expert's softmax at temperature ``tau`` over the valid actions, detached.

    Args:
        expert_logits: ``[B, n]`` raw logits (masked entries may hold anything).
        mask: ``[B, n]`` bool, ``True = valid``; every row needs a valid action.
        tau: temperature, finite and ``>= MIN_TAU`` (1e-4). Small ``tau`` sharpens the target
            towards the expert's greedy action (the paper's setting for DQN
            experts, whose Q-values are not log-probabilities).

    Returns:
        ``[B, n]`` probabilities, exactly ``0`` at masked actions, rows summing
        to 1, with no graph back to ``expert_logits``.

    Example:
        >>> expert_policy(torch.tensor([[math.log(3), 0.0, 9.0]]),
        ...               torch.tensor([[True, True, False]]))
        tensor([[0.7500, 0.2500, 0.0000]])
    """
    tau = _check_tau(tau)
    if not isinstance(expert_logits, Tensor) or not expert_logits.is_floating_point():
        raise ValueError("expert_logits must be a floating-point tensor")
    mask = _checked_mask(mask, expert_logits)
    # Divide before masking: x / tau of a masked NaN is NaN, which the masked
    # softmax replaces by its fill; the division never sees the gradient anyway.
    return masked_softmax(expert_logits.detach() / tau, mask)


def policy_regression_loss(
    student_logits: Tensor,
    expert_logits: Tensor,
    mask: Tensor | np.ndarray,
    tau: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Cross-entropy from the expert's ``tau``-softmax to the student's masked softmax.

    ``loss = mean_b( -sum_{a valid in b} p_E(a) log q_S(a) )`` with
    ``p_E = softmax(expert_logits / tau)`` and ``q_S = softmax(student_logits)``,
    both over the valid actions of row ``b`` only.

    Args:
        student_logits: ``[B, n]`` the student's raw logits over the union of
            all games' actions.
        expert_logits: ``[B, n]`` the expert's logits (or Q-values) in the same
            action order; entries outside the row's game may hold anything
            (padding, NaN). Detached: the expert is a target.
        mask: ``[B, n]`` bool (or 0/1 integers, or a NumPy array), ``True =
            valid`` -- the game's own action mask.
        tau: the expert's softmax temperature, finite and ``>= MIN_TAU`` (1e-4).
        weight: optional ``[B]`` finite, non-negative per-row weights (e.g.
            :class:`~maskrl.agents.MimicConfig`'s ``game_weights`` looked up by
            each row's game); the loss is then ``mean_b(weight_b * ce_b)``.

    Returns:
        A scalar tensor: the cross-entropy averaged over the batch. Its
        gradient at masked student logits is exactly zero, and it is finite
        whatever the masked logits of either side hold.

    Raises:
        ValueError: shapes differ or are not ``[B, n]``; an empty batch; a
            row with no valid action (the rows are named); ``tau`` not
            positive and finite.

    Example:
        >>> student = torch.zeros(1, 3, requires_grad=True)
        >>> expert = torch.tensor([[math.log(3.0), 0.0, float("nan")]])
        >>> mask = torch.tensor([[True, True, False]])
        >>> loss = policy_regression_loss(student, expert, mask)
        >>> round(loss.item(), 4) == round(math.log(2.0), 4)  # q = (1/2, 1/2)
        True
    """
    tau = _check_tau(tau)
    _check_pair(student_logits, expert_logits)
    mask = _checked_mask(mask, student_logits)
    target = masked_softmax(expert_logits.detach() / tau, mask)
    log_q = masked_log_softmax(student_logits, mask)
    # Masked entries: target is exactly 0 and log_q is finfo.min (finite), so
    # their product is 0, not NaN; masked_log_softmax already gives them zero
    # gradient. Sum in at least float32: half-precision sums lose digits.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    per_row = -(target.to(dtype) * log_q.to(dtype)).sum(dim=-1)
    return _weighted_mean(per_row, weight)


def _weighted_mean(per_row: Tensor, weight: Tensor | None) -> Tensor:
    """``mean_b(weight_b * per_row_b)``; the plain mean without ``weight``."""
    if weight is None:
        return per_row.mean()
    if not isinstance(weight, Tensor) or weight.shape != per_row.shape:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must have shape [B] = {tuple(per_row.shape)}, got {got}")
    return (weight.to(per_row.dtype) * per_row).mean()


def feature_regression_loss(
    predicted: Tensor, target: Tensor, mask: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Mean squared error between ``f_i(h_student)`` and expert ``i``'s features.

    Args:
        predicted: ``[B, D]`` the student's predicted expert features (e.g. from
            :class:`FeatureRegressionHeads`).
        target: ``[B, D]`` the experts' hidden features; detached. Where
            ``mask`` is False it may hold anything (padding, NaN).
        mask: optional ``[B, D]`` bool, ``True`` where a feature belongs to the
            row's game (:meth:`FeatureRegressionHeads.feature_mask`), for games
            whose experts have different feature sizes.
        weight: optional ``[B]`` per-row weights, as in
            :func:`policy_regression_loss`: the rows' errors are then averaged
            as ``mean_b(weight_b * err_b)``.

    Returns:
        A scalar: each row's squared error averaged over *its own* features,
        then averaged over rows -- so every sample counts once whatever its
        expert's feature size, and padding never enters. Without ``mask`` this
        is the plain element mean. (The paper uses the squared L2 norm, i.e.
        ``D`` times this; the mean keeps an expert with a wide hidden layer
        from dominating the others, and the constant goes into the loss weight.)

    Raises:
        ValueError: shapes differ, are not ``[B, D]``, or a row of ``mask`` is
            all False.

    Example:
        >>> pred = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
        >>> tgt = torch.tensor([[0.0, 0.0], [2.0, float("nan")]])
        >>> feature_regression_loss(pred, tgt, torch.tensor([[True, True], [True, False]]))
        tensor(3.2500)
    """
    if predicted.dim() != 2 or predicted.shape != target.shape:
        raise ValueError(
            f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must "
            "both have shape [B, D]"
        )
    target = target.detach()
    if mask is None:
        return _weighted_mean(((predicted - target) ** 2).mean(dim=-1), weight)
    mask = as_bool_mask(mask, predicted, name="mask").expand(predicted.shape)
    counts = mask.sum(dim=-1)
    if bool((counts == 0).any()):
        rows = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"mask has no feature in row(s) {rows}")
    # torch.where, not a product with the mask: NaN padding times 0 is NaN.
    zero = torch.zeros((), dtype=predicted.dtype, device=predicted.device)
    diff = torch.where(mask, predicted - torch.where(mask, target, zero), zero)
    return _weighted_mean((diff**2).sum(dim=-1) / counts, weight)


class FeatureRegressionHeads(nn.Module):
    """Per-game linear heads ``f_i``: student features -> expert ``i``'s features.

    Args:
        student_dim: size ``D`` of the student's hidden features.
        expert_dims: ``expert_dims[i]`` is the feature size ``D_i`` of game
            ``i``'s expert; sizes may differ.

    Design: ``forward`` returns one padded tensor ``[B, max_i D_i]`` in which
    row ``b`` holds ``f_{game_id[b]}(h[b])`` in its first ``D_{game_id[b]}``
    entries and zeros after them; :meth:`feature_mask` marks the real
    entries. A padded tensor (rather than a dict of per-game tensors) keeps the
    batch in its original row order, needs no data-dependent indexing (no
    host synchronisation on a GPU), and lets :func:`feature_regression_loss`
    average each row over its own features. All heads are applied to every
    row and each row then picks its own game's output: the heads are single
    linear layers and the number of games is small, so this costs less than
    splitting the batch, and rows of other games contribute exactly zero
    gradient to a head.

    The targets have the same layout: ``target[b, :D_i]`` holds expert
    ``i = game_id[b]``'s features of row ``b``; entries beyond ``D_i`` are
    ignored (they may hold anything).

    Example:
        >>> heads = FeatureRegressionHeads(8, [4, 2])
        >>> h, game_id = torch.randn(3, 8), torch.tensor([0, 1, 1])
        >>> pred = heads(h, game_id)
        >>> pred.shape, heads.feature_mask(game_id).sum(dim=1).tolist()
        (torch.Size([3, 4]), [4, 2, 2])
        >>> target = torch.randn(3, 4)
        >>> loss = heads.loss(h, game_id, target)
    """

    def __init__(self, student_dim: int, expert_dims: Sequence[int]) -> None:
        super().__init__()
        dims = [int(d) for d in expert_dims]
        if student_dim < 1:
            raise ValueError(f"student_dim must be positive, got {student_dim}")
        if not dims or min(dims) < 1:
            raise ValueError(f"expert_dims must be a non-empty list of positive sizes, got {dims}")
        self.student_dim = student_dim
        self.expert_dims = dims
        self.out_dim = max(dims)
        self.heads = nn.ModuleList(nn.Linear(student_dim, d) for d in dims)
        # [G, Dmax] True where column j is a real feature of game g.
        valid = torch.arange(self.out_dim)[None, :] < torch.tensor(dims)[:, None]
        self.register_buffer("_valid", valid, persistent=False)

    def _check_game_id(self, game_id: Tensor, batch: int) -> Tensor:
        """``game_id`` as int64, or ValueError: a wrong shape, a boolean or complex
        dtype, or (on CPU, where it needs no device sync) a value that is not a
        whole number in ``[0, G)`` -- ``.long()`` alone would turn 0.5 into game 0."""
        if game_id.shape != (batch,):
            raise ValueError(
                f"game_id must have shape [B] = ({batch},), got {tuple(game_id.shape)}"
            )
        if game_id.is_complex() or game_id.dtype == torch.bool:
            raise ValueError(f"game_id must hold integers, got dtype {game_id.dtype}")
        games = len(self.expert_dims)
        if game_id.device.type == "cpu" and batch:
            if game_id.is_floating_point():
                whole = torch.isfinite(game_id) & (game_id == game_id.round())
                if not bool(whole.all()):
                    bad = game_id[~whole][0].item()
                    raise ValueError(f"game_id must hold integers in [0, {games - 1}], got {bad}")
            lo, hi = int(game_id.min()), int(game_id.max())
            if lo < 0 or hi >= games:
                raise ValueError(
                    f"game_id must be in [0, {games - 1}] ({games} feature heads), "
                    f"got {lo if lo < 0 else hi}"
                )
        return game_id.long()

    def feature_mask(self, game_id: Tensor) -> Tensor:
        """``[B, max D_i]`` bool: True where a column is a feature of the row's game."""
        valid = self._valid
        assert isinstance(valid, Tensor)
        if game_id.dim() != 1:
            raise ValueError(f"game_id must have shape [B], got {tuple(game_id.shape)}")
        return valid[self._check_game_id(game_id, game_id.shape[0])]

    def forward(self, h: Tensor, game_id: Tensor) -> Tensor:
        """Predict each row's expert features.

        Args:
            h: ``[B, student_dim]`` student features.
            game_id: ``[B]`` integer game index of each row (``0 <= id < G``).

        Returns:
            ``[B, max_i D_i]``: row ``b`` is ``f_{game_id[b]}(h[b])`` padded with
            zeros beyond its game's ``D_i``.
        """
        if h.dim() != 2 or h.shape[1] != self.student_dim:
            raise ValueError(f"h must have shape [B, {self.student_dim}], got {tuple(h.shape)}")
        game_id = self._check_game_id(game_id, h.shape[0])
        # [G, B, Dmax]: every head on every row (cheap, see the class docstring),
        # then one gather picks each row's own game.
        outs = torch.stack(
            [
                nn.functional.pad(head(h), (0, self.out_dim - d))
                for head, d in zip(self.heads, self.expert_dims, strict=True)
            ]
        )
        rows = torch.arange(h.shape[0], device=h.device)
        return outs[game_id, rows]

    def loss(
        self, h: Tensor, game_id: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> Tensor:
        """:func:`feature_regression_loss` of ``self(h, game_id)`` against padded ``target``."""
        return feature_regression_loss(self(h, game_id), target, self.feature_mask(game_id), weight)


def greedy_agreement(
    student_logits: Tensor, expert_logits: Tensor, mask: Tensor | np.ndarray
) -> Tensor:
    """Fraction of rows whose masked argmax actions agree (a distillation metric).

    Args:
        student_logits, expert_logits: ``[B, n]``; masked entries may hold
            anything (NaN, ``inf``) and are never chosen.
        mask: ``[B, n]`` bool, ``True = valid``; every row needs a valid action.

    Returns:
        A scalar float tensor in ``[0, 1]``, no gradient. Ties go to the lowest
        action index on both sides (``argmax``), and the temperature does not
        matter (it never changes an argmax).

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 9.0], [2.0, 1.0, 0.0]])
        >>> e = torch.tensor([[0.0, 3.0, 0.0], [0.0, 1.0, 0.0]])
        >>> greedy_agreement(s, e, torch.tensor([[True, True, False], [True, True, True]]))
        tensor(0.5000)
    """
    _check_pair(student_logits, expert_logits)
    mask = _checked_mask(mask, student_logits)
    with torch.no_grad():

        def greedy(x: Tensor) -> Tensor:
            return x.masked_fill(~mask, torch.finfo(x.dtype).min).argmax(dim=-1)

        agree = greedy(student_logits) == greedy(expert_logits)
        return agree.to(torch.promote_types(student_logits.dtype, torch.float32)).mean()
