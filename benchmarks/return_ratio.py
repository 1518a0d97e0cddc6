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
"""

from __future__ import annotations

import argparse
import json
import sys
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


def ratio_interval(
    reference: np.ndarray, other: np.ndarray, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean(other) / mean(reference), low, high)``: the ratio and its 95% bootstrap interval."""
    if reference.mean() <= 0:
        raise ValueError(f"the reference's mean return is {reference.mean():g}; a share needs > 0")
    rng = np.random.default_rng(seed)
    ref = reference[rng.integers(0, reference.size, (resamples, reference.size))].mean(axis=1)
    oth = other[rng.integers(0, other.size, (resamples, other.size))].mean(axis=1)
    boot = oth / np.where(ref > 0, ref, np.nan)
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return float(other.mean() / reference.mean()), float(low), float(high)


def normalised_means(
    games: list[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int = 10_000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Per-game ``(reference, a, b)`` returns -> ``{"a", "b", "b-a": (value, low, high)}``.

    ``a`` and ``b`` are the means over games of ``mean(a) / mean(reference)``
    (fractions, not per cent), ``b-a`` their difference; ``low`` and ``high``
    bound the 95% percentile bootstrap interval.
    """
    if not games:
        raise ValueError("no games to compare")
    rng = np.random.default_rng(seed)
    point_a, point_b = [], []
    boot_a = np.zeros(resamples)
    boot_b = np.zeros(resamples)
    for ref, a, b in games:
        if ref.mean() <= 0:
            raise ValueError(f"a reference's mean return is {ref.mean():g}; a share needs > 0")
        point_a.append(a.mean() / ref.mean())
        point_b.append(b.mean() / ref.mean())
        r = ref[rng.integers(0, ref.size, (resamples, ref.size))].mean(axis=1)
        r = np.where(r > 0, r, np.nan)
        boot_a += a[rng.integers(0, a.size, (resamples, a.size))].mean(axis=1) / r
        boot_b += b[rng.integers(0, b.size, (resamples, b.size))].mean(axis=1) / r
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("REFERENCE", "OTHER"),
        help="two train.py eval --output files of the same game (repeat for more games)",
    )
    p.add_argument(
        "--versus",
        nargs=3,
        action="append",
        default=[],
        metavar=("REFERENCE", "A", "B"),
        help="three eval files of one game (repeat per game): the mean over games of A and B\n"
        "as shares of REFERENCE, and B - A, with 95%% intervals",
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
        g1, ref = load_returns(Path(ref_path))
        g2, oth = load_returns(Path(other_path))
        if g1 != g2:
            raise SystemExit(f"--pair {ref_path} {other_path}: different games ({g1} and {g2})")
        r, lo, hi = ratio_interval(ref, oth, a.resamples, a.seed)

        def cell(x: np.ndarray) -> str:
            return f"{x.mean():.2f} +- {x.std(ddof=1) / np.sqrt(x.size):.2f}"

        print(
            f"| {g1.split('/')[-1]} | {cell(ref)} | {ref.size} | {cell(oth)} | {oth.size} "
            f"| {100 * r:.1f}% | {100 * lo:.1f}-{100 * hi:.1f}% |"
        )
    if a.versus:
        games, names = [], []
        for paths in a.versus:
            loaded = [load_returns(Path(x)) for x in paths]
            if len({g for g, _ in loaded}) != 1:
                found = ", ".join(g for g, _ in loaded)
                raise SystemExit(f"--versus {' '.join(paths)}: different games ({found})")
            names.append(loaded[0][0].split("/")[-1])
            games.append((loaded[0][1], loaded[1][1], loaded[2][1]))
        res = normalised_means(games, a.resamples, a.seed)
        if a.pair:
            print()
        print(f"mean over {len(games)} games ({', '.join(names)}), as % of the reference:")
        print("| policy | mean of the percentages | 95% interval |")
        print("| --- | ---: | --- |")
        for key, label in (("a", "A"), ("b", "B"), ("b-a", "B - A")):
            v, lo, hi = res[key]
            print(f"| {label} | {100 * v:.1f} | {100 * lo:.1f} to {100 * hi:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
