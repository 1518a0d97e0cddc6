"""Data-parallel training across processes launched by ``torchrun`` (gloo on CPUs, NCCL on GPUs).

One job of ``W`` ranks trains one model. ``--num-envs`` is the job's: each rank
steps ``num_envs / W`` envs (seeded ``seed + rank * num_envs / W + i``, so the
job's envs get exactly the seeds a single process with ``num_envs`` envs would),
collects its own rollout and computes gradients on its own minibatches. The
trainers call this module at a few seams only, and only when they were given a
:class:`DataParallel` -- a single process has none, and runs exactly the code it
always ran:

* :meth:`DataParallel.start` -- at the start of training: rank 0's weights are
  broadcast (every rank starts identical, even with a custom network initialised
  from an unseeded generator), and ranks other than 0 reseed their own sampling
  and minibatch generators from ``(seed, step, rank)``;
* :meth:`DataParallel.all_reduce_grads` -- after ``backward``, before clipping and
  the optimiser step: one flat all-reduce of every gradient (plus one flag per
  parameter, so a parameter no rank's minibatch reached keeps no gradient, as in
  one process), divided by ``W``. Each rank's minibatch is the same size, so the
  result is the gradient of the mean loss over the union of the ranks'
  minibatches, and every rank takes the same optimiser step: the weights stay
  identical without ever being sent again;
* :meth:`DataParallel.normalize_advantages` -- PPO's per-minibatch advantage
  normalisation over the union of the ranks' minibatches (3 numbers all-reduced),
  as one process would normalise that minibatch;
* :meth:`DataParallel.mean_metrics` -- the epoch metrics PPO's ``target_kl``
  early stop reads, averaged, so every rank stops after the same epoch;
* :meth:`DataParallel.sync_update` -- after each update: the losses averaged over
  ranks, the invalid actions summed, the episodes every rank finished gathered
  into every rank's :class:`~maskrl.agents.rollout.EpisodeStats`;
* :meth:`DataParallel.agree_stop` -- after each update: a stop (SIGINT/SIGTERM)
  seen by any rank stops every rank after the same update;
* :meth:`DataParallel.agree_setup` -- once, before training: a setup error on any
  rank (a bad flag, a busy run folder) stops every rank with that one message,
  and every rank adopts rank 0's run folder. Rank 0 alone writes it.

A minibatch in a job of ``W`` ranks is the union of one random minibatch of each
rank's rollout (a sample stratified by rank, of the same size as one process's);
with one minibatch per epoch the update is the single-process update on the
concatenated rollout, to float rounding (``tests/test_distributed.py`` checks it).

Only the command line creates and destroys the process group
(:func:`process_group`); the library never does.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import math
import os
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from maskrl.agents.config import DEFAULT_DIST_TIMEOUT, DistConfig

__all__ = [
    "DEFAULT_DIST_TIMEOUT",
    "DataParallel",
    "DistConfig",
    "SetupFailed",
    "check_world_size",
    "collective_failure",
    "process_group",
    "torchrun_env",
]


class SetupFailed(ValueError):
    """A rank's setup failed; every rank raises this with the failing rank's message.

    ``rank`` is this process's rank: the command line prints it on rank 0 only,
    so the job says it once.
    """

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` from torchrun's environment, or None.

    None when the process was not launched by ``torchrun`` (no ``WORLD_SIZE``)
    or is its only rank (``WORLD_SIZE=1``): a single process.

    Raises:
        ValueError: ``WORLD_SIZE`` is set but ``RANK`` / ``LOCAL_RANK`` are
            missing or not integers (not a torchrun launch).
    """
    world = os.environ.get("WORLD_SIZE")
    if world is None:
        return None
    try:
        w = int(world)
        if w <= 1:
            return None
        rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"WORLD_SIZE={world} is set but RANK and LOCAL_RANK are not both integers ({e}); "
            "launch with torchrun, or unset WORLD_SIZE"
        ) from e
    if not 0 <= rank < w:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={w})")
    return rank, local, w


class DataParallel:
    """This process's place in a data-parallel job, and the collectives the trainers use.

    Args:
        rank, world_size: this process's rank among ``world_size`` (from torchrun).
        device: where the collectives' tensors live (``cuda:LOCAL_RANK`` for NCCL,
            ``cpu`` for gloo).
        group: the process group (None: the default one).

    The process group must be initialised by the caller (the command line does
    it with :func:`process_group`).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device | str = "cpu",
        group: Any = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.group = group
        #: Whether :meth:`agree_setup` has run (after it, no setup collective is pending).
        self.setup_done = False

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run folder and evaluates."""
        return self.rank == 0

    # ------------------------------------------------------------- sharding
    def local_envs(self, num_envs: int, multiple_of: int = 1) -> int:
        """This rank's share of the job's ``num_envs``.

        Raises:
            ValueError: ``num_envs`` is not a multiple of ``world_size * multiple_of``
                (``multiple_of``: the number of games of an Actor-Mimic student, whose
                every rank plays every game equally).
        """
        unit = self.world_size * multiple_of
        if num_envs % unit:
            games = f" x {multiple_of} games" if multiple_of > 1 else ""
            raise ValueError(
                f"num_envs (--num-envs) = {num_envs} must be a multiple of the world size "
                f"{self.world_size}{games} = {unit}: each of the {self.world_size} torchrun "
                "ranks plays an equal share of the job's envs"
            )
        return num_envs // self.world_size

    def check_config(self, config: Any, games: int = 1) -> None:
        """Refuse a trainer config whose envs or minibatches do not split evenly over the ranks.

        Each rank needs a whole share of ``num_envs`` (for ``games`` > 1, an equal
        share of every game's), and ``num_minibatches`` must divide each rank's
        batch ``num_steps * num_envs / world_size``. QAT is refused.

        Raises:
            ValueError: naming the flag and the numbers.
        """
        if getattr(config, "qat", False):
            # Fake quantization observes activation ranges in the forward pass: each
            # rank would keep its own ranges, and the ranks' models would differ.
            raise ValueError(
                "--qat does not train under torchrun (each rank would observe its own "
                "activation ranges); train a QAT model in one process"
            )
        local = config.num_steps * self.local_envs(config.num_envs, games)
        if local % config.num_minibatches:
            raise ValueError(
                f"num_minibatches={config.num_minibatches} (--num-minibatches) does not divide "
                f"each rank's batch num_steps * num_envs / world_size = {config.num_steps} * "
                f"{config.num_envs} / {self.world_size} = {local}"
            )

    def env_seed_offset(self, num_envs: int) -> int:
        """What this rank adds to env seeds: ``rank * num_envs / world_size``."""
        return self.rank * (num_envs // self.world_size)

    def rank_seed(self, seed: int, step: int) -> int:
        """A 63-bit seed for this rank's own generators, from ``(seed, step, rank)``."""
        digest = hashlib.sha256(f"maskrl-ddp/{seed}/{step}/{self.rank}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    # ---------------------------------------------------------- collectives
    def start(self, tensors: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` (weights, buffers) to every rank, in place."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        with torch.no_grad():
            for ts in by_dtype.values():
                flat = torch.cat([t.detach().reshape(-1) for t in ts]).to(self.device)
                dist.broadcast(flat, src=0, group=self.group)
                off = 0
                for t in ts:
                    n = t.numel()
                    t.copy_(flat[off : off + n].view_as(t))
                    off += n

    def all_reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the ranks (one all-reduce per dtype).

        A parameter without a gradient on this rank adds zeros; one that has none
        on any rank is left without one (an optimiser then skips it, as it would
        in one process).
        """
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, ps in by_dtype.items():
            parts = [
                p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=p.device)
                for p in ps
            ]  # fmt: skip
            flags = torch.tensor([p.grad is not None for p in ps], dtype=dtype, device=ps[0].device)
            flat = torch.cat(parts + [flags])
            dist.all_reduce(flat, group=self.group)
            flat /= self.world_size
            had = flat[-len(ps) :].tolist()  # one host sync for all the flags
            off = 0
            for p, h in zip(ps, had, strict=True):
                n = p.numel()
                if h == 0:  # no rank had a gradient for it
                    p.grad = None
                elif p.grad is None:
                    p.grad = flat[off : off + n].view_as(p).clone()
                else:
                    p.grad.copy_(flat[off : off + n].view_as(p))
                off += n

    def normalize_advantages(self, advantages: torch.Tensor) -> torch.Tensor:
        """``(A - mean) / (std + 1e-8)`` over the union of every rank's minibatch.

        The mean and the (unbiased) standard deviation are those of the
        concatenated minibatches, as one process computes them for that minibatch.
        """
        a = advantages.detach().double()
        stats = torch.stack([a.sum(), (a * a).sum(), a.new_tensor(float(a.numel()))])
        stats = stats.to(self.device)
        dist.all_reduce(stats, group=self.group)
        total, sq, n = (float(x) for x in stats.cpu())
        mean = total / n
        var = max(sq - n * mean * mean, 0.0) / max(n - 1.0, 1.0)
        return (advantages - mean) / (math.sqrt(var) + 1e-8)

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every entry averaged over the ranks (the same keys on every rank)."""
        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.cpu(), strict=True)}

    def sync_update(
        self, metrics: dict[str, float], invalid: int, stats: Any, first_new: int
    ) -> tuple[dict[str, float], int]:
        """After an update: average ``metrics``, sum ``invalid``, gather new episodes.

        ``stats`` (an :class:`~maskrl.agents.rollout.EpisodeStats`) holds this rank's
        episodes from index ``first_new`` on as the update's new ones; they are
        replaced by every rank's, in rank order, so each rank's statistics are the
        job's. One collective.

        Returns ``(metrics averaged over ranks, invalid actions of the whole job)``.
        """
        mine = (
            metrics,
            invalid,
            stats.returns[first_new:],
            stats.lengths[first_new:],
            stats.game_ids[first_new:],
        )
        got: list[Any] = [None] * self.world_size
        dist.all_gather_object(got, mine, group=self.group)
        del stats.returns[first_new:], stats.lengths[first_new:], stats.game_ids[first_new:]
        for _, _, r, ln, g in got:
            stats.returns.extend(r)
            stats.lengths.extend(ln)
            stats.game_ids.extend(g)
        keys = list(metrics)
        mean = {k: sum(float(m[k]) for m, *_ in got) / self.world_size for k in keys}
        return mean, sum(int(i) for _, i, *_ in got)

    def agree_stop(self, signum: int | None) -> int | None:
        """The stop any rank saw (its signal number), or None: every rank stops together."""
        t = torch.tensor([signum or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        got = int(t.item())
        return got or None

    def agree_setup(self, error: str | None, value: Any = None) -> Any:
        """Every rank's setup outcome; returns rank 0's ``value``.

        Raises:
            SetupFailed: on every rank when any rank's ``error`` is not None, with
                the first failing rank's message (prefixed ``rank N:`` unless N is 0).
        """
        got: list[Any] = [None] * self.world_size
        dist.all_gather_object(got, (error, value), group=self.group)
        self.setup_done = True
        for r, (err, _) in enumerate(got):
            if err is not None:
                raise SetupFailed(err if r == 0 else f"rank {r}: {err}", self.rank)
        return got[0][1]


def collective_failure(e: BaseException) -> str | None:
    """What to say when ``e`` is a failed collective of torch.distributed (else None).

    A collective fails when another rank died (its connection closed) or did not
    answer within the process group's timeout (``--dist-timeout``).
    """
    if not isinstance(e, RuntimeError):
        return None
    frames = traceback.extract_tb(e.__traceback__)
    if not any(f"torch{os.sep}distributed{os.sep}" in fr.filename for fr in frames):
        return None
    first = " ".join(str(e).split())
    first = first if len(first) <= 240 else first[:237] + "..."
    return (
        "a collective with the other ranks failed: another rank died, or did not answer "
        f"within --dist-timeout ({type(e).__name__}: {first}); the run folder keeps its "
        "last checkpoint"
    )


def check_world_size(
    saved: dict[str, Any], dp: DataParallel | None, run_dir: Any, command: str = "ppo"
) -> None:
    """Refuse to resume a run with another number of ranks than it was trained with.

    ``saved`` is the run's ``config.json`` (no ``world_size``: one process);
    ``command`` (``ppo`` or ``mimic``) goes into the command the message suggests.
    """
    was = int(saved.get("world_size", 1))
    now = 1 if dp is None else dp.world_size
    if was != now:
        how = (
            f"python train.py {command} --resume {run_dir}"
            if was == 1
            else f"{was} ranks in all, e.g. on one node: torchrun --standalone "
            f"--nproc_per_node={was} train.py {command} --resume {run_dir}"
        )
        raise ValueError(
            f"cannot resume: {run_dir} was trained by {was} process(es) and this job has {now}; "
            f"resume it with {how}"
        )


def rank_device(device: str, local_rank: int) -> str:
    """The device of this rank: ``cuda``/``auto`` (with CUDA) -> ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: ``cuda:N`` given explicitly (under torchrun each rank takes
            the GPU of its ``LOCAL_RANK``).
    """
    if device.startswith("cuda:"):
        raise ValueError(
            f"--device {device} under torchrun: each rank uses the GPU of its LOCAL_RANK; "
            "pass --device cuda (or auto)"
        )
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return device


@contextlib.contextmanager
def process_group(device: str, timeout: float) -> Iterator[tuple[DataParallel | None, str]]:
    """Join torchrun's job for one command: ``(DataParallel or None, this rank's device)``.

    Outside torchrun (or with one rank) it yields ``(None, device)`` and does
    nothing. Under torchrun it initialises the default process group (NCCL on
    CUDA, one GPU per rank by ``LOCAL_RANK``; gloo otherwise) with ``timeout``
    seconds for every collective, and destroys it on exit (its threads with it). For the command
    line only: it changes process-wide state (the default group, the current
    CUDA device), restored on exit.

    Raises:
        ValueError: a malformed torchrun environment, ``--device cuda:N``, or more
            ranks on this node than GPUs.
    """
    env = torchrun_env()
    if env is None:
        yield None, device
        return
    rank, local, world = env
    dev = rank_device(device, local)
    previous_cuda: int | None = None
    if dev.startswith("cuda"):
        n = torch.cuda.device_count()
        if local >= n:
            raise ValueError(
                f"LOCAL_RANK={local} but this node has {n} GPU(s): launch at most "
                f"--nproc_per_node={n} ranks per node with --device cuda"
            )
        previous_cuda = torch.cuda.current_device()
        torch.cuda.set_device(local)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    # Imported before the group exists: importing torch._dynamo (which the first
    # optimiser does) while a group exists keeps a reference to it, so that
    # destroy_process_group() cannot free it, its gloo threads outlive Python, and
    # the process can abort at exit (measured with torch 2.13: 1 exit in 7).
    importlib.import_module("torch._dynamo")

    dist.init_process_group(
        backend, timeout=datetime.timedelta(seconds=timeout), rank=rank, world_size=world
    )
    try:
        yield DataParallel(rank, world, dev if backend == "nccl" else "cpu"), dev
    finally:
        dist.destroy_process_group()
        if previous_cuda is not None:
            torch.cuda.set_device(previous_cuda)
