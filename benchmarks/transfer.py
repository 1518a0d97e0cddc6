#!/usr/bin/env python
"""Leave-one-out transfer: does an Actor-Mimic student learn an unseen game faster than scratch?

Paper: Parisotto, Ba & Salakhutdinov 2016, section 5. For each held-out game G
of an experts folder (``train.py experts`` output):

1. distil a student on the other games' experts
   (``train.py mimic``, ``--student-steps`` env steps) into ``OUT/<G>/student``;
2. train PPO on G from that student (``train.py ppo --init-from OUT/<G>/student``,
   ``--init-layers``) into ``OUT/<G>/transfer-s<seed>``, and from scratch into
   ``OUT/<G>/scratch-s<seed>``, ``--seeds`` seeds each, ``--steps`` env steps each,
   with the same PPO flags (``--ppo-args``);
3. read every run's ``charts/episodic_return`` curve (tensorboard), smooth it
   with a trailing mean over ``--smooth`` logged points, and average each
   setting's seeds on the steps all of them reached (:mod:`maskrl.curves`).

Per held-out game it reports, on those mean curves: the return at ``--at``
steps (500k) and at ``--steps``; the scratch run's final return (its value at
``--steps``), the first step at which each setting reaches it and their ratio
(the speed-up: scratch steps / transfer steps; a transfer that never reaches it
has none); and the ratio of the areas under the curves from 0 to ``--steps``
(transfer / scratch). Also each run's final evaluation (``eval.json``), averaged
over seeds. Written to ``OUT/transfer.json`` and ``OUT/transfer.md``, the curves
to ``OUT/transfer.png`` (``train.py plot --group``: one panel per game).

Resumable: a run whose ``eval.json`` shows it reached its budget is skipped; a
run with a checkpoint is resumed (``--resume``); anything else starts afresh.
Every command is appended to ``OUT/commands.log`` with its exit status and
duration. A command that fails stops the script (exit status 1), naming it.

    python benchmarks/transfer.py --experts runs/am5 --out runs/transfer \\
        --steps 2000000 --student-steps 1000000 --seeds 3
    python benchmarks/transfer.py --experts runs/am5 --out runs/transfer-tiny \\
        --games Breakout,Asterix --steps 4096 --student-steps 2048 --seeds 1 \\
        --ppo-args "--num-envs 8 --num-steps 32" --mimic-args "--num-envs 8 --num-steps 32"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from maskrl.curves import (  # noqa: E402
    area_ratio,
    mean_curve,
    read_run,
    smooth,
    steps_to_reach,
    value_at,
)

#: Runs a train.py command line (without the program); returns its exit status.
Runner = Callable[[list[str]], int]


def game_name(env_id: str) -> str:
    """``maskrl/MinAtar-Breakout-v0`` -> ``Breakout`` (the folder name of its experiment)."""
    name = env_id.split("/")[-1].split(":")[-1]
    name = name.removeprefix("MinAtar-")
    return name.rsplit("-v", 1)[0]


def subprocess_runner(argv: list[str]) -> int:
    """``python train.py ARGV`` in a child process (its output goes to this one's)."""
    return subprocess.call([sys.executable, str(REPO / "train.py"), *argv])


def _finished(run: Path, total: int) -> bool:
    try:
        return int(json.loads((run / "eval.json").read_text())["global_step"]) >= total
    except (OSError, ValueError, KeyError, TypeError):
        return False


class Driver:
    """Runs (or skips, or resumes) each training and logs every command."""

    def __init__(self, out: Path, runner: Runner, dry_run: bool = False) -> None:
        self.out, self.runner, self.dry_run = out, runner, dry_run
        self.log = out / "commands.log"

    def _log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log, "a") as f:
            f.write(f"{stamp} {line}\n")

    def run(self, argv: list[str]) -> None:
        cmd = shlex.join(["python", "train.py", *argv])
        print(("would run: " if self.dry_run else "running: ") + cmd, flush=True)
        if self.dry_run:
            return
        self._log(f"run: {cmd}")
        t = time.perf_counter()
        rc = self.runner(argv)
        self._log(f"exit {rc} after {time.perf_counter() - t:.0f} s: {cmd}")
        if rc != 0:
            raise SystemExit(f"transfer.py: this command failed (exit {rc}; see {self.log}): {cmd}")

    def train(self, run: Path, total: int, new: list[str], resume: list[str]) -> None:
        """Skip ``run`` if it reached ``total``; resume it if it has a checkpoint; else start it."""
        if _finished(run, total):
            print(f"done already: {run}", flush=True)
            if not self.dry_run:
                self._log(f"skip (finished): {run}")
            return
        tail = ["--total-timesteps", str(total)]
        if (run / "checkpoint.pt").is_file():
            self.run([*resume, "--resume", str(run), *tail, "--no-progress"])
            return
        if run.exists() and not self.dry_run:
            # Stopped before its first checkpoint: its event files would mix into the new
            # run's curve, so the folder is kept aside, not reused.
            aside = run.with_name(f"{run.name}.incomplete-{int(time.time())}")
            run.rename(aside)
            self._log(f"moved aside (no checkpoint): {run} -> {aside.name}")
        self.run([*new, "--runs-dir", str(run.parent), "--run-name", run.name, *tail])


def _teachers(
    folder: Path, experts_dir: Path, entries: list[dict[str, Any]], write: bool = True
) -> Path:
    """An experts folder listing ``entries`` with absolute checkpoint paths (the student's teachers)."""
    if not write:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    listed = [{**e, "checkpoint": str((experts_dir / e["checkpoint"]).resolve())} for e in entries]
    path = folder / "experts.json"
    text = json.dumps({"experts": listed}, indent=2)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return folder


def _setting(runs: list[Path], smooth_n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The seeds' smoothed return curves averaged on the steps all of them reached, and the
    longest of their median intervals between logged points (how far short of a step a
    curve may end and still count as having reached it)."""
    curves = []
    for r in runs:
        try:
            (c,) = read_run(r).values()
        except ValueError as e:
            hint = ""
            if "logs no" in str(e):
                hint = " -- no episode ended in the run: give more --steps"
            raise SystemExit(f"transfer.py: {e}{hint}") from e
        curves.append((c.steps, smooth(c.values, smooth_n)))
    grid, mean, _, _ = mean_curve(curves)
    gap = max(float(np.median(np.diff(st))) if st.size > 1 else 0.0 for st, _ in curves)
    return grid, mean, gap


def _eval_mean(runs: list[Path]) -> float | None:
    vals = []
    for r in runs:
        try:
            vals.append(float(json.loads((r / "eval.json").read_text())["eval"]["mean"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return float(np.mean(vals)) if vals else None


def game_figures(
    scratch: list[Path], transfer: list[Path], steps: int, at: int, smooth_n: int
) -> dict[str, Any]:
    """The per-game figures (see the module docstring) from the runs' curves."""
    s_steps, s_mean, s_gap = _setting(scratch, smooth_n)
    t_steps, t_mean, t_gap = _setting(transfer, smooth_n)
    final = value_at(s_steps, s_mean, steps, s_gap)
    s_reach = steps_to_reach(s_steps, s_mean, final) if final is not None else None
    t_reach = steps_to_reach(t_steps, t_mean, final) if final is not None else None
    return {
        "scratch_at": value_at(s_steps, s_mean, at, s_gap),
        "transfer_at": value_at(t_steps, t_mean, at, t_gap),
        "scratch_final": final,
        "transfer_final": value_at(t_steps, t_mean, steps, t_gap),
        "scratch_steps_to_final": s_reach,
        "transfer_steps_to_final": t_reach,
        "speedup": (s_reach / t_reach) if s_reach and t_reach else None,
        "auc_ratio": area_ratio(t_steps, t_mean, s_steps, s_mean, steps),
        "scratch_eval": _eval_mean(scratch),
        "transfer_eval": _eval_mean(transfer),
        "seeds": len(scratch),
    }


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    a, t = results["settings"]["at"], results["settings"]["steps"]
    head = (
        f"| held-out game | scratch @{a:,} | transfer @{a:,} | scratch @{t:,} | "
        f"transfer @{t:,} | steps to scratch's final (scratch / transfer) | speed-up | "
        "AUC ratio | eval scratch / transfer |"
    )
    rows = [head, "| --- |" + " ---: |" * 8]
    for game, r in results["games"].items():
        reach = (
            f"{_fmt(r['scratch_steps_to_final'], ',.0f')} / "
            f"{_fmt(r['transfer_steps_to_final'], ',.0f')}"
        )
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        rows.append(
            f"| {game} | {_fmt(r['scratch_at'])} | {_fmt(r['transfer_at'])} | "
            f"{_fmt(r['scratch_final'])} | {_fmt(r['transfer_final'])} | {reach} | "
            f"{speedup} | {_fmt(r['auc_ratio'], '.2f')} | "
            f"{_fmt(r['scratch_eval'])} / {_fmt(r['transfer_eval'])} |"
        )
    s = results["settings"]
    rows.append("")
    rows.append(
        f"Students: {s['student_steps']:,} distillation steps on the other games' experts "
        f"({s['experts']}); PPO: {s['seeds']} seeds x {t:,} steps per setting, "
        f"--init-layers {s['init_layers']}; returns are the training curves' "
        f"charts/episodic_return, a trailing mean over {s['smooth']} logged points, "
        "averaged over seeds."
    )
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--experts", type=Path, required=True, help="a train.py experts folder")
    p.add_argument("--out", type=Path, required=True, help="folder of the experiment")
    p.add_argument(
        "--games", default=None, help="held-out games, comma-separated (default: every expert's)"
    )
    p.add_argument("--steps", type=int, default=2_000_000, help="PPO env steps per run")
    p.add_argument("--student-steps", type=int, default=1_000_000, help="distillation steps")
    p.add_argument("--seeds", type=int, default=3, help="PPO seeds per setting (1..N)")
    p.add_argument("--at", type=int, default=500_000, help="also report the return here")
    p.add_argument("--smooth", type=int, default=20, help="trailing mean over this many points")
    p.add_argument("--init-layers", choices=("encoder", "all"), default="encoder")
    p.add_argument("--ppo-args", default="", help="extra train.py ppo flags (both settings)")
    p.add_argument("--mimic-args", default="", help="extra train.py mimic flags")
    p.add_argument("--eval-episodes", type=int, default=10, help="final evaluation per run")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    for name in ("steps", "student_steps", "seeds", "at", "smooth"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


def _check_widths(ppo_args: list[str], mimic_args: list[str]) -> None:
    """A student of another width would give the transfer runs a wider network than scratch."""

    def width(args: list[str]) -> str | None:
        for i, tok in enumerate(args):
            if tok.startswith("--hidden="):
                return tok.split("=", 1)[1]
            if tok == "--hidden" and i + 1 < len(args):
                return args[i + 1]
        return None

    if width(mimic_args) is not None and width(mimic_args) != width(ppo_args):
        raise SystemExit(
            "transfer.py: --mimic-args sets the student's --hidden; the transfer runs take the "
            "student's width, so the from-scratch runs must have it too: give the same "
            "--hidden in --ppo-args"
        )


def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> dict[str, Any]:
    """Run (or resume) the experiment; returns the results written to ``transfer.json``."""
    a = parse_args(argv)
    ppo_args, mimic_args = shlex.split(a.ppo_args), shlex.split(a.mimic_args)
    _check_widths(ppo_args, mimic_args)
    try:
        experts = json.loads((a.experts / "experts.json").read_text())["experts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"transfer.py: {a.experts}/experts.json is unreadable ({e})") from e
    by_name = {game_name(e["env_id"]): e for e in experts}
    if len(by_name) < 2:
        raise SystemExit("transfer.py: leave-one-out needs at least 2 experts")
    held = list(by_name)
    if a.games:
        held = [g.strip() for g in a.games.split(",") if g.strip()]
        unknown = [g for g in held if g not in by_name]
        if unknown:
            raise SystemExit(
                f"transfer.py: --games {', '.join(unknown)}: no such expert "
                f"(the experts are {', '.join(by_name)})"
            )
    out = a.out.resolve()
    if not a.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    d = Driver(out, runner, a.dry_run)
    common = ["--eval-episodes", str(a.eval_episodes)]
    for game in held:
        env_id = by_name[game]["env_id"]
        others = [e for g, e in by_name.items() if g != game]
        teachers = _teachers(out / game / "teachers", a.experts, others, not a.dry_run)
        student = out / game / "student"
        d.train(
            student, a.student_steps,
            ["mimic", "--experts", str(teachers), *common, "--no-progress", *mimic_args],
            ["mimic", *common],
        )  # fmt: skip
        for seed in range(1, a.seeds + 1):
            base = ["ppo", "--env", env_id, "--seed", str(seed), *common, "--no-progress"]
            d.train(
                out / game / f"transfer-s{seed}", a.steps,
                [*base, "--init-from", str(student), "--init-layers", a.init_layers, *ppo_args],
                ["ppo", *common],
            )  # fmt: skip
            d.train(out / game / f"scratch-s{seed}", a.steps, [*base, *ppo_args], ["ppo", *common])
    if a.dry_run:
        return {}
    results: dict[str, Any] = {
        "settings": {
            "experts": str(a.experts.resolve()),
            "games": held,
            "steps": a.steps,
            "student_steps": a.student_steps,
            "seeds": a.seeds,
            "at": a.at,
            "smooth": a.smooth,
            "init_layers": a.init_layers,
            "ppo_args": ppo_args,
            "mimic_args": mimic_args,
        },
        "games": {},
    }
    runs: list[Path] = []
    for game in held:
        seeds = range(1, a.seeds + 1)
        scratch = [out / game / f"scratch-s{s}" for s in seeds]
        transfer = [out / game / f"transfer-s{s}" for s in seeds]
        results["games"][game] = game_figures(scratch, transfer, a.steps, a.at, a.smooth)
        runs += transfer + scratch
    (out / "transfer.json").write_text(json.dumps(results, indent=2))
    (out / "transfer.md").write_text(markdown(results))
    d.run(["plot", *map(str, runs), "--group", "--smooth", str(a.smooth),
           "--out", str(out / "transfer.png"), "--title", "PPO from the student vs from scratch"])  # fmt: skip
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
