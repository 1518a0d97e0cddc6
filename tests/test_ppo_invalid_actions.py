"""PPO's masking ablation: ``--invalid-actions mask|penalty|none`` and ``--invalid-penalty``.

``mask`` never lets an invalid action reach an env; ``none`` takes them and
counts each one; ``penalty`` adds exactly the penalty per invalid action to the
rollout's rewards; the settings survive ``config.json`` and ``--resume``; bad
settings are one line and exit status 2. Budgets are tiny (a few hundred steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.vector import VectorWrapper
from test_train_cli import assert_one_line_error, events, run_cli
from train_module import train

import maskrl.envs
from maskrl.agents import PPO, PPOConfig
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.config import DEFAULT_INVALID_PENALTY
from maskrl.agents.rollout import collect_rollout
from maskrl.agents.trainer import make_training_env

BREAKOUT = "maskrl/MinAtar-Breakout-v0"  # 6 actions, 3 of them outside its minimal set
KNAPSACK = "maskrl/Knapsack-v0"


def _config(mode: str, **kw: Any) -> PPOConfig:
    return PPOConfig(
        num_envs=4, num_steps=16, num_epochs=1, num_minibatches=1, device="cpu",
        invalid_actions=mode, **kw,
    )  # fmt: skip


class Spy(VectorWrapper):
    """Records every action with the env's true mask of the observation it answered.

    The true mask is the wrapped envs' ``"true_action_mask"`` when they report
    one (InvalidActionPolicy) and ``"action_mask"`` otherwise.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.invalid: list[np.ndarray] = []  # per vector step, (num_envs,) bool
        self.rewards: list[np.ndarray] = []
        self._true: np.ndarray | None = None

    def _keep(self, infos: dict[str, Any]) -> None:
        key = "true_action_mask" if "true_action_mask" in infos else "action_mask"
        self._true = np.array(infos[key], dtype=np.bool_)

    def reset(self, **kw: Any) -> Any:
        obs, infos = self.env.reset(**kw)
        self._keep(infos)
        return obs, infos

    def step(self, actions: Any) -> Any:
        a = np.asarray(actions)
        assert self._true is not None
        self.invalid.append(~self._true[np.arange(len(a)), a])
        out = self.env.step(actions)
        self.rewards.append(np.asarray(out[1], dtype=np.float64))
        self._keep(out[4])
        return out


# ------------------------------------------------------------------------ mask


@pytest.mark.parametrize("env_id", [BREAKOUT, KNAPSACK])
def test_mask_never_passes_an_invalid_action(env_id: str) -> None:
    # check_actions=True: the env itself raises on an invalid action.
    spy = Spy(maskrl.envs.make_vec(env_id, 4, seed=0, check_actions=True))
    agent = PPO(spy, _config("mask"))
    assert not agent.invalid_from_infos
    rates: list[float] = []
    agent.learn(4 * 64, callback=lambda t, m: rates.append(m["invalid_action_rate"]))
    assert len(spy.invalid) == 64 and not np.any(spy.invalid)
    assert rates == [0.0] * 4


def test_mask_builds_the_same_env_as_before() -> None:
    # No wrapper and MinAtar's batched constant-mask path: mode mask costs nothing per step.
    envs = PPO(BREAKOUT, _config("mask")).envs
    assert type(envs).__name__ == "_ConstantMaskInfos"
    assert all(not isinstance(e, maskrl.envs.InvalidActionPolicy) for e in envs.env.envs)
    wrapped = PPO(BREAKOUT, _config("none")).envs
    assert all(isinstance(e, maskrl.envs.InvalidActionPolicy) for e in wrapped.envs)


# ------------------------------------------------------------------------ none


@pytest.mark.parametrize("env_id", [BREAKOUT, KNAPSACK])
def test_none_takes_invalid_actions_and_logs_their_true_count(env_id: str) -> None:
    envs = make_training_env([env_id], 4, seed=0, invalid_actions="none")
    spy = Spy(envs)
    agent = PPO(spy, _config("none"))
    assert agent.invalid_from_infos
    logged: list[float] = []
    rates: list[float] = []

    def cb(t: Any, m: dict[str, float]) -> None:
        logged.append(m["invalid_actions"])
        rates.append(m["invalid_action_rate"])

    agent.learn(4 * 64, callback=cb)
    per_update = np.array(spy.invalid).reshape(4, 16, 4).sum(axis=(1, 2))
    assert logged == per_update.astype(float).tolist()
    assert rates == (per_update / 64).tolist()
    # An untrained policy samples over all actions: Breakout's 3 of 6 are invalid
    # (about half its steps); Knapsack's padded, picked and too-heavy items are most.
    assert np.mean(rates) > 0.3
    # The stored masks are all-valid: counted against them it would read 0.
    assert bool(agent._buffer.masks.all())  # type: ignore[union-attr]


def test_an_unwrapped_env_in_mode_none_is_refused() -> None:
    agent = PPO(maskrl.envs.make_vec(KNAPSACK, 4, seed=0), _config("none"))
    with pytest.raises(ValueError, match=r"reported no 'invalid_action'.*InvalidActionPolicy"):
        agent.learn(64)


# --------------------------------------------------------------------- penalty


def _one_rollout(env_id: str, penalty: float) -> tuple[PPO, Spy]:
    spy = Spy(make_training_env([env_id], 4, 0, invalid_actions="penalty", invalid_penalty=penalty))
    agent = PPO(spy, _config("penalty", invalid_penalty=penalty))
    buf, state = agent._ensure_rollout_state()
    collect_rollout(spy, buf, state, agent._act, agent._value, agent.episode_stats, True)
    return agent, spy


@pytest.mark.parametrize("env_id", [KNAPSACK, BREAKOUT])
def test_penalty_adds_exactly_r_per_invalid_action(env_id: str) -> None:
    r = -0.375  # exact in float32
    with_penalty, spy = _one_rollout(env_id, r)
    free, _ = _one_rollout(env_id, 0.0)
    a, b = with_penalty._buffer, free._buffer
    assert a is not None and b is not None
    # The penalty changes no transition (an invalid action is the same no-op), so
    # the same seeds give the same actions.
    assert torch.equal(a.actions, b.actions)
    invalid = torch.from_numpy(np.array(spy.invalid))  # [T, N]
    assert 0 < int(invalid.sum()) < invalid.numel()
    diff = a.rewards - b.rewards
    assert torch.equal(diff, torch.where(invalid, torch.tensor(r), torch.tensor(0.0)))
    assert with_penalty._ensure_rollout_state()[1].invalid_actions == int(invalid.sum())
    if env_id == KNAPSACK:  # not stepped: the invalid step's reward is the penalty alone
        assert bool((a.rewards[invalid] == r).all())


def test_penalty_defaults_to_the_documented_reward() -> None:
    assert PPOConfig(invalid_actions="penalty").penalty_reward == DEFAULT_INVALID_PENALTY == -0.1
    assert PPOConfig(invalid_actions="penalty", invalid_penalty=-2).penalty_reward == -2.0
    assert PPOConfig().penalty_reward == PPOConfig(invalid_actions="none").penalty_reward == 0.0


# ------------------------------------------------------------ config and CLI


TINY = [
    "--num-envs", "4", "--num-steps", "32", "--num-epochs", "1", "--num-minibatches", "1",
    "--device", "cpu", "--no-progress", "--torch-threads", "1",
]  # fmt: skip


def test_settings_round_trip_through_config_json_and_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["ppo", "--env", KNAPSACK, "--invalid-actions", "penalty", "--invalid-penalty", "-0.25"]
    args += ["--total-timesteps", "256", "--eval-episodes", "4", *TINY]
    assert train.main([*args, "--run-name", "pen", "--runs-dir", str(runs)]) == 0
    run_dir = runs / "pen"
    cfg = json.loads((run_dir / "config.json").read_text())["ppo"]
    assert (cfg["invalid_actions"], cfg["invalid_penalty"]) == ("penalty", -0.25)
    # The final evaluation plays without the mask, as the policy trained.
    ev = json.loads((run_dir / "eval.json").read_text())["eval"]
    assert ev["invalid_action_rate"] > 0
    rates = [e.value for e in events(run_dir).Scalars("charts/invalid_action_rate")]
    assert len(rates) == 2 and min(rates) > 0

    resume = ["ppo", "--resume", str(run_dir), "--total-timesteps", "512", "--no-progress"]
    assert train.main([*resume, "--eval-episodes", "0", "--device", "cpu"]) == 0
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["global_step"] == 512
    assert (ckpt["config"]["invalid_actions"], ckpt["config"]["invalid_penalty"]) == (
        "penalty",
        -0.25,
    )
    agent = PPO.load(run_dir / "checkpoint.pt", device="cpu")
    assert agent.invalid_from_infos and agent.config.penalty_reward == -0.25
    rates = [e.value for e in events(run_dir).Scalars("charts/invalid_action_rate")]
    assert len(rates) == 4 and min(rates) > 0  # the resumed run still counts them


def test_bad_settings_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ppo = ["ppo", "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--device", "cpu"]
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        ([*ppo, "--invalid-actions", "maybe"], ("--invalid-actions", "'maybe'", "'penalty'")),
        ([*ppo, "--invalid-penalty", "-1"], ("--invalid-penalty", "only to --invalid-actions")),
        (
            [*ppo, "--invalid-actions", "none", "--invalid-penalty", "-1"],
            ("--invalid-penalty", "not 'none'"),
        ),
        (
            [*ppo, "--invalid-actions", "penalty", "--invalid-penalty", "nan"],
            ("--invalid-penalty", "finite"),
        ),
        (
            [*ppo, "--invalid-actions", "none", "--env-backend", "torch"],
            ("--invalid-actions", "--env-backend numpy"),
        ),
        (
            [*ppo, "--invalid-actions", "none", "--preset", "minatar"],
            ("--invalid-actions", "--env-backend numpy"),
        ),
        (
            [
                *ppo,
                "--invalid-actions",
                "penalty",
                "--env",
                f"{BREAKOUT},maskrl/MinAtar-Asterix-v0",
            ],
            ("--invalid-actions penalty", "one single-game --env"),
        ),
    ]
    for argv, needles in cases:
        assert train.main(argv) == 2, argv
        captured = capsys.readouterr()
        assert_one_line_error(captured.err, *needles)
    assert not list((tmp_path / "runs").glob("*/checkpoint.pt"))


def test_bad_setting_in_a_real_process_and_experts_refuse_the_flag(tmp_path: Path) -> None:
    res = run_cli(["ppo", "--invalid-actions", "maybe", "--runs-dir", str(tmp_path)], tmp_path)
    assert res.returncode == 2
    assert_one_line_error(res.stderr, "--invalid-actions")
    # Actor-Mimic experts are masked teachers: the flag is not theirs.
    ex = ["experts", "--env", BREAKOUT, "--run-name", "x", "--invalid-actions", "none"]
    res = run_cli([*ex, "--runs-dir", str(tmp_path)], tmp_path)
    assert res.returncode == 2 and "unrecognized arguments: --invalid-actions" in res.stderr


def test_mimic_config_has_no_invalid_actions() -> None:
    from maskrl.agents.mimic import MimicConfig

    assert not hasattr(MimicConfig(), "invalid_actions")


# ------------------------------------------------------------ make_vec's hook


def test_make_vec_wraps_each_env_before_seeding_it() -> None:
    from functools import partial

    plain = maskrl.envs.make_vec(KNAPSACK, 3, seed=5)
    wrap = partial(maskrl.envs.InvalidActionPolicy, mode="none")
    wrapped = maskrl.envs.make_vec(KNAPSACK, 3, seed=5, wrapper=wrap)
    assert all(isinstance(e, maskrl.envs.InvalidActionPolicy) for e in wrapped.envs)
    obs_a, infos_a = plain.reset()
    obs_b, infos_b = wrapped.reset()
    for k in obs_a:  # the same seeded instances
        np.testing.assert_array_equal(obs_a[k], obs_b[k])
    np.testing.assert_array_equal(infos_b["true_action_mask"], infos_a["action_mask"])
    assert bool(infos_b["action_mask"].all()) and not bool(infos_a["action_mask"].all())
    with pytest.raises(ValueError, match="wrapper does not apply to backend='torch'"):
        maskrl.envs.make_vec(BREAKOUT, 2, backend="torch", wrapper=wrap)


def test_an_expert_saved_before_the_settings_existed_still_matches(tmp_path: Path) -> None:
    from maskrl.agents.runner import _expert_settings_differ

    ppo = PPOConfig().to_dict()
    del ppo["invalid_actions"], ppo["invalid_penalty"]
    saved = {"ppo": ppo, "run": {"total_timesteps": 1000, "eval_episodes": 5}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert _expert_settings_differ(tmp_path, PPOConfig(), 1000, 5) == []
