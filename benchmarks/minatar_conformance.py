"""Full conformance run: the batched torch games against MinAtar, frame by frame.

For each game: one env for ``--steps`` steps and ``--many`` envs for
``--steps // --many * 2`` vector steps (twice the env steps), random valid actions
with sticky actions on (MinAtar's 0.1), every observation, reward and
termination compared (:func:`maskrl.envs.torch_minatar.reference.check_conformance`).
Freeway and Seaquest also run with weighted actions that get the chicken across
the road and the sub to collect divers and surface, which a uniform policy rarely
does. Exits non-zero on the first difference.

Example:
    python benchmarks/minatar_conformance.py            # 10,000+ steps per game
    python benchmarks/minatar_conformance.py --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from maskrl.envs.torch_minatar.reference import check_conformance

GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]
WEIGHTED: dict[str, list[float]] = {
    "Freeway": [0.1, 0.8, 0.1],
    "Seaquest": [0.1, 0.2, 0.05, 0.2, 0.2, 0.25],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons; returns 0 when every game agrees at every step, else 1."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--games", nargs="+", default=GAMES, choices=GAMES)
    p.add_argument("--steps", type=int, default=10_000, help="env steps of the one-env run")
    p.add_argument("--many", type=int, default=16, help="envs of the batched run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    failed = 0
    print(
        f"{'game':<14}{'envs':>5}{'policy':>9}{'env steps':>11}{'episodes':>10}{'reward':>9}  result"
    )
    for game in args.games:
        env_id = f"maskrl/MinAtar-{game}-v0"
        runs: list[tuple[int, int, list[float] | None]] = [
            (1, args.steps, None),
            (args.many, max(1, 2 * args.steps // args.many), None),
        ]
        if game in WEIGHTED:
            runs.append((args.many, max(1, 2 * args.steps // args.many), WEIGHTED[game]))
        for n, steps, probs in runs:
            start = time.perf_counter()
            res = check_conformance(
                env_id, n, steps, seed=args.seed, device=args.device, action_probs=probs
            )
            wall = time.perf_counter() - start
            verdict = "identical" if res.ok else f"DIFFERENT: {res.mismatch}"
            policy = "uniform" if probs is None else "weighted"
            print(
                f"{game:<14}{n:>5}{policy:>9}{res.steps * n:>11,}{res.episodes:>10,}"
                f"{res.total_reward:>9,.0f}  {verdict} ({wall:.1f} s)",
                flush=True,
            )
            failed += not res.ok
    print("all identical" if not failed else f"{failed} run(s) differed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
