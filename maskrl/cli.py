#!/usr/bin/env python
"""maskrl command line: train and evaluate masked agents.

    python train.py                      # the default job: masked PPO on MinAtar Breakout
    python train.py ppo --env maskrl/MinAtar-SpaceInvaders-v0 --total-timesteps 500000
    python train.py ppo --env maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-Asterix-v0   # one multi-game agent
    python train.py ppo --resume runs/NAME
    python train.py eval --checkpoint runs/NAME/checkpoint.pt --episodes 20
    tensorboard --logdir runs

Every flag is a field of a configuration dataclass (maskrl.agents.PPOConfig,
maskrl.agents.runner.RunConfig); ``--help`` shows each one's documentation.
Bad input prints one line and exits with status 2; Ctrl-C (or SIGTERM, as a
cluster scheduler sends before it kills a job) finishes the current update,
saves a checkpoint and exits with status 130 (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Iterator
from typing import Any

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
        help_ = f"{f.metadata.get('help', '')} (default: {default})"
        args = typing.get_args(tp)
        optional = (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        if base is bool:
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


def build_parser() -> argparse.ArgumentParser:
    from maskrl.agents.config import PPOConfig
    from maskrl.agents.mimic import MimicConfig
    from maskrl.agents.runner import RunConfig

    # allow_abbrev=False: an abbreviated flag would escape the explicit-flag
    # detection that presets and --resume rely on.
    parser = argparse.ArgumentParser(
        prog="train.py",
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
    ex = sub.add_parser(
        "experts",
        allow_abbrev=False,
        help="train one masked-PPO expert per game (for Actor-Mimic)",
        description="Train one masked-PPO expert per game into runs/<name>/<game>/ and write "
        "runs/<name>/experts.json with each expert's evaluated mean return. A game whose run "
        "finished is kept; an interrupted one is resumed.",
    )
    ex.add_argument("--env", required=True, help="env ids, comma-separated (one expert each)")
    ex.add_argument(
        "--total-timesteps", type=int, default=1_000_000, help="steps per expert (default: 1000000)"
    )
    ex.add_argument("--run-name", required=True, help="folder under --runs-dir for the experts")
    ex.add_argument("--runs-dir", default="runs", help="parent folder (default: runs)")
    ex.add_argument(
        "--eval-episodes", type=int, default=50, help="evaluation episodes per expert (default: 50)"
    )
    ex.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    ex.add_argument("--preset", default=None, help="PPO settings preset (reference, fast)")
    add_dataclass_args(ex, PPOConfig)
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
        default=0,
        help="then train the student this many more steps with multi-game masked PPO, "
        "in <run>/finetune (default: 0)",
    )
    add_dataclass_args(mi, RunConfig, exclude=frozenset({"env", "preset"}))
    add_dataclass_args(mi, MimicConfig)
    ev = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="evaluate a checkpoint",
        description="Evaluate a saved agent.",
    )
    ev.add_argument(
        "--checkpoint", required=True, help="path to a checkpoint.pt written by train.py ppo"
    )
    ev.add_argument("--episodes", type=int, default=20, help="episodes per game (default: 20)")
    ev.add_argument(
        "--env", default=None, help="env id(s), comma-separated (default: the ones trained on)"
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the evaluation envs (default: 0)")
    ev.add_argument(
        "--deterministic", action="store_true", help="take the most probable valid action"
    )
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    ev.add_argument("--output", default=None, help="also write the summary to this JSON file")
    ev.add_argument(
        "--int8",
        action="store_true",
        help="run the policy converted to int8 kernels (CPU): a QAT checkpoint as trained, "
        "a float one after post-training calibration on its own env",
    )
    return parser


class _Signals:
    """The command line's SIGINT/SIGTERM handlers: the first asks the run to stop after its
    current update (it then saves and exits 130 / 143); a second SIGINT stops at once.

    Installed as the very first thing ``main`` does -- before any environment is
    built (MinAtar imports matplotlib inside a bare ``try/except`` that would
    swallow a KeyboardInterrupt) -- and restored when ``main`` returns. Only the
    command line installs handlers; the library takes a ``StopRequest``.
    """

    def __init__(self) -> None:
        # No maskrl import here: the handlers must be in place before torch and the
        # envs are imported. This object is the run's stop request itself (the
        # harness reads ``requested`` and ``signum``, as on maskrl's StopRequest).
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def stop(self) -> _Signals:
        return self

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        first = not self.requested
        self.request(signum)
        if first:
            name = "Ctrl-C" if signum == signal.SIGINT else str(signal.Signals(signum).name)
            print(
                f"\n{name}: stopping after the current update and saving a checkpoint "
                "(press Ctrl-C again to stop at once, without saving)",
                file=sys.stderr,
            )

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
                signal.signal(sig, prev)
            self._previous.clear()


def main(argv: list[str] | None = None) -> int:
    signals = _Signals()
    with signals.installed():
        try:
            return _main(argv, signals)
        except KeyboardInterrupt:
            print("train.py: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


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


def _main(argv: list[str] | None, signals: _Signals) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["ppo"]  # the default real job
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_USAGE
    from maskrl.agents.runner import TrainingInterrupted

    try:
        if ns.command == "ppo":
            from maskrl.agents.config import PPOConfig
            from maskrl.agents.runner import RunConfig

            run_cfg, ppo_cfg = _pick(ns, RunConfig), _pick(ns, PPOConfig)
            given = _explicit_flags(argv)
            if run_cfg.preset is not None:
                ppo_cfg = apply_preset(ppo_cfg, run_cfg.preset, keep=given)
            if run_cfg.resume:
                _check_resume_flags(given)
            summary = _runner().train_ppo(run_cfg, ppo_cfg, signals.stop)
            _print_summary(summary)
            return 0
        if ns.command == "experts":
            return _experts(ns, argv, signals)
        if ns.command == "mimic":
            from maskrl.agents.mimic import MimicConfig
            from maskrl.agents.runner import RunConfig

            run_cfg, mimic_cfg = _pick(ns, RunConfig), _pick(ns, MimicConfig)
            if run_cfg.resume:
                _check_resume_flags(_explicit_flags(argv))
            if ns.finetune_ppo < 0:
                raise ValueError(f"--finetune-ppo must be >= 0, got {ns.finetune_ppo}")
            summary = _runner().train_mimic(
                run_cfg, mimic_cfg, ns.experts, signals.stop, finetune_ppo=ns.finetune_ppo
            )
            _print_summary(summary)
            if "finetune" in summary:
                print("after PPO fine-tuning:")
                _print_summary(summary["finetune"])
            return 0
        if ns.command == "eval":
            return _eval(ns)
    except TrainingInterrupted as e:
        how = "--resume" if e.saved else "a new run"
        print(
            f"train.py: {e}"
            + (
                f"; continue with: python train.py {ns.command} --resume {e.run_dir}"
                if e.saved
                else ""
            )
            + ("" if e.saved else f" (start {how})"),
            file=sys.stderr,
        )
        return EXIT_TERMINATED if e.signum == signal.SIGTERM else EXIT_INTERRUPTED
    except ValueError as e:
        # Bad input: one clear line (whatever line breaks the message had), no traceback.
        print(f"train.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _experts(ns: argparse.Namespace, argv: list[str], signals: _Signals) -> int:
    from maskrl.agents.config import PPOConfig

    cfg = _pick(ns, PPOConfig)
    if ns.preset is not None:
        cfg = apply_preset(cfg, ns.preset, keep=_explicit_flags(argv))
    if ns.total_timesteps < 1:
        raise ValueError(f"--total-timesteps must be >= 1, got {ns.total_timesteps}")
    ids = [e.strip() for e in ns.env.split(",") if e.strip()]
    out = _runner().train_experts(
        ids, cfg, ns.total_timesteps, ns.run_name, ns.runs_dir, ns.eval_episodes,
        ns.progress, signals.stop,
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
RESUME_FLAGS = {"resume", "total_timesteps", "eval_episodes", "progress", "device"}


def _check_resume_flags(given: set[str]) -> None:
    # A resumed run keeps the settings in its config.json; silently ignoring a
    # changed setting would be worse than refusing it.
    fixed = sorted(given - RESUME_FLAGS)
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


def _eval(ns: argparse.Namespace) -> int:
    from maskrl.agents import evaluate, load_policy

    _check_seed(ns.seed)
    if ns.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {ns.episodes}")
    _check_output(ns.output)
    policy = load_policy(ns.checkpoint, device="cpu" if ns.int8 else ns.device, seed=ns.seed)
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
                f"train.py: note: evaluating on {', '.join(asked)}; the policy was trained on "
                f"{', '.join(policy.env_ids)}",
                file=sys.stderr,
            )
    res = evaluate(policy, env, ns.episodes, seed=ns.seed, deterministic=ns.deterministic)
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
    if "per_game" in ev:
        for e, r in ev["per_game"].items():
            print(
                f"eval {e}: mean return {r['mean']:.2f} +- {r['std']:.2f} over {r['episodes']} episodes"
            )
        print(f"eval mean over games: {ev['mean']:.2f}")
    else:
        print(
            f"eval {ev['env_id']}: mean return {ev['mean']:.2f} +- {ev['std']:.2f} over {ev['episodes']} episodes"
        )


if __name__ == "__main__":
    sys.exit(main())
