"""benchmarks/token_encoder_screen.py: its one-game expert folder, its readout, and a tiny run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "token_encoder_screen.py"


def _load():
    spec = importlib.util.spec_from_file_location("token_encoder_screen", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_game_experts_keeps_one_expert_with_absolute_paths(tmp_path: Path) -> None:
    mod = _load()
    src = tmp_path / "ex"
    src.mkdir()
    experts = [
        {"env_id": f"maskrl/MinAtar-{g}-v0", "checkpoint": f"{g}/checkpoint.pt", "run_dir": g}
        for g in ("Breakout", "Seaquest")
    ]
    (src / "experts.json").write_text(json.dumps({"experts": experts}))
    dest = mod.one_game_experts(src, "Seaquest", tmp_path / "out")
    (only,) = json.loads((dest / "experts.json").read_text())["experts"]
    assert only["env_id"] == "maskrl/MinAtar-Seaquest-v0"
    assert only["checkpoint"] == str((src / "Seaquest" / "checkpoint.pt").resolve())
    with pytest.raises(SystemExit, match="no expert for Asterix"):
        mod.one_game_experts(src, "Asterix", tmp_path / "out")


def test_read_run_averages_the_last_fifth_of_training(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    mod = _load()
    run = tmp_path / "run"
    writer = SummaryWriter(str(run))
    for step in range(10):  # last 20%: steps 8 and 9
        writer.add_scalar("mimic/MinAtar-Seaquest-v0/agreement", step / 10, step)
        writer.add_scalar("mimic/MinAtar-Seaquest-v0/policy_regression", 2.0 - step / 10, step)
    writer.close()
    ev = {"env_id": "maskrl/MinAtar-Seaquest-v0", "mean": 3.0, "std": 2.0, "episodes": 4}
    (run / "eval.json").write_text(json.dumps({"eval": ev}))
    r = mod.read_run(run)
    assert r["return"] == 3.0 and r["se"] == pytest.approx(1.0)
    assert r["agreement"] == pytest.approx(0.85)
    assert r["policy_regression"] == pytest.approx(1.15)


@pytest.mark.parametrize("variant", ["post", "sumpost", "conv"])
def test_variants_keep_empty_padding_unread(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variant's encoder gives a row the same output whatever another row holds."""
    import maskrl.agents.networks as networks

    mod = _load()
    monkeypatch.setattr(networks, "_token_encoder", networks._token_encoder)
    mod._install_variant(mod.VARIANTS[variant][0])
    enc = networks._token_encoder((10, 10, 10), "CHW", 2, [4, 10], 2, 4)
    obs = torch.zeros(2, 10, 10, 10)
    obs[0, 1, 3, 4] = 1.0
    obs[0, 2, 5, 5] = 1.0
    gid = torch.tensor([0, 1])
    alone = enc(obs[:1], gid[:1])
    obs[1] = (torch.rand(10, 10, 10) > 0.7).float()
    both = enc(obs, gid)
    torch.testing.assert_close(both[:1], alone, rtol=1e-5, atol=1e-6)
    # Channels beyond game 0's four are never read.
    obs2 = obs.clone()
    obs2[0, 4:] = 1.0
    torch.testing.assert_close(enc(obs2, gid)[:1], alone, rtol=1e-5, atol=1e-6)


def test_a_tiny_screen_runs_end_to_end(tmp_path: Path) -> None:
    experts = tmp_path / "experts"
    subprocess.run(
        [sys.executable, "train.py", "experts", "--env", "maskrl/MinAtar-Breakout-v0",
         "--total-timesteps", "256", "--num-envs", "4", "--num-steps", "32",
         "--runs-dir", str(tmp_path), "--run-name", "experts", "--eval-episodes", "1",
         "--no-progress"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    out = tmp_path / "screen.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--experts", str(experts), "--game", "Breakout",
         "--variants", "cnn", "tokens", "--total-timesteps", "640", "--episodes", "1",
         "--out-dir", str(tmp_path / "screen"), "--out", str(out)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert set(results) == {"cnn", "tokens"}
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[2:]] == ["| cnn", "| tokens"]
    for rows in results.values():
        (row,) = rows
        assert row["seed"] == 1 and 0.0 <= row["agreement"] <= 1.0
