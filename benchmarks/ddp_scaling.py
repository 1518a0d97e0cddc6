#!/usr/bin/env python
"""Data-parallel scaling: the same PPO job on 1, 2, ... torchrun ranks, in one invocation.

Each rank count trains the same job -- the same game, seed, ``--num-envs`` (the
job's: each of ``R`` ranks steps ``num_envs / R``), batch and step budget -- one
after the other, through the command line (``python train.py ppo`` for one rank,
``torchrun --standalone --nproc_per_node=R train.py ppo`` for more), and the
script reports, per rank count: the job's training steps per second (rank 0's
``train_sps``: env steps of all ranks over its training time, start-up
excluded), the wall time including start-up, the mean return of the episodes
that ended in the last 10% of training steps (from the run's tensorboard,
which gathers every rank's episodes), and the final evaluation. Equal steps,
equal batch: data parallelism should cost no sample efficiency.

    python benchmarks/ddp_scaling.py --env maskrl/MinAtar-Breakout-v0 --ranks 1 2 \\
        --total-timesteps 300000 --out benchmarks/results/ddp_scaling.json

Throughput is comparable only within one invocation on one machine; the load of
the machine is recorded (``os.getloadavg``) before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def command(ranks: int, args: argparse.Namespace, runs: Path) -> list[str]:
    """The command line of one run with ``ranks`` ranks."""
    if ranks == 1:
        head = [sys.executable, str(REPO / "train.py")]
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        head += [f"--nproc_per_node={ranks}", str(REPO / "train.py")]
    flags = ["ppo", "--env", args.env, "--total-timesteps", str(args.total_timesteps)]
    flags += ["--num-envs", str(args.num_envs), "--seed", str(args.seed), "--device", args.device]
    flags += ["--runs-dir", str(runs), "--run-name", f"ranks{ranks}", "--no-progress"]
    flags += ["--eval-episodes", str(args.eval_episodes), "--checkpoint-every", "10000000000"]
    return head + flags + list(args.extra)


def last_returns(run_dir: Path, total: int, fraction: float = 0.1) -> tuple[float | None, int]:
    """Mean of ``charts/episodic_return`` logged in the last ``fraction`` of ``total`` steps.

    Each point is the mean return of the episodes that ended in one update (all
    ranks'); returns ``(mean over those points, how many points)``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if "charts/episodic_return" not in acc.Tags()["scalars"]:
        return None, 0
    pts = [
        e.value for e in acc.Scalars("charts/episodic_return") if e.step > (1 - fraction) * total
    ]
    return (sum(pts) / len(pts) if pts else None), len(pts)


def run_one(ranks: int, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_rank)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(
        command(ranks, args, runs), cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed ({done.returncode}):\n{done.stderr[-3000:]}")
    run_dir = runs / f"ranks{ranks}"
    summary = json.loads((run_dir / "eval.json").read_text())
    ret, points = last_returns(run_dir, args.total_timesteps)
    ev = summary.get("eval") or {}
    return {
        "ranks": ranks,
        "envs_per_rank": args.num_envs // ranks,
        "steps": summary["global_step"],
        "train_sps": summary["train_sps"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "last10_return": ret,
        "last10_points": points,
        "eval_mean": ev.get("mean"),
        "eval_std": ev.get("std"),
        "eval_episodes": ev.get("episodes"),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def table(results: list[dict[str, Any]]) -> str:
    base = results[0]["train_sps"]
    rows = [
        "| ranks | envs/rank | steps | train steps/s | speed-up | wall s | return, last 10% | eval return |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        last = "-" if r["last10_return"] is None else f"{r['last10_return']:.2f}"
        ev = "-" if r["eval_mean"] is None else f"{r['eval_mean']:.2f} +- {r['eval_std']:.2f}"
        rows.append(
            f"| {r['ranks']} | {r['envs_per_rank']} | {r['steps']:,} | {r['train_sps']:.0f} | "
            f"{r['train_sps'] / base:.2f}x | {r['wall_seconds']:.0f} | {last} | {ev} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="maskrl/MinAtar-Breakout-v0")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts, in order")
    p.add_argument("--total-timesteps", type=int, default=300_000)
    p.add_argument("--num-envs", type=int, default=16, help="the job's envs (split over ranks)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads-per-rank", type=int, default=1, help="OMP_NUM_THREADS of each rank")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--out", default=None, help="also write the results to this JSON file")
    p.add_argument("extra", nargs="*", help="more train.py ppo flags, after --")
    args = p.parse_args(argv)
    bad = [r for r in args.ranks if r < 1 or args.num_envs % r]
    if bad:
        p.error(f"--num-envs {args.num_envs} must be a multiple of every rank count (not of {bad})")
    results = []
    with tempfile.TemporaryDirectory(prefix="ddp_scaling.") as tmp:
        for ranks in args.ranks:
            results.append(run_one(ranks, args, Path(tmp)))
            r = results[-1]
            print(f"{ranks} rank(s): {r['train_sps']:.0f} steps/s, load {r['loadavg_before'][0]:.2f}"
                  f" -> {r['loadavg_after'][0]:.2f}", flush=True)  # fmt: skip
    print(table(results))
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "machine": machine, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
