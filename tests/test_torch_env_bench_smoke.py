"""Tiny runs of the torch MinAtar benchmarks: they run end to end and report what they claim.

Throughput is never asserted here; the numbers belong in benchmarks/.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_torch_env_throughput_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("torch_env_throughput")
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    rc = bench.main(
        [
            "--games", "Breakout", "Seaquest", "--num-envs", "1", "16",
            "--sync-envs", "2", "--seconds", "0.05", "--threads", "0", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    assert torch.get_num_threads() == threads  # --threads 0 leaves the process alone
    text = capsys.readouterr().out
    assert "torch16 / sync2: geometric mean" in text
    data = json.loads(out.read_text())
    assert [r["game"] for r in data["results"]] == ["Breakout", "Seaquest"]
    for r in data["results"]:
        assert r["sync"] > 0 and r["numpy"] > 0
        assert set(r["torch"]) == {"1", "16"} and all(v > 0 for v in r["torch"].values())
        assert r["ratio_vs_sync"]["16"] == pytest.approx(r["torch"]["16"] / r["sync"])
        # The reported figure is the median of the interleaved samples.
        assert len(r["samples"]["torch16"]) == 3
        assert r["torch"]["16"] == sorted(r["samples"]["torch16"])[1]
    assert set(data["geomean_ratio_vs_sync"]) == {"1", "16"}


def test_gpu_benchmark_env_part_runs_on_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("gpu_minatar")
    out = tmp_path / "g.json"
    rc = bench.main(
        [
            "--device",
            "cpu",
            "--games",
            "Asterix",
            "--num-envs",
            "8",
            "--seconds",
            "0.05",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "Asterix" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert [(r["part"], r["game"], r["num_envs"]) for r in rows] == [("env", "Asterix", 8)]
    assert rows[0]["steps_per_s"] > 0


def test_conformance_script_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("minatar_conformance")
    assert bench.main(["--games", "Breakout", "--steps", "40", "--many", "4"]) == 0
    text = capsys.readouterr().out
    assert "identical" in text and "all identical" in text


def test_gpu_benchmark_ppo_part_runs_on_cpu(tmp_path: Path) -> None:
    bench = _load("gpu_minatar")
    out = tmp_path / "g.json"
    args = ["--parts", "ppo", "--device", "cpu", "--ppo-envs", "16", "--ppo-steps-per-rollout"]
    args += ["8", "--ppo-seconds", "1", "--ppo-total", "1024", "--out", str(out)]
    assert bench.main(args) == 0
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["part"] == "ppo" and rows[0]["steps"] > 0 and rows[0]["steps"] % 128 == 0
    assert rows[0]["settings"]["env_backend"] == "torch"
