"""Masked DQN trainer: the update by hand, the replay at autoreset, masked acting,
resume, the CLI (train, resume, eval, Ctrl-C, refusals) and a short learning check."""

from __future__ import annotations

import json
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
from torch import nn
from train_module import train

from maskrl.agents import DQN, DQNConfig, get_trainer, load_policy, load_trainer
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.dqn_trainer import linear_epsilon

REPO = Path(__file__).resolve().parents[1]
BREAKOUT = "maskrl/MinAtar-Breakout-v0"
CORRIDOR = "test/MaskedCorridor-v0"
COUNTER = "test/MaskCounter-v0"
TRUNCATED = "test/MaskCounterTruncated-v0"


# ------------------------------------------------------------------ tiny envs


class MaskedCorridor(gym.Env[np.ndarray, np.int64]):
    """``length`` cells; observation: one-hot of the cell. In cell ``k`` the valid
    actions are ``{k % 3, (k + 1) % 3}`` (action ``(k + 2) % 3`` is masked);
    ``(k + 1) % 3`` moves on, ``k % 3`` ends the episode with reward 0. Leaving
    the last cell gives reward 1. A uniformly random valid policy succeeds with
    probability ``2 ** -length``; the greedy optimum always does."""

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.k = 0

    def _obs(self) -> np.ndarray:
        o = np.zeros(self.length, np.float32)
        o[self.k] = 1.0
        return o

    def _mask(self) -> np.ndarray:
        m = np.ones(3, bool)
        m[(self.k + 2) % 3] = False
        return m

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.k = 0
        return self._obs(), {"action_mask": self._mask()}

    def step(self, action: Any) -> Any:
        a = int(action)
        assert self._mask()[a], "a masked action reached the env"
        if a != (self.k + 1) % 3:
            return self._obs(), 0.0, True, False, {"action_mask": self._mask()}
        self.k += 1
        if self.k == self.length:
            self.k -= 1  # the last observation; the episode is over
            return self._obs(), 1.0, True, False, {"action_mask": self._mask()}
        return self._obs(), 0.0, False, False, {"action_mask": self._mask()}


class MaskCounter(gym.Env[np.ndarray, np.int64]):
    """Observation: ``[t]``, the step within the episode; reward ``t``; the mask of
    step ``t`` allows action ``t % 3`` only. Terminated after ``end`` steps when
    ``end`` is set (else a TimeLimit truncates it)."""

    def __init__(self, end: int | None = 3) -> None:
        self.end = end
        self.observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.t = 0

    def _info(self) -> dict[str, Any]:
        m = np.zeros(3, bool)
        m[self.t % 3] = True
        return {"action_mask": m}

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), self._info()

    def step(self, action: Any) -> Any:
        assert int(action) == self.t % 3, "a masked action reached the env"
        self.t += 1
        done = self.end is not None and self.t >= self.end
        return np.array([float(self.t)], np.float32), float(self.t), done, False, self._info()


if CORRIDOR not in gym.registry:
    gym.register(CORRIDOR, entry_point=MaskedCorridor)
    gym.register(COUNTER, entry_point=MaskCounter)
    gym.register(TRUNCATED, entry_point=MaskCounter, max_episode_steps=2, kwargs={"end": None})


def _cfg(**kw: Any) -> DQNConfig:
    base: dict[str, Any] = dict(
        device="cpu", buffer_size=64, batch_size=8, learning_starts=16, train_freq=2,
        target_update_interval=8, exploration_steps=32,
    )  # fmt: skip
    base.update(kw)
    return DQNConfig(**base)


# ------------------------------------------------------------- the update by hand


class _FixedQ(nn.Module):
    """Q-values looked up by the observation's first entry (a row index)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.table[obs[:, 0].long()]
        return q, q.sum(-1)


@pytest.mark.parametrize(
    ("double", "unmasked", "target", "loss"),
    [
        # Q(s0, a=1) = 3; next mask [T, F, T]; r = 1; gamma = 0.5.
        # double, masked: online argmax over {0, 2} of [1, 2] -> 2; target Q = 30 -> 16.
        (True, False, 16.0, 12.5),
        # double, unmasked: online argmax over all of [1, 5, 2] -> 1 (invalid); 40 -> 21.
        (True, True, 21.0, 17.5),
        # plain DQN, masked: max of target over {0, 2} of [10, 30] -> 30 -> 16.
        (False, False, 16.0, 12.5),
        # plain DQN, unmasked: max over all of [10, 40, 30] -> 40 -> 21.
        (False, True, 21.0, 17.5),
    ],
)
def test_the_loss_and_target_of_one_transition_by_hand(
    double: bool, unmasked: bool, target: float, loss: float
) -> None:
    agent = DQN(CORRIDOR, _cfg(gamma=0.5, double=double, unmasked_target=unmasked))
    try:
        # Rows: 0 = s0, 1 = s1 (the next state).
        agent.net = _FixedQ([[0.0, 3.0, 0.0], [1.0, 5.0, 2.0]])  # type: ignore[assignment]
        agent.target_net = _FixedQ([[0.0, 0.0, 0.0], [10.0, 40.0, 30.0]])  # type: ignore[assignment]
        batch = {
            "obs": torch.tensor([[0.0]]),
            "actions": torch.tensor([1]),
            "rewards": torch.tensor([1.0]),
            "next_obs": torch.tensor([[1.0]]),
            "terminated": torch.tensor([False]),
            "next_masks": torch.tensor([[True, False, True]]),
        }
        got_loss, got_target = agent.loss(batch)
        assert got_target.tolist() == [target]
        # Huber with delta 1: |13| - 0.5 = 12.5 (masked), |18| - 0.5 = 17.5 (unmasked).
        assert float(got_loss.detach()) == loss
        # A terminal transition's target is its reward, whatever the next state.
        batch["terminated"] = torch.tensor([True])
        assert agent.loss(batch)[1].tolist() == [1.0]
    finally:
        agent.envs.close()


def test_unmasked_target_is_recorded_in_the_config_and_checkpoint(tmp_path: Path) -> None:
    agent = DQN(CORRIDOR, _cfg(unmasked_target=True))
    try:
        agent.save(tmp_path / "c.pt")
    finally:
        agent.envs.close()
    assert load_checkpoint(tmp_path / "c.pt")["config"]["unmasked_target"] is True


# ------------------------------------------------------------ replay and acting


def test_the_replay_stores_the_final_obs_and_its_mask_at_autoreset() -> None:
    # Terminated after 3 steps: obs t, reward t+1, the mask of step t allows t % 3.
    agent = DQN(COUNTER, _cfg(num_envs=2, learning_starts=10_000, exploration_steps=0,
                              exploration_final_eps=1.0))  # fmt: skip
    try:
        agent.learn(2 * 4 * 2)  # 8 vector steps
        rb = agent.replay
        assert rb is not None and rb.size == 16
        obs = rb.obs[:16, 0].view(8, 2)[:, 0].tolist()
        nxt = rb.next_obs[:16, 0].view(8, 2)[:, 0].tolist()
        term = rb.terminated[:16].view(8, 2)[:, 0].tolist()
        # Episodes 0 1 2 | 0 1 2 | 0 1: the last transition of each goes to obs 3
        # (the final obs, not the reset obs 0), terminated.
        assert obs == [0, 1, 2, 0, 1, 2, 0, 1]
        assert nxt == [1, 2, 3, 1, 2, 3, 1, 2]
        assert term == [False, False, True] * 2 + [False, False]
        # The next mask is the next state's own: step 3 allows action 0; 1 allows 1...
        masks = rb.next_masks[:16].view(8, 2, 3)[:, 0]
        assert masks.int().argmax(-1).tolist() == [1, 2, 0, 1, 2, 0, 1, 2]
        assert rb.rewards[:16].view(8, 2)[:, 0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2]
        # Acting with epsilon 1 still took only valid actions (the env asserts it).
        assert rb.actions[:16].view(8, 2)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    finally:
        agent.envs.close()


def test_a_truncated_transition_bootstraps_from_its_own_final_obs_and_mask() -> None:
    # Truncated by a TimeLimit of 2: obs 0 -> 1 -> 2 (truncated), then reset to 0.
    agent = DQN(TRUNCATED,
                _cfg(learning_starts=10_000, exploration_final_eps=1.0, exploration_steps=0))  # fmt: skip
    try:
        agent.learn(6)
        rb = agent.replay
        assert rb is not None
        assert rb.obs[:6, 0].tolist() == [0, 1, 0, 1, 0, 1]
        assert rb.next_obs[:6, 0].tolist() == [1, 2, 1, 2, 1, 2]
        assert rb.terminated[:6].tolist() == [False] * 6  # truncated, not terminated
        assert rb.next_masks[:6].int().argmax(-1).tolist() == [1, 2, 1, 2, 1, 2]
        assert agent.episode_stats.lengths == [2, 2, 2]
    finally:
        agent.envs.close()


def test_epsilon_schedule_is_linear_then_flat() -> None:
    c = DQNConfig(exploration_initial_eps=1.0, exploration_final_eps=0.1, exploration_steps=100)
    assert [linear_epsilon(c, s) for s in (0, 50, 100, 1000)] == pytest.approx(
        [1.0, 0.55, 0.1, 0.1]
    )


def test_acting_never_takes_a_masked_action_on_breakout() -> None:
    # Breakout's minimal set: 3 of MinAtar's 6 actions are masked at every step.
    agent = DQN(
        BREAKOUT, _cfg(num_envs=4, buffer_size=512, learning_starts=64, exploration_steps=256)
    )
    seen: list[float] = []
    try:
        agent.learn(512, callback=lambda t, m: seen.append(m["invalid_actions"]) and None)
        rb = agent.replay
        assert rb is not None
        acts = rb.actions[: rb.size]
        # Every stored action is valid in its state: the next obs's mask is the same
        # minimal set on Breakout, so check against it.
        assert bool(rb.next_masks[: rb.size].gather(1, acts[:, None]).all())
        assert sum(seen) == 0 and len(set(acts.tolist())) == 3
    finally:
        agent.envs.close()


# ---------------------------------------------------------------------- resume


@pytest.mark.parametrize(("env", "backend"), [(CORRIDOR, "numpy"), (BREAKOUT, "torch")])
def test_save_load_round_trip_continues_identically(tmp_path: Path, env: str, backend: str) -> None:
    cfg = _cfg(num_envs=2, seed=3, env_backend=backend, buffer_size=256)
    a = DQN(env, cfg)
    b = None
    try:
        a.learn(64)
        a.save(tmp_path / "c.pt")
        b = load_trainer(tmp_path / "c.pt", device="cpu")
        assert type(b) is DQN and b.global_step == 64 and b.num_updates == a.num_updates > 0
        assert b.config.env_backend == backend and b.torch_env == (backend == "torch")
        assert a.replay is not None and b.replay is not None
        for k in a.replay._FIELDS:
            assert torch.equal(getattr(a.replay, k), getattr(b.replay, k)), k
        assert (a.replay.pos, a.replay.size) == (b.replay.pos, b.replay.size)
        # The saved run restarts its episodes on resume (seeded with seed + step); an
        # uninterrupted run that does the same takes exactly the same steps after it.
        a._reset()
        a.learn(160)
        b.learn(160)
        for (k, v), w in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
        for v, w in zip(a.target_net.state_dict().values(), b.target_net.state_dict().values(),
                        strict=True):  # fmt: skip
            assert torch.equal(v, w)
        assert torch.equal(a.replay.actions, b.replay.actions)
        assert torch.equal(a.replay.next_obs, b.replay.next_obs)
        assert b.global_step == 160 and b.episode_stats.returns
        assert a.episode_stats.returns[-len(b.episode_stats.returns) :] == b.episode_stats.returns
    finally:
        a.envs.close()
        if b is not None:
            b.envs.close()


def test_a_checkpoint_with_adam_state_per_parameter_resumes(tmp_path: Path) -> None:
    # Earlier versions stepped Adam over the network's separate parameters; such a
    # checkpoint's optimiser state is flattened on load and continues identically.
    a = DQN(CORRIDOR, _cfg(num_envs=2, seed=3, buffer_size=256))
    b = c = None
    try:
        a.learn(64)
        state = a.state_dict()
        flat_state = state["optimizer"]
        entry = flat_state["state"][0]
        per_param: dict[int, Any] = {}
        for i, (p, m, v) in enumerate(zip(a.flat.params, a.flat.views(entry["exp_avg"]),
                                          a.flat.views(entry["exp_avg_sq"]), strict=True)):  # fmt: skip
            if p is not a.net.value_head.weight and p is not a.net.value_head.bias:
                per_param[i] = {"step": entry["step"].clone(), "exp_avg": m.contiguous(),
                                "exp_avg_sq": v.contiguous()}  # fmt: skip
        groups = [{**flat_state["param_groups"][0], "params": list(range(len(a.flat.params)))}]
        state["optimizer"] = {"state": per_param, "param_groups": groups}
        torch.save(state, tmp_path / "legacy.pt")
        a.save(tmp_path / "flat.pt")
        b = load_trainer(tmp_path / "legacy.pt", device="cpu")
        c = load_trainer(tmp_path / "flat.pt", device="cpu")
        assert isinstance(b, DQN) and isinstance(c, DQN)
        for k, v in c.optimizer.state_dict()["state"][0].items():
            assert torch.equal(b.optimizer.state_dict()["state"][0][k], v), k
        b.learn(128)
        c.learn(128)
        for (k, v), w in zip(b.net.state_dict().items(), c.net.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
    finally:
        for t in (a, b, c):
            if t is not None:
                t.envs.close()


# ------------------------------------------------------------------------ CLI

TINY = ["--device", "cpu", "--no-progress", "--buffer-size", "256", "--batch-size", "16"]
TINY += ["--learning-starts", "32", "--target-update-interval", "32", "--exploration-steps", "64"]


def test_dqn_is_registered() -> None:
    spec = get_trainer("dqn")
    assert spec.trainer_class is DQN and spec.checkpoint_format == "maskrl.dqn/1"


def test_cli_train_resume_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dqn", "--env", BREAKOUT, "--total-timesteps", "128", "--run-name", "d"]
    args += ["--runs-dir", str(tmp_path), "--eval-episodes", "1", "--unmasked-target", *TINY]
    assert train.main(args) == 0
    run_dir = tmp_path / "d"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["dqn"]["unmasked_target"] is True and saved["dqn"]["buffer_size"] == 256
    assert json.loads((run_dir / "eval.json").read_text())["eval"]["episodes"] == 1
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["format"] == "maskrl.dqn/1" and ckpt["replay"]["size"] == 128
    assert list((run_dir).glob("events.out.tfevents.*"))
    again = ["dqn", "--resume", str(run_dir), "--total-timesteps", "256", "--no-progress"]
    assert train.main([*again, "--eval-episodes", "0"]) == 0
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["global_step"] == 256 and ckpt["replay"]["size"] == 256
    capsys.readouterr()
    assert train.main([*again, "--batch-size", "8"]) == 2
    assert "cannot change on resume: --batch-size" in capsys.readouterr().err
    # The policy alone, and train.py eval (greedy: --deterministic).
    policy = load_policy(run_dir / "checkpoint.pt", device="cpu")
    obs = np.zeros((1, 4, 10, 10), np.float32)
    mask = np.array([[True, False, False, True, False, False]])
    assert policy.predict(obs, mask, deterministic=True)[0] in (0, 3)
    ev = [
        "eval",
        "--checkpoint",
        str(run_dir / "checkpoint.pt"),
        "--episodes",
        "1",
        "--deterministic",
    ]
    assert train.main([*ev, "--device", "cpu"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_metrics_are_logged_as_means_every_log_interval(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["dqn", "--env", BREAKOUT, "--total-timesteps", "160", "--run-name", "d"]
    args += ["--runs-dir", str(tmp_path), "--eval-episodes", "0", "--log-interval", "64", *TINY]
    assert train.main(args) == 0
    ea = EventAccumulator(str(tmp_path / "d"), size_guidance={"scalars": 0})
    ea.Reload()
    # Iterations of 4 env steps; a point once 64 steps have passed since the last
    # one, and the rest at the end of the run: steps 64, 128, 160.
    sps = ea.Scalars("charts/SPS")
    assert [e.step for e in sps] == [64, 128, 160] and all(e.value > 0 for e in sps)
    cfg = DQNConfig(exploration_steps=64)
    # Each point is the mean over its iterations (epsilon read after each one).
    for e, (lo, hi) in zip(ea.Scalars("losses/epsilon"), [(4, 64), (68, 128), (132, 160)],
                           strict=True):  # fmt: skip
        want = np.mean([linear_epsilon(cfg, s) for s in range(lo, hi + 1, 4)])
        assert e.value == pytest.approx(want, abs=1e-6)
    # The loss exists from learning_starts (32) on: its first point averages the
    # iterations from there only.
    assert [e.step for e in ea.Scalars("losses/loss")] == [64, 128, 160]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--exploration-final-eps", "1.5"],
            "exploration_final_eps (--exploration-final-eps) must be in [0, 1]",
        ),
        (
            ["--exploration-initial-eps", "-0.1"],
            "exploration_initial_eps (--exploration-initial-eps) must be in [0, 1]",
        ),
        (
            ["--buffer-size", "8", "--batch-size", "32"],
            "buffer_size (--buffer-size) 8 is smaller than batch_size",
        ),
        (["--train-freq", "0"], "train_freq (--train-freq) must be >= 1"),
        (["--gamma", "1.5"], "gamma (--gamma) must be in [0, 1]"),
        (["--env", "maskrl/Knapsack-v0"], "dqn needs a Box observation space"),
        (["--env", f"{BREAKOUT},maskrl/MinAtar-Asterix-v0"], "dqn trains on one env id, got 2"),
        (["--learning-rate", "0"], "learning_rate (--learning-rate) must be in (0, 1]"),
        (["--log-interval", "-1"], "log_interval (--log-interval) must be >= 0"),
    ],
)
def test_cli_refusals_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    args = ["dqn", "--env", BREAKOUT, "--runs-dir", str(tmp_path), "--device", "cpu", *flags]
    assert train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_ctrl_c_saves_a_resumable_dqn_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "sig"
    args = ["dqn", "--env", BREAKOUT, "--total-timesteps", "100000000", *TINY]
    args += ["--run-name", "sig", "--runs-dir", str(tmp_path), "--checkpoint-every", "64"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert f"--resume {run_dir}" in err
    step = load_checkpoint(run_dir / "checkpoint.pt")["global_step"]
    assert step >= 64 and step % 4 == 0  # whole iterations of train_freq 4 x 1 env
    resume = ["dqn", "--resume", str(run_dir), "--total-timesteps", str(step + 8)]
    assert train.main([*resume, "--no-progress", "--eval-episodes", "0"]) == 0
    assert load_checkpoint(run_dir / "checkpoint.pt")["global_step"] == step + 8


# -------------------------------------------------------------------- learning


def test_dqn_learns_the_masked_corridor() -> None:
    # Random valid play succeeds 1 time in 32; greedy after training every time.
    cfg = DQNConfig(
        device="cpu", seed=0, num_envs=4, buffer_size=5_000, batch_size=64, learning_rate=1e-3,
        learning_starts=500, train_freq=1, gradient_steps=1, target_update_interval=200,
        exploration_steps=3_000, exploration_final_eps=0.05, gamma=0.9, hidden=32,
    )  # fmt: skip
    agent = DQN(CORRIDOR, cfg)
    try:
        agent.learn(6_000)
        policy = agent.policy
        env = MaskedCorridor()
        obs, info = env.reset(seed=0)
        total, done = 0.0, False
        while not done:
            a = policy.predict(obs, info["action_mask"], deterministic=True)
            obs, r, done, _, info = env.step(a)
            total += r
        assert total == 1.0
        assert np.mean(agent.episode_stats.returns[-50:]) > 0.5
    finally:
        agent.envs.close()


def test_the_harness_evaluates_a_dqn_run_greedily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import maskrl.agents.runner as runner

    calls: list[bool] = []
    real = runner.evaluate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["deterministic"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", spy)
    run = runner.RunConfig(env=CORRIDOR, total_timesteps=32, run_name="g", runs_dir=str(tmp_path),
                           eval_episodes=1, progress=False)  # fmt: skip
    runner.run_trainer("dqn", run, _cfg())
    assert calls == [True]


def test_the_replay_ring_wraps_around_and_round_trips() -> None:
    from maskrl.agents import ReplayBuffer

    rb = ReplayBuffer((1,), np.float32, 2, 5, torch.device("cpu"))
    for k in range(3):  # 6 rows into 5: the third step wraps around the end
        o = np.array([[2 * k], [2 * k + 1]], np.float32)
        m = np.array([[True, False], [False, True]])
        rb.add(o, np.array([0, 1]), np.array([1.0, 2.0]), o + 100, np.array([False, True]), m)
    assert rb.obs[:, 0].tolist() == [5, 1, 2, 3, 4] and (rb.pos, rb.size) == (1, 5)
    assert rb.next_obs[:, 0].tolist() == [105, 101, 102, 103, 104]
    assert rb.next_masks[:, 0].tolist() == [False, False, True, False, True]
    # Rows 0-3 were written in one piece (the CPU's direct path), rows 4 and 0 wrapped.
    assert rb.actions.tolist() == [1, 1, 0, 1, 0] and rb.rewards.tolist() == [2, 2, 1, 2, 1]
    assert rb.terminated.tolist() == [True, True, False, True, False]
    other = ReplayBuffer((1,), np.float32, 2, 5, torch.device("cpu"))
    other.load_state_dict(rb.state_dict())
    for k in rb._FIELDS:
        assert torch.equal(getattr(rb, k), getattr(other, k)), k
    assert (other.pos, other.size) == (1, 5)
    with pytest.raises(ValueError, match="holds 5 rows, this one 4"):
        ReplayBuffer((1,), np.float32, 2, 4, torch.device("cpu")).load_state_dict(rb.state_dict())


def test_sample_host_draws_the_rows_sample_draws() -> None:
    from maskrl.agents import ReplayBuffer

    rb = ReplayBuffer((2, 3), np.bool_, 4, 50, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(9):  # 36 of the 50 rows
        rb.add(rng.random((4, 2, 3)) < 0.5, rng.integers(0, 4, 4), rng.normal(size=4),
               rng.random((4, 2, 3)) < 0.5, rng.random(4) < 0.3, rng.random((4, 4)) < 0.7)  # fmt: skip
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        want, got = rb.sample(16, g1), rb.sample_host(16, g2)
        assert set(got) == set(want)
        for k, v in want.items():
            assert got[k].dtype == v.numpy().dtype and np.array_equal(got[k], v.numpy()), k
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer((1,), np.float32, 2, 5, torch.device("cpu")).sample_host(4, g1)


def test_the_sb3_benchmark_runs_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dqn_vs_sb3", REPO / "benchmarks" / "dqn_vs_sb3.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    impls = ["sb3", "maskrl", "unmasked", "maskrl-torch"]
    args = ["--impls", *impls, "--total-timesteps", "400", "--num-envs", "2"]
    assert bench.main([*args, "--exploration-steps", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for impl in impls[1:]:
        assert f"throughput ratio {impl}/sb3" in text
    res = json.loads(out.read_text())["results"]
    assert set(res) == set(impls)
    assert all(r["steps"] >= 400 and r["sps"] > 0 for r in res.values())
    # Rounds in rotated order: each ratio is of the same round's runs.
    capsys.readouterr()
    args2 = ["--impls", "sb3", "maskrl", "--total-timesteps", "300", "--repeats", "2"]
    assert bench.main([*args2, "--exploration-steps", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.index("sb3 ") < text.index("maskrl ")  # round 1: sb3 first
    assert "(round 2)" in text and "throughput ratio maskrl/sb3" in text
    res = json.loads(out.read_text())["results"]
    m, s = res["maskrl"], res["sb3"]
    assert len(m["rounds"]) == len(s["rounds"]) == 2
    want = [a["sps"] / b["sps"] for a, b in zip(m["rounds"], s["rounds"], strict=True)]
    assert m["ratios"] == pytest.approx(want)
    assert m["median_ratio"] == pytest.approx(float(np.median(want)))
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])


# ----------------------------------------------------------------- the fast path


class _CheckedDQN(DQN):
    """The trainer acting and bootstrapping through the public, checked functions."""

    def _act(self, obs: np.ndarray, mask: np.ndarray, epsilon: float) -> np.ndarray:
        from maskrl.agents import masked_epsilon_greedy

        with torch.no_grad():
            q = self.net(torch.from_numpy(obs).float())[0]
            a = masked_epsilon_greedy(q, torch.from_numpy(mask), epsilon, self.rng.device_gen)
        return a.numpy()

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        import maskrl.agents.dqn_trainer as mod
        from maskrl.agents import dqn_target

        def checked(q_on: Any, q_t: Any, m: Any, r: Any, d: Any, g: float) -> torch.Tensor:
            return dqn_target(q_on, q_t, m, r, d, g, double=q_on is not None)

        saved = mod._dqn_target_unchecked
        mod._dqn_target_unchecked = checked  # type: ignore[assignment]
        try:
            return super().loss(batch)
        finally:
            mod._dqn_target_unchecked = saved


@pytest.mark.parametrize("double", [True, False])
def test_the_fast_path_trains_exactly_as_the_checked_functions(double: bool) -> None:
    # Same seed: same actions, same replay, same weights, bit for bit, through the
    # explore-only steps (no forward), the mixed ones and the greedy ones.
    cfg = dict(num_envs=3, seed=5, double=double, exploration_steps=120, train_freq=1)
    fast, ref = DQN(CORRIDOR, _cfg(**cfg)), _CheckedDQN(CORRIDOR, _cfg(**cfg))
    try:
        fast.learn(300)
        ref.learn(300)
        assert fast.replay is not None and ref.replay is not None
        assert torch.equal(fast.replay.actions, ref.replay.actions)
        assert fast.num_updates == ref.num_updates > 0
        for (k, v), w in zip(fast.net.state_dict().items(), ref.net.state_dict().values(),
                             strict=True):  # fmt: skip
            assert torch.equal(v, w), k
    finally:
        fast.envs.close()
        ref.envs.close()


def test_acting_skips_the_network_when_every_env_explores() -> None:
    agent = DQN(CORRIDOR, _cfg(num_envs=2, learning_starts=10_000, exploration_steps=0,
                               exploration_final_eps=1.0))  # fmt: skip
    calls: list[int] = []
    agent.net.policy_head.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        agent.learn(40)
        assert calls == [] and agent.global_step == 40
        agent.config.exploration_final_eps = 0.0  # every env greedy: one forward a step
        agent.learn(60)
        assert len(calls) == 10
    finally:
        agent.envs.close()


class _EmptyFinalMask(MaskCounter):
    """MaskCounter whose mask is all-invalid from step 2 on (truncated there by a TimeLimit)."""

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        if self.t >= 2:
            info["action_mask"][:] = False
        return info


EMPTY_FINAL = "test/EmptyFinalMask-v0"
if EMPTY_FINAL not in gym.registry:
    gym.register(EMPTY_FINAL, entry_point=_EmptyFinalMask, max_episode_steps=2,
                 kwargs={"end": None})  # fmt: skip


def test_a_truncated_step_with_an_empty_final_mask_is_refused_when_stored() -> None:
    agent = DQN(EMPTY_FINAL, _cfg(learning_starts=10_000, exploration_final_eps=1.0))
    try:
        with pytest.raises(ValueError, match=r"env index 0 was truncated at step 1 with a final"):
            agent.learn(4)
        assert agent.replay is not None and agent.replay.size == 1  # the step was not stored
    finally:
        agent.envs.close()


def test_a_loaded_replay_with_an_unbootstrappable_row_is_refused() -> None:
    from maskrl.agents import ReplayBuffer

    rb = ReplayBuffer((1,), np.float32, 2, 4, torch.device("cpu"))
    m = np.array([[True, False], [False, False], [False, False]])
    o = np.zeros((3, 1), np.float32)
    rb.add(o, np.array([0, 0, 0]), np.zeros(3), o, np.array([False, True, False]), m)
    other = ReplayBuffer((1,), np.float32, 2, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"non-terminal row\(s\) \[2\] whose next mask has no"):
        other.load_state_dict(rb.state_dict())
    assert other.size == 0


def test_progress_bar_redraws_at_its_own_pace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DQN calls back every 4 env steps; the bar must not redraw at each call (it once
    did, through ``set_postfix``: hundreds of redraws a second, a log of ~90 MB per
    4M steps), only at tqdm's ``mininterval`` of a second."""
    args = ["dqn", "--env", BREAKOUT, "--total-timesteps", "1024", "--run-name", "p"]
    args += ["--runs-dir", str(tmp_path), "--eval-episodes", "0", *TINY, "--progress"]
    capsys.readouterr()
    assert train.main(args) == 0
    err = capsys.readouterr().err
    assert "1024/1024" in err  # the bar ran and ended at the last step
    # 256 callbacks; a run of a few seconds redraws a few times (plus the first
    # and the closing draw), far fewer than once per callback.
    assert err.count("\r") < 40, err.count("\r")
