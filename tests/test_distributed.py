"""Data-parallel training under ``torchrun`` (gloo, 2 CPU ranks): equivalence with one
process, one run folder written by rank 0, a stop agreed across ranks, a dead rank.

The torchrun cases are subprocesses (each starts 2 Python processes that import
torch: a few seconds each on 2 cores); the refusals that need no process group
run in this process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from train_module import train, wait_for

from maskrl.agents import PPO, MimicConfig, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.distributed import (
    DataParallel,
    DistConfig,
    check_world_size,
    collective_failure,
    torchrun_env,
)

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
ASTERIX = "maskrl/MinAtar-Asterix-v0"
TINY = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1"]
TINY += ["--device", "cpu", "--no-progress"]
BATCH = 4 * 16  # the job's batch: 2 ranks x 2 envs x 16 steps
TORCHRUN_ENV = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    # The printed advice starts with `torchrun`: the one installed next to this Python.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def torchrun(
    args: list[str], cwd: Path = REPO, script: str = "train.py", new_session: bool = False
) -> subprocess.Popen[str]:
    """``torchrun --standalone --nproc_per_node=2 SCRIPT ARGS`` (``new_session``: its own
    process group, which a test can signal as a terminal does)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*cmd, str(REPO / script), *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def rank_pid(proc: subprocess.Popen[str], rank: int) -> int:
    """The pid of ``rank`` among torchrun's workers (its children, by their RANK variable)."""
    children: list[int] = []
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # a thread that has just ended
            continue
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # a child that has just ended
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank} among {children}")


def rank_pid_alive(proc: subprocess.Popen[str], rank: int) -> bool:
    try:
        pid = rank_pid(proc, rank)
    except AssertionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def rank_exit_codes(err: str) -> dict[int, int]:
    """Each failed rank's exit status, from torchrun's failure report."""
    found = re.findall(r"rank\s+:\s+(\d+) \(local_rank: \d+\)\s+exitcode\s+:\s+(-?\d+)", err)
    return {int(r): int(c) for r, c in found}


def our_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("train.py:")]


# ------------------------------------------------------------ equivalence


def test_one_update_of_two_ranks_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    proc = torchrun([str(tmp_path / "out.json")], script="tests/ddp_equivalence.py")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["start_diff"] == 0.0  # rank 0's weights reached rank 1 before training
    # Two epochs (Adam steps) of one minibatch: the same update as one process, to rounding.
    assert got["max_diff"] < 1e-5, got
    # The ranks hold identical weights after every update, several minibatches too.
    assert got["rank_diff"] == 0.0 and got["rank_diff_mb"] == 0.0
    # After an update: every rank's episodes (rank order), losses averaged, invalid summed.
    assert got["stats"] == [[-1.0, 1.0, 2.0, 2.0], [1, 10, 20, 20], [0, 0, 1, 1]]
    assert got["metrics"] == {"loss": 0.5, "kl": 1.0} and got["invalid"] == 7
    assert got["stop"] == 15  # rank 1 alone saw SIGTERM: rank 0 stops too
    assert got["setup"] == "rank 1: the run folder is busy"
    assert got["setup_value"] == "runs/from-rank-0"
    # The command line's group, destroyed, leaves no gloo thread behind (one that outlives
    # Python aborts the rank's exit).
    assert not [t for t in got["threads_after"] if "gloo" in t], got["threads_after"]


# ------------------------------------------------------- PPO: stop, resume, eval


def test_sigterm_to_one_rank_stops_both_after_one_update_and_the_printed_resume_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = 60 * BATCH
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(total), *TINY]
    args += ["--runs-dir", str(tmp_path), "--run-name", "job", "--checkpoint-every", str(BATCH)]
    args += ["--eval-episodes", "1"]
    proc = torchrun(args)
    run = tmp_path / "job"
    try:
        wait_for(run / "checkpoint.pt", proc)  # training, on both ranks
        os.kill(rank_pid(proc, 1), signal.SIGTERM)  # as a scheduler signals one process
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Rank 0 saw no signal: it stopped after the same update, saved, and both exit 143.
    assert rank_exit_codes(err) == {0: 143, 1: 143}, err
    (line,) = our_lines(err)  # one line for the job, from rank 0
    step = load_checkpoint(run / "checkpoint.pt")["global_step"]
    assert 0 < step < total and step % BATCH == 0
    assert f"stopped at step {step}; checkpoint saved in {run}" in line
    advice = line.split("; continue with: ")[1]
    assert advice == f"torchrun --standalone --nproc_per_node=2 train.py ppo --resume {run}"
    assert "run folder:" not in out

    done = subprocess.run(shlex.split(advice), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run folder:") == 1  # rank 0 alone reports
    assert os.listdir(tmp_path) == ["job"]
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    summary = json.loads((run / "eval.json").read_text())
    assert summary["global_step"] == total and summary["eval"]["episodes"] > 0
    assert load_checkpoint(run / "checkpoint.pt")["config"]["num_envs"] == 4  # the job's
    # The checkpoint is an ordinary one: single-process eval and load_policy read it.
    capsys.readouterr()
    assert train.main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "1",
                       "--device", "cpu"]) == 0  # fmt: skip
    assert "mean return" in capsys.readouterr().out
    assert load_policy(run / "checkpoint.pt", device="cpu").env_ids == [BREAKOUT]
    # One process cannot continue a 2-rank run: one line, status 2, and it says how.
    assert train.main(["ppo", "--resume", str(run), "--total-timesteps", str(2 * total)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "was trained by 2 process(es) and this job has 1" in err_lines[0]
    assert "torchrun --standalone --nproc_per_node=2" in err_lines[0]


def test_ctrl_c_in_the_terminal_stops_the_job_after_one_update_and_saves(tmp_path: Path) -> None:
    # Ctrl-C signals torchrun and every rank; torchrun then forwards a second SIGINT to
    # each rank. The second one must not cut the stop short: the update ends, rank 0 saves.
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *TINY]
    args += ["--runs-dir", str(tmp_path), "--run-name", "job", "--checkpoint-every", str(BATCH)]
    proc = torchrun(args, new_session=True)
    try:
        wait_for(tmp_path / "job" / "checkpoint.pt", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "a collective with the other ranks failed" not in err, err
    assert "Ctrl-C: every rank stops after the current update; rank 0 saves a checkpoint" in err
    lines = our_lines(err)
    assert len(lines) == 1, err
    (line,) = lines
    step = load_checkpoint(tmp_path / "job" / "checkpoint.pt")["global_step"]
    assert step % BATCH == 0 and f"stopped at step {step}; checkpoint saved in" in line, line


def test_a_killed_rank_ends_the_job_with_one_line_within_seconds(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *TINY]
    args += ["--runs-dir", str(tmp_path), "--run-name", "job", "--checkpoint-every", str(BATCH)]
    proc = torchrun([*args, "--dist-timeout", "30"])
    try:
        wait_for(tmp_path / "job" / "checkpoint.pt", proc)
        os.kill(rank_pid(proc, 1), signal.SIGKILL)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # Rank 0's collective fails as the connection closes (well inside --dist-timeout).
    assert took < 20, took
    lines = our_lines(err)
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("train.py: error: rank 0: a collective with the other ranks failed")
    assert rank_exit_codes(err)[1] == -9
    assert "[rank0]: Traceback" not in err
    assert load_checkpoint(tmp_path / "job" / "checkpoint.pt")["global_step"] % BATCH == 0


@pytest.mark.parametrize("world", ["2", "1"])
def test_sigterm_while_a_training_error_unwinds_is_not_a_stop_before_training(
    world: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the test above can hit: the failed collective's error has left the
    # training phase (back to "setup") when torchrun's SIGTERM lands, before the
    # command has reported the error. Called the handler directly, at that moment.
    from maskrl.cli import _Signals

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    signals = _Signals()
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="peer closed"):
        try:
            with signals.during("training"):
                raise RuntimeError("peer closed")
        except RuntimeError:
            seen.append(signals.phase)
            if world == "2":
                try:
                    signals._handle(signal.SIGTERM, None)  # ignored: the rank is ending
                except KeyboardInterrupt:
                    pytest.fail("the SIGTERM was taken for a stop during setup")
            else:
                # One process: a SIGTERM outside training stops at once, as before.
                with pytest.raises(KeyboardInterrupt):
                    signals._handle(signal.SIGTERM, None)
            raise
    assert seen == ["setup"]
    if world == "2":
        assert signals.ending and signals.stopped_in is None and not signals.requested
    else:
        assert not signals.ending and signals.stopped_in == "setup"


def test_a_torchrun_rank_that_leaves_training_normally_still_takes_signals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from maskrl.cli import _Signals

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    signals = _Signals()
    with signals.during("training"):
        pass
    assert not signals.ending
    with signals.during("evaluation"), pytest.raises(KeyboardInterrupt):
        signals._handle(signal.SIGTERM, None)  # the final evaluation stops at once
    assert signals.stopped_in == "evaluation" and signals.signum == signal.SIGTERM


def test_a_hung_rank_ends_the_job_after_dist_timeout(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "100000000", *TINY]
    args += ["--runs-dir", str(tmp_path), "--run-name", "job", "--checkpoint-every", str(BATCH)]
    proc = torchrun([*args, "--dist-timeout", "3"])
    rank1 = None
    try:
        wait_for(tmp_path / "job" / "checkpoint.pt", proc)
        rank1 = rank_pid(proc, 1)
        os.kill(rank1, signal.SIGSTOP)  # alive but silent: only the timeout can tell
        t0 = time.monotonic()
        # Rank 0 gives up after --dist-timeout; torchrun would then wait 30 s before it
        # kills the stopped rank, so the test ends it once rank 0 has exited.
        while rank_pid_alive(proc, 0) and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        took = time.monotonic() - t0
    finally:
        if rank1 is not None:
            os.kill(rank1, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    assert 3 <= took < 15, took
    lines = our_lines(err)
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("train.py: error: rank 0: a collective with the other ranks failed")
    assert "Timed out" in line and rank_exit_codes(err)[0] == 1


def test_num_envs_not_divisible_by_the_ranks_is_one_line_and_status_2(tmp_path: Path) -> None:
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", "64", "--num-envs", "3"]
    args += ["--num-minibatches", "1", "--device", "cpu", "--runs-dir", str(tmp_path)]
    proc = torchrun(args)
    out, err = proc.communicate(timeout=90)
    assert rank_exit_codes(err) == {0: 2, 1: 2}, err
    (line,) = our_lines(err)  # agreed by the ranks, said once by rank 0
    assert "num_envs (--num-envs) = 3 must be a multiple of the world size 2" in line
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------- Actor-Mimic


def test_a_two_rank_student_writes_one_run_that_evaluates(tmp_path: Path) -> None:
    experts = tmp_path / "experts"
    entries = []
    for i, env_id in enumerate([BREAKOUT, ASTERIX]):
        agent = PPO(
            env_id, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu", seed=i)
        )
        (experts / f"e{i}").mkdir(parents=True)
        agent.save(experts / f"e{i}" / "checkpoint.pt")
        agent.envs.close()
        entries.append({"env_id": env_id, "checkpoint": f"e{i}/checkpoint.pt"})
    (experts / "experts.json").write_text(json.dumps({"experts": entries}))
    runs = tmp_path / "runs"
    args = ["mimic", "--experts", str(experts), "--runs-dir", str(runs), "--run-name", "stu"]
    args += ["--total-timesteps", "128", "--eval-episodes", "1", "--num-envs", "4"]
    args += ["--num-steps", "16", "--num-minibatches", "2", "--device", "cpu", "--no-progress"]
    proc = torchrun(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("run folder:") == 1
    assert os.listdir(runs) == ["stu"]
    run = runs / "stu"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert json.loads((run / "eval.json").read_text())["global_step"] == 128
    policy = load_policy(run / "checkpoint.pt", device="cpu")
    assert policy.env_ids == [BREAKOUT, ASTERIX]
    assert train.main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--episodes", "1",
                       "--device", "cpu"]) == 0  # fmt: skip


# ------------------------------------------------- without a process group


def test_one_process_never_touches_torch_distributed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a single process initialised a process group")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    args = ["ppo", "--env", BREAKOUT, "--total-timesteps", str(BATCH), *TINY]
    assert (
        train.main(
            [*args, "--runs-dir", str(tmp_path), "--run-name", "one", "--eval-episodes", "0"]
        )
        == 0
    )
    assert "world_size" not in json.loads((tmp_path / "one" / "config.json").read_text())
    assert not dist.is_initialized()


def test_each_rank_plays_its_share_of_the_jobs_envs_seeded_after_the_others() -> None:
    # No collective runs while a trainer is built: a rank's agent can be made here.
    cfg = PPOConfig(num_envs=4, num_steps=8, num_minibatches=2, device="cpu", seed=11)
    whole = PPO(BREAKOUT, cfg)
    obs, _ = whole.envs.reset(seed=cfg.seed)
    for rank in (0, 1):
        agent = PPO(BREAKOUT, cfg, data_parallel=DataParallel(rank, 2))
        assert agent.envs.num_envs == agent.num_envs_local == 2
        assert agent.env_seed == 11 + 2 * rank and agent.steps_per_update == 4 * 8
        assert agent.allocate().num_envs == 2
        mine, _ = agent.envs.reset(seed=agent.env_seed)
        # The job's envs are one process's envs: rank r plays columns 2r, 2r + 1.
        assert (mine == obs[2 * rank : 2 * rank + 2]).all()
        agent.envs.close()
    whole.envs.close()
    with pytest.raises(ValueError, match="config.num_envs=4 .this rank's share, 2."):
        PPO(whole.envs, cfg, data_parallel=DataParallel(0, 2))


def test_torchrun_environment_and_refusals(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None  # one rank: a single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK and LOCAL_RANK"):
        torchrun_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (1, 1, 2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    # Refused before any process group is joined: one line, status 2.
    for argv, needle in [
        (["eval", "--checkpoint", "x.pt"], "eval runs in one process"),
        (["ppo", "--device", "cuda:1"], "--device cuda:1 under torchrun"),
        (["ppo", "--dist-timeout", "0"], "dist_timeout (--dist-timeout) must be in [1, 86400]"),
    ]:
        assert train.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines

    dp = DataParallel(1, 4)
    assert dp.local_envs(8) == 2 and dp.env_seed_offset(8) == 2
    with pytest.raises(
        ValueError, match=r"= 6 must be a multiple of the world size 4 x 2 games = 8"
    ):
        dp.check_config(MimicConfig(num_envs=6), games=2)
    with pytest.raises(ValueError, match="does not divide each rank's batch"):
        dp.check_config(PPOConfig(num_envs=8, num_steps=3, num_minibatches=4))
    with pytest.raises(ValueError, match="--qat does not train under torchrun"):
        dp.check_config(PPOConfig(num_envs=8, qat=True))
    assert dp.rank_seed(1, 0) != DataParallel(2, 4).rank_seed(1, 0) != dp.rank_seed(1, 64)
    check_world_size({"world_size": 4}, dp, "runs/x")
    with pytest.raises(
        ValueError, match="trained by 1 process.*resume it with python train.py ppo --resume runs/x"
    ):
        check_world_size({}, dp, "runs/x")
    DistConfig(dist_timeout=60).validate()
    assert collective_failure(RuntimeError("not from torch.distributed")) is None
    assert not torch.distributed.is_initialized()
