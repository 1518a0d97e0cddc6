#!/usr/bin/env python
"""maskrl PPO against sb3-contrib MaskablePPO on the same MinAtar env, in one run.

Both train on ``maskrl/MinAtar-<Game>-v0`` (the full 6-action space with the
game's minimal action set as the mask) on the same machine, one after the
other, and the script prints for each: training steps per second, wall time,
and the mean return of the last 100 episodes at fixed step counts; then the
ratios. Implementations:

* ``sb3``    -- sb3-contrib ``MaskablePPO`` with the reference settings;
* ``maskrl`` -- maskrl's PPO with the *same* settings (8 envs, 128 steps,
  4 epochs, 4 minibatches, lr 2.5e-4, gamma 0.99, lambda 0.95, clip 0.1,
  entropy 0.01, value coef 0.5, grad clip 0.5, the MinAtar CNN: 16 3x3
  filters then 128 units);
* ``fast``   -- maskrl's ``fast`` preset (``maskrl.agents.PRESETS["fast"]``),
  for time-to-return: how long it takes to reach the return sb3-contrib
  reaches at ``--total-timesteps``.

Usage (the full comparison takes about an hour on a 2-core CPU)::

    python benchmarks/ppo_vs_sb3.py --games Breakout SpaceInvaders --seeds 1 2 3 \\
        --impls sb3 maskrl fast --total-timesteps 500000 --fast-timesteps 1000000 \\
        --out benchmarks/results/ppo_vs_sb3.json

Throughput is comparable only within one run on one machine; the ratios are
the result. Results are appended to ``--out`` after every training run, so an
interrupted benchmark keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _reference() -> dict[str, Any]:
    from maskrl.agents.config import PRESETS

    return dict(PRESETS["reference"])


def _curve_value(curve: list[tuple[int, float, float | None]], step: int) -> float | None:
    """Mean return of the last 100 episodes as of the last update at or before ``step``.

    None when the run stopped before ``step`` (no extrapolation).
    """
    if not curve or curve[-1][0] < step:
        return None
    vals = [r for s, _, r in curve if s <= step and r is not None]
    return vals[-1] if vals else None


def run_sb3(env_id: str, seed: int, total: int, device: str) -> dict[str, Any]:
    import gymnasium as gym
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from maskrl.agents.sb3 import MinAtarFeatures

    c = _reference()
    # sb3's own construction (Monitor per env, DummyVecEnv, env i seeded seed + i),
    # as make_vec_env does, without its render_mode argument our envs do not take.
    env = DummyVecEnv([lambda: Monitor(gym.make(env_id)) for _ in range(c["num_envs"])])
    env.seed(seed)
    model = MaskablePPO(
        "MlpPolicy",
        env,
        n_steps=c["num_steps"],
        batch_size=c["num_envs"] * c["num_steps"] // c["num_minibatches"],
        n_epochs=c["num_epochs"],
        learning_rate=c["learning_rate"],
        gamma=c["gamma"],
        gae_lambda=c["gae_lambda"],
        clip_range=c["clip_coef"],
        ent_coef=c["ent_coef"],
        vf_coef=c["vf_coef"],
        max_grad_norm=c["max_grad_norm"],
        policy_kwargs=dict(
            features_extractor_class=MinAtarFeatures,
            features_extractor_kwargs=dict(features_dim=128),
            net_arch=[],
        ),
        seed=seed,
        device=device,
        verbose=0,
    )
    curve: list[tuple[int, float, float | None]] = []
    t0 = time.perf_counter()

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            buf = self.model.ep_info_buffer
            r = float(np.mean([e["r"] for e in buf])) if buf else None
            curve.append((self.model.num_timesteps, time.perf_counter() - t0, r))

    model.learn(total, callback=Record())
    wall = time.perf_counter() - t0
    env.close()
    return {"steps": model.num_timesteps, "wall": wall, "curve": curve}


def run_maskrl(
    env_id: str, seed: int, total: int, device: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    from maskrl.agents import PPO, PPOConfig
    from maskrl.envs import make_vec

    cfg = PPOConfig(**{**overrides, "seed": seed, "device": device})
    envs = make_vec(env_id, cfg.num_envs, seed=seed)
    agent = PPO(envs, cfg)
    curve: list[tuple[int, float, float | None]] = []
    t0 = time.perf_counter()

    def record(a: PPO, m: dict[str, float]) -> None:
        r = a.episode_stats.returns[-100:]
        curve.append((a.global_step, time.perf_counter() - t0, float(np.mean(r)) if r else None))
        if m["invalid_actions"]:
            raise RuntimeError("maskrl took an invalid action")

    agent.learn(total, callback=record)
    wall = time.perf_counter() - t0
    envs.close()
    return {"steps": agent.global_step, "wall": wall, "curve": curve}


def summarize(results: list[dict[str, Any]], marks: list[int], budget: int | None = None) -> str:
    """Per game: steps/s, wall time to ``budget`` steps (default: the last mark), returns at marks, ratios."""
    budget = budget or marks[-1]
    lines = []
    games = sorted({r["game"] for r in results})
    for game in games:
        rs = [r for r in results if r["game"] == game]
        lines.append(f"\n=== {game} ===")
        lines.append(
            f"{'impl':8s} {'seeds':>5s} {'steps/s':>9s} {'s to ' + _k(budget):>8s} "
            + " ".join(f"{'R@' + _k(m):>13s}" for m in marks)
        )
        by: dict[str, list[dict[str, Any]]] = {}
        for r in rs:
            by.setdefault(r["impl"], []).append(r)
        sps: dict[str, float] = {}
        walls: dict[str, float] = {}
        for impl, runs in by.items():
            sps[impl] = float(np.mean([x["steps"] / x["wall"] for x in runs]))
            walls[impl] = float(np.mean([_time_at(x["curve"], budget) for x in runs]))
            cells = []
            for m in marks:
                vals = [v for v in (_curve_value(x["curve"], m) for x in runs) if v is not None]
                cells.append(
                    f"{np.mean(vals):6.2f}+-{np.std(vals):5.2f}" if vals else f"{'-':>13s}"
                )
            lines.append(
                f"{impl:8s} {len(runs):5d} {sps[impl]:9.0f} {walls[impl]:8.1f} " + " ".join(cells)
            )
        if "sb3" in sps:
            for impl in sps:
                if impl != "sb3":
                    lines.append(f"throughput ratio {impl}/sb3: {sps[impl] / sps['sb3']:.2f}x")
            target_vals = [_curve_value(x["curve"], budget) for x in by["sb3"]]
            target_vals = [v for v in target_vals if v is not None]
            if target_vals and "fast" in by:
                # The target is sb3's mean return at the budget; each run's time is
                # its own first update at which its last-100 mean reaches it -- the
                # same statistic on both sides (sb3's own crossing can come before
                # its budget).
                target = float(np.mean(target_vals))
                t_sb3 = [_time_to(x["curve"], target) for x in by["sb3"]]
                t_fast = [_time_to(x["curve"], target) for x in by["fast"]]
                fmt = [f"{t:.1f}" if t is not None else "not reached" for t in t_fast]
                fmt_sb3 = [f"{t:.1f}" if t is not None else "not reached" for t in t_sb3]
                lines.append(
                    f"time to sb3's mean return at {_k(budget)} ({target:.2f}): "
                    f"sb3 per seed {fmt_sb3} (budget {walls['sb3']:.1f} s); fast per seed {fmt}"
                )
                if None not in t_fast:
                    # A seed of sb3 that never reaches the mean is counted at its budget.
                    sb3_times = [
                        t if t is not None else _time_at(x["curve"], budget)
                        for t, x in zip(t_sb3, by["sb3"], strict=True)
                    ]
                    ratio = float(np.median(t_fast)) / float(np.median(sb3_times))
                    lines.append(f"time-to-return ratio fast/sb3 (medians over seeds): {ratio:.2f}")
                    lines.append(
                        f"time ratio fast / sb3's full {_k(budget)} budget: "
                        f"{float(np.median(t_fast)) / walls['sb3']:.2f}"
                    )
    return "\n".join(lines)


def _time_at(curve: list[tuple[int, float, float | None]], step: int) -> float:
    ts = [t for s, t, _ in curve if s <= step]
    return ts[-1] if ts else float("nan")


def _time_to(curve: list[tuple[int, float, float | None]], target: float) -> float | None:
    for _, t, r in curve:
        if r is not None and r >= target:
            return t
    return None


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--games", nargs="+", default=["Breakout"], help="MinAtar games (default: Breakout)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument(
        "--impls", nargs="+", default=["sb3", "maskrl"], choices=["sb3", "maskrl", "fast"]
    )
    p.add_argument(
        "--total-timesteps", type=int, default=500_000, help="for sb3 and maskrl (reference)"
    )
    p.add_argument("--fast-timesteps", type=int, default=1_000_000, help="for the fast preset")
    p.add_argument(
        "--marks", type=int, nargs="+", default=None, help="step counts to report returns at"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for every run (default: torch's)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON file the raw results are written to")
    a = p.parse_args(argv)

    import maskrl.envs  # noqa: F401  (registers the ids)
    from maskrl.agents.config import PRESETS

    if a.threads:
        torch.set_num_threads(a.threads)
    marks = a.marks or sorted(
        {a.total_timesteps // 5, a.total_timesteps // 2, a.total_timesteps}
        | ({a.fast_timesteps} if "fast" in a.impls else set())
    )
    meta = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "args": vars(a),
    }
    results: list[dict[str, Any]] = []
    for seed in a.seeds:
        for game in a.games:
            env_id = f"maskrl/MinAtar-{game}-v0"
            for impl in a.impls:
                t0 = time.time()
                if impl == "sb3":
                    r = run_sb3(env_id, seed, a.total_timesteps, a.device)
                elif impl == "maskrl":
                    r = run_maskrl(env_id, seed, a.total_timesteps, a.device, _reference())
                else:
                    r = run_maskrl(env_id, seed, a.fast_timesteps, a.device, PRESETS["fast"])
                r.update(impl=impl, game=game, seed=seed, started=t0)
                results.append(r)
                last = _curve_value(r["curve"], r["steps"])
                print(
                    f"{impl:7s} {game:14s} seed {seed}: {r['steps']} steps in {r['wall']:.1f} s "
                    f"({r['steps'] / r['wall']:.0f} steps/s), last-100 return {last}",
                    flush=True,
                )
                if a.out:
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}))
    print(summarize(results, marks, a.total_timesteps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
