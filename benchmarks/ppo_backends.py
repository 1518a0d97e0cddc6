#!/usr/bin/env python
"""Masked PPO end to end on the torch backend (batched MinAtar) vs the numpy backend, one run.

Both train the same game with the same settings (the default ``fast`` preset
unless flags say otherwise), seed for seed, one after the other in this
process, and the script prints steps per second and the mean return of the
episodes that ended in the last 10% of training, for each backend, and their
ratio. Throughput is comparable only within one run on one machine.

    python benchmarks/ppo_backends.py --games Breakout SpaceInvaders --total-timesteps 1000000 \\
        --device cpu --out benchmarks/results/ppo_backends.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskrl.agents import PPO, PPOConfig


def run(game: str, backend: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cfg = PPOConfig(
        num_envs=args.num_envs,
        device=args.device,
        seed=seed,
        env_backend=backend,
        torch_threads=args.threads or None,
    )
    agent = PPO(f"maskrl/MinAtar-{game}-v0", cfg)
    curve: list[tuple[int, float]] = []
    seen = 0

    def cb(a: PPO, m: dict[str, float]) -> None:
        nonlocal seen
        st = a.episode_stats
        for r in st.returns[seen:]:
            curve.append((a.global_step, r))
        seen = len(st.returns)

    t0 = time.perf_counter()
    agent.learn(args.total_timesteps, callback=cb)
    wall = time.perf_counter() - t0
    agent.envs.close()
    tail = [r for s, r in curve if s > 0.9 * args.total_timesteps]
    return {
        "game": game,
        "backend": backend,
        "seed": seed,
        "steps": agent.global_step,
        "seconds": wall,
        "sps": agent.global_step / wall,
        "final_return": float(np.mean(tail)) if tail else None,
        "final_episodes": len(tail),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--games", nargs="+", default=["Breakout", "SpaceInvaders"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--total-timesteps", type=int, default=1_000_000)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads while training (0: default)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    for game in args.games:
        for seed in args.seeds:
            for backend in ("numpy", "torch"):
                r = run(game, backend, args, seed)
                rows.append(r)
                print(
                    f"{game:14s} seed {seed} {backend:5s}: {r['sps']:8.0f} steps/s, "
                    f"{r['seconds']:6.0f} s, return (last 10%) {r['final_return']}",
                    flush=True,
                )
            n, t = rows[-2], rows[-1]
            print(
                f"{game:14s} seed {seed} torch/numpy speed: {t['sps'] / n['sps']:.2f}x", flush=True
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "device": args.device,
            "total_timesteps": args.total_timesteps,
            "num_envs": args.num_envs,
        }
        args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
