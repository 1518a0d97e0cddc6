"""Masked DQN building blocks: the bootstrapped target and epsilon-greedy acting.

Both work over the valid actions only (maskrl's one mask convention: a boolean
mask, ``True = valid``):

* :func:`dqn_target` -- ``reward + gamma * (1 - terminated) * Q_target(s', a*)``
  with ``a*`` the best **valid** action of the next state (double DQN: chosen by
  the online network, valued by the target network; plain DQN: the target
  network's masked max). Without the mask, the max would bootstrap from actions
  the agent can never take in ``s'`` (and whose values no update ever corrects).
* :func:`masked_epsilon_greedy` -- the masked argmax, replaced with probability
  ``epsilon`` by an action drawn uniformly from the **valid** ones, from an
  explicit :class:`torch.Generator`.

Both run on CPU or CUDA tensors with a single device-to-host read each (the
validity check); see their notes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from maskrl.masking import as_bool_mask, broadcasts_to

__all__ = ["dqn_target", "masked_argmax", "masked_epsilon_greedy"]

_ROW_HINT = "(for a vector env, the row is the env index)"


def _check_q(q: object, name: str) -> Tensor:
    if not isinstance(q, Tensor) or not q.is_floating_point():
        what = q.dtype if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {what}")
    if q.dim() < 1 or q.shape[-1] == 0:
        raise ValueError(
            f"{name} must have shape [..., n_actions] with n_actions >= 1, got {tuple(q.shape)}"
        )
    return q


def _rows(flags: Tensor) -> list[int]:
    """Flat indices of the True entries (only on the error path: one more sync there)."""
    return flags.reshape(-1).nonzero().flatten().tolist()


def masked_argmax(q: Tensor, mask: Tensor) -> Tensor:
    """Index of the largest ``q`` among the entries where ``mask`` is True, along the last dim.

    Invalid entries are replaced by ``-inf`` before ``argmax``, so their values
    (even ``inf`` or NaN) never win; ties go to the lowest index, as in
    :func:`torch.argmax`. A row with no valid entry gives index 0: callers
    check or discard such rows (:func:`dqn_target` does both).

    Args:
        q: floating ``[..., n]``.
        mask: bool, broadcastable to ``q.shape`` (already checked, e.g. by
            :func:`maskrl.as_bool_mask`).

    Returns:
        ``int64`` ``[...]``.

    Example:
        >>> masked_argmax(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[False, True, True]]))
        tensor([2])
    """
    return q.masked_fill(~mask, -math.inf).argmax(dim=-1)


def dqn_target(
    q_next_online: Tensor | None,
    q_next_target: Tensor,
    next_mask: Tensor | np.ndarray,
    reward: Tensor,
    terminated: Tensor,
    gamma: float | Tensor,
    double: bool = True,
) -> Tensor:
    """The masked (double) DQN target ``reward + gamma * (1 - terminated) * Q_target(s', a*)``.

    ``a*`` ranges over the next state's **valid** actions only:

    * ``double=True`` (double DQN, van Hasselt et al. 2016): ``a*`` is the masked
      argmax of ``q_next_online`` and its value is read from ``q_next_target``;
    * ``double=False`` (DQN, Mnih et al. 2015): the masked max of ``q_next_target``
      (``q_next_online`` is not read and may be None).

    The ``(1 - terminated)`` factor is applied as a ``where``: a terminal row's
    target is exactly ``reward``, whatever its next-state values hold (garbage,
    ``inf``, NaN) and whatever its mask (a terminal observation may have no valid
    action: a finished board game, a full knapsack). Pass **terminated**, not
    ``terminated or truncated``: a transition cut by a time limit bootstraps.

    **n-step returns**: pass the discounted sum of the ``n`` rewards as ``reward``,
    the state, mask and flag ``n`` steps later as ``q_next_*``, ``next_mask`` and
    ``terminated``, and ``gamma ** n`` as ``gamma`` -- a tensor of per-row
    discounts ``gamma ** k`` when some rows end after ``k < n`` steps. The
    function itself has no notion of ``n``.

    Args:
        q_next_online: floating ``[*B, n]``, the online network's values of the
            next states (double DQN), or None with ``double=False``.
        q_next_target: floating ``[*B, n]``, the target network's values of the
            next states.
        next_mask: the next states' masks, bool (or 0/1 integer) tensor or NumPy
            array broadcastable to ``[*B, n]`` (:func:`maskrl.as_bool_mask`).
        reward: floating, broadcastable to ``[*B]`` (never growing it: a ``[B, 1]``
            reward against ``[B]`` rows is refused, not broadcast to ``[B, B]``).
        terminated: bool, or 0/1 integers or floats, broadcastable to ``[*B]``.
        gamma: the discount (``gamma ** n`` for n-step returns): a float in
            ``[0, 1]``, or a floating tensor of values in ``[0, 1]`` broadcastable
            to ``[*B]``.
        double: double DQN (default) or plain DQN.

    Returns:
        ``[*B]`` tensor, detached (a target is a constant of the loss), on the
        inputs' device, of the promoted dtype of ``q_next_target``, ``reward`` and
        (when a tensor) ``gamma``.

    Raises:
        ValueError: one line each for: a non-floating or mis-shaped ``q_*`` (the
            two must have the same shape), ``q_next_online`` None with
            ``double=True``, tensors on different devices, a mask, reward,
            ``terminated`` or ``gamma`` that does not broadcast to its shape, a
            floating mask, a ``terminated`` or ``gamma`` value out of range, and
            **a non-terminal row whose next mask has no valid action** (naming the
            flat row indices): bootstrapping from it has no meaning, and it is an
            environment bug, as every all-invalid action mask is in maskrl.

    Note:
        **Cost.** All value checks (the all-invalid rows, ``terminated`` and a
        tensor ``gamma`` in range) are reduced on the device into one small
        tensor that is read back once: one device-to-host synchronisation per
        call (on CUDA it waits for the kernels queued before it). Everything
        else is asynchronous. An integer ``next_mask`` costs one more read
        (:func:`maskrl.as_bool_mask`); pass bool masks.

    Example:
        >>> q_online = torch.tensor([[1.0, 5.0, 2.0]])
        >>> q_target = torch.tensor([[10.0, 20.0, 30.0]])
        >>> mask = torch.tensor([[True, False, True]])  # action 1 is invalid in s'
        >>> r, done = torch.tensor([1.0]), torch.tensor([False])
        >>> dqn_target(q_online, q_target, mask, r, done, 0.5)  # a* = 2 (online), 1 + 0.5 * 30
        tensor([16.])
        >>> dqn_target(None, q_target, mask, r, done, 0.5, double=False)  # max over {0, 2}
        tensor([16.])
    """
    q_target = _check_q(q_next_target, "q_next_target")
    if double:
        if q_next_online is None:
            raise ValueError("double DQN needs q_next_online (pass double=False for plain DQN)")
        q_online = _check_q(q_next_online, "q_next_online")
        if q_online.shape != q_target.shape:
            raise ValueError(
                f"q_next_online has shape {tuple(q_online.shape)} but q_next_target has "
                f"{tuple(q_target.shape)}; they must be the same"
            )
        if q_online.device != q_target.device:
            raise ValueError(
                f"q_next_online is on {q_online.device} but q_next_target on {q_target.device}"
            )
    batch = q_target.shape[:-1]
    device = q_target.device
    mask = as_bool_mask(next_mask, q_target, name="next_mask")
    if not isinstance(reward, Tensor) or not reward.is_floating_point():
        what = reward.dtype if isinstance(reward, Tensor) else type(reward).__name__
        raise ValueError(f"reward must be a floating-point tensor, got {what}")
    if not isinstance(terminated, Tensor) or terminated.is_complex():
        what = terminated.dtype if isinstance(terminated, Tensor) else type(terminated).__name__
        raise ValueError(f"terminated must be a bool (or 0/1 number) tensor, got {what}")
    named: list[tuple[str, Tensor]] = [("reward", reward), ("terminated", terminated)]
    if isinstance(gamma, Tensor):
        if not gamma.is_floating_point():
            raise ValueError(f"a gamma tensor must be floating point, got {gamma.dtype}")
        named.append(("gamma", gamma))
    elif isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise ValueError(f"gamma must be a float or a tensor, got {type(gamma).__name__}")
    elif not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    for name, t in named:
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q_next_target on {device}")
        if not broadcasts_to(t.shape, batch):
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not broadcast to the batch shape "
                f"{tuple(batch)} of q_next_target {tuple(q_target.shape)}"
            )

    done = terminated if terminated.dtype == torch.bool else terminated != 0
    # The value checks, reduced on the device and read back in one go.
    no_valid = ~mask.any(dim=-1)
    bad_rows = torch.broadcast_to(no_valid & ~done, batch)
    checks = [bad_rows.any()]
    if terminated.dtype != torch.bool:
        checks.append(((terminated != 0) & (terminated != 1)).any())
    if isinstance(gamma, Tensor):
        checks.append(((gamma < 0) | (gamma > 1) | gamma.isnan()).any())
    found = torch.stack(checks).tolist()  # the one device-to-host read
    if found[0]:
        raise ValueError(
            f"next_mask has no valid action in row(s) {_rows(bad_rows)} whose transition is "
            f"not terminated: there is no action to bootstrap from {_ROW_HINT}"
        )
    if terminated.dtype != torch.bool and found[1]:
        raise ValueError(f"terminated of dtype {terminated.dtype} must hold only 0 and 1")
    if isinstance(gamma, Tensor) and found[-1]:
        raise ValueError("gamma tensor values must be in [0, 1]")

    return _dqn_target_unchecked(q_online if double else None, q_target, mask, reward, done, gamma)


def _dqn_target_unchecked(
    q_next_online: Tensor | None,
    q_next_target: Tensor,
    mask: Tensor,
    reward: Tensor,
    done: Tensor,
    gamma: float | Tensor,
) -> Tensor:
    """:func:`dqn_target`'s computation without its checks (double DQN iff ``q_next_online``).

    For callers whose inputs are valid by construction (the DQN trainer's replay
    rows, checked when they were stored): ``mask`` and ``done`` bool tensors,
    no non-terminal row without a valid action, ``gamma`` in ``[0, 1]``. No
    device-to-host read.
    """
    with torch.no_grad():
        chooser = q_next_target if q_next_online is None else q_next_online
        best = masked_argmax(chooser, mask).unsqueeze(-1)
        # Gathered from the raw target values: a valid entry's own value; a row
        # with no valid action reads entry 0, which the where below discards.
        bootstrap = q_next_target.gather(-1, best).squeeze(-1)
        dtype = torch.promote_types(q_next_target.dtype, reward.dtype)
        if isinstance(gamma, Tensor):
            dtype = torch.promote_types(dtype, gamma.dtype)
        zero = torch.zeros((), dtype=dtype, device=q_next_target.device)
        bootstrap = torch.where(done, zero, bootstrap.to(dtype))
        # reward, gamma and done broadcast to the batch shape (checked by the
        # public function), so the target has exactly that shape.
        return reward.to(dtype) + gamma * bootstrap


def masked_epsilon_greedy(
    q: Tensor, mask: Tensor | np.ndarray, epsilon: float, generator: torch.Generator
) -> Tensor:
    """Greedy over the valid actions, or with probability ``epsilon`` a uniformly random valid one.

    Each row independently: with probability ``1 - epsilon`` the masked argmax of
    ``q`` (:func:`masked_argmax`), otherwise an action drawn uniformly from the
    row's valid actions. One uniform ``u`` per row decides both: the row
    explores where ``u < epsilon``, and then ``u / epsilon`` (uniform on
    ``[0, 1)`` given that) picks the ``floor(u / epsilon * k)``-th of its ``k``
    valid actions. Only valid actions are ever counted, so an invalid action is
    never chosen, with any ``epsilon``. (One draw per row, not one per action
    plus a coin: acting one env at a time, the draw is most of the cost of
    exploring.)

    The randomness comes from ``generator`` only (never torch's global
    generator): every call draws one uniform per row, whatever ``epsilon``, so
    the generator advances by the same amount each call and equal seeds give
    equal actions.

    Args:
        q: floating ``[*B, n]`` action values.
        mask: bool (or 0/1 integer) tensor or NumPy array broadcastable to
            ``q.shape``, ``True = valid``.
        epsilon: exploration probability in ``[0, 1]``.
        generator: a :class:`torch.Generator` on ``q``'s device type.

    Returns:
        ``int64`` ``[*B]`` actions, on ``q``'s device.

    Raises:
        ValueError: a non-floating ``q``, a mask that does not broadcast to it,
            ``epsilon`` outside ``[0, 1]``, a missing generator or one on another
            device type, or a row with no valid action (naming the flat rows: an
            all-invalid action mask is an environment bug). The last check costs
            one device-to-host read per call.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> q = torch.tensor([[1.0, 9.0, 2.0]])
        >>> masked_epsilon_greedy(q, torch.tensor([[True, False, True]]), 0.0, g)
        tensor([2])
    """
    q = _check_q(q, "q")
    mask = as_bool_mask(mask, q).expand(q.shape)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ValueError(f"epsilon must be a float in [0, 1], got {type(epsilon).__name__}")
    if not 0.0 <= float(epsilon) <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            "masked_epsilon_greedy needs an explicit torch.Generator (got "
            f"{type(generator).__name__}); it never draws from torch's global generator"
        )
    if generator.device.type != q.device.type or (
        q.device.type == "cuda" and generator.device.index != q.device.index
    ):
        raise ValueError(
            f"the generator is on {generator.device} but q on {q.device}: "
            f"use torch.Generator(device={str(q.device)!r})"
        )
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):  # the one device-to-host read
        raise ValueError(f"action mask has no valid action in row(s) {_rows(empty)} {_ROW_HINT}")
    return _masked_epsilon_greedy_unchecked(q, mask, epsilon, generator)


def _explore_draws(
    mask: Tensor, epsilon: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The random half of :func:`masked_epsilon_greedy`: ``(u, explores)``.

    One float32 uniform ``u`` per row (``mask.shape[:-1]``), drawn exactly as
    :func:`masked_epsilon_greedy` draws it; a row explores where ``u < epsilon``
    and then takes :func:`_uniform_valid_action` of the same ``u``. No check and
    no device-to-host read.
    """
    u = torch.rand(mask.shape[:-1], generator=generator, device=mask.device)
    return u, u < epsilon


def _uniform_valid_action(u: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    """The valid action an exploring row takes: the ``floor(u / epsilon * k)``-th of its
    ``k`` valid actions (counting from 0, in index order).

    Given ``u < epsilon``, ``u / epsilon`` is uniform on ``[0, 1)``, so the action is
    uniform over the valid ones; rows that do not explore (``u >= epsilon``, or
    ``epsilon == 0``) get an unused index. ``mask``: bool, a valid entry per row.
    """
    k = mask.sum(dim=-1)
    if epsilon <= 0.0:
        return torch.zeros_like(k)
    # min(.., k - 1): u / epsilon can round up to 1.0 just below epsilon in float32.
    j = torch.minimum((u * (1.0 / epsilon) * k).long(), k - 1)
    # The (j+1)-th valid action's index = how many entries have fewer than j+1 valid
    # entries up to and including them.
    return (mask.cumsum(dim=-1) <= j.unsqueeze(-1)).sum(dim=-1)


def _masked_epsilon_greedy_unchecked(
    q: Tensor, mask: Tensor, epsilon: float, generator: torch.Generator
) -> Tensor:
    """:func:`masked_epsilon_greedy` without its checks (a bool ``mask`` of ``q``'s shape)."""
    u, explore = _explore_draws(mask, epsilon, generator)
    return torch.where(explore, _uniform_valid_action(u, mask, epsilon), masked_argmax(q, mask))
