#!/usr/bin/env python
"""Recurrent against feedforward masked PPO on ``maskrl/Recall-v0`` (and sb3-contrib's speed).

``maskrl/Recall-v0`` shows a cue at the first step only and asks for it, among
the actions valid then, ``delay + 1`` steps later. Without memory the best
success rate is chance, :func:`maskrl.envs.recall.recall_chance` (13/36 =
0.361 for the defaults); a policy that remembers the cue scores 1.

The script trains, with the same settings and seeds, maskrl's ``PPO``
(feedforward) and ``RecurrentPPO`` (an LSTM of ``--lstm-hidden`` units
between the encoder and the heads), then prints for each the success rate of
``--eval-episodes`` greedy episodes after ``--total-timesteps`` (the mean
return: 1 for a success, 0 otherwise) and the training steps per second.

``--sb3`` adds sb3-contrib's ``RecurrentPPO`` (which cannot mask: it plays the
same env without masks) at identical settings -- envs, steps, epochs,
minibatch size, learning rate, discount, clipping, coefficients, the same
MLP (64, 64, tanh) before one shared LSTM of the same size and linear heads --
and prints maskrl's throughput ratio over it.

Usage (about 30 s for both maskrl runs on one CPU core; sb3-contrib adds a
few minutes)::

    OMP_NUM_THREADS=1 python benchmarks/recurrent_recall.py --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/recurrent_recall.py --seeds 0 --sb3
"""

from __future__ import annotations

import argparse
import time
from typing import Any

RECALL = "maskrl/Recall-v0"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The PPO settings every implementation shares."""
    return dict(
        num_envs=16, num_steps=32, num_minibatches=4, num_epochs=4,
        learning_rate=args.learning_rate, gamma=0.99, gae_lambda=0.95, clip_coef=0.1,
        ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, hidden=64,
    )  # fmt: skip


def run_maskrl(args: argparse.Namespace, seed: int, recurrent: bool) -> dict[str, Any]:
    from maskrl.agents import PPO, PPOConfig, RecurrentPPO, evaluate

    c = settings(args)
    if recurrent:
        agent: Any = RecurrentPPO(
            RECALL,
            PPOConfig(recurrent=True, lstm_hidden=args.lstm_hidden, seed=seed, device="cpu", **c),
        )
    else:
        agent = PPO(RECALL, PPOConfig(seed=seed, device="cpu", **c))
    t0 = time.perf_counter()
    agent.learn(args.total_timesteps)
    wall = time.perf_counter() - t0
    ev = evaluate(agent.policy, RECALL, args.eval_episodes, seed=10_000 + seed, deterministic=True)
    agent.envs.close()
    return {"success": ev["mean"], "sps": agent.global_step / wall, "steps": agent.global_step}


def run_sb3(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import gymnasium as gym
    import torch
    from sb3_contrib import RecurrentPPO as SB3RecurrentPPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from maskrl.networks import MLPEncoder

    class MLPFeatures(BaseFeaturesExtractor):
        def __init__(self, observation_space: Any, features_dim: int = 64) -> None:
            super().__init__(observation_space, features_dim)
            self.mlp = MLPEncoder(int(observation_space.shape[0]), (features_dim, features_dim))

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.mlp(obs)

    c = settings(args)
    env = DummyVecEnv([lambda: Monitor(gym.make(RECALL)) for _ in range(c["num_envs"])])
    env.seed(seed)
    model = SB3RecurrentPPO(
        "MlpLstmPolicy",
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
            features_extractor_class=MLPFeatures,
            features_extractor_kwargs=dict(features_dim=c["hidden"]),
            lstm_hidden_size=args.lstm_hidden,
            n_lstm_layers=1,
            shared_lstm=True,
            enable_critic_lstm=False,
            net_arch=[],
        ),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    t0 = time.perf_counter()
    model.learn(args.total_timesteps)
    wall = time.perf_counter() - t0
    env.close()
    return {"sps": model.num_timesteps / wall, "steps": model.num_timesteps}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--total-timesteps", type=int, default=60_000)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--lstm-hidden", type=int, default=64)
    p.add_argument("--eval-episodes", type=int, default=1000)
    p.add_argument("--sb3", action="store_true", help="also time sb3-contrib's RecurrentPPO")
    args = p.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same for every implementation
    try:
        _compare(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def _compare(args: argparse.Namespace) -> None:
    from maskrl.envs.recall import recall_chance

    print(f"chance without memory: {float(recall_chance()):.3f}")
    ratios = []
    for seed in args.seeds:
        ff = run_maskrl(args, seed, recurrent=False)
        rec = run_maskrl(args, seed, recurrent=True)
        print(
            f"seed {seed}: feedforward success {ff['success']:.3f} ({ff['sps']:.0f} steps/s), "
            f"recurrent success {rec['success']:.3f} ({rec['sps']:.0f} steps/s) "
            f"after {rec['steps']} steps",
            flush=True,
        )
        if args.sb3:
            sb3 = run_sb3(args, seed)
            ratios.append(rec["sps"] / sb3["sps"])
            print(
                f"seed {seed}: sb3-contrib RecurrentPPO (no masks) {sb3['sps']:.0f} steps/s; "
                f"maskrl recurrent / sb3-contrib = {ratios[-1]:.2f}x",
                flush=True,
            )
    if ratios:
        print(f"throughput ratio, mean over seeds: {sum(ratios) / len(ratios):.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
