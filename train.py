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
Bad input prints one line and exits with status 2; Ctrl-C saves a checkpoint
and exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_optional(inner: type) -> Any:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null", "") else inner(s)

    parse.__name__ = inner.__name__
    return parse


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any] | None = None
) -> None:
    """Add one flag per dataclass field, with the field's ``metadata["help"]`` as help."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
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
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def build_parser() -> argparse.ArgumentParser:
    from maskrl.agents.config import PPOConfig
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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["ppo"]  # the default real job
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if ns.command == "ppo":
            from maskrl.agents.config import PPOConfig
            from maskrl.agents.runner import RunConfig, TrainingInterrupted, train_ppo

            run_cfg, ppo_cfg = _pick(ns, RunConfig), _pick(ns, PPOConfig)
            given = _explicit_flags(argv)
            if run_cfg.preset is not None:
                ppo_cfg = apply_preset(ppo_cfg, run_cfg.preset, keep=given)
            if run_cfg.resume:
                # A resumed run keeps the settings in its config.json; silently
                # ignoring a changed setting would be worse than refusing it.
                allowed = {
                    "resume",
                    "runs_dir",
                    "total_timesteps",
                    "eval_episodes",
                    "progress",
                    "device",
                }
                fixed = sorted(given - allowed)
                if fixed:
                    raise ValueError(
                        f"--resume continues a run with its saved settings; these flags cannot "
                        f"change on resume: {', '.join(_flag(f) for f in fixed)}"
                    )
            try:
                summary = train_ppo(run_cfg, ppo_cfg)
            except TrainingInterrupted as e:
                print(
                    f"train.py: {e}; continue with: python train.py ppo --resume {e.run_dir}",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
            ev = summary.get("eval")
            print(f"run folder: {summary['run_dir']}")
            print(
                f"trained {summary['global_step']} steps in {summary['train_seconds']:.0f} s ({summary['train_sps']:.0f} steps/s)"
            )
            if ev is not None:
                _print_eval(ev)
            return 0
        if ns.command == "eval":
            from maskrl.agents import PPO, evaluate

            agent = PPO.load(ns.checkpoint, device=ns.device)
            env = ns.env or agent.env_ids
            if not env:
                raise ValueError("the checkpoint does not record its env; pass --env")
            res = evaluate(agent, env, ns.episodes, seed=ns.seed, deterministic=ns.deterministic)
            _print_eval(res)
            if ns.output:
                with open(ns.output, "w") as f:
                    json.dump(res, f, indent=2)
            return 0
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as e:
        # Bad input: one clear line (whatever line breaks the message had), no traceback.
        print(f"train.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


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
