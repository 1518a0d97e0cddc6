"""Env-alone throughput: batched torch MinAtar vs MinAtar in SyncVectorEnv vs make_vec (numpy).

For each game, in one run on one machine, random valid actions (uniform over the
game's minimal action set, sampled inside the timed loop on every side):

* ``sync8``: MinAtar's own Gymnasium envs (``minatar.gym.register_envs()``,
  ``MinAtar/<Game>-v1``, the minimal action set) in Gymnasium's ``SyncVectorEnv`` of ``--sync-envs`` envs;
* ``numpy8``: :func:`maskrl.envs.make_vec` (numpy backend) with as many envs;
* ``torch<N>``: :func:`maskrl.envs.make_vec` with ``backend="torch"`` on
  ``--device`` for each ``N`` in ``--num-envs``, with ``copy_obs=False`` as the
  trainers build it (observations valid until the next step).

Every env is built once; then ``--repeats`` rounds time each of them in turn for
``--seconds`` (interleaved, so a stall of a shared machine hits one sample, not one
side of a ratio). Prints the median env steps per second of each, the ratio of
the torch and sync8 medians per game, the geometric mean of the ratios at each
``N``, and writes JSON (every sample) to ``--out``.

``--threads`` sets torch's intra-op threads for this process (default 1: the
Python-loop baselines use one core, and on a shared 2-core machine a second
torch thread mostly waits on the first).

Example:
    python benchmarks/torch_env_throughput.py
    python benchmarks/torch_env_throughput.py --games Breakout --num-envs 1 1024 --seconds 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import maskrl.envs
from maskrl.envs import make_vec

GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "torch_env_throughput.json"


def _minimal_actions(game: str) -> np.ndarray:
    env = gym.make(f"maskrl/MinAtar-{game}-v0")
    mask = env.unwrapped.action_masks()  # type: ignore[attr-defined]
    env.close()
    return np.flatnonzero(mask)


def _timed(
    step: Callable[[], Any],
    seconds: float,
    per_call: int,
    sync: Callable[[], None],
    warmup: int = 3,
) -> float:
    """Env steps per second of ``step`` (``per_call`` env steps each) over ~``seconds``.

    ``sync`` waits for queued device work: it runs after the warm-up and after each
    batch of calls, so an asynchronous device is timed at its throughput.
    """
    for _ in range(warmup):
        step()
    sync()
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(8):
            step()
        calls += 8
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * per_call / elapsed


Bench = tuple[Callable[[], Any], int, Callable[[], None], Callable[[], None]]
"""A prepared env: ``(step, env steps per call, close, sync)``."""


def _no_sync() -> None:
    """Host-side envs: nothing is queued."""


def bench_sync(game: str, num_envs: int, seed: int) -> Bench:
    """MinAtar's own envs in Gymnasium's ``SyncVectorEnv``.

    ``MinAtar/<Game>-v1`` acts in the minimal action set (action ``i`` is the set's
    ``i``-th action), so uniform indices are uniform valid actions.
    """
    import minatar.gym

    if f"MinAtar/{game}-v1" not in gym.registry:
        minatar.gym.register_envs()
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(f"MinAtar/{game}-v1") for _ in range(num_envs)]
    )
    envs.reset(seed=seed)
    n_valid = len(_minimal_actions(game))
    rng = np.random.default_rng(seed)
    return (lambda: envs.step(rng.integers(n_valid, size=num_envs))), num_envs, envs.close, _no_sync


def bench_numpy(game: str, num_envs: int, seed: int) -> Bench:
    """:func:`maskrl.envs.make_vec` with the numpy backend."""
    envs = make_vec(f"maskrl/MinAtar-{game}-v0", num_envs, seed=seed)
    envs.reset()
    valid = _minimal_actions(game)
    rng = np.random.default_rng(seed)
    return (lambda: envs.step(rng.choice(valid, size=num_envs))), num_envs, envs.close, _no_sync


def bench_torch(game: str, num_envs: int, seed: int, device: str) -> Bench:
    """:func:`maskrl.envs.make_vec` with ``backend="torch"`` and ``copy_obs=False``."""
    envs = make_vec(
        f"maskrl/MinAtar-{game}-v0",
        num_envs,
        backend="torch",
        device=device,
        seed=seed,
        copy_obs=False,
    )
    envs.reset()
    dev = envs.device  # type: ignore[attr-defined]
    valid = torch.as_tensor(_minimal_actions(game), device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)

    def step() -> None:
        idx = torch.randint(len(valid), (num_envs,), generator=gen, device=dev)
        envs.step(valid[idx])

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return step, num_envs, envs.close, sync


def _geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--games", nargs="+", default=GAMES, choices=GAMES)
    p.add_argument("--num-envs", nargs="+", type=int, default=[1, 64, 1024, 4096])
    p.add_argument("--sync-envs", type=int, default=8, help="envs in the Python baselines")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # this script's process only

    rows: list[dict[str, Any]] = []
    print(
        f"env steps/s, median of {args.repeats} interleaved {args.seconds:g} s runs; "
        f"torch {torch.__version__} on {args.device}, "
        f"{torch.get_num_threads()} thread(s); {os.cpu_count()} CPUs; maskrl.envs at "
        f"{Path(maskrl.envs.__file__).parent}"
    )
    header = f"{'game':<14}{'sync' + str(args.sync_envs):>11}{'numpy' + str(args.sync_envs):>11}"
    header += "".join(f"{'torch' + str(n):>12}" for n in args.num_envs)
    header += "".join(f"{'x@' + str(n):>9}" for n in args.num_envs)
    print(header)
    for game in args.games:
        benches: dict[str, Bench] = {
            "sync": bench_sync(game, args.sync_envs, args.seed),
            "numpy": bench_numpy(game, args.sync_envs, args.seed),
        }
        for n in args.num_envs:
            benches[f"torch{n}"] = bench_torch(game, n, args.seed, args.device)
        samples: dict[str, list[float]] = {k: [] for k in benches}
        try:
            for _ in range(args.repeats):
                for key, (step, per_call, _, wait) in benches.items():
                    samples[key].append(_timed(step, args.seconds, per_call, wait))
        finally:
            for _, _, close, _ in benches.values():
                close()
        med = {k: statistics.median(v) for k, v in samples.items()}
        sync, npy = med["sync"], med["numpy"]
        tor = {n: med[f"torch{n}"] for n in args.num_envs}
        row = {
            "game": game,
            "sync": sync,
            "numpy": npy,
            "torch": {str(n): v for n, v in tor.items()},
            "ratio_vs_sync": {str(n): v / sync for n, v in tor.items()},
            "ratio_vs_numpy": {str(n): v / npy for n, v in tor.items()},
            "samples": samples,
        }
        rows.append(row)
        line = f"{game:<14}{sync:>11,.0f}{npy:>11,.0f}"
        line += "".join(f"{tor[n]:>12,.0f}" for n in args.num_envs)
        line += "".join(f"{tor[n] / sync:>8.1f}x" for n in args.num_envs)
        print(line, flush=True)
    geo = {str(n): _geomean([r["ratio_vs_sync"][str(n)] for r in rows]) for n in args.num_envs}
    low = {str(n): min(r["ratio_vs_sync"][str(n)] for r in rows) for n in args.num_envs}
    for n in args.num_envs:
        print(
            f"torch{n} / sync{args.sync_envs}: geometric mean {geo[str(n)]:.1f}x, "
            f"lowest {low[str(n)]:.1f}x"
        )
    result = {
        "settings": vars(args) | {"out": str(args.out)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "results": rows,
        "geomean_ratio_vs_sync": geo,
        "lowest_ratio_vs_sync": low,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
