#!/usr/bin/env python
"""The masking ablation: PPO trained with ``--invalid-actions mask``, ``penalty`` and ``none``.

After Huang & Ontañón (2022, "A Closer Look at Invalid Action Masking in
Policy Gradient Algorithms"). Each mode trains masked PPO's network with the
same settings and seed on one env:

* ``mask``    -- samples among the valid actions only (maskrl's PPO);
* ``penalty`` -- samples over all actions; an invalid one is a no-op with
  reward ``--penalty`` (default :data:`maskrl.agents.config.DEFAULT_INVALID_PENALTY`);
* ``none``    -- samples over all actions; the env applies its own rule
  (Knapsack: the episode ends; ConnectFour: a loss; MinAtar: a no-op).

Each trained policy is then evaluated on the same instances (same seed)
twice: with the mask (``evaluate(use_mask=True)``: only valid actions) and
without it (``use_mask=False``: every action offered, the env's own rule for
an invalid one) -- the mask-trained policy played without its mask is
"trained with masks, evaluated without".

Columns: ``train return`` is the mean return of the last 100 training episodes
(penalties included in mode ``penalty``); ``train invalid`` the share of invalid
actions over the last 10% of training updates; ``eval`` returns are mean +- std
over ``--episodes`` episodes (no penalty in any evaluation); ``eval invalid`` the
share of invalid actions in the unmasked evaluation.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/masking_ablation.py --env maskrl/Knapsack-v0 \\
        --total-timesteps 100000 --out ablation_knapsack.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("mask", "penalty", "none")


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Train one mode and evaluate it with and without the mask."""
    from maskrl.agents import PPO, PPOConfig, evaluate

    cfg = PPOConfig(
        seed=args.seed,
        device=args.device,
        torch_threads=1,
        num_envs=args.num_envs,
        invalid_actions=mode,
        invalid_penalty=args.penalty if mode == "penalty" else None,
    )
    agent = PPO(args.env, cfg)
    rates: list[float] = []
    t0 = time.perf_counter()
    agent.learn(args.total_timesteps, callback=lambda t, m: rates.append(m["invalid_action_rate"]))
    wall = time.perf_counter() - t0
    agent.envs.close()
    tail = rates[-max(1, len(rates) // 10) :]
    recent = agent.episode_stats.returns[-100:]
    out: dict[str, Any] = {
        "mode": mode,
        "penalty": cfg.penalty_reward if mode == "penalty" else None,
        "steps": agent.global_step,
        "train_seconds": wall,
        "train_return": float(np.mean(recent)) if recent else None,
        "train_invalid_rate": float(np.mean(tail)),
        "first_invalid_rate": rates[0],
    }
    for use_mask in (True, False):
        ev = evaluate(agent, args.env, args.episodes, seed=args.seed + 10_000, use_mask=use_mask)
        key = "eval_masked" if use_mask else "eval_unmasked"
        out[key] = {k: ev[k] for k in ("mean", "std", "episodes", "invalid_action_rate")}
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    rows = [
        "| mode | train return | train invalid | eval with mask | eval without mask "
        "| eval invalid (no mask) | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        m, u = r["eval_masked"], r["eval_unmasked"]
        name = r["mode"] if r["penalty"] is None else f"penalty ({r['penalty']:g})"
        ret = "n/a" if r["train_return"] is None else f"{r['train_return']:.2f}"
        rows.append(
            f"| {name} | {ret} | {r['train_invalid_rate']:.1%} "
            f"| {m['mean']:.2f} +- {m['std']:.2f} | {u['mean']:.2f} +- {u['std']:.2f} "
            f"| {u['invalid_action_rate']:.1%} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="maskrl/Knapsack-v0")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--total-timesteps", type=int, default=100_000, help="per mode")
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--penalty", type=float, default=None, help="mode penalty's reward")
    p.add_argument("--episodes", type=int, default=200, help="evaluation episodes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    args = p.parse_args(argv)

    import maskrl.envs  # noqa: F401  (registers the maskrl/... ids)

    results = []
    for mode in args.modes:
        r = run_mode(args, mode)
        results.append(r)
        print(
            f"{mode}: {r['steps']} steps in {r['train_seconds']:.0f} s; invalid actions "
            f"{r['first_invalid_rate']:.1%} -> {r['train_invalid_rate']:.1%}",
            file=sys.stderr,
        )
    print(f"{args.env}, {args.total_timesteps} steps per mode, seed {args.seed}")
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
