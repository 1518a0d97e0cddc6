"""Learning curves from a run's tensorboard event files, and the figures read off them.

Reading uses tensorboard's own event reader (every point kept, no reservoir
sampling; points a resumed run purged are dropped as tensorboard drops them).
Imports neither torch nor matplotlib.

A run logs ``charts/episodic_return`` after every update in which episodes
ended (x: the env step, all envs counted), and, for a multi-game run,
``charts/episodic_return/<game>`` per game (see :mod:`maskrl.agents.runner`).

Smoothing (:func:`smooth`) is a trailing mean over the last ``n`` logged points,
so a smoothed value at step ``s`` uses no point logged after ``s``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "RETURN_TAG",
    "Curve",
    "area_ratio",
    "game_label",
    "mean_curve",
    "read_run",
    "run_games",
    "smooth",
    "steps_to_reach",
    "value_at",
]

#: The tag of the episodic return (per game: ``RETURN_TAG + "/<game>"``).
RETURN_TAG = "charts/episodic_return"

#: A run name's seed suffix (``-s<seed>``): runs equal up to it are seeds of one setting.
SEED_SUFFIX = re.compile(r"-s\d+$")


@dataclass
class Curve:
    """One scalar series: ``steps`` (env steps), ``values``, ``wall`` (seconds since the run's
    first logged point), all 1-D float arrays of the same length, ``steps`` increasing."""

    steps: np.ndarray
    values: np.ndarray
    wall: np.ndarray


def game_label(env_id: str) -> str:
    """The label a run gives a game in its tags (``maskrl/MinAtar-Breakout-v0`` -> ``MinAtar-Breakout-v0``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", env_id.split("/")[-1].split(":")[-1])


def has_event_files(run_dir: Path) -> bool:
    return any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


def _no_events_message(run_dir: Path) -> str:
    if not run_dir.is_dir():
        return f"{run_dir} is not a folder (give run folders, runs/<name>)"
    inner = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and has_event_files(p))
    hint = ""
    if inner:
        shown = ", ".join(inner[:3]) + (", ..." if len(inner) > 3 else "")
        hint = f"; its subfolders {shown} do: pass {run_dir}/<name>"
    return f"{run_dir} has no tensorboard event files{hint}"


def run_games(run_dir: Path) -> list[str]:
    """The game labels a run trained on (from its ``config.json``; ``[]`` if it has none)."""
    try:
        env = json.loads((run_dir / "config.json").read_text())["run"]["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [game_label(e.strip()) for e in str(env).split(",") if e.strip()]


def read_run(run_dir: str | Path, tag: str = RETURN_TAG) -> dict[str, Curve]:
    """The curves of ``tag`` in a run folder, by game label.

    A single-game run gives ``{game: curve of tag}`` (the key ``tag`` itself when
    the run has no ``config.json``); a multi-game run gives its per-game curves
    ``tag/<game>`` (or, for a tag logged without per-game parts, ``{tag: curve}``).

    Raises:
        ValueError: the folder does not exist, has no event files, or does not
            log ``tag`` (the message lists the tags it has).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not has_event_files(run_dir):
        raise ValueError(_no_events_message(run_dir))
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    games = run_games(run_dir)
    wanted: dict[str, str] = {}
    per_game = {g: f"{tag}/{g}" for g in games}
    if len(games) > 1 and any(t in tags for t in per_game.values()):
        wanted = {g: t for g, t in per_game.items() if t in tags}
    elif tag in tags:
        wanted = {games[0] if len(games) == 1 else tag: tag}
    if not wanted:
        known = ", ".join(sorted(tags)) or "none"
        raise ValueError(f"{run_dir} logs no {tag!r} (its scalar tags: {known})")
    out: dict[str, Curve] = {}
    t0 = None
    for key, t in wanted.items():
        ev = acc.Scalars(t)
        steps = np.array([e.step for e in ev], dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        wall = np.array([e.wall_time for e in ev], dtype=np.float64)[order]
        if t0 is None:
            t0 = float(min(e.wall_time for e in acc.Scalars(next(iter(wanted.values())))))
        out[key] = Curve(
            steps[order], np.array([e.value for e in ev], dtype=np.float64)[order], wall - t0
        )
    return out


def smooth(values: np.ndarray, n: int) -> np.ndarray:
    """Trailing mean over the last ``n`` points (fewer at the start); ``n=1``: unchanged."""
    if n < 1:
        raise ValueError(f"smoothing window must be >= 1, got {n}")
    v = np.asarray(values, dtype=np.float64)
    if n == 1 or v.size == 0:
        return v.copy()
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - n, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def mean_curve(
    curves: list[tuple[np.ndarray, np.ndarray]], points: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Several runs' ``(steps, values)`` on one grid: ``(grid, mean, min, max)``.

    One curve is returned on its own steps. Several are linearly interpolated
    onto ``points`` evenly spaced steps spanning what every run reached (from
    the latest first point to the earliest last point).

    Raises:
        ValueError: no curves, an empty one, or runs whose steps do not overlap.
    """
    if not curves or any(s.size == 0 for s, _ in curves):
        raise ValueError("mean_curve needs at least one non-empty curve")
    if len(curves) == 1:
        s, v = curves[0]
        return s.copy(), v.copy(), v.copy(), v.copy()
    start = max(float(s[0]) for s, _ in curves)
    end = min(float(s[-1]) for s, _ in curves)
    if end < start:
        raise ValueError("the runs' curves do not overlap in steps")
    grid = np.linspace(start, end, points) if end > start else np.array([start])
    stacked = np.stack([np.interp(grid, s, v) for s, v in curves])
    return grid, stacked.mean(0), stacked.min(0), stacked.max(0)


def value_at(
    steps: np.ndarray, values: np.ndarray, step: float, tolerance: float | None = None
) -> float | None:
    """The value at the last point logged at or before ``step``.

    None if the curve has no point at or before ``step``, or has not reached
    it: its last point is more than ``tolerance`` steps before ``step`` (default:
    the curve's median interval between points; runs end on whole updates and
    log only when episodes end, so the last point may fall a little short).
    """
    if steps.size == 0 or step < steps[0]:
        return None
    if tolerance is None:
        tolerance = float(np.median(np.diff(steps))) if steps.size > 1 else 0.0
    if steps[-1] + tolerance < step:
        return None
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return float(values[i])


def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The first step whose value is ``>= target``; None if the curve never gets there."""
    hit = np.nonzero(values >= target)[0]
    return float(steps[hit[0]]) if hit.size else None


def area_ratio(
    steps_a: np.ndarray,
    values_a: np.ndarray,
    steps_b: np.ndarray,
    values_b: np.ndarray,
    upto: float,
) -> float | None:
    """Area under curve a over area under curve b, both from step 0 to ``upto`` (trapezoids).

    Each curve is extended flat before its first point and after its last, and
    cut at ``upto`` (interpolated there). None if b's area is 0 or a curve is empty.
    """

    def area(s: np.ndarray, v: np.ndarray) -> float:
        if s.size == 0:
            return float("nan")
        grid = np.concatenate([[0.0], s[s < upto], [upto]])
        y = np.interp(grid, s, v)
        return float(np.sum(np.diff(grid) * (y[1:] + y[:-1]) / 2))

    a, b = area(steps_a, values_a), area(steps_b, values_b)
    if not np.isfinite(a) or not np.isfinite(b) or b == 0:
        return None
    return a / b
