"""The trainer registry: name -> config class, builder, loader, checkpoint formats.

Every trainer the run harness (:func:`maskrl.agents.runner.run_trainer`) and
``train.py`` can run is one :class:`TrainerSpec` here. :func:`load_trainer`
reads any registered trainer's checkpoint, and
:func:`~maskrl.agents.load_policy` reads the policy out of any registered
format (:func:`checkpoint_formats`). PPO (``"ppo"``) and Actor-Mimic
(``"mimic"``) are registered by :mod:`maskrl.agents.runner`, which holds their
harness hooks; a third trainer registers itself the same way, without an edit
of theirs::

    from maskrl.agents import TrainerSpec, register_trainer

    register_trainer(TrainerSpec(
        name="mytrainer", trainer_class=MyTrainer, config_class=MyConfig,
        build=lambda ctx: MyTrainer(ctx.run.env_ids, ctx.config, ctx.data_parallel),
    ))

See ``docs/trainers.md``. This module imports nothing heavy at load time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RunContext",
    "TrainerSpec",
    "checkpoint_formats",
    "get_trainer",
    "load_trainer",
    "register_trainer",
    "spec_for_format",
    "trainer_names",
    "unregister_trainer",
]


@dataclass
class RunContext:
    """What a trainer's harness hooks see of the run being set up.

    ``run`` is the :class:`~maskrl.agents.runner.RunConfig` (the saved one on a
    resume), ``config`` the trainer's configuration as given, ``options`` the
    trainer-specific run options (e.g. Actor-Mimic's ``experts`` folder; hooks
    may add to them), ``saved`` the run's ``config.json`` on a resume (else
    None), ``run_dir`` the run folder once known, ``main`` whether this process
    writes the run folder (rank 0 of a data-parallel job, or the only process),
    ``trainer`` the trainer once built or loaded.
    """

    run: Any
    config: Any
    stop: Any = None
    data_parallel: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    saved: dict[str, Any] | None = None
    run_dir: Path | None = None
    main: bool = True
    trainer: Any = None


@dataclass(frozen=True)
class TrainerSpec:
    """One registered trainer.

    Args:
        name: its name: the ``train.py`` subcommand and the key of its settings
            in a run's ``config.json``.
        trainer_class: the :class:`~maskrl.agents.base.OnPolicyTrainer`
            subclass; its ``FORMAT`` is the checkpoint format it writes and its
            ``load(path, device=, data_parallel=)`` the loader.
        config_class: its configuration dataclass (``validate``, ``to_dict``,
            ``from_dict``; fields with ``metadata["help"]`` become flags).
        build: ``build(ctx: RunContext) -> trainer``: a new trainer for a new
            run, with its envs (refuse bad input with ``ValueError`` before
            building envs where it can).
        formats: the checkpoint formats it reads (default: its ``FORMAT``
            alone); older formats of the same trainer go here.
        on_resume: ``on_resume(trainer, ctx)``, after the harness loaded the
            trainer of a resumed run (e.g. give it its envs); optional.
        record: ``record(trainer, ctx) -> dict``: entries added to the run's
            ``config.json`` beside ``run`` and the config; optional.
        reuse_evaluation: a resumed run that reached its total and has
            ``eval.json`` returns that evaluation instead of evaluating again.
        help: one line about it.
    """

    name: str
    trainer_class: type[Any]
    config_class: type[Any]
    build: Callable[[RunContext], Any]
    formats: tuple[str, ...] = ()
    on_resume: Callable[[Any, RunContext], None] | None = None
    record: Callable[[Any, RunContext], dict[str, Any]] | None = None
    reuse_evaluation: bool = False
    help: str = ""

    @property
    def checkpoint_format(self) -> str:
        """The format of the checkpoints the trainer writes (its class's ``FORMAT``)."""
        return str(self.trainer_class.FORMAT)

    @property
    def read_formats(self) -> tuple[str, ...]:
        """Every checkpoint format the trainer reads (:attr:`formats`, and the one it writes)."""
        fmts = tuple(self.formats)
        return fmts if self.checkpoint_format in fmts else (*fmts, self.checkpoint_format)

    def load(self, path: str | Path, device: str = "auto", data_parallel: Any = None) -> Any:
        """The trainer saved in ``path`` (its class's ``load``)."""
        return self.trainer_class.load(path, device=device, data_parallel=data_parallel)


_REGISTRY: dict[str, TrainerSpec] = {}
_LOCK = threading.Lock()
_builtins_loaded = False


def _ensure_builtins() -> None:
    """Register PPO and Actor-Mimic (importing :mod:`maskrl.agents.runner` does it)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import maskrl.agents.runner  # noqa: F401  (registers "ppo" and "mimic")


def register_trainer(spec: TrainerSpec) -> TrainerSpec:
    """Add a trainer to the registry; returns ``spec``.

    Raises:
        ValueError: the name, or a checkpoint format it reads, is taken by
            another registered trainer; or the class lacks a string ``FORMAT``.
    """
    if not isinstance(getattr(spec.trainer_class, "FORMAT", None), str):
        raise ValueError(f"trainer {spec.name!r}: {spec.trainer_class.__name__}.FORMAT is not set")
    with _LOCK:
        if spec.name in _REGISTRY:
            raise ValueError(f"a trainer named {spec.name!r} is already registered")
        for other in _REGISTRY.values():
            shared = set(other.read_formats) & set(spec.read_formats)
            if shared:
                raise ValueError(
                    f"trainer {spec.name!r}: checkpoint format(s) {sorted(shared)} are "
                    f"already read by {other.name!r}"
                )
        _REGISTRY[spec.name] = spec
    return spec


def unregister_trainer(name: str) -> None:
    """Remove a trainer from the registry (KeyError if none has that name)."""
    with _LOCK:
        del _REGISTRY[name]


def trainer_names() -> list[str]:
    """The registered trainers' names, in registration order."""
    _ensure_builtins()
    return list(_REGISTRY)


def get_trainer(name: str) -> TrainerSpec:
    """The registered trainer called ``name``.

    Raises:
        ValueError: no trainer has that name (the message lists those that exist).
    """
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"no trainer named {name!r}; registered: {', '.join(_REGISTRY)}") from None


def checkpoint_formats() -> tuple[str, ...]:
    """Every checkpoint format a registered trainer reads (each holds a policy)."""
    _ensure_builtins()
    return tuple(f for spec in _REGISTRY.values() for f in spec.read_formats)


def spec_for_format(fmt: Any) -> TrainerSpec | None:
    """The registered trainer that reads checkpoints of format ``fmt`` (None: no trainer)."""
    _ensure_builtins()
    for spec in _REGISTRY.values():
        if fmt in spec.read_formats:
            return spec
    return None


def load_trainer(path: str | Path, device: str = "auto", data_parallel: Any = None) -> Any:
    """Load any registered trainer's checkpoint, ready to resume (``learn``) or act.

    The trainer is picked by the checkpoint's ``format``. A trainer that needs
    envs to train (PPO) comes back without them when it was saved without a
    record of how to rebuild them; see its ``load``.

    Raises:
        ValueError: a missing or corrupt checkpoint, or one of a format no
            registered trainer reads (the message lists those that are read).
    """
    from maskrl.agents.checkpoint import load_checkpoint

    fmt = load_checkpoint(path).get("format")
    spec = spec_for_format(fmt)
    if spec is None:
        raise ValueError(
            f"checkpoint {path} has format {fmt!r}, which no registered trainer reads "
            f"(registered: {', '.join(checkpoint_formats())})"
        )
    return spec.load(path, device=device, data_parallel=data_parallel)
