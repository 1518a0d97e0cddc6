#!/usr/bin/env python
"""A policy's mean return as a share of a reference's, with a bootstrap 95% interval.

Reads the JSON files ``train.py eval --output`` writes (one game each: the
per-episode returns are in them) and prints one markdown row per pair: both
means with their standard errors, the ratio of the means and its percentile
bootstrap interval (episodes resampled with replacement, each side on its
own, ``--resamples`` times, a seeded generator). How a student is compared
with its expert when the returns are as noisy as SpaceInvaders' (a standard
deviation near the mean)::

    python train.py eval --checkpoint runs/am5-pub/MinAtar-SpaceInvaders-v0/checkpoint.pt \\
        --episodes 500 --seed 100000 --output expert-si.json
    python train.py eval --checkpoint runs/student/checkpoint.pt --env maskrl/MinAtar-SpaceInvaders-v0 \\
        --episodes 500 --seed 100000 --output student-si.json
    python benchmarks/return_ratio.py --pair expert-si.json student-si.json

``--versus REFERENCE A B`` (one per game) compares two policies over several
games at once, each game's return normalised by the reference's: it prints the
mean over games of ``A / REFERENCE`` and of ``B / REFERENCE`` (in per cent) and
their difference ``B - A``, each with a 95% bootstrap interval (each game's
three sets of episodes resampled on their own; A and B share the reference's
resample, as they share the reference)::

    python benchmarks/return_ratio.py \
        --versus expert-Breakout.json baseline-Breakout.json student-Breakout.json \
        --versus expert-Seaquest.json baseline-Seaquest.json student-Seaquest.json

Several training runs (seeds) of one side: give A or B as a comma-separated
list of files, one per run, in the same run order for every game. That side's
share on a game is then the mean over its runs of ``mean(run) / mean(reference)``,
the intervals resample episodes within each run (they say how well the runs'
episodes pin their means, not how much another seed would differ), and a second
table gives each run's own mean of the percentages, so the spread between
seeds is in plain view::

    python benchmarks/return_ratio.py \
        --versus expert-Breakout.json baseline-s1-Breakout.json,baseline-s2-Breakout.json \
                 student-s1-Breakout.json,student-s2-Breakout.json  ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def load_returns(path: Path) -> tuple[str, np.ndarray]:
    """``(env id, per-episode returns)`` of one ``train.py eval --output`` file of one game."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read it as JSON ({e})") from e
    if "returns" not in data or "env_id" not in data:
        raise SystemExit(
            f"{path}: not a one-game evaluation (no 'env_id' and 'returns'); evaluate one game "
            "with train.py eval --env ID --output FILE"
        )
    returns = np.asarray(data["returns"], dtype=np.float64)
    if returns.size < 2:
        raise SystemExit(f"{path}: {returns.size} episode(s); a standard error needs at least 2")
    return str(data["env_id"]), returns


Runs = np.ndarray | Sequence[np.ndarray]


def _runs(x: Runs) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else list(x)


def ratio_interval(
    reference: Runs, other: Runs, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean(other) / mean(reference), low, high)``: the ratio and its 95% bootstrap interval.

    Either side may be a list of arrays, one per training run (seed): its
    mean is then the mean of the runs' means, and each run's episodes are
    resampled on their own (the interval says how well the episodes pin the
    means, not how much another seed would differ).
    """
    refs, others = _runs(reference), _runs(other)
    ref_mean = float(np.mean([x.mean() for x in refs]))
    if ref_mean <= 0:
        raise ValueError(f"the reference's mean return is {ref_mean:g}; a share needs > 0")
    rng = np.random.default_rng(seed)

    def boot(runs: list[np.ndarray]) -> np.ndarray:
        return np.mean(
            [x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1) for x in runs], axis=0
        )

    ref = boot(refs)
    oth = boot(others)
    ratios = oth / np.where(ref > 0, ref, np.nan)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    other_mean = float(np.mean([x.mean() for x in others]))
    return other_mean / ref_mean, float(low), float(high)


def normalised_means(
    games: Sequence[tuple[np.ndarray, Runs, Runs]], resamples: int = 10_000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Per-game ``(reference, a, b)`` returns -> ``{"a", "b", "b-a": (value, low, high)}``.

    ``a`` and ``b`` are the means over games of ``mean(a) / mean(reference)``
    (fractions, not per cent), ``b-a`` their difference; ``low`` and ``high``
    bound the 95% percentile bootstrap interval. ``a`` or ``b`` may be a list
    of arrays, one per training run: the game's share is then the mean of the
    runs' shares, and each run's episodes are resampled on their own.
    """
    if not games:
        raise ValueError("no games to compare")
    counts = {len(_runs(a)) for _, a, _ in games}, {len(_runs(b)) for _, _, b in games}
    for side, c in zip("ab", counts, strict=True):
        if len(c) != 1 or 0 in c:
            raise ValueError(
                f"side {side} has {sorted(c)} runs across games; give each game the same runs"
            )
    rng = np.random.default_rng(seed)
    point_a, point_b = [], []
    boot_a = np.zeros(resamples)
    boot_b = np.zeros(resamples)

    def boot_share(runs: list[np.ndarray], r: np.ndarray) -> np.ndarray:
        return np.mean(
            [x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1) / r for x in runs], axis=0
        )

    for ref, a, b in games:
        if ref.mean() <= 0:
            raise ValueError(f"a reference's mean return is {ref.mean():g}; a share needs > 0")
        runs_a, runs_b = _runs(a), _runs(b)
        point_a.append(np.mean([x.mean() for x in runs_a]) / ref.mean())
        point_b.append(np.mean([x.mean() for x in runs_b]) / ref.mean())
        r = ref[rng.integers(0, ref.size, (resamples, ref.size))].mean(axis=1)
        r = np.where(r > 0, r, np.nan)
        boot_a += boot_share(runs_a, r)
        boot_b += boot_share(runs_b, r)
    n = len(games)
    boot_a, boot_b = boot_a / n, boot_b / n
    out: dict[str, tuple[float, float, float]] = {}
    for name, point, boot in (
        ("a", float(np.mean(point_a)), boot_a),
        ("b", float(np.mean(point_b)), boot_b),
        ("b-a", float(np.mean(point_b) - np.mean(point_a)), boot_b - boot_a),
    ):
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        out[name] = (point, float(lo), float(hi))
    return out


def per_run_means(games: Sequence[tuple[np.ndarray, Runs, Runs]]) -> dict[str, list[float]]:
    """``{"a": [...], "b": [...]}``: each run's mean over games of its share of the reference."""
    out: dict[str, list[float]] = {}
    for side, k in (("a", 1), ("b", 2)):
        n_runs = len(_runs(games[0][k]))
        out[side] = [
            float(np.mean([_runs(g[k])[i].mean() / g[0].mean() for g in games]))
            for i in range(n_runs)
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("REFERENCE", "OTHER"),
        help="two train.py eval --output files of the same game (repeat for more games); either\n"
        "may be a comma-separated list of files, one per training run (seed): its mean\n"
        "is then the mean of the runs' means",
    )
    p.add_argument(
        "--versus",
        nargs=3,
        action="append",
        default=[],
        metavar=("REFERENCE", "A", "B"),
        help="three eval files of one game (repeat per game): the mean over games of A and B\n"
        "as shares of REFERENCE, and B - A, with 95%% intervals; A or B may be a\n"
        "comma-separated list of files, one per training run (seed)",
    )
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.resamples < 100:
        p.error(f"--resamples must be >= 100, got {a.resamples}")
    if not a.pair and not a.versus:
        p.error("give at least one --pair REFERENCE OTHER or --versus REFERENCE A B")
    if a.pair:
        print(
            "| game | reference | episodes | other | episodes | other / reference | 95% interval |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for ref_path, other_path in a.pair:
        sides = []
        for spec in (ref_path, other_path):
            paths = [x for x in spec.split(",") if x]
            if not paths:
                raise SystemExit(f"--pair {ref_path} {other_path}: a side names no file")
            sides.append([load_returns(Path(x)) for x in paths])
        found = {g for side in sides for g, _ in side}
        if len(found) != 1:
            raise SystemExit(
                f"--pair {ref_path} {other_path}: different games ({' and '.join(sorted(found))})"
            )
        ref, oth = ([r for _, r in side] for side in sides)
        r, lo, hi = ratio_interval(ref, oth, a.resamples, a.seed)

        def cell(runs: list[np.ndarray]) -> str:
            if len(runs) == 1:
                x = runs[0]
                return f"{x.mean():.2f} +- {x.std(ddof=1) / np.sqrt(x.size):.2f}"
            return " / ".join(f"{x.mean():.2f}" for x in runs)

        def count(runs: list[np.ndarray]) -> str:
            return " / ".join(str(x.size) for x in runs)

        print(
            f"| {found.pop().split('/')[-1]} | {cell(ref)} | {count(ref)} | {cell(oth)} "
            f"| {count(oth)} | {100 * r:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% |"
        )
    if a.versus:
        games, names = [], []
        n_runs: dict[str, set[int]] = {"A": set(), "B": set()}
        for ref_path, a_paths, b_paths in a.versus:
            ref_game, ref_ret = load_returns(Path(ref_path))
            sides = []
            for label, spec in (("A", a_paths), ("B", b_paths)):
                paths = [x for x in spec.split(",") if x]
                if not paths:
                    raise SystemExit(
                        f"--versus {ref_path} {a_paths} {b_paths}: {label} names no file"
                    )
                n_runs[label].add(len(paths))
                loaded = [load_returns(Path(x)) for x in paths]
                for (g, _), x in zip(loaded, paths, strict=True):
                    if g != ref_game:
                        raise SystemExit(
                            f"--versus {ref_path} {a_paths} {b_paths}: different games "
                            f"({ref_game} and {g} in {x})"
                        )
                sides.append([r for _, r in loaded])
            names.append(ref_game.split("/")[-1])
            games.append((ref_ret, sides[0], sides[1]))
        for label, c in n_runs.items():
            if len(c) != 1:
                raise SystemExit(
                    f"--versus: {label} has {sorted(c)} runs across games; give every game the "
                    "same runs, in the same order"
                )
        res = normalised_means(games, a.resamples, a.seed)
        if a.pair:
            print()
        print(f"mean over {len(games)} games ({', '.join(names)}), as % of the reference:")
        print("| policy | mean of the percentages | 95% interval |")
        print("| --- | ---: | --- |")
        for key, label in (("a", "A"), ("b", "B"), ("b-a", "B - A")):
            v, lo, hi = res[key]
            print(f"| {label} | {100 * v:.1f} | {100 * lo:.1f} to {100 * hi:.1f} |")
        if len(_runs(games[0][1])) > 1 or len(_runs(games[0][2])) > 1:
            runs = per_run_means(games)
            print()
            print("each run's mean of the percentages, in the order given:")
            for key, label in (("a", "A"), ("b", "B")):
                print(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in runs[key]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
