#!/usr/bin/env python
"""maskrl's masked DQN against Stable-Baselines3's ``DQN`` on the same MinAtar env, in one run.

Both train on ``maskrl/MinAtar-<Game>-v0`` on the same machine, one after the
other, with identical settings: one env, a 100k replay buffer, batch 32, Adam
at lr 1e-4, gamma 0.99, a gradient step every 4 env steps after 5,000 steps of
acting, a hard target copy every 1,000 steps, epsilon 1 -> 0.05 over the first
``--exploration-steps``, gradient clipping at 10, Huber loss, and the same
network (the MinAtar CNN: 16 3x3 filters, 128 units, then one linear layer to
the 6 Q-values; sb3 through :class:`maskrl.agents.sb3.MinAtarFeatures`).
SB3's DQN cannot mask, so it plays all 6 actions (MinAtar turns an action
outside the game's minimal set into a no-op); maskrl acts and bootstraps over
the valid actions only. Implementations (``--impls``):

* ``sb3``      -- ``stable_baselines3.DQN`` (plain DQN target);
* ``maskrl``   -- maskrl's DQN with ``double=False`` (the same target computation);
* ``maskrl-torch`` -- the same on the torch env backend (``env_backend="torch"``: the
  batched MinAtar games on ``--device``, transitions kept as tensors there); SB3
  keeps its ``DummyVecEnv`` of Gymnasium envs, as its users run it;
* ``double``   -- maskrl's default (double DQN: one more forward pass per step);
* ``unmasked`` -- maskrl's default with ``unmasked_target=True`` (the ablation).

The script prints each run's training steps per second and the mean return of
the last 100 episodes, then the throughput ratios against sb3. With
``--repeats R`` every implementation runs R times, in an order rotated each
round (so a slow spell of the machine falls on each in turn); the ratio is
then given per round and as the median over rounds. Usage::

    OMP_NUM_THREADS=1 python benchmarks/dqn_vs_sb3.py --game Breakout \\
        --impls sb3 maskrl --total-timesteps 30000 --repeats 3 --out dqn_vs_sb3.json

Throughput is comparable only within one run on one machine.
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

#: The settings both sides share.
SETTINGS: dict[str, Any] = dict(
    num_envs=1,
    buffer_size=100_000,
    batch_size=32,
    learning_rate=1e-4,
    gamma=0.99,
    learning_starts=5_000,
    train_freq=4,
    gradient_steps=1,
    target_update_interval=1_000,
    exploration_initial_eps=1.0,
    exploration_final_eps=0.05,
    max_grad_norm=10.0,
)


def run_sb3(
    env_id: str, seed: int, total: int, exploration_steps: int, device: str
) -> dict[str, Any]:
    """SB3's ``DQN`` on ``env_id`` (all actions offered); returns steps, wall time, last-100 return."""
    import gymnasium as gym
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from maskrl.agents.sb3 import MinAtarFeatures

    s = SETTINGS
    env = DummyVecEnv([lambda: Monitor(gym.make(env_id)) for _ in range(s["num_envs"])])
    env.seed(seed)
    model = SB3DQN(
        "MlpPolicy",
        env,
        buffer_size=s["buffer_size"],
        batch_size=s["batch_size"],
        learning_rate=s["learning_rate"],
        gamma=s["gamma"],
        learning_starts=s["learning_starts"],
        train_freq=s["train_freq"],
        gradient_steps=s["gradient_steps"],
        target_update_interval=s["target_update_interval"],
        exploration_initial_eps=s["exploration_initial_eps"],
        exploration_final_eps=s["exploration_final_eps"],
        exploration_fraction=min(1.0, exploration_steps / total),
        max_grad_norm=s["max_grad_norm"],
        policy_kwargs=dict(
            features_extractor_class=MinAtarFeatures,
            features_extractor_kwargs=dict(features_dim=128),
            net_arch=[],
            normalize_images=False,
        ),
        seed=seed,
        device=device,
        verbose=0,
    )
    t0 = time.perf_counter()
    model.learn(total)
    wall = time.perf_counter() - t0
    buf = model.ep_info_buffer
    ret = float(np.mean([e["r"] for e in buf])) if buf else None
    env.close()
    return {"steps": int(model.num_timesteps), "wall": wall, "last100": ret}


def run_maskrl(
    env_id: str, seed: int, total: int, exploration_steps: int, device: str, **overrides: Any
) -> dict[str, Any]:
    """maskrl's DQN on ``env_id`` with :data:`SETTINGS` and ``overrides``."""
    from maskrl.agents import DQN, DQNConfig

    cfg = DQNConfig(
        **SETTINGS, exploration_steps=exploration_steps, seed=seed, device=device, **overrides
    )
    agent = DQN(env_id, cfg)
    invalid = 0

    def record(a: Any, m: dict[str, float]) -> None:
        nonlocal invalid
        invalid += int(m["invalid_actions"])

    t0 = time.perf_counter()
    agent.learn(total, callback=record)
    wall = time.perf_counter() - t0
    r = agent.episode_stats.returns[-100:]
    agent.envs.close()
    if invalid:
        raise RuntimeError(f"maskrl's DQN took {invalid} invalid actions")
    return {"steps": agent.global_step, "wall": wall, "last100": float(np.mean(r)) if r else None}


IMPLS = {
    "maskrl": {"double": False},
    "maskrl-torch": {"double": False, "env_backend": "torch"},
    "double": {},
    "unmasked": {"unmasked_target": True},
}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; prints one line per run, then the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--game", default="Breakout")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--total-timesteps", type=int, default=30_000)
    p.add_argument("--exploration-steps", type=int, default=100_000)
    p.add_argument("--impls", nargs="+", default=["sb3", "maskrl"], choices=["sb3", *IMPLS])
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-envs", type=int, default=1, help="envs on both sides (default 1)")
    p.add_argument(
        "--train-freq", type=int, default=4, help="vector steps per gradient step (default 4)"
    )
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    p.add_argument(
        "--repeats", type=int, default=1,
        help="rounds of every implementation, in rotated order (default 1); ratios per round "
        "and their median",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.total_timesteps < 1 or a.exploration_steps < 0 or a.num_envs < 1 or a.train_freq < 1:
        p.error(
            "--total-timesteps, --num-envs and --train-freq must be >= 1, --exploration-steps >= 0"
        )
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    if len(set(a.impls)) != len(a.impls):
        p.error(f"--impls lists an implementation twice: {' '.join(a.impls)}")
    SETTINGS.update(num_envs=a.num_envs, train_freq=a.train_freq)
    import maskrl.envs  # noqa: F401  (registers the ids)

    env_id = f"maskrl/MinAtar-{a.game}-v0"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in a.impls}
    for rnd in range(a.repeats):
        k = rnd % len(a.impls)
        for impl in a.impls[k:] + a.impls[:k]:
            if impl == "sb3":
                r = run_sb3(env_id, a.seed, a.total_timesteps, a.exploration_steps, a.device)
            else:
                r = run_maskrl(
                    env_id, a.seed, a.total_timesteps, a.exploration_steps, a.device,
                    **IMPLS[impl],
                )  # fmt: skip
            r["sps"] = r["steps"] / r["wall"]
            runs[impl].append(r)
            ret = "-" if r["last100"] is None else f"{r['last100']:.2f}"
            tag = f" (round {rnd + 1})" if a.repeats > 1 else ""
            print(f"{impl:12s} {r['steps']} steps in {r['wall']:.1f} s: {r['sps']:.0f} steps/s, "
                  f"last-100 return {ret}{tag}", flush=True)  # fmt: skip
    results: dict[str, Any] = {
        impl: {**rs[0], "rounds": rs, "median_sps": float(np.median([r["sps"] for r in rs]))}
        for impl, rs in runs.items()
    }
    if "sb3" in results:
        for impl, rs in runs.items():
            if impl == "sb3":
                continue
            ratios = [r["sps"] / b["sps"] for r, b in zip(rs, runs["sb3"], strict=True)]
            results[impl]["ratios"] = ratios
            results[impl]["median_ratio"] = float(np.median(ratios))
            per = ", ".join(f"{x:.2f}x" for x in ratios)
            extra = f" (rounds: {per})" if len(ratios) > 1 else ""
            print(f"throughput ratio {impl}/sb3: {np.median(ratios):.2f}x{extra}")
    if a.out:
        meta = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
        Path(a.out).write_text(
            json.dumps({"args": vars(a), "meta": meta, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
