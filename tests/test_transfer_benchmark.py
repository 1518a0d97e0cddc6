"""benchmarks/transfer.py: the leave-one-out protocol on a tiny budget, its resume, its figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from train_module import REPO, train

from maskrl.agents import PPO, PPOConfig

BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
INVADERS = "maskrl/MinAtar-SpaceInvaders-v0"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location(
        "transfer_bench", REPO / "benchmarks" / "transfer.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load()


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An experts folder of untrained experts (relative checkpoint paths, as train.py writes)."""
    root = tmp_path_factory.mktemp("experts")
    entries = []
    for i, env_id in enumerate([BREAKOUT, ASTERIX, INVADERS]):
        name = env_id.split("/")[-1]
        (root / name).mkdir()
        agent = PPO(
            env_id, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu", seed=i)
        )
        agent.save(root / name / "checkpoint.pt")
        agent.envs.close()
        entries.append({"env_id": env_id, "checkpoint": f"{name}/checkpoint.pt"})
    (root / "experts.json").write_text(json.dumps({"experts": entries}))
    return root


def _argv(experts: Path, out: Path) -> list[str]:
    return ["--experts", str(experts), "--out", str(out), "--games", "Breakout", "--seeds", "1",
            "--steps", "512", "--student-steps", "32", "--at", "256", "--smooth", "2",
            "--eval-episodes", "1",
            "--ppo-args", "--num-envs 8 --num-steps 32 --num-minibatches 1 --device cpu",
            "--mimic-args", "--num-envs 2 --num-steps 16 --num-minibatches 1 --device cpu"]  # fmt: skip


class Recorder:
    """Runs train.py commands in this process and records them."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return int(train.main(argv))


def test_tiny_leave_one_out_runs_reports_and_resumes(experts: Path, tmp_path: Path) -> None:
    out = tmp_path / "tr"
    rec = Recorder()
    res = bench.main(_argv(experts, out), runner=rec)
    assert [c[0] for c in rec.calls] == ["mimic", "ppo", "ppo", "plot"]
    # The student learnt from the two other games' experts only.
    teachers = json.loads((out / "Breakout" / "teachers" / "experts.json").read_text())
    assert [e["env_id"] for e in teachers["experts"]] == [ASTERIX, INVADERS]
    assert all(Path(e["checkpoint"]).is_absolute() for e in teachers["experts"])
    cfg = json.loads((out / "Breakout" / "transfer-s1" / "config.json").read_text())
    assert cfg["run"]["init_from"] == str(out / "Breakout" / "student")
    assert "init_from" not in rec.calls[2] and "--init-from" not in rec.calls[2]  # scratch
    r = res["games"]["Breakout"]
    for k in ("scratch_at", "transfer_at", "scratch_final", "transfer_final", "auc_ratio"):
        assert isinstance(r[k], float), k
    assert json.loads((out / "transfer.json").read_text()) == res
    md = (out / "transfer.md").read_text()
    assert "| Breakout |" in md and "AUC ratio" in md
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    log = (out / "commands.log").read_text()
    assert log.count("run: python train.py") == 4 and log.count("exit 0 after") == 4

    # Everything finished: a rerun trains nothing.
    rec.calls.clear()
    bench.main(_argv(experts, out), runner=rec)
    assert [c[0] for c in rec.calls] == ["plot"]

    # An interrupted run (checkpoint, no eval.json) is resumed, and one stopped before
    # its first checkpoint is moved aside and started afresh.
    (out / "Breakout" / "transfer-s1" / "eval.json").unlink()
    (out / "Breakout" / "scratch-s1" / "checkpoint.pt").unlink()
    (out / "Breakout" / "scratch-s1" / "eval.json").unlink()
    rec.calls.clear()
    bench.main(_argv(experts, out), runner=rec)
    resumed, fresh = rec.calls[0], rec.calls[1]
    assert resumed[:1] == ["ppo"] and resumed[resumed.index("--resume") + 1] == str(
        out / "Breakout" / "transfer-s1"
    )
    assert "--resume" not in fresh and fresh[fresh.index("--run-name") + 1] == "scratch-s1"
    assert len(list((out / "Breakout").glob("scratch-s1.incomplete-*"))) == 1


def _fake_run(folder: Path, pts: list[tuple[int, float]]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"env": BREAKOUT}}))
    w = SummaryWriter(str(folder))
    for s, v in pts:
        w.add_scalar("charts/episodic_return", v, s)
    w.close()
    return folder


def test_the_figures_on_curves_worked_out_by_hand(tmp_path: Path) -> None:
    # scratch climbs 0 -> 10 over 1000 steps; transfer over 500 steps, then stays at 10.
    steps = list(range(0, 1001, 100))
    scratch = _fake_run(tmp_path / "scratch-s1", [(s, s / 100) for s in steps])
    transfer = _fake_run(tmp_path / "transfer-s1", [(s, min(s / 50, 10.0)) for s in steps])
    r = bench.game_figures([scratch], [transfer], steps=1000, at=300, smooth_n=1)
    assert r["scratch_at"] == 3.0 and r["transfer_at"] == 6.0
    assert r["scratch_final"] == 10.0 and r["transfer_final"] == 10.0
    assert r["scratch_steps_to_final"] == 1000.0 and r["transfer_steps_to_final"] == 500.0
    assert r["speedup"] == 2.0
    # areas: scratch 1000 * 10 / 2 = 5000; transfer 500 * 10 / 2 + 500 * 10 = 7500
    assert r["auc_ratio"] == pytest.approx(1.5)


def test_bad_games_and_a_student_wider_than_scratch_are_refused(
    experts: Path, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="--games Pong: no such expert"):
        bench.main(["--experts", str(experts), "--out", str(tmp_path), "--games", "Pong"])
    with pytest.raises(SystemExit, match="give the same --hidden in --ppo-args"):
        bench.main(
            ["--experts", str(experts), "--out", str(tmp_path), "--mimic-args", "--hidden 64"]
        )
