"""MinAtar on a GPU: the batched torch games, env alone, at 4,096 to 65,536 envs.

Part ``ppo``: masked PPO end to end on the device (batched Breakout at 4,096
envs by default), steps/s and the wall time to a last-100 return of 30 and 40.

Part ``env``: for each game and env count, random valid
actions sampled on the device, ``check_actions=False`` and same-step autoreset
without device syncs (the GPU path of
:class:`~maskrl.envs.torch_minatar.GameBatch`); prints env steps per second.
``--compile`` wraps each game's ``step`` and ``render`` in ``torch.compile``
(fewer kernel launches; the first steps pay for compilation, excluded from the
timing). Parts are functions ``part_<name>(args) -> list[dict]`` registered in
``PARTS``; results go to ``--out`` as JSON.

Runs in well under 2 minutes with the defaults (5 games x 5 sizes x ``--seconds``).

Example:
    python benchmarks/gpu_minatar.py --parts env ppo      # CUDA, under 5 minutes
    python benchmarks/gpu_minatar.py --device cpu --num-envs 4096 --seconds 0.5
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from maskrl.envs import make_vec

GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_minatar.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_games(envs: Any) -> None:
    """Replace each game's ``step``/``render`` of a torch vector env by compiled versions."""
    for batch in envs._batches:
        game = batch.game
        game.step = torch.compile(game.step, dynamic=False)  # type: ignore[method-assign]
        game.render = torch.compile(game.render, dynamic=False)  # type: ignore[method-assign]


def env_steps_per_second(
    game: str, num_envs: int, device: str, seconds: float, compile_step: bool, seed: int = 0
) -> float:
    """Env steps/s of ``make_vec(..., backend="torch")`` stepping random valid actions."""
    envs = make_vec(
        f"maskrl/MinAtar-{game}-v0",
        num_envs,
        backend="torch",
        device=device,
        seed=seed,
        check_actions=False,
    )
    if compile_step:
        compile_games(envs)
    dev: torch.device = envs.device  # type: ignore[attr-defined]
    _, infos = envs.reset()
    valid = torch.nonzero(infos["action_mask"][0]).flatten()
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)

    def step() -> None:
        idx = torch.randint(len(valid), (num_envs,), generator=gen, device=dev)
        envs.step(valid[idx])

    for _ in range(5 if not compile_step else 20):  # warm-up (and compilation)
        step()
    _sync(dev)
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(10):
            step()
        calls += 10
        _sync(dev)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * num_envs / elapsed


def part_env(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Env-alone throughput per game and env count."""
    rows: list[dict[str, Any]] = []
    header = f"{'game':<14}" + "".join(f"{n:>14,}" for n in args.num_envs)
    print(f"env steps/s on {args.device} (compile={args.compile})\n{header}")
    for game in args.games:
        rates = {}
        for n in args.num_envs:
            rates[n] = env_steps_per_second(game, n, args.device, args.seconds, args.compile)
        print(f"{game:<14}" + "".join(f"{rates[n]:>14,.0f}" for n in args.num_envs), flush=True)
        rows += [
            {"part": "env", "game": game, "num_envs": n, "steps_per_s": rates[n]} for n in rates
        ]
    return rows


def part_ppo(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Masked PPO end to end on the device: batched Breakout, rollout and update on the GPU.

    Trains for ``--ppo-seconds`` of wall time (or ``--ppo-steps``) with
    ``--ppo-envs`` envs x ``--ppo-steps-per-rollout`` steps per update, and
    prints steps/s and the wall time at which the mean return of the last 100
    episodes first reaches each of ``--targets`` (Breakout: 30 and 40).
    """
    from maskrl.agents import PPO, PPOConfig

    cfg = PPOConfig(
        num_envs=args.ppo_envs,
        num_steps=args.ppo_steps_per_rollout,
        num_epochs=args.ppo_epochs,
        num_minibatches=args.ppo_minibatches,
        learning_rate=args.ppo_lr,
        device=args.device,
        env_backend="torch",
        seed=args.seed,
        cpu_rollout_tuning=False,
    )
    agent = PPO(f"maskrl/MinAtar-{args.ppo_game}-v0", cfg)
    reached: dict[float, float | None] = {t: None for t in args.targets}
    recent: list[float] = []
    seen = 0
    t0 = time.perf_counter()

    def cb(a: Any, m: dict[str, float]) -> bool:
        nonlocal seen
        st = a.episode_stats
        recent.extend(st.returns[seen:])
        seen = len(st.returns)
        del recent[:-100]
        now = time.perf_counter() - t0
        if len(recent) >= 100:
            mean = sum(recent) / len(recent)
            for t in reached:
                if reached[t] is None and mean >= t:
                    reached[t] = now
                    print(
                        f"  return {t} reached at {now:.1f} s, step {a.global_step:,}", flush=True
                    )
        return now < args.ppo_seconds

    agent.learn(args.ppo_total, callback=cb)
    wall = time.perf_counter() - t0
    last = sum(recent) / len(recent) if recent else float("nan")
    print(
        f"PPO {args.ppo_game} on {args.device}: {agent.global_step:,} steps in {wall:.1f} s "
        f"({agent.global_step / wall:,.0f} steps/s), "
        f"last-100 return {last:.2f}; targets: {reached}",
        flush=True,
    )
    return [
        {
            "part": "ppo",
            "game": args.ppo_game,
            "steps": agent.global_step,
            "seconds": wall,
            "steps_per_s": agent.global_step / wall,
            "last_100_return": last,
            "seconds_to_return": {str(k): v for k, v in reached.items()},
            "settings": cfg.to_dict(),
        }
    ]


#: name -> function running one part of the benchmark.
PARTS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {
    "env": part_env,
    "ppo": part_ppo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["env"], choices=sorted(PARTS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--games", nargs="+", default=GAMES, choices=GAMES)
    p.add_argument("--num-envs", nargs="+", type=int, default=[4096, 8192, 16384, 32768, 65536])
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per measurement")
    p.add_argument("--compile", action="store_true", help="torch.compile each game's step")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ppo-game", default="Breakout", choices=GAMES)
    p.add_argument("--ppo-envs", type=int, default=4096, help="PPO: envs")
    p.add_argument("--ppo-steps-per-rollout", type=int, default=32, help="PPO: steps per env")
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--ppo-minibatches", type=int, default=4)
    p.add_argument("--ppo-lr", type=float, default=2.5e-3)
    p.add_argument("--ppo-seconds", type=float, default=120.0, help="PPO: wall-time budget")
    p.add_argument("--ppo-total", type=int, default=200_000_000, help="PPO: step budget")
    p.add_argument("--targets", nargs="+", type=float, default=[30.0, 40.0])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    print(f"torch {info['torch']} on {info['device']}")
    rows: list[dict[str, Any]] = []
    for part in args.parts:
        rows += PARTS[part](args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"settings": vars(args) | {"out": str(args.out)}, "machine": info, "results": rows},
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
