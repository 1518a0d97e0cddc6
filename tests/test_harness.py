"""The run harness around the update loop: experts folders, resume totals, full-state
checks on load, signals outside the update loop, printed advice, bounds, the console script.

Printed "continue with" commands are run as printed (from the repository root, where a
user runs ``python train.py``). Budgets are tiny: 4 envs x 16 steps per update.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch
from train_module import popen, train, wait_for

import maskrl.envs
from maskrl.agents.checkpoint import load_checkpoint, save_checkpoint
from maskrl.agents.runner import RunLock, merge_experts_json

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
TINY = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1"]
TINY += ["--device", "cpu", "--no-progress"]
BATCH = 4 * 16


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Any:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def one_line(capsys: pytest.CaptureFixture[str], *needles: str, prog: str = "train.py") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{prog}: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def ppo_run(tmp_path: Path, name: str, total: int = 2 * BATCH, *extra: str) -> Path:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(total), *TINY]
    args += ["--run-name", name, "--runs-dir", str(tmp_path), "--eval-episodes", "0", *extra]
    assert train.main(args) == 0
    return tmp_path / name


def experts_args(runs: Path, ids: str, name: str = "ex", total: int = 2 * BATCH) -> list[str]:
    return ["experts", "--env", ids, "--total-timesteps", str(total), "--run-name", name,
            "--runs-dir", str(runs), "--eval-episodes", "1", *TINY]  # fmt: skip


def continue_command(err: str) -> list[str]:
    """The command after "continue with: " in ``err``, ready to run (``python`` -> this one)."""
    line = next(ln for ln in err.splitlines() if "continue with: " in ln)
    argv = shlex.split(line.split("continue with: ", 1)[1])
    assert argv[:2] == ["python", "train.py"], argv
    return [sys.executable, *argv[1:]]


def run_printed(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def wait_for_handlers(proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Until the child catches SIGTERM (its handlers are installed): /proc's SigCgt mask."""
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():
        pytest.skip("needs /proc")
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        caught = next(
            (ln for ln in status.read_text().splitlines() if ln.startswith("SigCgt:")), "0"
        )
        if int(caught.split()[-1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        assert time.monotonic() < deadline, "the handlers were never installed"
        time.sleep(0.05)


def stop_and_wait(proc: subprocess.Popen[str], sig: int, within: float) -> tuple[str, str, float]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=within)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err, time.monotonic() - t0


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("experts")
    assert train.main(experts_args(runs, f"{BREAKOUT},{ASTERIX}")) == 0
    return runs / "ex"


def mimic_args(experts: Path, runs: Path, name: str, total: int = 2 * BATCH) -> list[str]:
    return ["mimic", "--experts", str(experts), "--total-timesteps", str(total),
            "--run-name", name, "--runs-dir", str(runs), "--eval-episodes", "1", *TINY]  # fmt: skip


# ------------------------------------------------------------ 13: the command


def test_pyproject_declares_the_maskrl_command() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["maskrl"].split(":")
    entry = getattr(importlib.import_module(module), func)
    from maskrl.cli import maskrl_main

    assert entry is maskrl_main


def test_the_maskrl_command_is_the_same_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from maskrl.cli import maskrl_main

    assert train.main is importlib.import_module("maskrl.cli").main
    with pytest.raises(SystemExit) as ex:
        maskrl_main(["--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("usage: maskrl ") and "{ppo,experts,mimic,dqn,eval,plot,pack-experts}" in out
    )
    assert maskrl_main(["eval", "--checkpoint", "nowhere.pt", "--episodes", "0"]) == 2
    one_line(capsys, "--episodes", prog="maskrl")


def test_the_maskrl_command_prints_maskrl_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from maskrl.cli import maskrl_main

    _sigint_in_ppo_loss(monkeypatch)
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(4 * BATCH), *TINY]
    assert maskrl_main([*args, "--run-name", "m", "--runs-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert f"continue with: maskrl ppo --resume {tmp_path / 'm'}" in err, err


# ------------------------------------------------------ 5: experts folders


def test_experts_rerun_on_a_subset_keeps_the_other_entries(experts_dir: Path) -> None:
    before = json.loads((experts_dir / "experts.json").read_text())["experts"]
    assert [e["env_id"] for e in before] == [BREAKOUT, ASTERIX]
    assert train.main(experts_args(experts_dir.parent, ASTERIX)) == 0
    after = json.loads((experts_dir / "experts.json").read_text())["experts"]
    assert after == before


def test_experts_rerun_with_other_settings_is_refused(
    experts_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = (experts_dir / "experts.json").read_text()
    capsys.readouterr()
    args = experts_args(experts_dir.parent, BREAKOUT)
    assert train.main([*args, "--learning-rate", "0.002"]) == 2
    one_line(capsys, f"{experts_dir / 'MinAtar-Breakout-v0'}", "--learning-rate 0.002")
    args = experts_args(experts_dir.parent, f"{BREAKOUT},{ASTERIX}", total=3 * BATCH)
    assert train.main(args) == 2
    one_line(capsys, "--total-timesteps 192 (the expert has 128)")
    assert (experts_dir / "experts.json").read_text() == index


def test_experts_into_a_run_folder_and_runs_into_experts_are_refused(
    experts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ppo_run(tmp_path, "arun", BATCH)
    capsys.readouterr()
    assert train.main(experts_args(tmp_path, BREAKOUT, name=run.name)) == 2
    one_line(capsys, "already holds a training run")
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(BATCH), *TINY]
    assert train.main([*args, "--run-name", "ex", "--runs-dir", str(experts_dir.parent)]) == 2
    one_line(capsys, "holds experts")


def test_experts_json_merges_and_never_loses_an_entry(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    merge_experts_json(path, {"env_id": "a", "mean_return": 1})
    merge_experts_json(path, {"env_id": "b", "mean_return": 2})
    merge_experts_json(path, {"env_id": "a", "mean_return": 3})
    entries = json.loads(path.read_text())["experts"]
    assert entries == [{"env_id": "a", "mean_return": 3}, {"env_id": "b", "mean_return": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["experts.json"]  # no temporaries left


def test_a_second_concurrent_experts_run_is_refused(tmp_path: Path) -> None:
    args = experts_args(tmp_path, BREAKOUT, total=10**9)
    first = popen(args, tmp_path)
    try:
        wait_for(tmp_path / "ex" / "MinAtar-Breakout-v0" / "config.json", first)
        second = run_printed([sys.executable, "train.py", *experts_args(tmp_path, ASTERIX)])
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another training" in lines[0], second.stderr
        assert f"pid {first.pid}" in lines[0]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert not (tmp_path / "ex" / "MinAtar-Asterix-v0").exists()


# -------------------------------------------------- 6: resume below the step


def test_resume_with_a_total_below_the_step_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ppo_run(tmp_path, "r", 2 * BATCH)
    config = (run / "config.json").read_text()
    capsys.readouterr()
    argv = ["ppo", "--resume", str(run), "--total-timesteps", str(BATCH), "--no-progress"]
    assert train.main(argv) == 2
    one_line(capsys, f"--total-timesteps {BATCH} is below the step", f"({2 * BATCH})")
    assert (run / "config.json").read_text() == config
    # The run's own total (and anything at or above the step) still resumes.
    argv = ["ppo", "--resume", str(run), "--no-progress", "--eval-episodes", "0"]
    assert train.main([*argv, "--device", "cpu"]) == 0


def test_mimic_resume_with_a_total_below_the_step_is_refused(
    experts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(mimic_args(experts_dir, tmp_path, "stu")) == 0
    config = (tmp_path / "stu" / "config.json").read_text()
    capsys.readouterr()
    argv = ["mimic", "--resume", str(tmp_path / "stu"), "--total-timesteps", str(BATCH)]
    assert train.main([*argv, "--no-progress"]) == 2
    one_line(capsys, "is below the step")
    assert (tmp_path / "stu" / "config.json").read_text() == config


# --------------------------------------------- 7: non-finite state on load


def _poison(path: Path, where: str) -> None:
    state = load_checkpoint(path)
    if where == "optimizer":
        t = state["optimizer"]["state"][0]["exp_avg_sq"]
    else:
        t = next(iter(state[where].values()))
    t.view(-1)[0] = float("nan")
    save_checkpoint(state, path)  # CRC-valid: only the finite check can refuse it


@pytest.mark.parametrize("where", ["feature_heads", "optimizer"])
def test_mimic_resume_refuses_non_finite_state_anywhere(
    where: str, experts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(mimic_args(experts_dir, tmp_path, "stu", BATCH)) == 0
    _poison(tmp_path / "stu" / "checkpoint.pt", where)
    capsys.readouterr()
    argv = ["mimic", "--resume", str(tmp_path / "stu"), "--total-timesteps", str(2 * BATCH)]
    assert train.main([*argv, "--no-progress"]) == 2
    line = one_line(capsys, "non-finite value in", where, "cannot be resumed")
    assert "last good checkpoint" not in line


def test_ppo_resume_refuses_non_finite_adam_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ppo_run(tmp_path, "r", BATCH)
    _poison(run / "checkpoint.pt", "optimizer")
    capsys.readouterr()
    argv = ["ppo", "--resume", str(run), "--total-timesteps", str(2 * BATCH), "--no-progress"]
    assert train.main(argv) == 2
    one_line(capsys, "non-finite value in optimizer.state.0.exp_avg_sq")


# ------------------------------------------------- 8: signals, memory check


def test_eval_answers_sigterm_within_seconds_with_143(tmp_path: Path) -> None:
    run = ppo_run(tmp_path, "r", BATCH)
    args = ["eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "100000"]
    proc = popen([*args, "--device", "cpu"], tmp_path)
    wait_for_handlers(proc)
    time.sleep(2.0)  # into the evaluation loop
    _, err, took = stop_and_wait(proc, signal.SIGTERM, within=30)
    assert proc.returncode == 143, err
    assert took < 10, took
    assert "saving a checkpoint" not in err and "Traceback" not in err
    assert "stopped (SIGTERM) during the evaluation; nothing was written" in err


def test_eval_ctrl_c_does_not_claim_to_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    run = ppo_run(tmp_path, "r", BATCH)
    import maskrl.agents.policy as policy_mod

    real = policy_mod.MaskedPolicy.predict
    calls = 0

    def predict_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(policy_mod.MaskedPolicy, "predict", predict_then_ctrl_c)
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "100000"]
    assert train.main([*argv, "--device", "cpu", "--no-progress"]) == 130
    assert calls == 3  # stopped at once, not after 100000 episodes
    err = capsys.readouterr().err
    assert "saving a checkpoint" not in err
    assert err.strip() == "train.py: stopped (Ctrl-C) during the evaluation; nothing was written"
    # With the progress bar, the message still stands on a line of its own, last.
    calls = 0
    assert train.main([*argv, "--device", "cpu"]) == 130
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last == "train.py: stopped (Ctrl-C) during the evaluation; nothing was written"


def test_sigterm_in_the_final_evaluation_exits_143_and_its_advice_works(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(BATCH), *TINY]
    args += ["--run-name", "fe", "--runs-dir", str(tmp_path), "--eval-episodes", "1000000"]
    proc = popen(args, tmp_path)
    wait_for(tmp_path / "fe" / "checkpoint.pt", proc)
    time.sleep(0.5)
    _, err, took = stop_and_wait(proc, signal.SIGTERM, within=30)
    assert proc.returncode == 143, err
    assert took < 10, took
    assert "during the final evaluation" in err and "checkpoint saved" in err, err
    assert not (tmp_path / "fe" / "eval.json").exists()
    done = run_printed(continue_command(err))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "fe" / "eval.json").read_text())["eval"]["episodes"] == 10


def test_sigterm_while_building_envs_exits_143_within_seconds(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--num-envs", "200000", "--num-steps", "1"]
    args += ["--num-minibatches", "1", "--device", "cpu", "--no-progress"]
    args += ["--run-name", "big", "--runs-dir", str(tmp_path)]
    proc = popen(args, tmp_path)
    wait_for_handlers(proc)
    time.sleep(4.0)  # well into building 200,000 envs (about a minute's work)
    _, err, took = stop_and_wait(proc, signal.SIGTERM, within=60)
    assert proc.returncode == 143, err
    assert took < 10, took
    assert "Traceback" not in err
    assert "before training started; nothing new was saved" in err, err
    assert not (tmp_path / "big" / "checkpoint.pt").exists()


@pytest.mark.parametrize("command", ["ppo", "mimic"])
def test_an_impossible_buffer_is_refused_before_any_env_is_built(
    command: str,
    experts_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_vec, real_multi = maskrl.envs.make_vec, maskrl.envs.make_multigame_vec

    def guard(real: Any) -> Any:
        def make(ids: Any, num_envs: int, *args: Any, **kwargs: Any) -> Any:
            assert num_envs <= 8, f"{num_envs} envs built before the memory check"
            return real(ids, num_envs, *args, **kwargs)

        return make

    monkeypatch.setattr(maskrl.envs, "make_vec", guard(real_vec))
    monkeypatch.setattr(maskrl.envs, "make_multigame_vec", guard(real_multi))
    huge = ["--num-envs", "1000000", "--num-steps", "100000", "--num-minibatches", "1"]
    huge += ["--device", "cpu", "--no-progress", "--runs-dir", str(tmp_path)]
    if command == "ppo":
        argv = ["ppo", "--env", BREAKOUT, *huge]
    else:
        argv = ["mimic", "--experts", str(experts_dir), *huge]
    capsys.readouterr()
    assert train.main(argv) == 2
    one_line(capsys, "rollout buffer", "lower --num-steps or --num-envs")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------- 9: advice that works


def _sigint_in_ppo_loss(monkeypatch: pytest.MonkeyPatch, at_call: int = 1) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    import maskrl.agents.ppo as ppo_mod

    real = ppo_mod.ppo_loss
    calls = 0

    def loss(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == at_call:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo_mod, "ppo_loss", loss)


def test_experts_interrupt_advice_runs_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sigint_in_ppo_loss(monkeypatch)
    assert train.main(experts_args(tmp_path, f"{BREAKOUT},{ASTERIX}")) == 130
    err = capsys.readouterr().err
    assert not (tmp_path / "ex" / "experts.json").exists()
    done = run_printed(continue_command(err))
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "ex" / "experts.json").read_text())["experts"]
    assert [(e["env_id"], e["steps"]) for e in index] == [
        (BREAKOUT, 2 * BATCH),
        (ASTERIX, 2 * BATCH),
    ]


def test_finetune_interrupt_advice_resumes_the_finetune(
    experts_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _sigint_in_ppo_loss(monkeypatch)  # only the fine-tune computes a PPO loss
    args = [*mimic_args(experts_dir, tmp_path, "stu", BATCH), "--finetune-ppo", "4096"]
    assert train.main(args) == 130
    err = capsys.readouterr().err
    fine = tmp_path / "stu" / "finetune"
    assert load_checkpoint(fine / "checkpoint.pt")["global_step"] == 2048
    command = continue_command(err)
    assert command[2:] == ["mimic", "--resume", str(tmp_path / "stu")], command
    done = run_printed(command)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(fine / "checkpoint.pt")["global_step"] == 4096
    assert json.loads((fine / "eval.json").read_text())["global_step"] == 4096
    assert load_checkpoint(tmp_path / "stu" / "checkpoint.pt")["global_step"] == BATCH
    # The fine-tune's own folder is not a distillation run: the refusal says what is.
    capsys.readouterr()
    assert train.main(["mimic", "--resume", str(fine), "--no-progress"]) == 2
    one_line(capsys, f"continue both with mimic --resume {tmp_path / 'stu'}")
    # Distilling further keeps that fine-tune (of the earlier student) under its own name.
    argv = ["mimic", "--resume", str(tmp_path / "stu"), "--total-timesteps", str(2 * BATCH)]
    assert train.main([*argv, "--finetune-ppo", "0", "--no-progress", "--eval-episodes", "0"]) == 0
    assert load_checkpoint(tmp_path / "stu" / "checkpoint.pt")["global_step"] == 2 * BATCH
    kept = tmp_path / "stu" / f"finetune-from-step-{BATCH}"
    assert load_checkpoint(kept / "checkpoint.pt")["global_step"] == 4096
    assert not fine.exists()


def test_the_lock_message_of_a_resume_does_not_suggest_run_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ppo_run(tmp_path, "r", BATCH)
    lock = RunLock(run).acquire()
    try:
        capsys.readouterr()
        argv = ["ppo", "--resume", str(run), "--total-timesteps", str(2 * BATCH)]
        assert train.main([*argv, "--no-progress"]) == 2
        line = one_line(capsys, "in use by another training", "wait for it to finish")
        assert "--run-name" not in line
    finally:
        lock.release()


# ------------------------------------------------------- 11: bounds, flags


def test_finetune_steps_are_bounded(
    experts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*mimic_args(experts_dir, tmp_path, "stu"), "--finetune-ppo", str(10**20)]
    assert train.main(args) == 2
    one_line(capsys, "--finetune-ppo", "1e13")
    assert not (tmp_path / "stu").exists()


def test_eval_episodes_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--checkpoint", str(tmp_path / "x.pt"), "--episodes", str(10**20)]
    assert train.main(argv) == 2
    one_line(capsys, "--episodes must be in [1, 10,000,000]")
    args = ["ppo", "--env", BREAKOUT, *TINY, "--eval-episodes", str(10**20)]
    assert train.main([*args, "--runs-dir", str(tmp_path)]) == 2
    one_line(capsys, "--eval-episodes")


@pytest.mark.parametrize("flag", [["--qat-bits", "4"], ["--qat-start-after", "100"]])
def test_qat_settings_without_qat_are_refused(
    flag: list[str], experts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["ppo", "--env", BREAKOUT, *TINY, "--runs-dir", str(tmp_path)],
        experts_args(tmp_path, BREAKOUT),
        mimic_args(experts_dir, tmp_path, "stu"),
    ):
        assert train.main([*argv, *flag]) == 2
        one_line(capsys, flag[0], "only apply with --qat")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("make", ["make_vec", "make_multigame_vec"])
def test_make_vec_argument_checks_name_the_argument(make: str) -> None:
    fn = getattr(maskrl.envs, make)
    ids: Any = BREAKOUT if make == "make_vec" else [BREAKOUT, ASTERIX]
    for bad in (2.0, True, "4"):
        with pytest.raises(TypeError, match="num_envs must be an int"):
            fn(ids, bad)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        fn(ids, 4, backend="torch", device="gpu")
    with pytest.raises(TypeError, match="device must be a str or torch.device"):
        fn(ids, 4, backend="torch", device=1.5)


def test_the_command_line_loads_before_torch() -> None:
    # Its signal handlers must be in place before torch and the envs are imported.
    code = "import sys, maskrl.cli; print('torch' in sys.modules, 'gymnasium' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    from maskrl.agents.evaluation import MAX_EPISODES
    from maskrl.cli import MAX_EPISODES as CLI_MAX

    assert CLI_MAX == MAX_EPISODES


def test_a_signal_while_a_resume_builds_its_envs_stops_at_once_and_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    from maskrl.agents import runner

    run = ppo_run(tmp_path, "r", BATCH)
    real = runner._make_env

    def build_then_sigterm(*args: Any, **kwargs: Any) -> Any:
        envs = real(*args, **kwargs)
        envs.close()
        signal.raise_signal(signal.SIGTERM)  # stops here: nothing to finish while building
        raise AssertionError("the signal did not stop the build")

    monkeypatch.setattr(runner, "_make_env", build_then_sigterm)
    capsys.readouterr()
    argv = ["ppo", "--resume", str(run), "--total-timesteps", str(2 * BATCH), "--no-progress"]
    assert train.main(argv) == 143
    err = capsys.readouterr().err
    assert f"stopped before training resumed; {run} is unchanged" in err, err
    assert load_checkpoint(run / "checkpoint.pt")["global_step"] == BATCH
    monkeypatch.setattr(runner, "_make_env", real)
    command = continue_command(err)
    assert command[2:] == ["ppo", "--resume", str(run)]
    assert train.main(command[2:]) == 0  # as printed
