"""``train.py plot``: learning curves from runs' tensorboard files (checked on the Figure object)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from train_module import REPO, train

from maskrl.curves import area_ratio, mean_curve, read_run, smooth, steps_to_reach, value_at
from maskrl.plots import MATPLOTLIB_REQUIREMENT, learning_curves_figure

BREAKOUT = "maskrl/MinAtar-Breakout-v0"


def _fake_run(folder: Path, env: str, points: dict[str, list[tuple[int, float]]]) -> Path:
    """A run folder with a config.json and the given scalar points (tag -> [(step, value)]);
    the point at step s is logged at wall time 1000 + s / 10."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"env": env}}))
    w = SummaryWriter(str(folder))
    for tag, pts in points.items():
        for step, value in pts:
            w.add_scalar(tag, value, step, walltime=1000.0 + step / 10)
    w.close()
    return folder


def _lines(ax: object) -> list[object]:
    return list(ax.get_lines())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real 1024-step Breakout runs (seeds 1 and 2): episodes end, returns are logged."""
    root = tmp_path_factory.mktemp("runs")
    out = []
    for seed in (1, 2):
        rc = train.main(
            ["ppo", "--env", BREAKOUT, "--runs-dir", str(root), "--run-name", f"tiny-s{seed}",
             "--total-timesteps", "1024", "--num-envs", "8", "--num-steps", "32",
             "--num-minibatches", "1", "--seed", str(seed), "--device", "cpu",
             "--no-progress", "--eval-episodes", "0"]
        )  # fmt: skip
        assert rc == 0
        out.append(root / f"tiny-s{seed}")
    return out


def test_plot_of_two_tiny_runs_writes_a_png(tiny_runs: list[Path], tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    assert train.main(["plot", *map(str, tiny_runs), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = learning_curves_figure(tiny_runs)
    assert tuple(fig.get_size_inches()) == (5.0, 3.6)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "env steps" and ax.get_ylabel() == "episodic return"
    assert ax.get_title() == "MinAtar-Breakout-v0"
    assert [line.get_label() for line in _lines(ax)] == ["tiny-s1", "tiny-s2"]
    # The line is the run's logged curve, point for point.
    curve = read_run(tiny_runs[0])["MinAtar-Breakout-v0"]
    np.testing.assert_array_equal(_lines(ax)[0].get_xdata(), curve.steps)
    np.testing.assert_array_equal(_lines(ax)[0].get_ydata(), curve.values)


def test_a_multigame_run_gets_one_panel_per_game(tmp_path: Path) -> None:
    pts = {
        "charts/episodic_return": [(100, 1.0), (200, 2.0)],
        "charts/episodic_return/MinAtar-Breakout-v0": [(100, 1.0), (200, 3.0)],
        "charts/episodic_return/MinAtar-Asterix-v0": [(100, 5.0), (200, 4.0)],
    }
    run = _fake_run(tmp_path / "multi", "maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-Asterix-v0", pts)
    fig = learning_curves_figure([run], x="time")
    assert tuple(fig.get_size_inches()) == (10.0, 3.6)
    assert [a.get_title() for a in fig.axes] == ["MinAtar-Breakout-v0", "MinAtar-Asterix-v0"]
    assert {a.get_xlabel() for a in fig.axes} == {"wall time (s)"}
    np.testing.assert_allclose(_lines(fig.axes[1])[0].get_xdata(), [0.0, 10.0])  # seconds
    np.testing.assert_array_equal(_lines(fig.axes[1])[0].get_ydata(), [5.0, 4.0])


def test_seeds_group_into_their_mean_and_a_min_max_band(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path / f"x-s{i}", BREAKOUT, {"charts/episodic_return": [(0, v), (100, v)]})
        for i, v in enumerate([1.0, 2.0, 6.0])
    ]
    runs.append(_fake_run(tmp_path / "y-s1", BREAKOUT, {"charts/episodic_return": [(0, 0.0)]}))
    fig = learning_curves_figure(runs, group=True)
    (ax,) = fig.axes
    lines = _lines(ax)
    assert [line.get_label() for line in lines] == ["x (mean of 3)", "y"]
    np.testing.assert_allclose(lines[0].get_ydata(), 3.0)
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(6.0)


def test_experts_group_by_their_experts_folder(tmp_path: Path) -> None:
    # train.py experts writes runs/NAME/<game>/ beside runs/NAME/experts.json: the
    # expert folders of two seeds share their game's name, and group by NAME.
    runs = []
    for name, v in (("bo-s1", 2.0), ("bo-s2", 4.0), ("wide-s1", 9.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "experts.json").write_text("{}")
        pts = {"charts/episodic_return": [(0, v), (100, v)]}
        runs.append(_fake_run(tmp_path / name / "MinAtar-Breakout-v0", BREAKOUT, pts))
    # A folder named like a game but outside an experts folder keeps its own name.
    lone = {"charts/episodic_return": [(0, 1.0)]}
    runs.append(_fake_run(tmp_path / "MinAtar-Breakout-v0", BREAKOUT, lone))
    (ax,) = learning_curves_figure(runs, group=True).axes
    lines = _lines(ax)
    assert [line.get_label() for line in lines] == ["bo (mean of 2)", "wide", "MinAtar-Breakout-v0"]
    np.testing.assert_allclose(lines[0].get_ydata(), 3.0)


def test_marks_draw_a_dashed_line_in_their_games_panel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from maskrl.plots import parse_mark

    pts = {
        "charts/episodic_return/MinAtar-Breakout-v0": [(100, 1.0), (200, 3.0)],
        "charts/episodic_return/MinAtar-Asterix-v0": [(100, 5.0), (200, 4.0)],
    }
    run = _fake_run(tmp_path / "multi", "maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-Asterix-v0", pts)
    marks = [parse_mark("Breakout=28:published"), parse_mark("MinAtar-Asterix-v0=15")]
    assert marks == [("Breakout", 28.0, "published"), ("MinAtar-Asterix-v0", 15.0, "target")]
    fig = learning_curves_figure([run], marks=marks)
    for ax, value, label in zip(fig.axes, (28.0, 15.0), ("published", "target"), strict=True):
        run_line, mark = _lines(ax)
        assert mark.get_label() == label and mark.get_linestyle() == "--"
        np.testing.assert_array_equal(mark.get_ydata(), [value, value])
    # A mark naming no panel, or several, is refused with the panels' names.
    with pytest.raises(ValueError, match="matches no panel; the panels are: MinAtar-Breakout"):
        learning_curves_figure([run], marks=[parse_mark("Pong=3")])
    with pytest.raises(ValueError, match="matches 2 panels"):
        learning_curves_figure([run], marks=[parse_mark("MinAtar=3")])
    for bad in ("Breakout", "=3", "Breakout=x", "Breakout=nan"):
        with pytest.raises(ValueError, match="--mark"):
            parse_mark(bad)
    # Marks with distinct labels get distinct colours; a repeated label keeps its colour.
    marks = [
        parse_mark(t) for t in ("Breakout=20:expert", "Breakout=15:student", "Asterix=9:expert")
    ]
    fig = learning_curves_figure([run], marks=marks)
    (_, expert_b, student_b), (_, expert_a) = (_lines(ax) for ax in fig.axes)
    assert expert_b.get_color() == expert_a.get_color() != student_b.get_color()
    assert [m.get_label() for m in (expert_b, student_b, expert_a)] == [
        "expert",
        "student",
        "expert",
    ]
    png = tmp_path / "m.png"
    assert train.main(["plot", str(run), "--mark", "Breakout=28", "--out", str(png)]) == 0
    assert png.exists()
    assert train.main(["plot", str(run), "--mark", "Breakout=abc", "--out", str(png)]) == 2
    assert "the value 'abc' is not a finite number" in _one_error(capsys)


def test_smoothing_is_a_trailing_mean(tmp_path: Path) -> None:
    pts = [(i * 10, float(v)) for i, v in enumerate([0, 4, 2, 8])]
    run = _fake_run(tmp_path / "r", BREAKOUT, {"charts/episodic_return": pts})
    fig = learning_curves_figure([run], smooth_n=2)
    np.testing.assert_allclose(_lines(fig.axes[0])[0].get_ydata(), [0, 2, 3, 5])
    np.testing.assert_allclose(smooth(np.array([0, 4, 2, 8.0]), 3), [0, 2, 2, 14 / 3])


def test_curve_figures(tmp_path: Path) -> None:
    s = np.array([0.0, 100, 200, 300])
    a, b = np.array([0.0, 2, 4, 4]), np.array([0.0, 1, 2, 4])
    assert value_at(s, a, 250) == 4.0 and value_at(s, a, 1000) is None
    assert value_at(s[1:], a[1:], 50) is None  # nothing logged at or before step 50
    assert value_at(s, a, 390) == 4.0 and value_at(s, a, 410) is None  # within one interval
    assert value_at(s, a, 1000, tolerance=700) == 4.0
    assert steps_to_reach(s, a, 4.0) == 200.0 and steps_to_reach(s, b, 5.0) is None
    # areas 0..300: a = 100 + 300 + 400 = 800, b = 50 + 150 + 300 = 500
    assert area_ratio(s, a, s, b, 300) == pytest.approx(800 / 500)
    grid, mean, lo, hi = mean_curve([(s, a), (s[1:], b[1:])], points=3)
    np.testing.assert_allclose(grid, [100, 200, 300])
    np.testing.assert_allclose(mean, [1.5, 3, 4])
    np.testing.assert_allclose(lo, [1, 2, 4])
    np.testing.assert_allclose(hi, [2, 4, 4])


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: "), lines
    return lines[0]


def test_a_run_without_event_files_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert train.main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")]) == 2
    assert "empty has no tensorboard event files" in _one_error(capsys)
    assert not (tmp_path / "c.png").exists()
    # An experts folder: the runs are its subfolders, and the message says so.
    _fake_run(tmp_path / "experts" / "Breakout", BREAKOUT, {"charts/episodic_return": [(1, 1.0)]})
    assert train.main(["plot", str(tmp_path / "experts")]) == 2
    assert "its subfolders Breakout do: pass" in _one_error(capsys)


def test_a_missing_tag_and_a_bad_out_are_one_line(
    tiny_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(["plot", str(tiny_runs[0]), "--tag", "nope", "--out", "x.png"]) == 2
    assert "logs no 'nope' (its scalar tags: " in _one_error(capsys)
    assert train.main(["plot", str(tiny_runs[0]), "--out", str(tmp_path / "c.xyz")]) == 2
    assert "unknown image format 'xyz'" in _one_error(capsys)
    assert train.main(["plot", str(tiny_runs[0]), "--smooth", "0"]) == 2
    assert "--smooth must be >= 1" in _one_error(capsys)


def test_without_matplotlib_the_error_gives_a_pip_command_that_works(
    tiny_runs: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from packaging.requirements import Requirement

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it now fails
    assert train.main(["plot", str(tiny_runs[0]), "--out", str(tmp_path / "c.png")]) == 2
    line = _one_error(capsys)
    match = re.search(r'pip install "([^"]+)"$', line)
    assert match and "maskrl[plots]" in line
    req = Requirement(match.group(1))  # a valid requirement, as the printed command passes it
    assert str(req) == MATPLOTLIB_REQUIREMENT
    monkeypatch.undo()
    import matplotlib

    assert req.specifier.contains(matplotlib.__version__)  # the version it asks for works
    # ... and it is what the plots extra installs.
    assert f'plots = ["{MATPLOTLIB_REQUIREMENT}"]' in (REPO / "pyproject.toml").read_text()


def test_long_labels_get_fewer_legend_columns_and_a_wrapped_title(tmp_path: Path) -> None:
    pts = {"charts/episodic_return": [(100, 1.0), (200, 2.0)]}
    # Two runs with the same folder name: their labels are the whole paths.
    long = [
        _fake_run(tmp_path / f"a-rather-long-experiment-folder-{i}" / "MinAtar-Breakout-v0",
                  BREAKOUT, pts)
        for i in range(3)
    ]  # fmt: skip
    title = "a title much longer than one panel is wide, which must wrap onto lines " * 2
    fig = learning_curves_figure(long, title=title)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert all(str(r) in labels for r in long)
    assert legend._ncols == 1  # one 5-inch panel: each path needs a row of its own
    assert all(len(line) <= 55 for line in fig._suptitle.get_text().splitlines())
    assert fig._suptitle.get_text().replace("\n", " ") == title.strip()
    # Short labels still share rows (up to 4 columns).
    short = [_fake_run(tmp_path / f"r{i}", BREAKOUT, pts) for i in range(3)]
    (legend,) = learning_curves_figure(short).legends
    assert legend._ncols == 3
