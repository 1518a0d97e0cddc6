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
* :class:`FlatParameters` -- a module's parameters and gradients as views of one
  flat tensor each, so zeroing, clipping and the Adam step are one kernel each
  (the small networks of off-policy training spend much of a gradient step in
  per-parameter overhead otherwise).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import nn

from maskrl.device import resolve_device

__all__ = [
    "FlatParameters",
    "NonFiniteError",
    "adam_step",
    "TrainerRNG",
    "check_finite_params",
    "cpu_rollout_mode",
    "linear_schedule",
    "make_adam",
    "make_training_env",
    "optimize_minibatches",
    "resolve_device",
    "torch_threads",
    "trainable_parameters",
    "value_head_parameters",
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


class FlatParameters:
    """A module's trainable parameters as views of one flat tensor, their gradients of another.

    After ``flat = FlatParameters(module)``, every trainable parameter of
    ``module`` is a view into ``flat.param`` (a leaf tensor; give it to the
    optimiser instead of ``module.parameters()``) and its ``.grad`` a view into
    ``flat.param.grad``. Backward passes accumulate into those views in place,
    so :meth:`zero_grad`, :meth:`clip_grad_norm` and one fused Adam step each
    touch one tensor, whatever the number of parameters. The values, the
    module's ``state_dict`` keys and shapes, and the optimiser's arithmetic are
    unchanged (Adam is elementwise); only the memory layout differs.

    The weight of each ``nn.Linear`` is stored transposed (``[in, out]`` in
    memory, still ``[out, in]`` as a tensor): the CPU matrix product
    ``x @ W.T`` of a batch is several times faster from that layout (for the
    MinAtar network's 1024 -> 128 layer at batch 32, about 50 us instead of
    130 us on an AVX-512 core).

    Rules, for the flattening to hold: never set a parameter's ``.grad`` to
    None (use :meth:`zero_grad`, not ``optimizer.zero_grad(set_to_none=True)``),
    never reassign a parameter or move the module to another device or dtype
    afterwards; ``load_state_dict`` copies into the views and is fine.
    Parameters a loss never reaches get zero gradients, so Adam leaves them
    unchanged (their moments stay zero).

    Args:
        module: the module whose trainable parameters to flatten (all of one
            dtype and device).

    Raises:
        ValueError: no trainable parameter, or parameters of several dtypes or
            devices.
    """

    def __init__(self, module: nn.Module) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(module).__name__} has no trainable parameter to flatten")
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) != 1:
            raise ValueError(
                "FlatParameters needs parameters of one dtype and device, got "
                + ", ".join(sorted(f"{d} on {v}" for d, v in kinds))
            )
        transposed = {
            id(m.weight)
            for m in module.modules()
            if isinstance(m, nn.Linear) and m.weight.requires_grad and m.weight.dim() == 2
        }
        self.params = params
        self._transposed = [id(p) in transposed for p in params]
        total = sum(p.numel() for p in params)
        flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        grad = torch.zeros_like(flat)
        for p, view, gview in zip(params, self.views(flat), self.views(grad), strict=True):
            view.copy_(p.detach())
            p.data = view
            p.grad = gview
        #: The flat leaf tensor the optimiser steps (its ``.grad`` is the flat gradient).
        self.param = nn.Parameter(flat)
        self.param.grad = grad

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat tensor laid out as :attr:`param`, one per parameter, in order."""
        out, off = [], 0
        for p, t in zip(self.params, self._transposed, strict=True):
            n = p.numel()
            chunk = flat[off : off + n]
            out.append(chunk.view(p.shape[1], p.shape[0]).t() if t else chunk.view(p.shape))
            off += n
        return out

    @property
    def grad(self) -> torch.Tensor:
        """The flat gradient."""
        assert self.param.grad is not None
        return self.param.grad

    def zero_grad(self) -> None:
        """Zero every parameter's gradient (one kernel)."""
        self.grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Scale the gradients to a total L2 norm of at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does; returns the norm before clipping.

        On the CPU, where reading the coefficient back is free, the gradients are
        left untouched when it is 1 (multiplying by 1.0 changes no bit), which
        saves a pass over them on most steps; elsewhere they are always scaled.
        """
        norm = torch.linalg.vector_norm(self.grad)
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        if self.grad.device.type != "cpu" or coef.item() < 1.0:
            self.grad.mul_(coef)
        return norm

    def flatten_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """An ``Adam`` state dict saved over the separate parameters (in module order),
        as the state dict of an ``Adam`` over :attr:`param`; a flat one is returned as is.

        A parameter without saved moments (it never had a gradient) gets zeros.

        Raises:
            ValueError: the state does not match these parameters.
        """
        groups = state["param_groups"]
        ids = [i for g in groups for i in g["params"]]
        if len(ids) == 1:
            return state
        if len(groups) != 1 or len(ids) != len(self.params):
            raise ValueError(
                f"the optimiser state holds {len(ids)} parameter(s) in {len(groups)} group(s), "
                f"the network {len(self.params)}"
            )
        moments: dict[str, torch.Tensor] = {}
        step = None
        for key in ("exp_avg", "exp_avg_sq"):
            flat = torch.zeros_like(self.param.detach())
            for i, view in zip(ids, self.views(flat), strict=True):
                s = state["state"].get(i)
                if s is not None:
                    if tuple(s[key].shape) != tuple(view.shape):
                        raise ValueError(
                            f"the optimiser state's {key} of parameter {i} has shape "
                            f"{tuple(s[key].shape)}, the network's {tuple(view.shape)}"
                        )
                    view.copy_(s[key])
                    step = s["step"] if step is None else step
            moments[key] = flat
        entry: dict[str, Any] = {}
        if step is not None:
            entry = {"step": step.clone() if isinstance(step, torch.Tensor) else step, **moments}
        return {
            "state": {0: entry} if entry else {},
            "param_groups": [{**groups[0], "params": [0]}],
        }


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``, without torch.optim's per-call bookkeeping where that is safe.

    For an ``Adam`` from :func:`make_adam` over one tensor (such as
    :attr:`FlatParameters.param`) with its fused kernel, plain settings (no
    amsgrad, maximize, capturable, differentiable or decoupled weight decay),
    its state already created and no step hooks, this increments the step
    count and calls the same fused kernel ``optimizer.step()`` calls, with the
    group's current settings: the same arithmetic, bit for bit
    (``tests/test_flat_parameters.py``), without the grouping, state checks and
    hook dispatch that cost about 100 us a call on a CPU core (as much as the
    kernel itself for a 130k-parameter network). Anything else, including the
    first step, goes through ``optimizer.step()``.
    """
    groups = optimizer.param_groups
    if (
        type(optimizer) is not torch.optim.Adam
        or len(groups) != 1
        or len(groups[0]["params"]) != 1
        or not hasattr(torch, "_fused_adam_")
    ):
        optimizer.step()
        return
    g = groups[0]
    p = g["params"][0]
    state = optimizer.state.get(p)
    if (
        not g.get("fused")
        or g.get("amsgrad")
        or g.get("maximize")
        or g.get("capturable")
        or g.get("differentiable")
        or g.get("decoupled_weight_decay")
        or isinstance(g["lr"], torch.Tensor)
        or p.grad is None
        or not state
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or _torch_optimizer._global_optimizer_pre_hooks
        or _torch_optimizer._global_optimizer_post_hooks
    ):
        optimizer.step()
        return
    beta1, beta2 = g["betas"]
    with torch.no_grad():
        state["step"].add_(1)
        torch._fused_adam_(
            [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            amsgrad=False, lr=float(g["lr"]), beta1=float(beta1), beta2=float(beta2),
            weight_decay=float(g["weight_decay"]), eps=float(g["eps"]), maximize=False,
            grad_scale=None, found_inf=None,
        )  # fmt: skip


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


#: Name of the module that holds a network's value output (:mod:`maskrl.networks`).
VALUE_HEAD = "value_head"


def value_head_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``net``'s value head: those of every submodule named ``value_head``."""
    return [p for n, p in net.named_parameters() if VALUE_HEAD in n.split(".")[:-1]]


@contextlib.contextmanager
def trainable_parameters(net: nn.Module, critic_only: bool = False) -> Iterator[list[nn.Parameter]]:
    """The parameters an update steps, for the duration of the ``with`` block.

    ``critic_only=False``: every parameter of ``net`` that requires a gradient.
    ``critic_only=True``: only those of its value head (:func:`value_head_parameters`);
    the others stop requiring a gradient until the block ends, so ``backward``
    leaves their ``.grad`` None and the optimiser (Adam) skips them: their
    weights and optimiser state stay exactly as they were, and so does the
    policy. PPO's ``critic_warmup`` uses this.

    Raises:
        ValueError: ``critic_only`` on a network with no ``value_head`` module.
    """
    if not critic_only:
        yield [p for p in net.parameters() if p.requires_grad]
        return
    critic = {id(p) for p in value_head_parameters(net)}
    if not critic:
        raise ValueError(
            f"critic_warmup needs a network with a {VALUE_HEAD!r} module (the default "
            f"networks have one); {type(net).__name__} has none"
        )
    frozen = [p for p in net.parameters() if p.requires_grad and id(p) not in critic]
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield [p for p in net.parameters() if p.requires_grad]
    finally:
        for p in frozen:
            p.requires_grad_(True)


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
