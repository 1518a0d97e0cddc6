"""End-to-end tests of ``train.py``: the run folder, resume, Ctrl-C, eval, and bad input.

Most checks call ``train.main(argv)`` in this process (no interpreter start-up
per case); a few run the real ``python train.py ...`` to prove exit codes and
what reaches the terminal. Budgets are tiny: 4 envs x 64 steps = 256 steps per
update, one epoch.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter
from train_module import train

import maskrl.envs  # noqa: F401  (registers the maskrl/... ids)
from maskrl.agents import PPO
from maskrl.agents import runner as runner_mod
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.config import PPOConfig
from maskrl.agents.distributed import DistConfig
from maskrl.agents.runner import RunConfig

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
BATCH = 4 * 64  # env steps per update with TINY
TINY = [
    "--num-envs", "4", "--num-steps", "64", "--num-epochs", "1", "--num-minibatches", "2",
    "--device", "cpu", "--seed", "1", "--no-progress",
]  # fmt: skip
REQUIRED_SCALARS = {
    "charts/episodic_return",
    "charts/SPS",
    "charts/invalid_action_rate",
    "losses/policy",
    "losses/value",
    "losses/entropy",
    "losses/approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
}


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Any:
    # --torch-threads changes a process-wide setting; put it back for other tests.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalar_steps(ea: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in ea.Scalars(tag)]


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("train.py: error: "), lines[0]
    assert "Traceback" not in err
    assert "\x1b" not in err  # no terminal escape codes leaking from library messages
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --------------------------------------------------------------------------- help


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train.main(["ppo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    squashed = "".join(out.split())  # independent of how argparse wraps lines
    for cls, obj in (
        (RunConfig, RunConfig()),
        (PPOConfig, PPOConfig()),
        (DistConfig, DistConfig()),
    ):
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert f" {flag}" in out, flag
            help_ = f.metadata["help"]
            assert len(help_.split()) >= 2, f"{f.name} has no real help text"
            assert "".join(help_.split()) in squashed, f.name
            suffix = "".join(f"(default: {getattr(obj, f.name)})".split())
            if "(None:" in help_ or "(default:" in help_:
                # the help says what its default means; no second "(default: None)"
                assert "".join(help_.split()) + suffix not in squashed, f.name
            else:
                assert "".join(help_.split()) + suffix in squashed, f.name
    # No flag that does nothing: only the dataclass fields (plus -h) are offered.
    n_fields = sum(len(dataclasses.fields(c)) for c in (RunConfig, PPOConfig, DistConfig))
    ppo_parser = train.build_parser()._subparsers._group_actions[0].choices["ppo"]
    assert len([a for a in ppo_parser._actions if a.dest != "help"]) == n_fields

    with pytest.raises(SystemExit):
        train.main(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--episodes", "--env", "--seed", "--deterministic", "--output"):
        assert flag in out


def test_no_arguments_runs_the_default_ppo_job(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = train.build_parser().parse_args(["ppo"])
    assert ns.command == "ppo"
    assert train._pick(ns, RunConfig) == RunConfig()
    assert train._pick(ns, PPOConfig) == PPOConfig()
    assert RunConfig().env == BREAKOUT

    calls: list[tuple[RunConfig, PPOConfig]] = []

    def fake_train_ppo(run: RunConfig, config: PPOConfig, stop: Any = None) -> dict[str, Any]:
        calls.append((run, config))
        return {
            "run_dir": "runs/x",
            "global_step": 0,
            "steps_trained": 0,
            "train_seconds": 0.0,
            "train_sps": 0.0,
        }

    monkeypatch.setattr(runner_mod, "train_ppo", fake_train_ppo)
    assert train.main([]) == 0
    assert calls == [(RunConfig(), PPOConfig())]


# ------------------------------------------------------------- one real run


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(4 * BATCH), *TINY]
    args += ["--run-name", "single", "--runs-dir", str(runs), "--eval-episodes", "2"]
    args += ["--torch-threads", "1"]
    assert train.main(args) == 0
    return runs / "single"


def test_run_folder_contents(single_run: Path) -> None:
    names = {p.name for p in single_run.iterdir()}
    assert {"config.json", "checkpoint.pt", "eval.json"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert not [n for n in names if n.endswith(".tmp")], names  # no half-written files

    cfg = json.loads((single_run / "config.json").read_text())
    assert cfg["run"]["env"] == BREAKOUT
    assert cfg["run"]["total_timesteps"] == 4 * BATCH
    assert cfg["run"]["run_name"] == "single"
    assert cfg["ppo"]["num_envs"] == 4 and cfg["ppo"]["num_steps"] == 64
    assert cfg["ppo"]["num_minibatches"] == 2 and cfg["ppo"]["torch_threads"] == 1
    assert cfg["ppo"]["learning_rate"] == PPOConfig().learning_rate  # defaults resolved
    assert cfg["device"] == "cpu"

    ckpt = load_checkpoint(single_run / "checkpoint.pt")
    assert ckpt["global_step"] == 4 * BATCH and ckpt["num_updates"] == 4
    assert ckpt["env_ids"] == [BREAKOUT]

    ev = json.loads((single_run / "eval.json").read_text())
    assert ev["global_step"] == 4 * BATCH
    assert ev["eval"]["env_id"] == BREAKOUT and ev["eval"]["episodes"] == 2
    assert len(ev["eval"]["returns"]) == 2
    assert ev["eval"]["mean"] == pytest.approx(np.mean(ev["eval"]["returns"]))
    assert ev["train_sps"] > 0


def test_tensorboard_tags_and_values(single_run: Path) -> None:
    ea = events(single_run)
    scalars = set(ea.Tags()["scalars"])
    assert REQUIRED_SCALARS <= scalars, REQUIRED_SCALARS - scalars
    # One point per update, at the env-step count after it.
    steps = [BATCH, 2 * BATCH, 3 * BATCH, 4 * BATCH]
    for tag in REQUIRED_SCALARS - {"charts/episodic_return"}:
        assert scalar_steps(ea, tag) == steps, tag
    assert [e.value for e in ea.Scalars("charts/invalid_action_rate")] == [0.0] * 4
    assert all(e.value > 0 for e in ea.Scalars("charts/SPS"))
    assert all(e.value >= 0 for e in ea.Scalars("losses/entropy"))
    # Breakout's minimal action set has 3 valid actions: entropy can't exceed log(3).
    assert all(e.value <= np.log(3) + 1e-4 for e in ea.Scalars("losses/entropy"))
    assert all(0 <= e.value <= 1 for e in ea.Scalars("losses/clipfrac"))
    returns = [e.value for e in ea.Scalars("charts/episodic_return")]
    assert returns and all(r >= 0 for r in returns)  # Breakout rewards are 0 or 1
    text = ea.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|num_envs|4|" in text and "|num_minibatches|2|" in text
    assert f"|env|{BREAKOUT}|" in text and "|total_timesteps|1024|" in text


def test_eval_subcommand(single_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out1, out2 = tmp_path / "e1.json", tmp_path / "e2.json"
    ckpt = str(single_run / "checkpoint.pt")
    for out in (out1, out2):
        args = ["eval", "--checkpoint", ckpt, "--episodes", "20", "--deterministic"]
        assert train.main([*args, "--device", "cpu", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"eval {BREAKOUT}: mean return" in printed and "over 20 episodes" in printed
    r1, r2 = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert r1["env_id"] == BREAKOUT and r1["episodes"] == 20 and len(r1["returns"]) == 20
    assert r1["mean"] == pytest.approx(np.mean(r1["returns"]))
    assert r1["std"] == pytest.approx(np.std(r1["returns"]))
    assert r1 == r2  # seeded envs + deterministic policy: the same episodes


def test_saved_then_loaded_agent_chooses_the_same_actions(single_run: Path, tmp_path: Path) -> None:
    agent = PPO.load(single_run / "checkpoint.pt", device="cpu")
    envs = maskrl.envs.make_vec(BREAKOUT, 4, seed=3)
    obs_list = []
    obs, infos = envs.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(16):
        obs_list.append(obs)
        valid = [np.flatnonzero(m) for m in infos["action_mask"]]
        obs, _, _, _, infos = envs.step(np.array([rng.choice(v) for v in valid]))
    envs.close()
    obs_b = np.concatenate(obs_list)  # (64, C, H, W)
    masks = rng.random((len(obs_b), 6)) < 0.5
    masks[np.arange(len(obs_b)), rng.integers(0, 6, len(obs_b))] = True  # >= 1 valid
    before = agent.predict(obs_b, masks, deterministic=True)

    agent.save(tmp_path / "again.pt")
    loaded = PPO.load(tmp_path / "again.pt", device="cpu")
    after = loaded.predict(obs_b, masks, deterministic=True)
    np.testing.assert_array_equal(before, after)
    assert masks[np.arange(len(before)), before].all()  # never a masked action
    assert len(np.unique(before)) > 1  # the comparison is not between constants
    # Single observations give the same answers as the batch.
    for i in (0, 17, 63):
        assert loaded.predict(obs_b[i], masks[i], deterministic=True) == before[i]
    for p, q in zip(agent.net.parameters(), loaded.net.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_continues_with_the_same_step_count_and_optimiser(
    single_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(single_run, run_dir)
    saved = load_checkpoint(run_dir / "checkpoint.pt")
    assert saved["global_step"] == 4 * BATCH

    # Loading restores every optimiser state tensor exactly.
    agent = PPO.load(run_dir / "checkpoint.pt", device="cpu")
    opt = agent.optimizer.state_dict()
    assert opt["state"].keys() == saved["optimizer"]["state"].keys() and opt["state"]
    for k, st in saved["optimizer"]["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt["state"][k][name], st[name]), (k, name)
    assert opt["param_groups"] == saved["optimizer"]["param_groups"]
    # 4 updates x 1 epoch x 2 minibatches = 8 Adam steps so far.
    assert float(saved["optimizer"]["state"][0]["step"]) == 8

    # A point logged after the checkpoint (by an update whose result was lost) must go.
    with SummaryWriter(str(run_dir)) as w:
        w.add_scalar("losses/policy", 99.0, 5 * BATCH)
    args = ["ppo", "--resume", str(run_dir), "--total-timesteps", str(6 * BATCH)]
    assert train.main([*args, "--eval-episodes", "1", "--no-progress", "--device", "cpu"]) == 0
    final = load_checkpoint(run_dir / "checkpoint.pt")
    assert final["global_step"] == 6 * BATCH and final["num_updates"] == 6
    # The restored optimiser kept counting: 8 + 2 updates x 2 minibatches.
    assert float(final["optimizer"]["state"][0]["step"]) == 12
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["run"]["total_timesteps"] == 6 * BATCH and cfg["ppo"]["num_envs"] == 4
    assert json.loads((run_dir / "eval.json").read_text())["global_step"] == 6 * BATCH
    # The curves continue from the saved step, without restarting at 0.
    ea = events(run_dir)
    assert scalar_steps(ea, "losses/policy") == [BATCH * i for i in range(1, 7)]
    assert 99.0 not in [e.value for e in ea.Scalars("losses/policy")]


# --------------------------------------------------------------- multi-game


def test_multigame_run(tmp_path: Path) -> None:
    env = f"{BREAKOUT},{ASTERIX}"
    args = ["ppo", "--env", env, "--total-timesteps", str(2 * BATCH), *TINY]
    args += ["--run-name", "multi", "--runs-dir", str(tmp_path), "--eval-episodes", "1"]
    assert train.main(args) == 0
    run_dir = tmp_path / "multi"
    ev = json.loads((run_dir / "eval.json").read_text())["eval"]
    assert ev["env_ids"] == [BREAKOUT, ASTERIX]
    assert set(ev["per_game"]) == {BREAKOUT, ASTERIX}
    for r in ev["per_game"].values():
        assert r["episodes"] == 1 and len(r["returns"]) == 1
    assert ev["mean"] == pytest.approx(np.mean([r["mean"] for r in ev["per_game"].values()]))

    ea = events(run_dir)
    scalars = set(ea.Tags()["scalars"])
    assert REQUIRED_SCALARS <= scalars
    # Breakout episodes of an untrained agent are short: some finished in 256 steps.
    assert "charts/episodic_return/MinAtar-Breakout-v0" in scalars
    assert {t for t in scalars if t.startswith("charts/episodic_return/")} <= {
        "charts/episodic_return/MinAtar-Breakout-v0",
        "charts/episodic_return/MinAtar-Asterix-v0",
    }
    assert "eval/return/MinAtar-Asterix-v0" in scalars
    # Asterix masks some of the 6 union actions: still no invalid action taken.
    assert [e.value for e in ea.Scalars("charts/invalid_action_rate")] == [0.0, 0.0]
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["env_ids"] == [BREAKOUT, ASTERIX]
    assert ckpt["observation_space"]["type"] == "Dict"

    # The eval subcommand: per-game results, games named as on the training command line.
    out = tmp_path / "eval_multi.json"
    args = ["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--episodes", "2"]
    assert train.main([*args, "--env", f"{BREAKOUT}, {ASTERIX}", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["env_ids"] == [BREAKOUT, ASTERIX]
    assert [r["episodes"] for r in res["per_game"].values()] == [2, 2]
    assert res["mean"] == pytest.approx(np.mean([r["mean"] for r in res["per_game"].values()]))


# --------------------------------------------------------------- checkpoints


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.path, "w"))


def test_checkpoint_with_a_pickled_object_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "maskrl.ppo/1", "payload": _OpensAFile(marker)}, evil)
    # The file really is dangerous when loaded the unsafe way...
    torch.load(evil, weights_only=False)["payload"].close()
    assert marker.exists()
    marker.unlink()
    # ...and is refused, without running it, the safe way.
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(evil)
    assert train.main(["eval", "--checkpoint", str(evil)]) == 2
    assert_one_line_error(capsys.readouterr().err, "evil.pt", "weights_only")
    assert not marker.exists()


def test_checkpoint_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maskrl.agents import checkpoint as ckpt_mod

    path = tmp_path / "c.pt"
    ckpt_mod.save_checkpoint({"format": "x", "v": torch.arange(3)}, path)

    def crash(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.save_checkpoint({"format": "x", "v": torch.arange(5)}, path)
    # The old checkpoint is intact and no temporary file is left behind.
    assert torch.equal(load_checkpoint(path)["v"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "sig"
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *TINY]
    args += ["--run-name", "sig", "--runs-dir", str(tmp_path), "--checkpoint-every", str(BATCH)]
    args += ["--torch-threads", "1"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A parent started in the background may ignore SIGINT; the child must not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        time.sleep(0.5)  # land somewhere inside a later update
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert f"--resume {run_dir}" in err
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    step = ckpt["global_step"]
    assert step >= BATCH and step % BATCH == 0
    assert ckpt["num_updates"] * BATCH == step
    # Saved between updates, not in the middle of one: 2 Adam steps per update.
    assert float(ckpt["optimizer"]["state"][0]["step"]) == 2 * ckpt["num_updates"]
    assert f"stopped at step {step}" in err
    # Resume from exactly there for two more updates.
    resume = ["ppo", "--resume", str(run_dir), "--total-timesteps", str(step + 2 * BATCH)]
    assert train.main([*resume, "--eval-episodes", "1", "--no-progress", "--device", "cpu"]) == 0
    final = load_checkpoint(run_dir / "checkpoint.pt")
    assert final["global_step"] == step + 2 * BATCH
    assert final["num_updates"] == ckpt["num_updates"] + 2


def test_ctrl_c_in_the_middle_of_an_update_finishes_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    import maskrl.agents.ppo as ppo_mod

    real_loss = ppo_mod.ppo_loss
    calls = 0

    def loss_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:  # second minibatch of the second update, before its Adam step
            signal.raise_signal(signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(ppo_mod, "ppo_loss", loss_then_ctrl_c)
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(10 * BATCH), *TINY]
    args += ["--run-name", "mid", "--runs-dir", str(tmp_path), "--checkpoint-every", "100000"]
    assert train.main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--resume {tmp_path / 'mid'}" in err
    ckpt = load_checkpoint(tmp_path / "mid" / "checkpoint.pt")
    # The update in progress was completed, counted and saved as a whole.
    assert calls == 4
    assert ckpt["global_step"] == 2 * BATCH and ckpt["num_updates"] == 2
    assert float(ckpt["optimizer"]["state"][0]["step"]) == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert not (tmp_path / "mid" / "eval.json").exists()


# -------------------------------------------------------------- bad input


class _WrongMaskEnv(gym.Env[np.ndarray, int]):
    """Discrete(3) actions but a mask of 5 entries in its info."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {"action_mask": np.ones(5, dtype=bool)}

    def step(self, action: int) -> Any:
        return np.zeros(2, np.float32), 0.0, True, False, {"action_mask": np.ones(5, dtype=bool)}


@pytest.fixture
def wrong_mask_env() -> Any:
    env_id = "maskrl_test/WrongMask-v0"
    gym.register(env_id, entry_point=_WrongMaskEnv)
    yield env_id
    del gym.registry[env_id]


def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wrong_mask_env: str
) -> None:
    runs = str(tmp_path / "runs")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pt"
    torch.save({"format": "maskrl.ppo/1", "w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (tmp_path / "no_ckpt").mkdir()
    (tmp_path / "no_config").mkdir()  # a checkpoint but no config.json
    torch.save({"format": "maskrl.ppo/1"}, tmp_path / "no_config" / "checkpoint.pt")
    ppo = ["ppo", "--runs-dir", runs, "--no-progress", "--device", "cpu"]
    res = ["ppo", "--no-progress", "--device", "cpu"]  # --runs-dir is refused on resume
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        ([*ppo, "--env", "maskrl/MinAtar-Breakoot-v0"], ("unknown env id", BREAKOUT)),
        ([*ppo, "--env", "CartPole-v1"], ("CartPole-v1", "no action-mask source")),
        ([*ppo, "--env", f"{BREAKOUT},CartPole-v1"], ("CartPole-v1",)),
        ([*ppo, "--env", wrong_mask_env], ("shape (5,)", "expected (3,)")),
        (
            [*ppo, "--num-envs", "8", "--num-steps", "128", "--num-minibatches", "3"],
            ("num_minibatches=3", "1024"),
        ),
        ([*ppo, "--num-envs", "0"], ("num_envs",)),
        ([*res, "--resume", str(tmp_path / "no_ckpt")], ("cannot resume", "no_ckpt")),
        ([*res, "--resume", str(tmp_path / "absent")], ("cannot resume", "absent")),
        ([*res, "--resume", str(tmp_path / "no_config")], ("cannot resume", "config.json")),
        (["eval", "--checkpoint", str(tmp_path / "missing.pt")], ("not found", "missing.pt")),
        (["eval", "--checkpoint", str(corrupt)], ("corrupt", "corrupt.pt")),
        (["eval", "--checkpoint", str(truncated)], ("corrupt", "truncated.pt")),
    ]
    for argv, needles in cases:
        assert train.main(argv) == 2, argv
        captured = capsys.readouterr()
        assert_one_line_error(captured.err, *needles)
        assert captured.out == ""
    # Nothing was trained: no run folder holds a checkpoint.
    assert not list(Path(runs).glob("*/checkpoint.pt"))


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    res = run_cli(["ppo", "--env", "NoSuchGame-v9", "--runs-dir", str(tmp_path)], tmp_path)
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "unknown env id 'NoSuchGame-v9'")

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(2048))
    res = run_cli(["eval", "--checkpoint", str(corrupt)], tmp_path)
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "corrupt.pt")
    assert res.stdout == ""


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # An abbreviation would escape the explicit-flag detection that presets and
    # --resume rely on, so argparse must not accept one.
    with pytest.raises(SystemExit) as exc:
        train.main(["ppo", "--num-env", "16", "--preset", "reference"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --num-env" in capsys.readouterr().err


def test_a_resume_within_the_same_second_waits_for_a_later_event_file_name(
    tmp_path: Path,
) -> None:
    from maskrl.agents.runner import wait_for_a_later_event_file_name

    class Clock:
        def __init__(self, t: float) -> None:
            self.t, self.calls = t, 0

        def __call__(self) -> float:
            self.calls += 1
            self.t += 0.25
            return self.t

    wait_for_a_later_event_file_name(tmp_path, Clock(1000.0))  # no event files: no wait
    (tmp_path / "events.out.tfevents.1000.host.7.9").write_bytes(b"")
    clock = Clock(1000.0)  # the same second as the newest file
    wait_for_a_later_event_file_name(tmp_path, clock)
    assert int(clock.t) == 1001  # returned as soon as a new name sorts after the old one
    clock = Clock(2000.0)  # later seconds: no wait
    wait_for_a_later_event_file_name(tmp_path, clock)
    assert clock.calls == 2
    clock = Clock(500.0)  # a clock set far back: gives up after the bounded wait
    wait_for_a_later_event_file_name(tmp_path, clock)
    assert 503.0 <= clock.t <= 504.0
