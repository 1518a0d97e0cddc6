"""Learning-curve figures from runs' tensorboard files (``train.py plot``).

matplotlib is an optional dependency (the ``plots`` extra); this module imports
it only when a figure is drawn, and never through ``pyplot``: a figure is a
plain :class:`matplotlib.figure.Figure`, so drawing changes no global state
(no current figure, no backend switch).

* one panel per game (a multi-game run's per-game curves, a single-game run's
  game; runs of the same game share its panel);
* one line per run, or with ``group=True`` one line per setting: runs whose
  folder names are equal up to a ``-s<seed>`` suffix (``scratch-s1``,
  ``scratch-s2`` -> ``scratch``) are drawn as their mean with a shaded min-max
  band, on the steps every one of them reached (:func:`maskrl.curves.mean_curve`);
  an expert of an ``experts`` folder counts by that folder's name
  (:func:`group_name`);
* x: env steps, or wall time since the run's first logged point;
* smoothing: a trailing mean over the last ``n`` logged points
  (:func:`maskrl.curves.smooth`), applied to each run before grouping.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

from maskrl.curves import RETURN_TAG, SEED_SUFFIX, mean_curve, read_run, smooth

__all__ = [
    "MATPLOTLIB_REQUIREMENT",
    "Mark",
    "check_image_path",
    "learning_curves_figure",
    "parse_mark",
    "require_matplotlib",
    "write_plot",
]

#: Rough characters per inch of a "small" legend label and of the figure title:
#: how many legend columns and title characters fit a figure's width.
_LEGEND_CHARS_PER_INCH = 15
_TITLE_CHARS_PER_INCH = 11

#: A horizontal reference line: (game, value, legend label).
Mark = tuple[str, float, str]

#: What ``pip install`` needs for the figures (the ``plots`` extra of pyproject.toml).
MATPLOTLIB_REQUIREMENT = "matplotlib>=3.7"  # 3.7: legends placed outside the axes

X_AXES = ("steps", "time")


def require_matplotlib() -> None:
    """ValueError with the command that installs matplotlib, if it cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ValueError(
            "plot needs matplotlib (the optional extra maskrl[plots]); install it with: "
            f'pip install "{MATPLOTLIB_REQUIREMENT}"'
        ) from e


#: Colours of the dashed marks, one per distinct label: grey first, then the palette's
#: red, green, purple, brown and pink (a run's line may share one of these).
_MARK_COLORS = ("0.35", "C3", "C2", "C4", "C5", "C6")


def parse_mark(text: str) -> Mark:
    """``"GAME=VALUE"`` or ``"GAME=VALUE:LABEL"`` -> ``(game, value, label)`` (label: "target").

    ``GAME`` names a panel: its full label (``MinAtar-Breakout-v0``) or a part of
    exactly one panel's label (``Breakout``); checked when the figure is drawn.

    Raises:
        ValueError: no ``=``, an empty game, or a value that is not a finite number.
    """
    game, sep, rest = text.partition("=")
    value_text, _, label = rest.partition(":")
    if not sep or not game.strip():
        raise ValueError(f"--mark {text!r}: expected GAME=VALUE or GAME=VALUE:LABEL")
    try:
        value = float(value_text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--mark {text!r}: the value {value_text!r} is not a finite number")
    return game.strip(), value, label.strip() or "target"


def _mark_panel(game: str, panels: list[str]) -> str:
    if game in panels:
        return game
    hits = [p for p in panels if game in p]
    if len(hits) != 1:
        which = "no panel" if not hits else f"{len(hits)} panels ({', '.join(hits)})"
        raise ValueError(f"--mark {game!r} matches {which}; the panels are: {', '.join(panels)}")
    return hits[0]


def group_name(run_dir: str | Path) -> str:
    """The setting a run belongs to: its folder name without a ``-s<seed>`` suffix.

    One expert of a ``train.py experts`` folder (``runs/NAME/<game>``, beside
    ``experts.json``) belongs to ``NAME``'s setting: expert folders are named by
    their game, so ``runs/bo-s1/MinAtar-Breakout-v0`` and
    ``runs/bo-s2/MinAtar-Breakout-v0`` are two seeds of ``bo``.
    """
    path = Path(run_dir).resolve()
    if (path.parent / "experts.json").is_file():
        path = path.parent
    return SEED_SUFFIX.sub("", path.name)


def learning_curves_figure(
    runs: list[str | Path],
    tag: str = RETURN_TAG,
    x: str = "steps",
    smooth_n: int = 1,
    group: bool = False,
    title: str | None = None,
    marks: list[Mark] | None = None,
) -> Any:
    """A :class:`matplotlib.figure.Figure` of the runs' ``tag`` curves (see the module docstring).

    ``marks`` draws a dashed horizontal line per ``(game, value, label)`` in that
    game's panel (e.g. a published score; see :func:`parse_mark`), one colour per
    distinct label.

    Raises:
        ValueError: no runs, a run without event files or without ``tag``, a bad
            ``x`` or ``smooth_n``, grouped runs whose steps do not overlap, a mark
            that names no panel (or several), or matplotlib missing (the message
            says how to install it).
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("plot needs at least one run folder")
    if x not in X_AXES:
        raise ValueError(f"--x must be one of {X_AXES}, got {x!r}")
    if smooth_n < 1:
        raise ValueError(f"--smooth must be >= 1, got {smooth_n}")
    # series name -> game -> [(x, smoothed values)], in the order runs were given
    series: dict[str, dict[str, list[Any]]] = {}
    panels: list[str] = []
    names = [Path(r).resolve().name for r in runs]
    for run, name in zip(runs, names, strict=True):
        curves = read_run(run, tag)
        key = group_name(run) if group else (name if names.count(name) == 1 else str(run))
        for game, c in curves.items():
            if game not in panels:
                panels.append(game)
            xs = c.steps if x == "steps" else c.wall
            series.setdefault(key, {}).setdefault(game, []).append((xs, smooth(c.values, smooth_n)))
    by_panel: dict[str, list[Mark]] = {}
    mark_labels: list[str] = []  # one colour per label, in order of appearance
    for m in marks or []:
        by_panel.setdefault(_mark_panel(m[0], panels), []).append(m)
        if m[2] not in mark_labels:
            mark_labels.append(m[2])
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows), layout="constrained")
    xlabel = "env steps" if x == "steps" else "wall time (s)"
    ylabel = "episodic return" if tag == RETURN_TAG else tag
    for i, game in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (key, by_game) in enumerate(series.items()):
            color = f"C{j % 10}"
            got = by_game.get(game)
            if not got:
                continue
            if len(got) == 1:
                # Markers when there are few points: a lone point draws no line.
                few = "." if len(got[0][0]) < 30 else None
                ax.plot(got[0][0], got[0][1], color=color, label=key, linewidth=1.2, marker=few)
                continue
            try:
                grid, mean, lo, hi = mean_curve(got)
            except ValueError as e:
                raise ValueError(f"{key} ({game}): {e}") from e
            few = "." if len(grid) < 30 else None
            label = f"{key} (mean of {len(got)})"
            ax.plot(grid, mean, color=color, label=label, linewidth=1.2, marker=few)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
        for _, value, label in by_panel.get(game, []):
            color = _MARK_COLORS[mark_labels.index(label) % len(_MARK_COLORS)]
            ax.axhline(value, color=color, linestyle="--", linewidth=1.0, label=label)
        ax.set_title(game)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    # One legend for the figure: every series once, wherever it appears.
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    # As many legend columns as the longest label leaves room for (long labels,
    # e.g. run paths, would otherwise run off a narrow figure), at most 4.
    width = fig.get_figwidth()
    longest = max((len(label) for label in handles), default=1)
    fits = int(width * _LEGEND_CHARS_PER_INCH) // (longest + 6)  # + the line sample
    fig.legend(
        list(handles.values()), list(handles), loc="outside lower center",
        ncols=max(1, min(4, len(handles), fits)), fontsize="small",
    )  # fmt: skip
    if title:
        fig.suptitle(textwrap.fill(title, max(20, int(width * _TITLE_CHARS_PER_INCH))))
    return fig


def check_image_path(out: str | Path, option: str = "--out") -> Path:
    """``out`` as a :class:`~pathlib.Path` an image can be saved to (format from its suffix).

    Checked before any work is done, so a long run does not end on a bad file name.

    Raises:
        ValueError: matplotlib missing (the message says how to install it), ``out``
            a folder, a missing or unwritable parent folder, an unknown image format;
            the message names ``option``.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{option} {out} is a folder; give a file name such as curves.png")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{option} {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{option} {out}: folder {parent} is not writable")
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = out.suffix.lstrip(".").lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"{option} {out}: unknown image format {fmt!r}; use one of {', '.join(sorted(supported))}"
        )
    return out


def write_plot(
    runs: list[str | Path],
    out: str | Path,
    tag: str = RETURN_TAG,
    x: str = "steps",
    smooth_n: int = 1,
    group: bool = False,
    title: str | None = None,
    marks: list[Mark] | None = None,
) -> Path:
    """Draw :func:`learning_curves_figure` and save it to ``out`` (format from its suffix).

    Raises:
        ValueError: as :func:`learning_curves_figure`, or an ``out`` that cannot be
            written (a folder, a missing parent folder, an unknown image format).
    """
    out = check_image_path(out)
    fig = learning_curves_figure(runs, tag, x, smooth_n, group, title, marks)
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise ValueError(f"--out {out}: {e.strerror or e}") from e
    return out
