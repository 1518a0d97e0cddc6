"""maskrl command line: train and evaluate masked agents (``maskrl ...`` or ``python train.py ...``).

    python train.py                      # the default job: masked PPO on MinAtar Breakout
    python train.py ppo --env maskrl/MinAtar-SpaceInvaders-v0 --total-timesteps 500000
    python train.py ppo --env maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-Asterix-v0   # one multi-game agent
    python train.py ppo --resume runs/NAME
    python train.py eval --checkpoint runs/NAME/checkpoint.pt --episodes 20
    python train.py plot runs/A runs/B --out curves.png   # learning curves (maskrl[plots])
    tensorboard --logdir runs

Every training flag is a field of a configuration dataclass (all in
maskrl.agents.config: PPOConfig, MimicConfig, RunConfig, ExpertsConfig,
DistConfig), so a flag's default is its field's; ``--help`` shows each one's
documentation.
Bad input prints one line and exits with status 2; Ctrl-C (or SIGTERM, as a
cluster scheduler sends before it kills a job) finishes the current update,
saves a checkpoint and exits with status 130 (143 for SIGTERM). Outside the
update loop -- building envs, the final evaluation, ``eval`` -- there is nothing
to finish: the command stops at once, with the same statuses, and says what
was saved. Every "continue with" command it prints runs as printed.

The installed command ``maskrl`` (:func:`maskrl_main`) and ``train.py``
(:func:`main`) are the same parser.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import types
import typing
from collections.abc import Iterator
from typing import Any

from maskrl.stop import StopRequest

#: Most episodes ``eval --episodes`` plays per game (maskrl.agents.evaluation.MAX_EPISODES;
#: a test keeps the two equal, since this module imports no maskrl module at load time).
MAX_EPISODES = 10_000_000

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_optional(inner: type) -> Any:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null", "") else inner(s)

    parse.__name__ = inner.__name__
    return parse


#: A field help that already says what its default means ("(None: the defaults, ...)",
#: "(default: 1,000,000 for a new run; ...)") gets no second "(default: ...)".
_STATES_DEFAULT = re.compile(r"\((?:default|None):")


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: dict[str, Any] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> None:
    """Add one flag per dataclass field, with the field's ``metadata["help"]`` as help."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = hints[f.name]
        default = (defaults or {}).get(f.name, f.default)
        help_ = f.metadata.get("help", "")
        if not _STATES_DEFAULT.search(help_):  # e.g. "(None: 128)" says it already
            help_ = f"{help_} (default: {default})"
        args = typing.get_args(tp)
        optional = (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        if f.metadata.get("required"):
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                type=base,
                required=True,
                help=f.metadata.get("help", ""),
                metavar=base.__name__.upper(),
            )
        elif base is bool:
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_,
            )
        else:
            conv = _parse_optional(base) if optional else base
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                type=conv,
                default=default,
                help=help_,
                metavar=base.__name__.upper(),
            )


def _pick(ns: argparse.Namespace, cls: type) -> Any:
    return cls(
        **{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    )


#: The subcommands written out here; every other registered trainer's is built from the registry.
_BUILTIN_COMMANDS = frozenset({"ppo", "experts", "mimic", "eval", "plot", "pack-experts"})


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The command line's parser (``prog``: the name it shows, ``train.py`` or ``maskrl``)."""
    from maskrl.agents.config import (
        PRESETS,
        DistConfig,
        ExpertsConfig,
        MimicConfig,
        PPOConfig,
        RunConfig,
    )

    # allow_abbrev=False: an abbreviated flag would escape the explicit-flag
    # detection that presets and --resume rely on.
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Train and evaluate action-masked RL agents. With no arguments: "
        "masked PPO on maskrl/MinAtar-Breakout-v0 with the default settings.",
    )
    sub = parser.add_subparsers(dest="command")
    ppo = sub.add_parser(
        "ppo",
        allow_abbrev=False,
        help="train masked PPO",
        description="Train masked PPO; writes runs/<name>/.",
    )
    add_dataclass_args(ppo, RunConfig)
    add_dataclass_args(ppo, PPOConfig)
    add_dataclass_args(ppo, DistConfig)
    ex = sub.add_parser(
        "experts",
        allow_abbrev=False,
        help="train one masked-PPO expert per game (for Actor-Mimic)",
        description="Train one masked-PPO expert per game into runs/<name>/<game>/ and write "
        "runs/<name>/experts.json with each expert's evaluated mean return. A game whose run "
        "finished is kept; an interrupted one is resumed.",
    )
    add_dataclass_args(ex, ExpertsConfig)
    # Experts are masked teachers: the masking ablation is `ppo`'s alone.
    add_dataclass_args(
        ex, PPOConfig, exclude=frozenset({"invalid_actions", "invalid_penalty", "flicker"})
    )
    mi = sub.add_parser(
        "mimic",
        allow_abbrev=False,
        help="distil per-game experts into one multi-game student (Actor-Mimic)",
        description="Actor-Mimic: the student plays all the experts' games at once and "
        "regresses onto each expert's temperature softmax over the game's valid actions "
        "(plus beta x feature regression); writes runs/<name>/.",
    )
    mi.add_argument("--experts", default=None, help="a folder written by train.py experts")
    mi.add_argument(
        "--finetune-ppo",
        type=int,
        default=None,
        help="then train the student this many more steps with multi-game masked PPO, "
        "in <run>/finetune, at most 1e13 (default: 0; on --resume, the run's own; "
        "--resume continues the fine-tune once the distillation is done)",
    )
    mi.add_argument(
        "--finetune-preset",
        default=None,
        choices=sorted(PRESETS),
        help="PPO settings preset of the fine-tune (default: PPO's defaults; on --resume, "
        "the run's own)",
    )
    mi.add_argument(
        "--finetune-learning-rate",
        type=float,
        default=None,
        help="Adam learning rate of the fine-tune (default: a tenth of the preset's: a "
        "from-scratch rate undoes the distilled policy)",
    )
    mi.add_argument(
        "--finetune-critic-warmup",
        type=int,
        default=None,
        help="env steps at the start of the fine-tune that train only its value head "
        "(PPO's --critic-warmup; default: 0): for a student distilled without "
        "--value-coef, whose critic starts untrained",
    )
    add_dataclass_args(mi, RunConfig, exclude=frozenset({"env", "preset"}))
    add_dataclass_args(mi, MimicConfig)
    add_dataclass_args(mi, DistConfig)
    # Any other registered trainer (maskrl.agents.register_trainer) gets its own
    # subcommand: the run's flags, its config's flags, torchrun's.
    from maskrl.agents.registry import get_trainer, trainer_names

    for name in trainer_names():
        if name in _BUILTIN_COMMANDS:
            continue
        spec = get_trainer(name)
        tr = sub.add_parser(
            name,
            allow_abbrev=False,
            help=spec.help or f"train {name}",
            description=f"Train {spec.help or name}; writes runs/<name>/.",
        )
        add_dataclass_args(tr, RunConfig, exclude=frozenset({"preset", "init_from", "init_layers"}))
        add_dataclass_args(tr, spec.config_class)
        add_dataclass_args(tr, DistConfig)
    ev = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="evaluate a checkpoint",
        description="Evaluate a saved agent.",
    )
    ev.add_argument(
        "--checkpoint", required=True, help="path to a checkpoint.pt written by train.py ppo"
    )
    ev.add_argument(
        "--episodes",
        type=int,
        default=20,
        help=f"episodes per game, at most {MAX_EPISODES:,} (default: 20)",
    )
    ev.add_argument(
        "--env",
        default=None,
        help="env id(s), comma-separated (default: the ones trained on; a multi-game "
        "agent: all its games or some of them)",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the evaluation envs (default: 0)")
    ev.add_argument(
        "--num-envs",
        type=int,
        default=None,
        help="parallel envs, split evenly over the games (default: up to 8 per game); "
        "the episodes played depend on it, so compare evaluations made with the same value",
    )
    ev.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (episodes finished, on stderr)",
    )
    ev.add_argument(
        "--deterministic", action="store_true", help="take the most probable valid action"
    )
    ev.add_argument(
        "--no-mask",
        dest="use_mask",
        action="store_false",
        help="play without the action mask (every action offered; an invalid one gets the "
        "env's own rule) and report the share of invalid actions: what the mask buys",
    )
    ev.add_argument(
        "--flicker",
        type=float,
        default=None,
        metavar="P",
        help="blank each observation with probability P in [0, 1) (maskrl.envs.Flicker; "
        "default: the probability the checkpoint was trained with, 0 if none)",
    )
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    ev.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch during the evaluation (default: torch's own, one per core); "
        "1 when several jobs share the CPU",
    )
    ev.add_argument("--output", default=None, help="also write the summary to this JSON file")
    ev.add_argument(
        "--int8",
        action="store_true",
        help="run the policy converted to int8 kernels (CPU): a QAT checkpoint as trained, "
        "a float one after post-training calibration on its own env",
    )
    pl = sub.add_parser(
        "plot",
        allow_abbrev=False,
        help="draw learning curves from runs' tensorboard files",
        description="Draw the runs' learning curves (one panel per game, one line per run) "
        "from their tensorboard event files into an image; needs matplotlib (the optional "
        "extra maskrl[plots]). See maskrl.plots.",
    )
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run folders (runs/<name>)")
    pl.add_argument(
        "--tag",
        default="charts/episodic_return",
        help="scalar to draw; per game for multi-game runs (default: charts/episodic_return)",
    )
    pl.add_argument("--out", default="curves.png", help="image file to write (default: curves.png)")
    pl.add_argument(
        "--smooth", type=int, default=1, help="trailing mean over this many points (default: 1)"
    )
    pl.add_argument(
        "--x", choices=("steps", "time"), default="steps", help="x axis: env steps or wall time"
    )
    pl.add_argument(
        "--mark",
        action="append",
        default=[],
        metavar="GAME=VALUE[:LABEL]",
        help="a dashed horizontal line at VALUE in GAME's panel (e.g. Breakout=28:published); "
        "repeatable; GAME is a panel's name or a part of exactly one",
    )
    pl.add_argument(
        "--group",
        action="store_true",
        help="one line per setting: runs named alike up to a -s<seed> suffix drawn as their "
        "mean and min-max band (an expert, runs/NAME/<game>, is named by NAME)",
    )
    pl.add_argument("--title", default=None, help="figure title")
    pk = sub.add_parser(
        "pack-experts",
        allow_abbrev=False,
        help="copy an experts folder, policies only, to share or commit",
        description="Copy the experts of a folder written by train.py experts into OUT with "
        "policy-only checkpoints (no optimizer state: about a third of the size). OUT is an "
        "experts folder for train.py mimic --experts; its checkpoints evaluate and serve "
        "--init-from, but cannot be resumed.",
    )
    pk.add_argument("experts", metavar="EXPERTS", help="a folder written by train.py experts")
    pk.add_argument("--out", required=True, help="the new folder (must not exist, or be empty)")
    return parser


class _Signals(StopRequest):
    """The command line's SIGINT/SIGTERM handlers, and the run's stop request.

    In the update loop (phase ``"training"``) the first signal asks the run to
    stop after its current update (it then saves and exits 130 / 143) and a
    second SIGINT stops at once. In every other phase -- loading and building
    envs, the final evaluation, ``eval`` -- there is nothing to finish, so the
    first signal stops at once (``KeyboardInterrupt``, which the harness turns
    into a message saying what is saved).

    Installed as the very first thing ``main`` does -- before torch and any
    environment are imported (MinAtar imports matplotlib inside a bare
    ``try/except`` that would swallow a KeyboardInterrupt: the request stays set
    and the harness reads it before training) -- and restored when ``main``
    returns. Only the command line installs handlers; the library takes a
    :class:`~maskrl.stop.StopRequest`, which this object is (a torch-free
    module, so it loads before torch too).
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: dict[int, Any] = {}
        #: The phase a signal stopped at once (None: none did).
        self.stopped_in: str | None = None
        #: The command has said how it ends (a torchrun rank whose peer died): a
        #: signal now (torchrun ends the job's other ranks with SIGTERM) adds nothing.
        self.ending = False

    @property
    def stop(self) -> _Signals:
        return self

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """:meth:`StopRequest.during`; in a torchrun job, an error out of training ends the rank.

        When a peer dies, this rank's next collective raises and the error unwinds
        through ``"training"`` (the phase goes back to ``"setup"``) before the
        command reports it; torchrun's SIGTERM to this rank can land in between
        and must not be reported as a stop before training started.
        """
        try:
            with super().during(phase):
                yield
        except BaseException:
            if phase == "training" and _torchrun_world() > 1:
                self.ending = True
            raise

    def _handle(self, signum: int, frame: Any) -> None:
        if self.ending:
            return
        first = not self.requested
        self.request(signum)
        job = _torchrun_world() > 1
        if self.phase == "training" and first:
            name = _signal_name(signum)
            if _torchrun_rank() > 0:
                return  # rank 0 says it for the job
            print(
                f"\n{name}: every rank stops after the current update; rank 0 saves a checkpoint"
                if job
                else f"\n{name}: stopping after the current update and saving a checkpoint "
                "(press Ctrl-C again to stop at once, without saving)",
                file=sys.stderr,
            )
            return
        if (signum == signal.SIGTERM or job) and (self.phase == "training" or not first):
            # A repeated SIGTERM: the update in progress still finishes and saves, and a
            # stop under way goes on. In a torchrun job any signal: torchrun forwards a
            # Ctrl-C to ranks the terminal has signalled already, and signals the ranks
            # still running when one ends first (it kills them 30 s later).
            return
        if self.phase == "loading":
            return  # read when the step ends (see maskrl.agents.runner._check_fits_first)
        self.stopped_in = self.phase
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is threading.main_thread():
            for sig in (int(signal.SIGINT), int(signal.SIGTERM)):
                current = signal.getsignal(sig)
                # A signal someone chose to ignore stays ignored.
                if current in (signal.default_int_handler, signal.SIG_DFL):
                    self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, prev in self._previous.items():
                if signal.getsignal(sig) == self._handle:  # not replaced since
                    signal.signal(sig, prev)
            self._previous.clear()


def _torchrun_world() -> int:
    """The number of ranks of the torchrun job this process is in (1 otherwise; torch-free)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _torchrun_rank() -> int:
    """This process's rank in a torchrun job of several ranks (0 otherwise; torch-free)."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except (KeyError, ValueError):
        return 0


def _signal_name(signum: int | None) -> str:
    if signum is None or signum == signal.SIGINT:
        return "Ctrl-C"
    return str(signal.Signals(signum).name)


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``prog`` is how the program is called, in its messages and in the commands
    it prints (``train.py`` prints ``python train.py ...``).
    """
    signals = _Signals()
    with signals.installed():
        try:
            return _main(argv, signals, prog)
        except KeyboardInterrupt:
            where = {
                "setup": "before training started; nothing new was saved",
                "evaluation": "during the evaluation; nothing was written",
            }.get(signals.stopped_in or signals.phase, "at once; nothing more was saved")
            if _torchrun_rank() == 0:  # in a torchrun job, rank 0 says it for the job
                print(f"{prog}: stopped ({_signal_name(signals.signum)}) {where}", file=sys.stderr)
            return EXIT_TERMINATED if signals.signum == signal.SIGTERM else EXIT_INTERRUPTED


def maskrl_main(argv: list[str] | None = None) -> int:
    """The ``maskrl`` console command: :func:`main` under the name ``maskrl``."""
    return main(argv, prog="maskrl")


def _command(prog: str) -> str:
    """How a printed command starts: ``python train.py`` or ``maskrl``."""
    return "python train.py" if prog == "train.py" else prog


def _check_seed(seed: int, flag: str = "--seed") -> None:
    from maskrl.agents.config import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{flag} must be in [0, {MAX_SEED}], got {seed}")


def _check_output(path: str | None) -> None:
    """Refuse an --output that cannot be written before any work is done."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"--output {path} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"--output {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--output {path}: folder {parent} is not writable")


def _main(argv: list[str] | None, signals: _Signals, prog: str = "train.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["ppo"]  # the default real job
    # eval: the whole command is an evaluation, parsing included (building the parser
    # imports torch, which takes seconds): a signal stops it at once and says so.
    phase = signals.during("evaluation") if argv[0] == "eval" else contextlib.nullcontext()
    with phase:
        parser = build_parser(prog)
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return EXIT_USAGE
        try:
            ranks = _ranks(ns, prog)
        except ValueError as e:
            print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_USAGE
        with ranks as dp:
            return _dispatch(ns, argv, signals, prog, dp)


def _ranks(ns: argparse.Namespace, prog: str) -> Any:
    """The process group of a torchrun job for this command (a null context in one process).

    ``ppo`` and ``mimic`` train data-parallel under torchrun; ``--device`` becomes
    this rank's (``cuda:LOCAL_RANK``). Other commands run in one process.

    Raises:
        ValueError: a bad ``--dist-timeout``, a malformed torchrun environment, a
            device a rank cannot take, or a command that does not run under torchrun.
    """
    if _torchrun_rank() == 0 and "WORLD_SIZE" not in os.environ:
        return contextlib.nullcontext(None)  # one process: torch.distributed is never touched
    from maskrl.agents.distributed import DistConfig, process_group, rank_device, torchrun_env

    env = torchrun_env()
    if env is None:
        return contextlib.nullcontext(None)
    if ns.command not in ("ppo", "mimic"):
        raise ValueError(
            f"{ns.command} runs in one process: run {_command(prog)} {ns.command} without torchrun "
            "(only ppo and mimic train data-parallel)"
        )
    dist_cfg = _pick(ns, DistConfig)
    dist_cfg.validate()
    rank_device(ns.device, env[1])  # refuses --device cuda:N before the group is joined

    @contextlib.contextmanager
    def joined() -> Iterator[Any]:
        try:
            with process_group(ns.device, dist_cfg.dist_timeout) as (dp, device):
                ns.device = device
                yield dp
        finally:
            # When one rank exits with a non-zero status (143 after a stop), torchrun
            # sends SIGTERM to the ranks still running: this rank is exiting, and its
            # status stays the one the run decided.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return joined()


def _dispatch(
    ns: argparse.Namespace, argv: list[str], signals: _Signals, prog: str, dp: Any = None
) -> int:
    from maskrl.agents.runner import TrainingInterrupted

    rank0 = dp is None or dp.is_main  # in a torchrun job, rank 0 prints for the job
    ranks: dict[str, Any] = {} if dp is None else {"data_parallel": dp}

    try:
        if ns.command == "ppo":
            from maskrl.agents.config import PPOConfig
            from maskrl.agents.runner import RunConfig

            run_cfg, ppo_cfg = _pick(ns, RunConfig), _pick(ns, PPOConfig)
            given = _explicit_flags(argv)
            if run_cfg.preset is not None:
                ppo_cfg = apply_preset(ppo_cfg, run_cfg.preset, keep=given)
            _check_init_flags(given, run_cfg)
            if run_cfg.resume:
                _check_resume_flags(given)
            _check_qat_flags(given, ppo_cfg)
            summary = _runner().train_ppo(run_cfg, ppo_cfg, signals.stop, **ranks)
            if rank0:
                _print_summary(summary)
            return 0
        if ns.command == "experts":
            return _experts(ns, argv, signals)
        if ns.command == "mimic":
            from maskrl.agents.mimic import MimicConfig
            from maskrl.agents.runner import RunConfig

            run_cfg, mimic_cfg = _pick(ns, RunConfig), _pick(ns, MimicConfig)
            given = _explicit_flags(argv)
            _check_init_flags(given, run_cfg)
            if run_cfg.resume:
                _check_resume_flags(given, extra={"finetune_ppo"})
            _check_qat_flags(given, mimic_cfg)
            fine_cfg = None
            if not run_cfg.resume:
                fine_cfg = _runner().finetune_ppo_config(
                    ns.finetune_preset, ns.finetune_learning_rate, ns.finetune_critic_warmup
                )
            summary = _runner().train_mimic(
                run_cfg, mimic_cfg, ns.experts, signals.stop, finetune_ppo=ns.finetune_ppo,
                ppo_config=fine_cfg, **ranks,
            )  # fmt: skip
            if not rank0:
                return 0
            _print_summary(summary)
            if "finetune" in summary:
                print("after PPO fine-tuning:")
                _print_summary(summary["finetune"])
            return 0
        if ns.command == "eval":
            return _eval(ns, prog, signals)
        if ns.command == "pack-experts":
            entries = _runner().pack_experts(ns.experts, ns.out)
            for e in entries:
                size = os.path.getsize(os.path.join(ns.out, e["checkpoint"]))
                print(f"packed {e['env_id']}: {ns.out}/{e['checkpoint']} ({size / 1e6:.2f} MB)")
            print(f"experts: {ns.out}/experts.json")
            return 0
        if ns.command == "plot":
            from maskrl.plots import parse_mark, write_plot

            marks = [parse_mark(m) for m in ns.mark]
            out = write_plot(ns.runs, ns.out, ns.tag, ns.x, ns.smooth, ns.group, ns.title, marks)
            print(f"wrote {out}")
            return 0
        # A trainer registered beyond the built-in ones: the shared run harness.
        from maskrl.agents.config import RunConfig
        from maskrl.agents.registry import get_trainer

        spec = get_trainer(ns.command)
        run_cfg, cfg = _pick(ns, RunConfig), _pick(ns, spec.config_class)
        given = _explicit_flags(argv)
        if run_cfg.resume:
            _check_resume_flags(given)
        if hasattr(cfg, "qat"):
            _check_qat_flags(given, cfg)
        summary = _runner().run_trainer(ns.command, run_cfg, cfg, signals.stop, **ranks)
        if rank0:
            _print_summary(summary)
        return 0
    except TrainingInterrupted as e:
        if ns.command == "experts":
            # The experts command resumes what it left: the same command continues it.
            advice = f"; continue with: {_command(prog)} {shlex.join(argv)}"
        elif e.resume is not None:
            how = _command(prog) if dp is None else _torchrun_command(prog)
            advice = f"; continue with: {how} {ns.command} --resume {e.resume}"
        else:
            advice = " (start a new run)"
        if rank0:
            print(f"{prog}: {e}{advice}", file=sys.stderr)
        return EXIT_TERMINATED if e.signum == signal.SIGTERM else EXIT_INTERRUPTED
    except RuntimeError as e:
        from maskrl.agents.distributed import collective_failure

        if dp is None or not collective_failure(e):
            raise
        # Another rank died or hung: one line, and torchrun ends the job (its SIGTERM
        # to this rank, which may come at any moment now, must not add a second line).
        signals.ending = True
        print(f"{prog}: error: rank {dp.rank}: {collective_failure(e)}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as e:
        if dp is not None:
            e, show = _rank_error(dp, e)
            if not show:
                return EXIT_USAGE
        # Bad input: one clear line (whatever line breaks the message had), no traceback.
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if ns.command == "experts" and signals.requested:
            # Stopped at once (building an expert's envs, or its evaluation).
            print(
                f"{prog}: stopped ({_signal_name(signals.signum)}); finished experts are kept; "
                f"continue with: {_command(prog)} {shlex.join(argv)}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED if signals.signum == signal.SIGTERM else EXIT_INTERRUPTED
        raise
    return EXIT_USAGE


def _check_init_flags(given: set[str], run_cfg: Any) -> None:
    """Refuse ``--init-from`` with ``--resume``, and ``--init-layers`` without ``--init-from``."""
    if run_cfg.init_from is not None and run_cfg.resume:
        raise ValueError(
            "--init-from starts a new run from another run's weights; --resume continues a "
            "run from its own checkpoint: give one or the other"
        )
    if "init_layers" in given and run_cfg.init_from is None:
        raise ValueError("--init-layers only applies with --init-from: add --init-from or drop it")


def _rank_error(dp: Any, e: ValueError) -> tuple[ValueError, bool]:
    """A torchrun rank's error: ``(what to print, whether this rank prints it)``.

    Before training, the ranks agree on setup errors (each rank's is sent to all),
    and rank 0 alone prints the one agreed message; once training began, a rank
    prints its own error, named by its rank.
    """
    from maskrl.agents.distributed import SetupFailed

    if not isinstance(e, SetupFailed) and not dp.setup_done:
        try:
            dp.agree_setup(str(e))
        except SetupFailed as agreed:
            e = agreed
    if isinstance(e, SetupFailed):
        return e, dp.is_main
    return (e if dp.is_main else ValueError(f"rank {dp.rank}: {e}")), True


def _torchrun_command(prog: str) -> str:
    """How a printed command relaunches this torchrun job (same nodes and ranks per node)."""
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    entry = "train.py" if prog == "train.py" else f"--no-python {prog}"
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node={per_node} {entry}"
    where = f"{os.environ.get('MASTER_ADDR', 'HOST')}:{os.environ.get('MASTER_PORT', '29500')}"
    return (
        f"torchrun --nnodes={nodes} --nproc_per_node={per_node} --rdzv_backend=c10d "
        f"--rdzv_endpoint={where} {entry}"
    )


def _check_qat_flags(given: set[str], cfg: Any) -> None:
    """Refuse QAT settings given without ``--qat`` (they would be silently ignored)."""
    loose = sorted(given & {"qat_bits", "qat_start_after"})
    if loose and not cfg.qat:
        raise ValueError(
            f"{', '.join(_flag(f) for f in loose)} only apply with --qat: add --qat or drop them"
        )


def _experts(ns: argparse.Namespace, argv: list[str], signals: _Signals) -> int:
    from maskrl.agents.config import PPOConfig

    cfg = _pick(ns, PPOConfig)
    given = _explicit_flags(argv)
    if ns.preset is not None:
        cfg = apply_preset(cfg, ns.preset, keep=given)
    _check_qat_flags(given, cfg)
    if ns.total_timesteps < 1:
        raise ValueError(f"--total-timesteps must be >= 1, got {ns.total_timesteps}")
    ids = [e.strip() for e in ns.env.split(",") if e.strip()]
    out = _runner().train_experts(
        ids, cfg, ns.total_timesteps, ns.run_name, ns.runs_dir, ns.eval_episodes,
        ns.progress, signals.stop, ns.checkpoint_every,
    )  # fmt: skip
    for e in out["experts"]:
        print(
            f"expert {e['env_id']}: mean return {e['mean_return']:.2f} +- {e['std']:.2f} over "
            f"{e['episodes']} episodes ({e['steps']} steps, {e['train_seconds']:.0f} s)"
        )
    print(f"experts: {out['run_dir']}/experts.json")
    return 0


def _runner() -> Any:
    from maskrl.agents import runner

    return runner


#: Flags a resumed run accepts: the length of the run and the bookkeeping of this
#: invocation. Everything else comes from the run's config.json.
RESUME_FLAGS = {"resume", "total_timesteps", "eval_episodes", "progress", "device", "dist_timeout"}


def _check_resume_flags(given: set[str], extra: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    # A resumed run keeps the settings in its config.json; silently ignoring a
    # changed setting would be worse than refusing it.
    fixed = sorted(given - RESUME_FLAGS - extra)
    if fixed:
        raise ValueError(
            f"--resume continues a run with its saved settings; these flags cannot "
            f"change on resume: {', '.join(_flag(f) for f in fixed)}"
        )


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"run folder: {summary['run_dir']}")
    print(
        f"trained {summary['steps_trained']} steps in {summary['train_seconds']:.0f} s "
        f"({summary['train_sps']:.0f} steps/s; the run is at step {summary['global_step']})"
    )
    ev = summary.get("eval")
    if ev is not None:
        _print_eval(ev)


def _eval(ns: argparse.Namespace, prog: str = "train.py", signals: Any = None) -> int:
    _check_seed(ns.seed)
    if not 1 <= ns.episodes <= MAX_EPISODES:
        raise ValueError(f"--episodes must be in [1, {MAX_EPISODES:,}], got {ns.episodes}")
    _check_output(ns.output)
    if ns.num_envs is not None and ns.num_envs < 1:
        raise ValueError(f"--num-envs must be at least 1, got {ns.num_envs}")
    if ns.flicker is not None and not (math.isfinite(ns.flicker) and 0 <= ns.flicker < 1):
        raise ValueError(f"--flicker must be in [0, 1), got {ns.flicker}")
    cpus = os.cpu_count() or 1
    if ns.torch_threads is not None and not 1 <= ns.torch_threads <= cpus:
        raise ValueError(
            f"--torch-threads must be in [1, {cpus}] (this machine's CPUs), got {ns.torch_threads}"
        )
    from maskrl.agents.trainer import torch_threads

    with torch_threads(ns.torch_threads):
        return _eval_in(ns, prog, signals)


def _eval_in(ns: argparse.Namespace, prog: str, signals: Any) -> int:
    from maskrl.agents import evaluate, load_policy

    policy = load_policy(ns.checkpoint, device="cpu" if ns.int8 else ns.device, seed=ns.seed)
    if ns.int8 and policy.is_recurrent:
        raise ValueError("--int8 converts feedforward policies; this checkpoint is recurrent")
    if ns.int8:
        from maskrl.agents.quantize import int8_policy

        policy = int8_policy(policy, seed=ns.seed)
    env = ns.env or policy.env_ids
    if not env:
        raise ValueError("the checkpoint does not record its env; pass --env")
    if ns.env and policy.env_ids:
        asked = [e.strip() for e in ns.env.split(",") if e.strip()]
        if asked != list(policy.env_ids):
            print(
                f"{prog}: note: evaluating on {', '.join(asked)}; the policy was trained on "
                f"{', '.join(policy.env_ids)}",
                file=sys.stderr,
            )
    flicker = ns.flicker
    if flicker is None:
        from maskrl.agents.checkpoint import load_checkpoint

        saved = load_checkpoint(ns.checkpoint).get("config")
        flicker = float(saved.get("flicker", 0.0)) if isinstance(saved, dict) else 0.0
    res = evaluate(
        policy, env, ns.episodes, seed=ns.seed, deterministic=ns.deterministic, stop=signals,
        use_mask=ns.use_mask, flicker=flicker, num_envs=ns.num_envs, progress=ns.progress,
    )  # fmt: skip
    _print_eval(res)
    if ns.output:
        try:
            with open(ns.output, "w") as f:
                json.dump(res, f, indent=2)
        except OSError as e:
            raise ValueError(f"--output {ns.output}: {e.strerror}") from e
    return 0


def _explicit_flags(argv: list[str]) -> set[str]:
    """Field names of the flags written on the command line (``--a-b`` / ``--a-b=x`` / ``--no-a-b``)."""
    out = set()
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name = tok[2:].split("=", 1)[0].replace("-", "_")
            out.add(name[3:] if name.startswith("no_") else name)
    return out


def apply_preset(config: Any, preset: str, keep: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """Return ``config`` with the preset's values, except for the fields in ``keep``."""
    from maskrl.agents.config import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {k: v for k, v in PRESETS[preset].items() if k not in keep}
    return dataclasses.replace(config, **values)


def _print_eval(ev: dict[str, Any]) -> None:
    def line(e: str, r: dict[str, Any]) -> str:
        rate = r.get("invalid_action_rate", 0.0)
        tail = f"; invalid actions: {rate:.1%} of steps" if rate else ""
        return f"eval {e}: mean return {r['mean']:.2f} +- {r['std']:.2f} over {r['episodes']} episodes{tail}"

    if "per_game" in ev:
        for e, r in ev["per_game"].items():
            print(line(e, r))
        print(f"eval mean over games: {ev['mean']:.2f}")
    else:
        print(line(ev["env_id"], ev))


if __name__ == "__main__":
    sys.exit(main())
