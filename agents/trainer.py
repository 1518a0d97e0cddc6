"""The trainer core that every maskrl trainer (PPO, Actor-Mimic distillation, ...) shares.

A trainer collects data and computes a loss; everything else is here, once:

* :class:`TrainerRNG` -- the trainer's own random generators (sampling on the
  training device, minibatch permutations), saved and restored with its
  checkpoint. No trainer ever reseeds or reads torch's global generator, so a
  program that embeds maskrl (or loads five experts) keeps its own random
  stream.
* :func:`optimize_minibatches` -- epochs x shuffled minibatches of a loss
  function: ``zero_grad``, ``backward``, gradient clipping, optimiser step,
  early stopping, averaged metrics; it stops with :class:`NonFiniteError`
  (naming the loss terms) *before* a non-finite loss or gradient reaches the
  weights.
* :func:`linear_schedule` -- the learning-rate annealing every trainer uses.
* :func:`cpu_rollout_mode` and :func:`torch_threads` -- process-wide torch
  settings changed for a trainer's own hot path only, and restored afterwards.
* :func:`check_finite_params` -- what a checkpoint save and load refuse.
* :func:`make_adam` -- Adam with the fused kernel where the build has one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from maskrl.device import resolve_device

__all__ = [
    "NonFiniteError",
    "TrainerRNG",
    "check_finite_params",
    "cpu_rollout_mode",
    "linear_schedule",
    "make_adam",
    "make_training_env",
    "optimize_minibatches",
    "resolve_device",
    "torch_threads",
]


class NonFiniteError(ValueError):
    """Training met a non-finite value (reward, observation, loss or gradient).

    Raised before the value reaches the weights, so the model in memory and the
    last checkpoint on disk stay finite.
    """


class TrainerRNG:
    """A trainer's own random generators (both ``torch.Generator``).

    ``device_gen``: draws on the training device (action sampling, minibatch
    permutations); ``host_gen``: draws on the host. On a CPU device they are
    one and the same generator.

    Args:
        seed: seeds both generators.
        device: the training device.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.host_gen = torch.Generator().manual_seed(seed)
        self.device_gen = (
            self.host_gen if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
        )

    def reseed(self, seed: int) -> None:
        """Seed both generators with ``seed`` (a data-parallel rank's own stream)."""
        self.host_gen.manual_seed(seed)
        if self.device_gen is not self.host_gen:
            self.device_gen.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors (CPU ``uint8``), loadable with ``weights_only=True``."""
        out = {"cpu": self.host_gen.get_state()}
        if self.device_gen is not self.host_gen:
            out["device"] = self.device_gen.get_state()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generators. A CUDA state saved without a device generator is kept as is."""
        self.host_gen.set_state(state["cpu"])
        if self.device_gen is not self.host_gen and "device" in state:
            self.device_gen.set_state(state["device"])


def linear_schedule(start: float, step: int, total: int) -> float:
    """``start * (1 - step / total)``, floored at 0: linear annealing over ``total`` steps."""
    return start * max(0.0, 1.0 - step / max(total, 1))


def make_adam(params: Iterable[nn.Parameter], lr: float, eps: float) -> torch.optim.Optimizer:
    """Adam, using the fused kernel where this torch build has one for the device."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def optimize_minibatches(
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    batch_size: int,
    num_minibatches: int,
    num_epochs: int,
    max_grad_norm: float | None,
    generator: torch.Generator,
    device: torch.device,
    stop_after_epoch: Callable[[dict[str, float]], bool] | None = None,
    data_parallel: Any = None,
) -> dict[str, float]:
    """Epochs of shuffled minibatches: the one optimisation loop of every trainer.

    Args:
        loss_fn: ``loss_fn(indices [M]) -> (loss, aux)`` for the minibatch with those
            batch indices; ``aux`` holds detached scalars to average and report.
        optimizer, params: what to step, and the parameters whose gradient is clipped.
        batch_size: samples in the batch (indices ``0 .. batch_size - 1``).
        num_minibatches: minibatches per epoch (``batch_size // num_minibatches`` each;
            the config checks that it divides).
        num_epochs: passes over the batch.
        max_grad_norm: global gradient-norm clip (None: no clipping).
        generator: draws the permutations (the trainer's own, never torch's global one).
        device: where the permutations live.
        stop_after_epoch: called with the epoch's mean ``aux``; True stops early
            (PPO's ``target_kl``).
        data_parallel: a :class:`~maskrl.agents.distributed.DataParallel` (None: one
            process): gradients are averaged over its ranks after ``backward``, and
            ``stop_after_epoch`` reads the epoch's ``aux`` averaged over them, so
            every rank takes the same steps.

    Returns:
        The mean of each ``aux`` entry over the minibatches done, plus
        ``"grad_norm"`` (the mean pre-clipping gradient norm) and ``"epochs"``
        (how many ran).

    Raises:
        NonFiniteError: the loss or the gradient of a minibatch is not finite; the
            message names the non-finite ``aux`` terms. Checked before the step,
            so the weights are never updated with it.
    """
    mb_size = batch_size // num_minibatches
    sums: dict[str, torch.Tensor] = {}
    count = 0
    epochs_done = 0
    for epoch in range(num_epochs):
        perm = torch.randperm(batch_size, device=device, generator=generator)
        epoch_sums: dict[str, torch.Tensor] = {}
        for k in range(num_minibatches):
            idx = perm[k * mb_size : (k + 1) * mb_size]
            loss, aux = loss_fn(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if data_parallel is not None:
                data_parallel.all_reduce_grads(params)
            norm = nn.utils.clip_grad_norm_(
                params, max_grad_norm if max_grad_norm is not None else math.inf
            )
            # One host sync per minibatch: the price of never stepping with NaN.
            if not bool(torch.isfinite(loss.detach() + norm)):
                bad = [n for n, v in aux.items() if not bool(torch.isfinite(v).all())]
                what = "loss" if not bool(torch.isfinite(loss)) else "gradient"
                raise NonFiniteError(
                    f"non-finite {what} in epoch {epoch}, minibatch {k}"
                    + (f" (non-finite terms: {', '.join(bad)})" if bad else "")
                    + "; the weights were not updated with it"
                )
            optimizer.step()
            aux = {**aux, "grad_norm": norm.detach()}
            for name, v in aux.items():
                sums[name] = sums.get(name, 0) + v.detach()
                epoch_sums[name] = epoch_sums.get(name, 0) + v.detach()
            count += 1
        epochs_done += 1
        if stop_after_epoch is not None:
            epoch_mean = {n: float(v) / num_minibatches for n, v in epoch_sums.items()}
            if data_parallel is not None:
                epoch_mean = data_parallel.mean_metrics(epoch_mean)
            if stop_after_epoch(epoch_mean):
                break
    out = {n: float(v) / max(count, 1) for n, v in sums.items()}
    out["epochs"] = float(epochs_done)
    return out


def check_finite_params(module: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a non-finite value, or None."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite_state(state: Any, prefix: str = "") -> str | None:
    """The key path of the first non-finite floating tensor in nested dicts/lists, or None."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(state, dict):
        items: Iterable[tuple[Any, Any]] = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for k, v in items:
        bad = check_finite_state(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


@contextlib.contextmanager
def cpu_rollout_mode(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Settings for a rollout's many small forward passes on a CPU, restored on exit.

    With a batch of ``num_envs`` observations, per-call overhead dominates:
    oneDNN (mkldnn) convolutions and a multi-threaded pool cost more than they
    save at that size (measured on the MinAtar CNN: about 100 vs 170 us a step
    with oneDNN off), while the update's minibatches of hundreds of samples gain
    from both. So the rollout runs single-threaded without oneDNN and the
    previous settings come back when it ends (also on an exception). GPU
    rollouts are unchanged.
    """
    if device.type != "cpu" or not enabled:
        yield
        return
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]
        torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` CPU threads for torch inside the block and restore the count after (None: no change)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_training_env(
    env_ids: list[str],
    num_envs: int,
    seed: int,
    backend: str = "numpy",
    device: torch.device | None = None,
    multigame: bool = False,
    invalid_actions: str = "mask",
    invalid_penalty: float = 0.0,
    flicker: float = 0.0,
) -> Any:
    """The vector env a trainer steps: one id -> ``make_vec``, several -> ``make_multigame_vec``.

    ``backend="torch"`` builds the batched torch games on ``device`` (MinAtar ids
    only); ``"numpy"`` the Python-stepped Gymnasium envs. ``multigame=True``
    builds the multi-game env even for one id (for a multi-game network that
    plays one game, such as a one-expert Actor-Mimic student).

    ``invalid_actions`` ``"penalty"`` or ``"none"`` (the masking ablation) wraps
    each env in :class:`maskrl.envs.InvalidActionPolicy` with that mode (and
    ``invalid_penalty``): the infos then carry all-valid masks, the true ones
    and ``"invalid_action"``. ``"mask"`` builds exactly the env it always did.

    ``flicker > 0`` wraps each env in :class:`maskrl.envs.Flicker` (outside any
    ``InvalidActionPolicy``): each observation is blanked with that probability.

    Raises:
        ValueError: repeated ids; ``"penalty"``/``"none"`` or ``flicker > 0`` with
            the torch backend or several games (the multi-game env takes no wrapper).
    """
    from maskrl.envs import InvalidActionPolicy, make_multigame_vec, make_vec

    if len(set(env_ids)) != len(env_ids):
        dup = sorted({e for e in env_ids if env_ids.count(e) > 1})
        raise ValueError(f"env ids must be distinct; repeated: {', '.join(dup)}")
    extra: dict[str, Any] = {}
    if backend != "numpy":
        dev = device if device is not None else torch.device("cpu")
        # The rollout copies each step's observations before the next step, so the
        # env may reuse its observation buffers (copy_obs=False: much faster on CPU).
        extra = {"backend": backend, "device": str(dev), "copy_obs": False}
    # The envs' default (check_actions=False) accepts a masked action and applies
    # the game's rule for it, with no device sync per step; the trainer never
    # samples one and counts any it took, once per rollout (invalid_action_rate).
    if invalid_actions != "mask":
        if backend != "numpy" or len(env_ids) != 1 or multigame:
            raise ValueError(
                f"--invalid-actions {invalid_actions} needs --env-backend numpy and one "
                f"single-game --env (got backend {backend!r}, {len(env_ids)} game(s)"
                f"{', a multi-game network' if multigame else ''})"
            )
        penalty = {"penalty": invalid_penalty} if invalid_actions == "penalty" else {}
        extra["wrapper"] = partial(InvalidActionPolicy, mode=invalid_actions, **penalty)
    if flicker:
        if backend != "numpy" or len(env_ids) != 1 or multigame:
            raise ValueError(
                f"--flicker {flicker} needs --env-backend numpy and one single-game --env "
                f"(got backend {backend!r}, {len(env_ids)} game(s)"
                f"{', a multi-game network' if multigame else ''})"
            )
        from maskrl.envs.flicker import flicker_wrapper

        extra["wrapper"] = flicker_wrapper(flicker, inner=extra.get("wrapper"))
    if len(env_ids) == 1 and not multigame:
        return make_vec(env_ids[0], num_envs, seed=seed, **extra)
    return make_multigame_vec(env_ids, num_envs, seed=seed, **extra)
