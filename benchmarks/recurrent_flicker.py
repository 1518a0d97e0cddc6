#!/usr/bin/env python
"""Recurrent against feedforward masked PPO on MinAtar with flickering screens.

Each observation is blanked (all zeros) with probability ``--flicker``
(:class:`maskrl.envs.Flicker`; masks and rewards untouched): a feedforward
policy sees nothing on a blank frame, a recurrent one can carry the last
screen it saw. For each seed the script runs, at equal steps and otherwise
default settings::

    python train.py ppo --env ENV --flicker P --total-timesteps T --seed S \\
        --torch-threads 1 --eval-episodes E --run-name flk-ff-sS
    python train.py ppo ... --recurrent --run-name flk-rnn-sS

(the two may also be started by hand, in parallel, one thread each), then
prints per run the evaluation's mean return (on flickering screens too), the
training curve's mean return over its last 100 episodes, and the curve's
value (a running mean of 20 episodes) at a quarter, half and all of the steps.
A run already finished in ``--runs-dir`` is read, not trained again.

Usage (about 20 min for both runs, in parallel on two busy cores)::

    OMP_NUM_THREADS=1 python benchmarks/recurrent_flicker.py --total-timesteps 1500000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARMS = {"ff": [], "rnn": ["--recurrent"]}


def run_name(arm: str, seed: int) -> str:
    return f"flk-{arm}-s{seed}"


def train(args: argparse.Namespace, arm: str, seed: int) -> Path:
    """Train one run with ``train.py`` unless ``--runs-dir`` already holds it finished."""
    run_dir = Path(args.runs_dir) / run_name(arm, seed)
    if (run_dir / "eval.json").is_file():
        return run_dir
    cmd = [
        sys.executable, str(REPO / "train.py"), "ppo", "--env", args.env,
        "--flicker", str(args.flicker), "--total-timesteps", str(args.total_timesteps),
        "--seed", str(seed), "--torch-threads", "1", "--eval-episodes", str(args.eval_episodes),
        "--run-name", run_name(arm, seed), "--runs-dir", args.runs_dir, "--no-progress",
        *ARMS[arm], *args.extra,
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return run_dir


def summarize(run_dir: Path, total: int) -> dict[str, Any]:
    """Evaluation and training-curve figures of a finished run."""
    import numpy as np

    from maskrl.curves import read_run, smooth, value_at

    ev = json.loads((run_dir / "eval.json").read_text())
    (curve,) = read_run(run_dir).values()
    sm = smooth(curve.values, 20)
    at = {f: value_at(curve.steps, sm, f * total) for f in (0.25, 0.5, 1.0)}
    return {
        "eval_mean": ev["eval"]["mean"],
        "eval_std": ev["eval"]["std"],
        "eval_sem": ev["eval"]["std"] / np.sqrt(ev["eval"]["episodes"]),
        "last100": ev["last_100_episode_return"],
        "curve": at,
        "sps": ev["train_sps"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="maskrl/MinAtar-Breakout-v0")
    p.add_argument("--flicker", type=float, default=0.5, help="blanking probability")
    p.add_argument("--total-timesteps", type=int, default=1_500_000)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    args = p.parse_args(argv)
    print(f"{args.env}, flicker {args.flicker}, {args.total_timesteps:,} steps per run")
    fmt = "{:<6} {:>4} {:>14} {:>9} {:>8} {:>8} {:>8} {:>6}"
    print(fmt.format("arm", "seed", "eval (+- sem)", "last-100", "@25%", "@50%", "@100%", "SPS"))
    for seed in args.seeds:
        for arm in ARMS:
            s = summarize(train(args, arm, seed), args.total_timesteps)
            cells = [("-" if v is None else f"{v:.2f}") for v in s["curve"].values()]
            ev = f"{s['eval_mean']:.2f} +- {s['eval_sem']:.2f}"
            print(fmt.format(arm, seed, ev, f"{s['last100']:.2f}", *cells, f"{s['sps']:.0f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
