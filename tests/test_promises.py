"""The promises the README makes, off the default path: every id family trains, every bad
input is one line with exit status 2, a stopped run keeps what it saved, and a library call
leaves process-wide state alone."""

from __future__ import annotations

import json
import os
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
from train_module import popen, train

import maskrl.envs
from maskrl.agents import PPO, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
BATCH = 2 * 16
T = [
    "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1",
    "--eval-episodes", "0", "--no-progress", "--device", "cpu",
]  # fmt: skip


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("train.py: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------- every family trains

FAMILIES = [
    BREAKOUT,
    "maskrl/Knapsack-v0",
    "maskrl/ConnectFour-v0",
    "maskrl/TicTacToe-v0",
    f"{BREAKOUT},maskrl/MinAtar-Asterix-v0",
    "Taxi-v4",
]
if maskrl.envs.missing_dependency("maskrl/Atari-Pong-v0") is None:
    FAMILIES.append("maskrl/Atari-Pong-v0")


@pytest.mark.parametrize("env_id", FAMILIES)
def test_every_family_of_ids_trains_through_train_py(env_id: str, tmp_path: Path) -> None:
    args = ["ppo", "--env", env_id, "--total-timesteps", str(2 * BATCH), *T]
    args += ["--runs-dir", str(tmp_path), "--run-name", "r", "--eval-episodes", "1"]
    assert train.main(args) == 0
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ckpt["global_step"] == 2 * BATCH
    ev = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert np.isfinite(ev["eval"]["mean"])


def test_board_games_are_read_channels_last() -> None:
    from maskrl.networks import ChannelsLast

    agent = PPO("maskrl/ConnectFour-v0", PPOConfig(num_envs=2, num_steps=8, num_minibatches=1))
    assert isinstance(agent.net.encoder, ChannelsLast)  # type: ignore[union-attr]
    assert agent.policy.network_kwargs == {"obs_layout": "HWC"}


# ------------------------------------------------------- process-wide state


def test_library_calls_leave_global_rng_threads_and_onednn_alone(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    cfg = PPOConfig(num_envs=2, num_steps=16, num_minibatches=2, device="cpu", torch_threads=1)
    agent = PPO(BREAKOUT, cfg)
    agent.learn(2 * BATCH)
    agent.save(tmp_path / "a.pt")
    PPO.load(tmp_path / "a.pt", device="cpu")
    load_policy(tmp_path / "a.pt", device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads
    assert torch.backends.mkldnn.enabled == mkldnn


def test_the_agents_own_rng_makes_runs_reproducible_and_resumable(tmp_path: Path) -> None:
    cfg = PPOConfig(num_envs=2, num_steps=16, num_minibatches=2, device="cpu", seed=3)
    a = PPO(BREAKOUT, cfg)
    b = PPO(BREAKOUT, PPOConfig(**{**cfg.to_dict()}))
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(p, q)  # the seed fixes the initial weights
    a.learn(2 * BATCH)
    torch.manual_seed(999)  # the caller's global stream does not leak in
    b.learn(2 * BATCH)
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(p, q)
    # The checkpoint carries the agent's generator: a restored agent draws what the
    # original would have drawn next.
    a.save(tmp_path / "a.pt")
    c = PPO.load(tmp_path / "a.pt", device="cpu")
    assert torch.equal(a.rng.host_gen.get_state(), c.rng.host_gen.get_state())


def test_the_core_does_not_import_gymnasium() -> None:
    code = (
        "import sys, maskrl, maskrl.networks, maskrl.distributions, maskrl.attention;"
        "print('gymnasium' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_preset_reaches_the_run_config_and_explicit_flags_win(tmp_path: Path) -> None:
    from maskrl.agents import PRESETS
    from maskrl.agents.config import PRESETS as config_presets

    assert PRESETS is config_presets
    for name, values in PRESETS.items():
        # The preset as the run saw it, except what the command line set.
        args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "1", "--preset", name]
        args += ["--num-envs", "2", "--num-steps", "4", "--num-minibatches", "1"]
        args += ["--eval-episodes", "0", "--no-progress", "--device", "cpu"]
        assert train.main([*args, "--runs-dir", str(tmp_path), "--run-name", name]) == 0
        saved = json.loads((tmp_path / name / "config.json").read_text())["ppo"]
        explicit = {"num_envs": 2, "num_steps": 4, "num_minibatches": 1}
        for key, value in values.items():
            assert saved[key] == explicit.get(key, value), (name, key)


# ----------------------------------------------------------- progress bar


def test_progress_bar_ends_at_the_step_the_run_reaches(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "70", *T[:-5], "--device", "cpu"]
    args += ["--runs-dir", str(tmp_path), "--run-name", "p", "--eval-episodes", "0", "--progress"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    # 70 steps in updates of 32 means 96 steps: the bar's total is 96, and it ends full.
    assert "96/96" in proc.stderr, proc.stderr
    assert "70/" not in proc.stderr


# ------------------------------------------------------------ non-finite data


class _BadEnv(gym.Env[np.ndarray, np.int64]):
    """Returns a non-finite reward or observation at a given step."""

    def __init__(self, what: str = "reward", at: int = 5) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.what, self.at, self.t = what, at, 0

    def _info(self) -> dict[str, Any]:
        return {"action_mask": np.array([True, True, False])}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), self._info()

    def step(self, action: Any) -> Any:
        self.t += 1
        obs = np.zeros(3, np.float32)
        reward = 1.0
        if self.t == self.at:
            if self.what == "reward":
                reward = float("nan")
            else:
                obs[1] = np.nan
        return obs, reward, False, self.t >= 20, self._info()


@pytest.fixture
def bad_envs() -> Any:
    gym.register("maskrl_test/NaNReward-v0", entry_point=_BadEnv, kwargs={"what": "reward"})
    gym.register("maskrl_test/NaNObs-v0", entry_point=_BadEnv, kwargs={"what": "obs", "at": 3})
    yield
    del gym.registry["maskrl_test/NaNReward-v0"], gym.registry["maskrl_test/NaNObs-v0"]


@pytest.mark.parametrize(
    ("env_id", "needles"),
    [
        ("maskrl_test/NaNReward-v0", ("non-finite reward", "env index 0", "rollout step 4")),
        ("maskrl_test/NaNObs-v0", ("non-finite observation", "env index 0", "rollout step 2")),
    ],
)
def test_non_finite_data_stops_training_and_keeps_the_last_good_checkpoint(
    bad_envs: None,
    env_id: str,
    needles: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["ppo", "--env", env_id, "--total-timesteps", "64", *T]
    args += ["--runs-dir", str(tmp_path), "--run-name", "nan", "--num-envs", "1"]
    assert train.main(args) == 2
    line = one_line_error(capsys, *needles)
    assert "no checkpoint was written" in line
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_nan_weights_are_never_saved_and_never_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = PPO(BREAKOUT, PPOConfig(num_envs=2, num_steps=16, num_minibatches=2, device="cpu"))
    agent.save(tmp_path / "good.pt")
    with torch.no_grad():
        next(agent.net.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        agent.save(tmp_path / "good.pt")
    assert load_policy(tmp_path / "good.pt", device="cpu") is not None  # still the good one
    # A non-finite checkpoint written by other means is refused by eval and load.
    state = agent.state_dict()
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="non-finite weights"):
        load_policy(tmp_path / "nan.pt")
    assert train.main(["eval", "--checkpoint", str(tmp_path / "nan.pt"), "--device", "cpu"]) == 2
    one_line_error(capsys, "non-finite weights")


def test_a_non_finite_loss_stops_before_the_step() -> None:
    from maskrl.agents.trainer import NonFiniteError, optimize_minibatches

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)

    def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        term = (w * float("inf")).sum()
        return term, {"policy": term.detach(), "value": torch.tensor(1.0)}

    with pytest.raises(NonFiniteError, match="non-finite terms: policy"):
        optimize_minibatches(
            loss_fn, opt, [w], 4, 2, 1, 0.5, torch.Generator().manual_seed(0), torch.device("cpu")
        )
    assert torch.equal(w.detach(), torch.ones(3))  # never stepped


# ---------------------------------------------------- impossible settings

BAD_FLAGS = [
    (["--learning-rate", "inf"], "--learning-rate"),
    (["--learning-rate", "1e308"], "--learning-rate"),
    (["--reward-scale", "nan"], "--reward-scale"),
    (["--reward-scale", "inf"], "--reward-scale"),
    (["--ent-coef", "nan"], "--ent-coef"),
    (["--ent-coef", "-1"], "--ent-coef"),
    (["--vf-coef", "nan"], "--vf-coef"),
    (["--vf-coef", "-1"], "--vf-coef"),
    (["--max-grad-norm", "nan"], "--max-grad-norm"),
    (["--max-grad-norm", "0"], "--max-grad-norm"),
    (["--max-grad-norm", "-1"], "--max-grad-norm"),
    (["--adam-eps", "0"], "--adam-eps"),
    (["--clip-coef", "nan"], "--clip-coef"),
    (["--target-kl", "0"], "--target-kl"),
    (["--target-kl", "-1"], "--target-kl"),
    (["--target-kl", "nan"], "--target-kl"),
    (["--torch-threads", "1000"], "--torch-threads"),
    (["--gamma", "nan"], "--gamma"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999"], "--seed"),
    (["--env-backend", "jax"], "--env-backend"),
    (["--device", "mps"], "mps"),
    (["--device", "xpu"], "xpu"),
    (["--device", "meta"], "meta"),
    (["--num-steps", "1000000000"], "--num-steps"),
    (["--run-name", "x" * 300], "--run-name"),
    (["--run-name", "../up"], "--run-name"),
    (["--env", f"{BREAKOUT},{BREAKOUT}"], "more than once"),
    (["--total-timesteps", "0"], "--total-timesteps"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
]


@pytest.mark.parametrize(("flags", "needle"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_impossible_settings_are_one_line_and_exit_2(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "64", *T, "--runs-dir", str(runs)]
    assert train.main([*args, *flags]) == 2
    one_line_error(capsys, needle)
    assert not runs.exists() or not any(runs.iterdir())  # no run folder left behind


@pytest.mark.parametrize(
    ("runs_dir", "needle"),
    [("a_file", "not a folder"), ("/proc/x", "run folder")],
)
def test_unusable_runs_dir_is_one_line(
    runs_dir: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_file").write_text("x")
    path = runs_dir if runs_dir.startswith("/") else str(tmp_path / runs_dir)
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "64", *T, "--runs-dir", path]
    assert train.main(args) == 2
    one_line_error(capsys, needle)


def test_a_failed_save_says_where_the_last_good_checkpoint_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def readonly(self: Any, path: Any) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(PPO, "save", readonly)
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "64", *T, "--runs-dir", str(tmp_path)]
    assert train.main([*args, "--run-name", "ro"]) == 2
    one_line_error(capsys, "could not write", "Read-only file system", "no checkpoint was written")


# ------------------------------------------------------------ checkpoints


def _tiny_run(tmp_path: Path, name: str = "r", total: int = 2 * BATCH) -> Path:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(total), *T]
    assert train.main([*args, "--runs-dir", str(tmp_path), "--run-name", name]) == 0
    return tmp_path / name


def test_a_damaged_checkpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _tiny_run(tmp_path)
    ckpt = run / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2000] = bytes(b ^ 0xFF for b in data[mid : mid + 2000])
    ckpt.write_bytes(bytes(data))
    capsys.readouterr()
    assert (
        train.main(["ppo", "--resume", str(run), "--total-timesteps", "128", "--no-progress"]) == 2
    )
    one_line_error(capsys, "damaged")
    assert train.main(["eval", "--checkpoint", str(ckpt)]) == 2
    one_line_error(capsys, "damaged")


def test_unknown_checkpoint_format_is_refused(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    state = load_checkpoint(run / "checkpoint.pt")
    state["format"] = "maskrl.ppo/99"
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="maskrl.ppo/99"):
        PPO.load(tmp_path / "future.pt")
    with pytest.raises(ValueError, match="maskrl.ppo/99"):
        load_policy(tmp_path / "future.pt")


def test_resume_keeps_the_runs_total_and_a_failed_resume_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _tiny_run(tmp_path, total=BATCH)
    cfg = (run / "config.json").read_text()
    # A resume that fails (a flag that cannot change) leaves config.json as it was.
    assert train.main(["ppo", "--resume", str(run), "--runs-dir", "elsewhere"]) == 2
    one_line_error(capsys, "--runs-dir")
    assert (run / "config.json").read_text() == cfg
    # Without --total-timesteps, the run keeps its own total (it is already there).
    assert train.main(["ppo", "--resume", str(run), "--no-progress", "--eval-episodes", "0"]) == 0
    assert json.loads((run / "config.json").read_text())["run"]["total_timesteps"] == BATCH
    assert load_checkpoint(run / "checkpoint.pt")["global_step"] == BATCH
    # With it, the run goes on; the summary counts this invocation's steps.
    capsys.readouterr()
    argv = ["ppo", "--resume", str(run), "--total-timesteps", str(3 * BATCH), "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "0"]) == 0
    out = capsys.readouterr().out
    assert f"trained {2 * BATCH} steps" in out and f"at step {3 * BATCH}" in out


def test_stray_temporaries_are_cleaned_up(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path, total=BATCH)
    stray = run / ".checkpoint.pt.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    argv = ["ppo", "--resume", str(run), "--total-timesteps", str(2 * BATCH), "--no-progress"]
    assert train.main([*argv, "--eval-episodes", "0"]) == 0
    assert not stray.exists()


def test_eval_output_that_is_a_folder_is_refused_before_evaluating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _tiny_run(tmp_path)
    import maskrl.agents

    def no_evaluation(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("evaluated before refusing the output path")

    monkeypatch.setattr(maskrl.agents, "evaluate", no_evaluation)
    argv = ["eval", "--checkpoint", str(run / "checkpoint.pt"), "--output", str(tmp_path)]
    assert train.main([*argv, "--episodes", "500"]) == 2  # refused up front
    one_line_error(capsys, "is a folder")
    assert train.main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--seed", "-1"]) == 2
    one_line_error(capsys, "--seed")


def test_eval_on_another_game_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path)
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "1"]
    assert train.main([*argv, "--env", "maskrl/MinAtar-Asterix-v0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "trained on maskrl/MinAtar-Breakout-v0" in err


def test_predict_names_expected_and_given_observation_shapes() -> None:
    agent = PPO(BREAKOUT, PPOConfig(num_envs=2, num_steps=16, num_minibatches=2, device="cpu"))
    mask = np.array([True, True, False, True, False, False])
    with pytest.raises(ValueError, match=r"shape \(4, 10\), expected \(4, 10, 10\)"):
        agent.predict(np.zeros((4, 10), np.float32), mask)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 10, 10\)"):
        agent.predict(np.zeros((3, 4, 10, 10), np.float32), np.stack([mask, mask]))
    with pytest.raises(ValueError, match="boolean or 0/1 integers"):
        agent.predict(np.zeros((4, 10, 10), np.float32), mask.astype(np.float32))


# --------------------------------------------------------- signals, locks


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_saves_and_exits_143(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *T]
    args += ["--runs-dir", str(tmp_path), "--run-name", "term", "--checkpoint-every", "10000000"]
    proc = popen(args, tmp_path)
    try:
        _wait_for(tmp_path / "term" / "config.json", proc)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err
    ckpt = load_checkpoint(tmp_path / "term" / "checkpoint.pt")
    assert ckpt["global_step"] > 0 and ckpt["global_step"] % BATCH == 0


def test_ctrl_c_right_after_launch_stops_the_run(tmp_path: Path) -> None:
    # SIGINT while the envs are still being built (MinAtar's import swallows a
    # KeyboardInterrupt there): the run must still stop, with 130, not train on.
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *T]
    args += ["--runs-dir", str(tmp_path), "--run-name", "early"]
    proc = popen(args, tmp_path)
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err


def test_a_run_folder_in_use_is_refused(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *T]
    args += ["--runs-dir", str(tmp_path), "--run-name", "busy"]
    first = popen(args, tmp_path)
    try:
        _wait_for(tmp_path / "busy" / "config.json", first)
        second = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *args],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another training" in lines[0], second.stderr
        assert f"pid {first.pid}" in lines[0]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130


def test_signal_handlers_are_restored_after_main(tmp_path: Path) -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    _tiny_run(tmp_path, total=BATCH)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert os.environ.get("MASKRL_UNUSED") is None


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [("env", 123, "env (--env) must be str"), ("checkpoint_every", "abc", "--checkpoint-every")],
)
def test_a_hand_edited_config_json_with_bad_types_is_one_line(
    key: str, value: Any, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _tiny_run(tmp_path, total=BATCH)
    cfg = json.loads((run / "config.json").read_text())
    cfg["run"][key] = value
    (run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    argv = ["ppo", "--resume", str(run), "--total-timesteps", str(2 * BATCH), "--no-progress"]
    assert train.main(argv) == 2
    one_line_error(capsys, "cannot resume", needle)
