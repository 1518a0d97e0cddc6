"""Tiny versions of the benchmarks: they run end to end and report what they claim.

Throughput is never asserted here; the numbers belong in benchmarks/.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ppo_vs_sb3_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("ppo_vs_sb3")
    out = tmp_path / "r.json"
    rc = bench.main(
        [
            "--impls", "sb3", "maskrl", "fast",
            "--total-timesteps", "2048", "--fast-timesteps", "2048",
            "--marks", "1024", "2048", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "throughput ratio maskrl/sb3" in text and "throughput ratio fast/sb3" in text
    data = json.loads(out.read_text())
    impls = sorted(r["impl"] for r in data["results"])
    assert impls == ["fast", "maskrl", "sb3"]
    for r in data["results"]:
        # Both libraries stop at the first whole rollout at or past the budget.
        assert r["steps"] >= 2048 and r["wall"] > 0
        steps = [s for s, _, _ in r["curve"]]
        assert steps == sorted(steps) and steps[-1] == r["steps"]
    # The same reference settings on both sides: same rollout size, so the same step grid.
    by = {r["impl"]: r for r in data["results"]}
    assert [s for s, _, _ in by["sb3"]["curve"]] == [s for s, _, _ in by["maskrl"]["curve"]]


def test_curve_helpers_pick_the_last_value_at_or_before_a_step() -> None:
    bench = _load("ppo_vs_sb3")
    curve = [(1024, 1.0, None), (2048, 2.0, 0.5), (3072, 3.0, 1.5), (4096, 4.0, 2.5)]
    assert bench._curve_value(curve, 1024) is None
    assert bench._curve_value(curve, 3500) == 1.5
    assert bench._time_to(curve, 1.4) == 3.0
    assert bench._time_to(curve, 9.0) is None
    assert bench._time_at(curve, 4096) == 4.0


def test_knapsack_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("knapsack_attention")
    assert bench.main(["--total-timesteps", "1024", "--episodes", "5"]) == 0
    out = capsys.readouterr().out
    assert "invalid actions: 0" in out
    fractions = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("random", "greedy", "ppo"):
            fractions[parts[0]] = float(parts[1])
    assert set(fractions) == {"random", "greedy", "ppo"}
    # A fraction of an exact optimum can never exceed 1.
    assert all(0.0 < f <= 1.0 + 1e-9 for f in fractions.values())


def test_knapsack_benchmark_attention_sizes_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    bench = _load("knapsack_attention")
    ckpt, out = tmp_path / "k.pt", tmp_path / "k.json"
    common = ["--episodes", "3", "--layers", "1", "--heads", "2", "--checkpoint", str(ckpt)]
    argv = [*common, "--total-timesteps", "1024", "--eval-sizes", "30", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["global_step"] == 1024 and set(report["results"]) == {"train", "30"}
    for row in report["results"].values():
        assert set(row) == {"random", "greedy", "ppo"}
        assert all(0.0 < r["mean"] <= 1.0 + 1e-9 for r in row.values())
    assert "30 items:" in capsys.readouterr().out
    # Rerunning with a larger budget resumes from the checkpoint.
    assert bench.main([*common, "--total-timesteps", "2048"]) == 0
    assert "trained 1024 steps" in capsys.readouterr().out and ckpt.exists()
    # Resuming with flags that ask for another network is refused, naming them.
    with pytest.raises(SystemExit) as e:
        bench.main([*common, "--hidden", "32", "--total-timesteps", "4096"])
    assert e.value.code == 2 and "'--hidden': (None, 32)" in capsys.readouterr().err


def test_knapsack_benchmark_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    bench = _load("knapsack_attention")
    ckpt = tmp_path / "w.pt"
    argv = ["--episodes", "2", "--layers", "1", "--heads", "2", "--hidden", "48"]
    assert bench.main([*argv, "--total-timesteps", "512", "--checkpoint", str(ckpt)]) == 0
    assert "width=48" in capsys.readouterr().out
    saved = torch.load(ckpt, weights_only=False)
    assert saved["network_kwargs"]["hidden"] == 48
    with pytest.raises(SystemExit) as e:
        bench.main(["--heads", "2", "--hidden", "47"])
    assert e.value.code == 2 and "divisible by --heads 2" in capsys.readouterr().err


def test_knapsack_benchmark_best_of_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    bench = _load("knapsack_attention")
    ckpt = tmp_path / "k.pt"
    argv = ["--episodes", "8", "--layers", "0", "--checkpoint", str(ckpt), "--samples", "3"]
    reports = []
    for i in range(2):  # the second call only evaluates the saved agent again
        out = tmp_path / f"k{i}.json"
        assert bench.main([*argv, "--total-timesteps", "1024", "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text())["results"]["train"])
    row = reports[0]
    assert set(row) == {"random", "greedy", "ppo", "ppo best of 3"}
    best, decode = row["ppo best of 3"], row["ppo"]
    # The greedy decode is one of the candidates, so the best is never below it.
    assert decode["mean"] <= best["mean"] <= 1.0 + 1e-9
    assert decode["optimal"] <= best["optimal"]
    assert reports[1] == row  # sampling is seeded: the same figures again
    assert "ppo best of 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--samples", "-1"])


def test_knapsack_benchmark_entropy_schedule_reaches_the_agent(tmp_path: Path) -> None:
    from maskrl.agents import PPO

    bench = _load("knapsack_attention")
    ckpt = tmp_path / "k.pt"
    argv = ["--episodes", "2", "--layers", "0", "--checkpoint", str(ckpt)]
    assert bench.main([*argv, "--total-timesteps", "2048", "--ent-coef-final", "0"]) == 0
    agent = PPO.load(ckpt, device="cpu", env=bench.SCALE_FREE_ID)
    assert agent.config.ent_coef == 0.01 and agent.config.ent_coef_final == 0.0
    # Linear from 0.01 at step 0 to 0 at the run's 2048 steps: 0 at its end (the
    # schedule is that of a learn() call; this one has no step left to take).
    agent.learn(2048)
    assert agent.global_step == 2048
    assert agent.current_ent_coef() == pytest.approx(0.0, abs=1e-12)


def test_knapsack_scale_free_features() -> None:
    import gymnasium as gym
    import numpy as np

    import maskrl.envs  # noqa: F401

    bench = _load("knapsack_attention")
    raw = gym.make("maskrl/Knapsack-v0", n_min=30, n_max=30)
    free = gym.make(bench.SCALE_FREE_ID, n_min=30, n_max=30)
    obs_r, info_r = raw.reset(seed=5)
    obs_f, info_f = free.reset(seed=5)
    assert info_f["optimal_value"] == info_r["optimal_value"]  # the same instance
    f, present = obs_f["item_features"], obs_f["item_mask"].astype(bool)
    assert f.shape == (30, 4) and np.allclose(f[present, :2].mean(axis=0), 0, atol=1e-5)
    w, v = obs_r["item_features"][:, 0], obs_r["item_features"][:, 1]
    # Column 0 is the value density relative to the set's (what greedy orders by).
    log_ratio = np.log(v[present] / w[present])
    assert np.allclose(f[present, 0], log_ratio - log_ratio.mean(), atol=1e-5)
    assert np.allclose(f[:, 2], 1 / (1 + w), atol=1e-6)  # remaining capacity is all of it
    a = int(np.argmax(info_f["action_mask"]))
    obs_f, _, _, _, info_f = free.step(a)
    obs_r, _, _, _, info_r = raw.step(a)
    assert (info_f["action_mask"] == info_r["action_mask"]).all()
    assert obs_f["item_features"][a].tolist() == [0.0] * 4  # a picked item leaves the set
    raw.close()
    free.close()


def test_knapsack_relaxation_features_by_hand_and_on_instances() -> None:
    import gymnasium as gym
    import numpy as np

    import maskrl.envs  # noqa: F401

    bench = _load("knapsack_attention")
    env = gym.make(bench.RELAXATION_ID)
    slots = env.observation_space["item_features"].shape[0]
    assert env.observation_space["item_features"].shape == (slots, 6)
    # By hand: 4 present items, remaining capacity 0.6. Densities 2, 1, 2, 0.22; item 3
    # (weight 0.9) no longer fits. Densest first, ties by index: items 0, 2, 1, with
    # 0, 0.5 and 0.8 of weight ahead of them.
    feats = np.zeros((slots, 2), np.float32)
    feats[:4] = [[0.5, 1.0], [0.25, 0.25], [0.3, 0.6], [0.9, 0.2]]
    mask = np.zeros(slots, np.int8)
    mask[:4] = 1
    obs = {"item_features": feats, "item_mask": mask, "capacity": np.array([0.6], np.float32)}
    rows = bench.RelaxationFeatures(env.unwrapped).observation(obs)
    f = rows["item_features"]
    want = {0: (0.0, 0.5 / 1.1), 2: (0.5 / 1.1, 0.8 / 1.4), 1: (0.8 / 1.4, 1.05 / 1.65), 3: (1, 1)}
    for i, (ahead, through) in want.items():
        assert f[i, 4:].tolist() == pytest.approx([ahead, through], abs=1e-6), i
    assert not f[4:].any()  # padding stays zero
    scale_free = bench.ScaleFreeFeatures(env.unwrapped).observation(obs)["item_features"]
    assert np.array_equal(f[:, :4], scale_free)
    # On real instances: the items with (B + w) / (B + w + R) <= 1/2 are the greedy prefix,
    # which fits, and adding the split item would not.
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        raw = env.unwrapped._obs()  # type: ignore[attr-defined]
        w, v = raw["item_features"][:, 0], raw["item_features"][:, 1]
        r = float(raw["capacity"][0])
        f = obs["item_features"]
        present = raw["item_mask"].astype(bool)
        prefix = present & (f[:, 5] <= 0.5)
        assert w[prefix].sum() <= r + 1e-6
        split = present & (f[:, 4] <= 0.5) & (f[:, 5] > 0.5)
        assert split.sum() <= 1
        if split.any():
            assert w[prefix].sum() + w[split].sum() > r - 1e-6
            density = v / np.maximum(w, 1e-12)
            assert density[prefix].min() >= density[split].max() - 1e-6
    env.close()


def test_encoder_step_time_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    threads = torch.get_num_threads()
    bench = _load("encoder_step_time")
    argv = ["--repeats", "1", "--envs", "4", "--minibatch", "8", "--steps", "2", "--updates", "1"]
    assert bench.main(argv) == 0
    assert torch.get_num_threads() == threads  # the thread setting is put back
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"cnn", "tokens", "tokens+attn", "tokens+relpos", "tokens+relpos+nb3"}
    assert all(float(r[1]) > 0 and float(r[2]) > 0 and float(r[3]) > 0 for r in rows.values())


def test_actor_mimic_table_reads_runs(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "amt", Path(__file__).resolve().parents[1] / "benchmarks" / "actor_mimic_table.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ex = tmp_path / "ex"
    ex.mkdir()
    ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Asterix-v0"]
    experts = [
        {"env_id": i, "mean_return": m, "steps": 100, "train_seconds": 2.0, "episodes": 50}
        for i, m in zip(ids, [10.0, 4.0], strict=True)
    ]
    (ex / "experts.json").write_text(json.dumps({"experts": experts}))
    for name, vals in (("stu", [9.0, 4.0]), ("base", [5.0, 1.0])):
        (tmp_path / name).mkdir()
        per_game = {i: {"mean": v} for i, v in zip(ids, vals, strict=True)}
        ev = {"global_step": 50, "train_seconds": 1.0, "eval": {"per_game": per_game}}
        (tmp_path / name / "eval.json").write_text(json.dumps(ev))
    out = mod.table(ex, [tmp_path / "stu"], tmp_path / "base")
    assert "| MinAtar-Breakout-v0 | 10.00 | 9.00 | 90% | 5.00 | 50% |" in out
    assert "| MinAtar-Asterix-v0 | 4.00 | 4.00 | 100% | 1.00 | 25% |" in out
    assert "experts: 200 env steps" in out


def test_ddp_scaling_launches_the_same_job_and_tabulates_speed_up(tmp_path: Path) -> None:
    bench = _load("ddp_scaling")
    args = bench.argparse.Namespace(
        env="maskrl/MinAtar-Breakout-v0", total_timesteps=1000, num_envs=8, seed=3,
        device="cpu", eval_episodes=2, extra=[],
    )  # fmt: skip
    one, two = bench.command(1, args, tmp_path), bench.command(2, args, tmp_path)
    assert "torch.distributed.run" not in one  # one rank: the plain single-process command
    assert two[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # The same job: every flag after train.py is the same but the run's name.
    assert [a for a in one[2:] if a != "ranks1"] == [a for a in two[6:] if a != "ranks2"]
    rows = [
        dict(ranks=1, envs_per_rank=8, steps=1024, train_sps=1000.0, wall_seconds=9.0,
             last10_return=1.5, eval_mean=2.0, eval_std=0.5),
        dict(ranks=2, envs_per_rank=4, steps=1024, train_sps=1500.0, wall_seconds=8.0,
             last10_return=None, eval_mean=None, eval_std=None),
    ]  # fmt: skip
    text = bench.table(rows)
    assert "| 2 | 4 | 1,024 | 1500 | 1.50x | 8 | - | - |" in text
    with pytest.raises(SystemExit):  # 6 envs do not split over 4 ranks: refused up front
        bench.main(["--num-envs", "6", "--ranks", "1", "4"])


def test_masking_ablation_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("masking_ablation")
    out = tmp_path / "a.json"
    argv = ["--total-timesteps", "2048", "--num-envs", "8", "--episodes", "8", "--out", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "| mask |" in text and "| penalty (-0.1) |" in text and "| none |" in text
    by = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(by) == {"mask", "penalty", "none"}
    # Masked training and masked evaluation never take an invalid action.
    assert by["mask"]["train_invalid_rate"] == 0.0
    assert all(r["eval_masked"]["invalid_action_rate"] == 0.0 for r in by.values())
    # Sampling over all of Knapsack's items, an untrained policy takes many invalid ones.
    assert by["none"]["first_invalid_rate"] > 0.1 and by["penalty"]["first_invalid_rate"] > 0.1
    assert all(r["steps"] == 2048 and r["eval_unmasked"]["episodes"] == 8 for r in by.values())


def test_masking_ablation_seeds_curves_summary_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("masking_ablation")
    out, png = tmp_path / "a.json", tmp_path / "a.png"
    argv = [
        "--modes", "mask", "none", "--seeds", "3", "4", "--total-timesteps", "1024",
        "--num-envs", "4", "--episodes", "4", "--env-kwargs", '{"slots": 30}',
        "--out", str(out), "--plot", str(png),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "seed 3\n" in text and "seed 4\n" in text and "mean (lowest - highest seed)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())
    assert data["env_id"] == "ablation/Knapsack-slots30-v0"
    import gymnasium as gym

    assert data["env_id"] not in gym.registry  # the benchmark leaves the registry as it was
    results = data["results"]
    assert sorted((r["seed"], r["mode"]) for r in results) == [
        (3, "mask"), (3, "none"), (4, "mask"), (4, "none"),
    ]  # fmt: skip
    for r in results:
        c = r["curve"]
        # 1024 steps of 4 envs x 64 steps: 4 updates, one curve point after each.
        assert c["steps"] == [256, 512, 768, 1024] and r["steps"] == 1024
        assert sum(c["episodes"]) == r["train_episodes"] > 0
        assert r["first_invalid_rate"] == c["invalid_rate"][0]
        assert r["train_invalid_rate"] == c["invalid_rate"][-1]  # the last 10% of 4 updates
        assert r["train_return"] is not None
        if r["train_episodes"] <= 100:  # the last 100 episodes are all of them
            total = sum(v * n for v, n in zip(c["return"], c["episodes"], strict=True) if n)
            assert r["train_return"] == pytest.approx(total / r["train_episodes"])
        if r["mode"] == "mask":
            assert set(c["invalid_rate"]) == {0.0}
    # With 30 slots for 5-20 items, an untrained policy sampling over all slots
    # picks padding or a used item most of the time.
    assert all(r["first_invalid_rate"] > 0.4 for r in results if r["mode"] == "none")
    summary = {s["mode"]: s for s in data["summary"]}
    for mode, s in summary.items():
        rs = [r for r in results if r["mode"] == mode]
        rates = [r["train_invalid_rate"] for r in rs]
        assert s["seeds"] == [3, 4]
        assert s["train_invalid_rate"]["mean"] == pytest.approx(sum(rates) / 2)
        assert (s["train_invalid_rate"]["min"], s["train_invalid_rate"]["max"]) == (
            min(rates), max(rates),
        )  # fmt: skip
        unmasked = [r["eval_unmasked"]["mean"] for r in rs]
        assert s["eval_unmasked"]["mean"] == pytest.approx(sum(unmasked) / 2)
        # Its train return: the episodes of the last 10% of the 4 updates, i.e. the last one.
        last = [r["curve"]["return"][-1] for r in rs]
        assert s["train_return_tail"]["mean"] == pytest.approx(sum(last) / 2)
    m = summary["mask"]["eval_masked"]
    assert "| mask | 2 | " in text and f"{m['mean']:.2f} ({m['min']:.2f} - {m['max']:.2f})" in text
    # The saved results draw again without training.
    png2 = tmp_path / "b.png"
    assert bench.main(["--replot", str(out), str(out), "--plot", str(png2), "--dpi", "50"]) == 0
    head = png2.read_bytes()
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(head[16:20], "big") == 500  # 10 inches wide at 50 dpi
    # --replot prints the same mean-over-seeds table (twice: the file was given twice).
    table = bench.summary_table(bench.summarize(results))
    assert capsys.readouterr().out.count(table) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env-kwargs", "{slots: 5"], "--env-kwargs '{slots: 5' is not JSON"),
        (["--env-kwargs", "[50]"], "must be a JSON object"),
        (["--env-kwargs", '{"slots": 10}'], "slots must be >= n_max, got slots=10, n_max=20"),
        (["--env-kwargs", '{"colour": 1}'], "colour"),
        (["--seed", "1", "--seeds", "2", "3"], "give --seed or --seeds, not both"),
        (["--seeds", "2", "2"], "--seeds repeats a seed: [2, 2]"),
        (["--smooth", "0"], "--smooth must be >= 1, got 0"),
        (["--dpi", "0"], "--dpi must be >= 1, got 0"),
        (["--replot", "no-such.json"], "--replot no-such.json: [Errno 2] No such file"),
        (["--plot", "curves.xyz"], "unknown image format 'xyz'"),
        (["--plot", "no/such/dir/a.png"], "does not exist"),
    ],
)
def test_masking_ablation_refuses_bad_input_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("masking_ablation")
    with pytest.raises(SystemExit) as e:
        bench.main([*argv, "--total-timesteps", "64"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_masking_ablation_plot_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import sys

    bench = _load("masking_ablation")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it now fails
    with pytest.raises(SystemExit) as e:  # refused before any training
        bench.main(["--plot", str(tmp_path / "a.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "maskrl[plots]" in err and 'pip install "matplotlib>=3.7"' in err


def test_masking_ablation_merges_runs_of_one_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("masking_ablation")
    common = ["--total-timesteps", "512", "--num-envs", "4", "--episodes", "4"]
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert bench.main([*common, "--modes", "mask", "--out", str(a)]) == 0
    assert bench.main([*common, "--modes", "none", "--out", str(b)]) == 0
    # Two modes trained in two processes give the table one process gives.
    assert bench.main([*common, "--modes", "mask", "none", "--out", str(c)]) == 0
    capsys.readouterr()
    merged, png = tmp_path / "m.json", tmp_path / "m.png"
    argv = ["--replot", str(a), str(b), "--merge", str(merged), "--plot", str(png), "--dpi", "40"]
    assert bench.main(argv) == 0
    data = json.loads(merged.read_text())
    both = json.loads(c.read_text())
    assert [r["mode"] for r in data["results"]] == ["mask", "none"]
    assert data["args"]["modes"] == ["mask", "none"] and data["args"]["seeds"] == [1]
    for got, want in zip(data["results"], both["results"], strict=True):
        assert got["eval_masked"] == want["eval_masked"]
        assert got["curve"] == want["curve"]
    assert bench.summary_table(data["summary"]) == bench.summary_table(both["summary"])
    assert bench.summary_table(data["summary"]) in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Runs of different settings, or a run given twice, are refused in one line.
    d = tmp_path / "d.json"
    assert bench.main(["--total-timesteps", "256", "--num-envs", "4", "--episodes", "4",
                       "--modes", "penalty", "--out", str(d)]) == 0  # fmt: skip
    capsys.readouterr()
    for files, message in (
        ([a, d], "file 2 has total_timesteps=256, file 1 512: only runs of one setting merge"),
        ([a, a], "mode mask seed 1 is in more than one file"),
    ):
        with pytest.raises(SystemExit) as e:
            bench.main(["--replot", *map(str, files), "--merge", str(tmp_path / "x.json")])
        assert e.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as e:
        bench.main(["--merge", str(tmp_path / "x.json")])
    assert e.value.code == 2
    assert "--merge needs --replot" in capsys.readouterr().err


def test_return_ratio_interval_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("return_ratio")
    import numpy as np

    # Hand-computed: returns with no spread give the exact ratio and a zero-width interval.
    r, lo, hi = bench.ratio_interval(np.full(10, 4.0), np.full(7, 3.0), resamples=200)
    assert r == lo == hi == 0.75
    # Normal returns, 400 episodes each, true ratio 0.8: the interval holds it, and is about
    # +-1.96 times the delta-method standard error wide.
    rng = np.random.default_rng(1)
    ref, oth = rng.normal(100, 50, 400), rng.normal(80, 50, 400)
    r, lo, hi = bench.ratio_interval(ref, oth, resamples=4000, seed=3)
    se = r * np.sqrt((50 / 80) ** 2 / 400 + (50 / 100) ** 2 / 400)
    assert lo < 0.8 < hi and abs((hi - lo) / 2 - 1.96 * se) < 0.25 * 1.96 * se
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"env_id": "g/X-v0", "returns": [2.0, 4.0, 6.0]}))
    b.write_text(json.dumps({"env_id": "g/X-v0", "returns": [1.0, 2.0, 3.0]}))
    assert bench.main(["--pair", str(a), str(b), "--resamples", "500"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| X-v0 | 4.00 +- 1.15 | 3 | 2.00 +- 0.58 | 3 | 50.0% |"), row
    # Runs (seeds) on either side: the mean of the runs' means; no spread, no interval width.
    r, lo, hi = bench.ratio_interval(
        [np.full(5, 4.0), np.full(9, 2.0)], [np.full(4, 3.0), np.full(6, 1.5)], resamples=300
    )
    assert r == lo == hi == 0.75  # (3 + 1.5) / 2 over (4 + 2) / 2
    # One run as an array or a one-element list: the same draws, the same interval.
    assert bench.ratio_interval([ref], [oth], resamples=4000, seed=3) == bench.ratio_interval(
        ref, oth, resamples=4000, seed=3
    )
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"env_id": "g/X-v0", "returns": [5.0, 7.0]}))
    assert bench.main(["--pair", f"{a},{c}", str(b), "--resamples", "500"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| X-v0 | 4.00 / 6.00 | 3 / 2 | 2.00 +- 0.58 | 3 | 40.0% |"), row
    b.write_text(json.dumps({"env_id": "g/Y-v0", "returns": [1.0, 2.0]}))
    with pytest.raises(SystemExit, match="different games"):
        bench.main(["--pair", str(a), str(b)])
    with pytest.raises(SystemExit, match="different games"):
        bench.main(["--pair", str(a), f"{c},{b}"])
    b.write_text(json.dumps({"env_ids": ["g/X-v0"], "per_game": {}}))
    with pytest.raises(SystemExit, match="not a one-game evaluation"):
        bench.main(["--pair", str(a), str(b)])


def test_return_ratio_versus_mean_of_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("return_ratio")
    import numpy as np

    # Hand-computed, no spread: game 1 A = 3/4, B = 5/4; game 2 A = 2/2, B = 1/2.
    # Means over games: A = 0.875, B = 0.875, B - A = 0, every interval of zero width.
    games = [
        (np.full(5, 4.0), np.full(6, 3.0), np.full(7, 5.0)),
        (np.full(5, 2.0), np.full(6, 2.0), np.full(7, 1.0)),
    ]
    res = bench.normalised_means(games, resamples=300)
    assert res["a"] == (0.875, 0.875, 0.875) and res["b"] == (0.875, 0.875, 0.875)
    assert res["b-a"] == (0.0, 0.0, 0.0)
    # Random returns where B is truly 20 points (of the reference) above A on each game:
    # the difference's interval holds 0.2 and excludes 0.
    rng = np.random.default_rng(2)
    games = [
        (rng.normal(m, m / 2, 500), rng.normal(m, m / 2, 500), rng.normal(1.2 * m, m / 2, 500))
        for m in (10.0, 100.0, 50.0)
    ]
    v, lo, hi = bench.normalised_means(games, resamples=2000, seed=1)["b-a"]
    assert lo < 0.2 < hi and lo > 0
    files = {}
    for name, ret in (("r", [2.0, 4.0]), ("a", [1.0, 3.0]), ("b", [3.0, 5.0])):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"env_id": "g/X-v0", "returns": ret}))
    args = ["--versus", str(files["r"]), str(files["a"]), str(files["b"]), "--resamples", "200"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "| A | 66.7 |" in out and "| B | 133.3 |" in out and "| B - A | 66.7 |" in out, out
    files["b"].write_text(json.dumps({"env_id": "g/Y-v0", "returns": [1.0, 2.0]}))
    with pytest.raises(SystemExit, match="different games"):
        bench.main(args)
    with pytest.raises(SystemExit):
        bench.main([])


def test_return_ratio_versus_with_several_runs_per_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("return_ratio")
    import numpy as np

    # Hand-computed, no spread. Game 1 (reference 4): A's runs 3 and 5 -> shares 0.75, 1.25;
    # B's one run 2 -> 0.5. Game 2 (reference 2): A's runs 2 and 1 -> 1.0, 0.5; B 3 -> 1.5.
    # A per game: 1.0 and 0.75, mean 0.875; B: 0.5 and 1.5, mean 1.0; B - A = 0.125.
    # A's runs over games: run 1 (0.75 + 1.0) / 2 = 0.875, run 2 (1.25 + 0.5) / 2 = 0.875.
    games = [
        (np.full(5, 4.0), [np.full(6, 3.0), np.full(4, 5.0)], [np.full(7, 2.0)]),
        (np.full(5, 2.0), [np.full(6, 2.0), np.full(4, 1.0)], [np.full(7, 3.0)]),
    ]
    res = bench.normalised_means(games, resamples=300)
    assert res["a"] == (0.875, 0.875, 0.875) and res["b"] == (1.0, 1.0, 1.0)
    assert res["b-a"] == pytest.approx((0.125, 0.125, 0.125))
    assert bench.per_run_means(games) == {"a": [0.875, 0.875], "b": [1.0]}
    # One run given as a bare array or as a one-element list: the same numbers.
    rng = np.random.default_rng(4)
    ref, a, b = rng.normal(10, 3, 50), rng.normal(9, 3, 40), rng.normal(11, 3, 60)
    assert bench.normalised_means([(ref, a, b)], resamples=500, seed=2) == bench.normalised_means(
        [(ref, [a], [b])], resamples=500, seed=2
    )
    # Property: two runs with identical episodes give the one run's point estimate.
    two = bench.normalised_means([(ref, [a, a.copy()], b)], resamples=500)
    assert two["a"][0] == pytest.approx(
        bench.normalised_means([(ref, a, b)], resamples=500)["a"][0]
    )
    with pytest.raises(ValueError, match="side a has \\[1, 2\\] runs"):
        bench.normalised_means([(ref, [a], b), (ref, [a, a], b)], resamples=200)

    def write(name: str, game: str, ret: list[float]) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"env_id": f"g/{game}-v0", "returns": ret}))
        return str(path)

    r1, r2 = write("r1", "X", [4.0, 4.0]), write("r2", "Y", [2.0, 2.0])
    a1 = write("a1", "X", [3.0, 3.0]) + "," + write("a2", "X", [5.0, 5.0])
    a2 = write("a3", "Y", [2.0, 2.0]) + "," + write("a4", "Y", [1.0, 1.0])
    b1, b2 = write("b1", "X", [2.0, 2.0]), write("b2", "Y", [3.0, 3.0])
    args = ["--versus", r1, a1, b1, "--versus", r2, a2, b2, "--resamples", "200"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "| A | 87.5 |" in out and "| B | 100.0 |" in out and "| B - A | 12.5 |" in out, out
    assert "| A | 87.5 | 87.5 |" in out and "| B | 100.0 |\n" in out, out
    with pytest.raises(SystemExit, match="A has \\[1, 2\\] runs across games"):
        bench.main(["--versus", r1, a1, b1, "--versus", r2, a2.split(",")[0], b2])
    with pytest.raises(SystemExit, match="different games \\(g/X-v0 and g/Y-v0 in .*a3.json\\)"):
        bench.main(["--versus", r1, a1.split(",")[0] + "," + a2.split(",")[0], b1])
    with pytest.raises(SystemExit, match="B names no file"):
        bench.main(["--versus", r1, a1, ","])


def test_knapsack_self_improvement_decodes_imitates_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import gymnasium as gym
    import numpy as np
    import torch

    from maskrl.agents import PPO

    bench = _load("knapsack_attention")
    ckpt = tmp_path / "k.pt"
    base = [
        "--episodes",
        "6",
        "--layers",
        "1",
        "--checkpoint",
        str(ckpt),
        "--total-timesteps",
        "1024",
    ]
    si = ["--si-instances", "16", "--si-samples", "3", "--si-epochs", "2"]
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    assert bench.main([*base, *si, "--self-improve", "1", "--out", str(out1)]) == 0
    first = json.loads(out1.read_text())
    assert len(first["self_improvement"]) == 1
    assert set(first["results"]["train"]) == {"random", "greedy", "ppo", "ppo+si"}
    # The PPO checkpoint is left as trained; the improved policy has its own, and a
    # second call with more rounds resumes it (one more round, not two).
    assert (tmp_path / "k.si.pt").exists()
    assert bench.main([*base, *si, "--self-improve", "2", "--out", str(out2)]) == 0
    second = json.loads(out2.read_text())
    assert second["self_improvement"][0] == first["self_improvement"][0]
    assert len(second["self_improvement"]) == 2
    assert second["results"]["train"]["ppo"] == first["results"]["train"]["ppo"]
    assert "round 2/2" in capsys.readouterr().out
    # Other settings do not resume those rounds: an error that names the file.
    with pytest.raises(SystemExit):
        bench.main([*base, *si[:-1], "3", "--self-improve", "3"])
    assert "k.si.pt holds self-improvement rounds with other settings" in capsys.readouterr().err

    net = PPO.load(ckpt, device="cpu", env=bench.SCALE_FREE_ID).policy.net.eval()
    envs = [gym.make(bench.SCALE_FREE_ID) for _ in range(2 * 4)]
    res = bench.sample_solutions(net, envs, [7, 8], 3, torch.Generator().manual_seed(0))
    for seed, r in zip([7, 8], res, strict=True):
        # Copy 0 is the greedy decode: the same fraction as scoring it on its own.
        decode = bench.score(
            lambda o, m: int(
                torch.where(
                    torch.as_tensor(m)[None],
                    net({k: torch.as_tensor(v)[None] for k, v in o.items()})[0],
                    -torch.inf,
                ).argmax()
            ),
            1, seed, env_id=bench.SCALE_FREE_ID,
        )  # fmt: skip
        assert r["greedy"] == pytest.approx(float(decode[0]))
        assert r["greedy"] <= r["best"] <= 1.0 + 1e-9
        # The trajectory replays to the best fraction, with only valid actions.
        env = gym.make(bench.SCALE_FREE_ID)
        _, info = env.reset(seed=seed)
        for _, mask, action in r["trajectory"]:
            assert mask[action]
            _, _, term, trunc, info = env.step(action)
        assert term and info["total_value"] / info["optimal_value"] == pytest.approx(r["best"])
    # The set targets: at each step, the actions the solution takes from there on.
    traj = res[0]["trajectory"]
    targets = bench.set_targets(traj)
    for t, (_, mask, target) in enumerate(targets):
        assert np.flatnonzero(target).tolist() == sorted(a for _, _, a in traj[t:])
        assert mask[target].all()
    # Imitation fits its data: the loss on a fixed set of steps falls; with one-hot
    # targets it is the usual cross-entropy.
    steps = [s for r in res for s in bench.set_targets(r["trajectory"])]
    obs0, mask0, _ = steps[0]
    onehot = np.zeros_like(mask0)
    onehot[int(np.flatnonzero(mask0)[0])] = True
    with torch.no_grad():
        logits = net({k: torch.as_tensor(v)[None] for k, v in obs0.items()})[0]
    expected = -torch.log_softmax(logits.masked_fill(~torch.as_tensor(mask0)[None], -torch.inf), 1)
    frozen = torch.optim.SGD(net.parameters(), lr=0.0)
    ce = bench.imitate(net, [(obs0, mask0, onehot)], frozen, 1, 1, torch.Generator())
    assert ce == pytest.approx(float(expected[0, onehot]), rel=1e-5)
    obs_l, mask_l, _ = steps[-1]  # a last step: some item is picked or does not fit
    assert not mask_l.all()
    with pytest.raises(ValueError, match="outside its step's mask"):
        bench.imitate(net, [(obs_l, mask_l, ~mask_l)], frozen, 1, 1, torch.Generator())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    net.train()
    before = bench.imitate(net, steps, opt, 1, 64, gen)
    after = bench.imitate(net, steps, opt, 30, 64, gen)
    assert np.isfinite(before) and after < 0.5 * before


def test_masking_ablation_window_returns_remove_the_penalties_by_hand() -> None:
    bench = _load("masking_ablation")
    # Four updates of 100 steps; 10 steps' worth of windows: (0, 100], (100, 200], ...
    curve = {
        "steps": [100, 200, 300, 400],
        "return": [None, 2.0, 5.0, 4.0],
        "episodes": [0, 2, 1, 3],
        "invalid_rate": [0.5, 0.2, 0.1, 0.0],
    }
    run = {"mode": "penalty", "penalty": -0.1, "steps": 400, "curve": curve}
    windows = (0.0, 0.25, 0.75, 1.0)
    # Window 1: no episode ended. Window 2: returns 2*2 + 5*1 = 9 over 3 episodes,
    # penalties paid -0.1 * (20 + 10) = -3, so the game's own return is (9 + 3) / 3.
    # Window 3: 4 * 3 = 12 over 3 episodes, no invalid action.
    got = bench.window_returns(run, windows)
    assert got[0] is None
    assert got[1] == pytest.approx(4.0) and got[2] == pytest.approx(4.0)
    # Without a penalty the figure is the training return itself.
    plain = bench.window_returns({**run, "mode": "mask", "penalty": None}, windows)
    assert plain[1] == pytest.approx(3.0) and plain[2] == pytest.approx(4.0)
    text = bench.window_table([run, {**run, "mode": "mask", "penalty": None}], windows)
    assert "| penalty (-0.1) | 1 | n/a | 4.00 | 4.00 |" in text
    assert "| mask | 1 | n/a | 3.00 | 4.00 |" in text


def _evals_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    full = {**os.environ, "PYTHON": sys.executable, **env}
    script = ROOT / "benchmarks" / "actor_mimic_evals.sh"
    return subprocess.run(["bash", str(script), *args], env=full, capture_output=True, text=True)


def test_actor_mimic_evals_ratios_from_the_committed_files(tmp_path: Path) -> None:
    evals = str(ROOT / "docs" / "data" / "actor_mimic_evals500_retrained")
    r = _evals_script("ratios", "s10m-h512-c32-tau07", EVALS=evals)
    assert r.returncode == 0, r.stderr
    sampled, greedy = r.stdout.split("## greedy actions")
    # The README's table: the student's share of each expert, both ways of acting.
    for game, share in (("Breakout", "101.4%"), ("Asterix", "109.6%"), ("Seaquest", "106.0%")):
        assert any(game in line and share in line for line in sampled.splitlines())
    for game, share in (("SpaceInvaders", "98.3%"), ("Freeway", "100.0%")):
        assert any(game in line and share in line for line in greedy.splitlines())


def test_actor_mimic_evals_ratios_average_several_runs_per_side() -> None:
    evals = str(ROOT / "docs" / "data" / "actor_mimic_evals500_retrained")
    one = _evals_script("ratios", "s10m-h512-c32-tau07", "baseline60m-fresh", EVALS=evals)
    two = _evals_script(
        "ratios", "s10m-h512-c32-tau07,s10m-h512-c32-tau07-s2", "baseline60m-fresh", EVALS=evals
    )
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    # One run a side: the README's -4.0 (sampled) and +0.1 (greedy), and no per-run table.
    assert "| B - A | -4.0 |" in one.stdout and "| B - A | 0.1 |" in one.stdout
    assert "each run's mean" not in one.stdout
    # The student's two seeds: one --pair table each, each seed's mean of the percentages
    # as in the README (103.8 and 104.8 sampled, 100.3 and 99.3 greedy), and B their mean.
    sampled, greedy = two.stdout.split("## greedy actions", 1)
    assert sampled.count("as a share of expert") == 2
    assert "| B | 103.8 | 104.8 |" in sampled and "| B | 100.3 | 99.3 |" in greedy
    b = [line for line in sampled.splitlines() if line.startswith("| B |")][0]
    assert float(b.split("|")[2]) == pytest.approx((103.8 + 104.8) / 2, abs=0.1)


def test_actor_mimic_evals_experts_writes_both_modes_and_keeps_them(tmp_path: Path) -> None:
    from train_module import train

    runs = tmp_path / "experts"
    argv = ["ppo", "--env", "maskrl/MinAtar-Breakout-v0", "--num-envs", "2", "--num-steps", "16"]
    argv += ["--total-timesteps", "32", "--device", "cpu", "--no-progress", "--eval-episodes", "0"]
    argv += ["--runs-dir", str(runs), "--run-name", "MinAtar-Breakout-v0"]
    assert train.main(argv) == 0
    env = {"EVALS": str(tmp_path / "e"), "EPISODES": "2", "GAMES": "Breakout"}
    r = _evals_script("experts", str(runs), "x", **env)
    assert r.returncode == 0, r.stderr
    for name in ("x-Breakout.json", "greedy-x-Breakout.json"):
        assert len(json.loads((tmp_path / "e" / name).read_text())["returns"]) == 2
    again = _evals_script("experts", str(runs), "x", **env)
    assert again.returncode == 0 and again.stdout.count("keeping") == 2
    # NUM_ENVS reaches train.py eval --num-envs: the episodes evaluate(num_envs=1) plays.
    from maskrl.agents import evaluate, load_policy

    one = _evals_script("experts", str(runs), "n1", **env, NUM_ENVS="1")
    assert one.returncode == 0, one.stderr
    policy = load_policy(runs / "MinAtar-Breakout-v0" / "checkpoint.pt", device="cpu")
    want = evaluate(policy, "maskrl/MinAtar-Breakout-v0", 2, seed=100000, deterministic=True,
                    num_envs=1)  # fmt: skip
    assert json.loads((tmp_path / "e" / "greedy-n1-Breakout.json").read_text()) == want
    bad = _evals_script("agent", str(tmp_path / "none.pt"), "y", **env)
    assert bad.returncode == 2 and "no checkpoint at" in bad.stderr
    assert _evals_script().returncode == 2
