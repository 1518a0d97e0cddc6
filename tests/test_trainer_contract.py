"""The trainer contract: the abstract base, the registry, one generic load, the shared
run harness (a dummy third trainer through it), the policy state the rollout carries,
the experts command's defaults, and the config classes in one module.

Budgets are tiny: 4 envs x 16 steps per update.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from train_module import train

from maskrl.agents import (
    PPO,
    ActorMimic,
    OnPolicyTrainer,
    PPOConfig,
    TrainerSpec,
    get_trainer,
    load_policy,
    load_trainer,
    register_trainer,
    trainer_names,
    unregister_trainer,
)
from maskrl.agents.base import read_trainer_checkpoint
from maskrl.agents.config import TrainerConfig
from maskrl.agents.policy import MaskedPolicy
from maskrl.agents.registry import checkpoint_formats, spec_for_format
from maskrl.agents.rollout import (
    EpisodeStats,
    RolloutBuffer,
    collect_rollout,
    index_obs,
    start_rollouts,
)
from maskrl.agents.trainer import make_adam, make_training_env, optimize_minibatches

BREAKOUT = "maskrl/MinAtar-Breakout-v0"
TINY = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1"]
TINY += ["--device", "cpu", "--no-progress"]
BATCH = 4 * 16


# ------------------------------------------------------------- the abstract base


def test_the_abstract_members_are_the_contract() -> None:
    assert OnPolicyTrainer.__abstractmethods__ == {"FORMAT", "update", "state_dict", "load"}
    for name in OnPolicyTrainer.__abstractmethods__:
        assert inspect.getdoc(getattr(OnPolicyTrainer, name)), name


def test_a_trainer_missing_an_abstract_member_is_refused() -> None:
    class NoUpdate(OnPolicyTrainer):
        FORMAT = "test.no-update/1"

        def state_dict(self) -> dict[str, Any]:
            return {}

        @classmethod
        def load(cls, path: Any, device: str = "auto", data_parallel: Any = None) -> Any:
            raise NotImplementedError

    with pytest.raises(TypeError, match="update"):
        NoUpdate(PPOConfig(), None, None, None, torch.device("cpu"))  # type: ignore[abstract,arg-type]

    class NoFormat(OnPolicyTrainer):
        def update(self, buffer: Any) -> dict[str, float]:
            return {}

        def state_dict(self) -> dict[str, Any]:
            return {}

        @classmethod
        def load(cls, path: Any, device: str = "auto", data_parallel: Any = None) -> Any:
            raise NotImplementedError

    with pytest.raises(TypeError, match="FORMAT"):
        NoFormat(PPOConfig(), None, None, None, torch.device("cpu"))  # type: ignore[abstract,arg-type]
    with pytest.raises(TypeError):
        OnPolicyTrainer(PPOConfig(), None, None, None, torch.device("cpu"))  # type: ignore[abstract,arg-type]


def test_ppo_and_actor_mimic_follow_the_contract() -> None:
    assert issubclass(PPO, OnPolicyTrainer) and not PPO.__abstractmethods__
    assert issubclass(ActorMimic, OnPolicyTrainer) and not ActorMimic.__abstractmethods__
    agent = PPO(BREAKOUT, PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu"))
    try:
        # The base constructor's state, set by PPO through super().__init__.
        assert agent.net is agent.policy.net and agent.rng is agent.policy.rng
        assert (agent.global_step, agent.num_updates, agent.num_envs_local) == (0, 0, 2)
        assert agent.envs.num_envs == 2
    finally:
        agent.envs.close()


# ------------------------------------------------------------------- the registry


def test_registry_lookups() -> None:
    from maskrl.agents.mimic import MimicConfig

    assert trainer_names()[:2] == ["ppo", "mimic"]
    ppo, mimic = get_trainer("ppo"), get_trainer("mimic")
    assert (ppo.trainer_class, ppo.config_class) == (PPO, PPOConfig)
    assert (mimic.trainer_class, mimic.config_class) == (ActorMimic, MimicConfig)
    assert ppo.checkpoint_format == "maskrl.ppo/2"
    assert mimic.checkpoint_format == "maskrl.mimic/1"
    assert spec_for_format("maskrl.ppo/1") is ppo
    assert spec_for_format("maskrl.ppo/2") is ppo
    assert spec_for_format("maskrl.mimic/1") is mimic
    assert spec_for_format("maskrl.nothing/1") is None
    # The policy module's list of readable formats is the registry's.
    import maskrl.agents.policy as policy_module

    assert checkpoint_formats() == (
        "maskrl.ppo/1",
        "maskrl.ppo/2",
        "maskrl.mimic/1",
        "maskrl.dqn/1",
    )
    assert policy_module.CHECKPOINT_FORMATS == checkpoint_formats()
    with pytest.raises(ValueError, match="no trainer named .nope.; registered: ppo, mimic, dqn"):
        get_trainer("nope")


def test_a_name_or_format_already_taken_is_refused() -> None:
    ppo = get_trainer("ppo")
    with pytest.raises(ValueError, match="'ppo' is already registered"):
        register_trainer(ppo)
    with pytest.raises(
        ValueError, match=r"\['maskrl.ppo/1', 'maskrl.ppo/2'\] are already read by 'ppo'"
    ):
        register_trainer(dataclasses.replace(ppo, name="ppo-again"))
    assert trainer_names()[:2] == ["ppo", "mimic"]


def test_load_trainer_refuses_an_unknown_format(tmp_path: Path) -> None:
    from maskrl.agents.checkpoint import save_checkpoint

    save_checkpoint({"format": "someone.else/3"}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="format 'someone.else/3', which no registered trainer"):
        load_trainer(tmp_path / "c.pt")


def test_load_trainer_reads_a_ppo_and_an_actor_mimic_checkpoint(tmp_path: Path) -> None:
    args = ["experts", "--env", BREAKOUT, "--total-timesteps", str(BATCH), "--run-name", "ex"]
    assert train.main([*args, "--runs-dir", str(tmp_path), "--eval-episodes", "1", *TINY]) == 0
    expert_ckpt = tmp_path / "ex" / "MinAtar-Breakout-v0" / "checkpoint.pt"
    ppo = load_trainer(expert_ckpt, device="cpu")
    assert type(ppo) is PPO and ppo.global_step == BATCH
    saved = read_trainer_checkpoint(expert_ckpt)
    for k, v in saved["model"].items():
        assert torch.equal(ppo.net.state_dict()[k], v), k
    assert ppo.optimizer.state_dict()["state"].keys() == saved["optimizer"]["state"].keys()

    mimic = ["mimic", "--experts", str(tmp_path / "ex"), "--total-timesteps", str(BATCH)]
    mimic += ["--run-name", "st", "--runs-dir", str(tmp_path), "--eval-episodes", "0"]
    assert train.main([*mimic, *TINY]) == 0
    student_ckpt = tmp_path / "st" / "checkpoint.pt"
    student = load_trainer(student_ckpt, device="cpu")
    try:
        assert type(student) is ActorMimic and student.global_step == BATCH
        saved = read_trainer_checkpoint(student_ckpt)
        for k, v in saved["model"].items():
            assert torch.equal(student.net.state_dict()[k], v), k
        for k, v in saved["feature_heads"].items():
            assert torch.equal(student.feature_heads.state_dict()[k], v), k
    finally:
        student.envs.close()
    # The run's config.json as the shared harness writes it for Actor-Mimic.
    cfg = json.loads((tmp_path / "st" / "config.json").read_text())
    assert cfg["experts"] == str((tmp_path / "ex").absolute()) and cfg["finetune_ppo"] == 0
    # A later fine-tune's settings: PPO's defaults at a tenth of their learning rate.
    assert cfg["finetune_config"]["learning_rate"] == pytest.approx(PPOConfig().learning_rate / 10)
    assert set(cfg) == {"run", "mimic", "experts", "finetune_ppo", "finetune_config", "device"}


# ------------------------------------------------- a third trainer, registered only


@dataclass
class DummyConfig(TrainerConfig):
    """A trainer config with one setting of its own."""

    value_target: float = dataclasses.field(
        default=1.0, metadata={"help": "what the value head regresses onto"}
    )


class DummyTrainer(OnPolicyTrainer):
    """Regresses the value head onto a constant: the smallest trainer of the contract."""

    FORMAT = "test.dummy/1"

    def __init__(self, env_ids: list[str], config: DummyConfig) -> None:
        config.validate()
        device = torch.device("cpu")
        envs = make_training_env(env_ids, config.num_envs, config.seed, "numpy", device)
        policy = MaskedPolicy.build(
            envs.single_observation_space, envs.single_action_space, env_ids, device,
            config.seed, obs_layout="CHW",
        )  # fmt: skip
        optimizer = make_adam(policy.net.parameters(), config.learning_rate, config.adam_eps)
        super().__init__(config, policy, optimizer, envs, device)
        self.updates_seen: list[int] = []

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        c = self.config
        T, N = c.num_steps, c.num_envs
        obs = index_obs(buffer.obs, slice(0, T))
        assert isinstance(obs, torch.Tensor)
        flat = obs.reshape((T * N,) + obs.shape[2:])

        def loss_fn(mb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            loss = ((self.net(flat[mb])[1] - c.value_target) ** 2).mean()
            return loss, {"value": loss.detach()}

        params = [p for p in self.net.parameters() if p.requires_grad]
        out = optimize_minibatches(
            loss_fn, self.optimizer, params, T * N, c.num_minibatches, c.num_epochs,
            c.max_grad_norm, self.rng.device_gen, self.device,
        )  # fmt: skip
        out.pop("epochs")
        self.updates_seen.append(self.global_step)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "config": self.config.to_dict(),
            **self.policy.checkpoint_entries(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "rng": self.rng.state_dict(),
        }

    @classmethod
    def load(cls, path: Any, device: str = "auto", data_parallel: Any = None) -> DummyTrainer:
        ckpt = read_trainer_checkpoint(path)
        if ckpt.get("format") != cls.FORMAT:
            raise ValueError(f"checkpoint {path} is not a dummy checkpoint")
        trainer = cls(list(ckpt["env_ids"]), DummyConfig.from_dict(dict(ckpt["config"])))
        trainer.net.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.global_step = int(ckpt["global_step"])
        trainer.num_updates = int(ckpt["num_updates"])
        trainer.rng.load_state_dict(ckpt["rng"])
        return trainer


@pytest.fixture
def dummy_registered() -> Any:
    spec = register_trainer(
        TrainerSpec(
            name="dummy",
            trainer_class=DummyTrainer,
            config_class=DummyConfig,
            build=lambda ctx: DummyTrainer(ctx.run.env_ids, ctx.config),
            record=lambda trainer, ctx: {"note": "dummy"},
        )
    )
    try:
        yield spec
    finally:
        unregister_trainer("dummy")
    assert "dummy" not in trainer_names()


def test_a_registered_third_trainer_runs_through_the_harness(
    tmp_path: Path, dummy_registered: TrainerSpec
) -> None:
    from maskrl.agents.runner import RunConfig, run_trainer

    cfg = DummyConfig(num_envs=4, num_steps=16, num_minibatches=2, num_epochs=1, device="cpu")
    cfg.value_target = 3.0
    run = RunConfig(
        env=BREAKOUT, total_timesteps=2 * BATCH, run_name="d", runs_dir=str(tmp_path),
        eval_episodes=1, progress=False,
    )  # fmt: skip
    summary = run_trainer("dummy", run, cfg)
    run_dir = tmp_path / "d"
    assert summary["global_step"] == 2 * BATCH and summary["eval"]["episodes"] == 1
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["dummy"]["value_target"] == 3.0 and saved["note"] == "dummy"
    assert saved["run"]["total_timesteps"] == 2 * BATCH
    assert json.loads((run_dir / "eval.json").read_text())["global_step"] == 2 * BATCH
    assert read_trainer_checkpoint(run_dir / "checkpoint.pt")["format"] == "test.dummy/1"

    # Resume it to a larger total: the harness loads it through the registry.
    again = RunConfig(resume=str(run_dir), total_timesteps=4 * BATCH, eval_episodes=0)
    again.progress = False
    summary = run_trainer("dummy", again, DummyConfig(device="cpu"))
    assert summary["global_step"] == 4 * BATCH and summary["steps_trained"] == 2 * BATCH

    # One generic load, and the policy alone, of the registered trainer's checkpoint.
    trainer = load_trainer(run_dir / "checkpoint.pt")
    try:
        assert type(trainer) is DummyTrainer
        assert trainer.global_step == 4 * BATCH and trainer.config.value_target == 3.0
        policy = load_policy(run_dir / "checkpoint.pt", device="cpu")
        for k, v in trainer.net.state_dict().items():
            assert torch.equal(policy.net.state_dict()[k], v), k
        # It learned what its update teaches: values nearer the target than at the start.
        fresh = DummyTrainer([BREAKOUT], dataclasses.replace(cfg))
        obs, _ = trainer.envs.reset(seed=0)
        with torch.no_grad():
            err = [
                float((t.net(torch.as_tensor(obs))[1] - 3.0).abs().mean()) for t in (trainer, fresh)
            ]
        fresh.envs.close()
        assert err[0] < err[1]
    finally:
        trainer.envs.close()


def test_a_registered_trainer_gets_its_own_train_py_subcommand(
    tmp_path: Path, dummy_registered: TrainerSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["dummy", "--env", BREAKOUT, "--total-timesteps", str(2 * BATCH), *TINY]
    args += ["--run-name", "c", "--runs-dir", str(tmp_path), "--eval-episodes", "0"]
    assert train.main([*args, "--value-target", "2.5"]) == 0
    run_dir = tmp_path / "c"
    assert json.loads((run_dir / "config.json").read_text())["dummy"]["value_target"] == 2.5
    assert f"run folder: {run_dir}" in capsys.readouterr().out
    again = ["dummy", "--resume", str(run_dir), "--total-timesteps", str(3 * BATCH)]
    assert train.main([*again, "--no-progress", "--eval-episodes", "0"]) == 0
    assert read_trainer_checkpoint(run_dir / "checkpoint.pt")["global_step"] == 3 * BATCH
    # A resume keeps the saved settings, as for ppo and mimic.
    capsys.readouterr()
    assert train.main([*again, "--value-target", "1"]) == 2
    assert "cannot change on resume: --value-target" in capsys.readouterr().err


def test_an_unregistered_trainer_has_no_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        train.main(["dummy", "--env", BREAKOUT])
    assert e.value.code == 2
    assert "invalid choice: 'dummy'" in capsys.readouterr().err


# --------------------------------------------------------- the policy state


class _Counter(gym.Env[np.ndarray, np.int64]):
    """Observation: the step within the episode; it ends after ``length`` steps
    (terminated), or runs on until a TimeLimit truncates it (``length=None``)."""

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0, 1000, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {"action_mask": np.array([True, True])}

    def step(self, action: Any) -> Any:
        self.t += 1
        done = self.length is not None and self.t >= self.length
        info = {"action_mask": np.array([True, True])}
        return np.array([float(self.t)], np.float32), 1.0, done, False, info


def test_the_rollout_carries_the_policy_state_and_resets_it_at_episode_ends() -> None:
    # env 0 terminates every 3 steps, env 1 is truncated every 2 steps, env 2 never ends.
    envs = SyncVectorEnv(
        [
            lambda: _Counter(3),
            lambda: gym.wrappers.TimeLimit(_Counter(None), 2),
            lambda: _Counter(None),
        ],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    T, N = 4, 3
    buf = RolloutBuffer(envs.single_observation_space, 2, (), T, N, torch.device("cpu"))
    state = start_rollouts(envs, buf, seed=0)
    # The state: (steps seen this episode [N], a constant tag [N, 1]) -- a tuple of tensors.
    state.policy_state = (torch.zeros(N), torch.full((N, 1), 7.0))
    seen: list[torch.Tensor] = []
    final_states: list[tuple[list[float], list[float]]] = []

    def act(obs: Any, mask: torch.Tensor, s: Any) -> Any:
        seen.append(s[0].clone())
        # The state counts the observations of the episode: it matches the observation.
        assert torch.equal(s[0], obs[:, 0])
        z = torch.zeros(N)
        return torch.zeros(N, dtype=torch.int64), z, z, (s[0] + 1, s[1])

    def value(obs: Any, s: Any) -> torch.Tensor:
        final_states.append((obs[:, 0].tolist(), s[0].tolist()))
        return torch.zeros(obs.shape[0])

    stats = EpisodeStats()
    collect_rollout(envs, buf, state, act, value, stats, stateful=True)
    # By hand: env 0 counts 0 1 2 | 0; env 1 counts 0 1 | 0 1; env 2 counts 0 1 2 3.
    assert torch.stack(seen).tolist() == [[0, 0, 0], [1, 1, 1], [2, 0, 2], [0, 1, 3]]
    assert torch.equal(buf.policy_state[0], torch.zeros(N))  # the state at the rollout's start
    # env 1's truncated episodes: the final observation (2) is valued with the state
    # before the reset (2); then the bootstrap value of the observations after step 3.
    assert final_states == [([2.0], [2.0]), ([2.0], [2.0]), ([1.0, 0.0, 4.0], [1, 0, 4])]
    assert state.policy_state[0].tolist() == [1, 0, 4]
    # Every tensor of the state is reset, in the rows of the envs whose episode ended only.
    assert state.policy_state[1].tolist() == [[0.0], [0.0], [7.0]]
    # The next rollout starts from the carried state, and stores it.
    seen.clear()
    buf.roll_over()
    collect_rollout(envs, buf, state, act, value, stats, stateful=True)
    assert buf.policy_state[0].tolist() == [1, 0, 4]
    assert torch.stack(seen).tolist() == [[1, 0, 4], [2, 1, 5], [0, 0, 6], [1, 1, 7]]
    assert stats.lengths == [2, 3, 2, 3, 2, 2]  # the episodes the rollouts ended, in order
    envs.close()


def test_the_torch_backend_rollout_resets_the_state_where_episodes_end() -> None:
    N, T = 8, 64
    envs = make_training_env([BREAKOUT], N, 0, "torch", torch.device("cpu"))
    n = int(envs.single_action_space.n)
    buf = RolloutBuffer(envs.single_observation_space, n, (), T, N, torch.device("cpu"))
    state = start_rollouts(envs, buf, seed=0)
    state.policy_state = torch.zeros(N)
    seen: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(0)

    def act(obs: Any, mask: torch.Tensor, s: torch.Tensor) -> Any:
        seen.append(s.clone())
        logits = torch.where(mask, torch.rand(mask.shape, generator=gen), -1.0)
        z = torch.zeros(N)
        return logits.argmax(-1), z, z, s + 1

    collect_rollout(
        envs, buf, state, act, lambda o, s: torch.zeros(N), EpisodeStats(), stateful=True
    )
    done = (buf.terminated + buf.truncated).bool()
    assert bool(done.any())  # Breakout under random play ends episodes within 64 steps
    expect = torch.zeros(N)
    for t in range(T):
        assert torch.equal(seen[t], expect), t
        expect = torch.where(done[t], 0.0, expect + 1)
    assert torch.equal(state.policy_state, expect)
    envs.close()


def test_a_feedforward_rollout_is_unchanged_by_the_stateful_path() -> None:
    """PPO's own rollout (stateful, state None) fills the buffer as the plain call does."""
    cfg = PPOConfig(num_envs=4, num_steps=16, num_minibatches=2, device="cpu", seed=3)
    bufs = []
    for stateful in (False, True):
        agent = PPO(BREAKOUT, dataclasses.replace(cfg))
        buf, state = agent._ensure_rollout_state()
        assert state.policy_state is None
        if stateful:
            collect_rollout(agent.envs, buf, state, agent.act, agent.value, agent.episode_stats,
                            stateful=True)  # fmt: skip
        else:
            collect_rollout(agent.envs, buf, state, agent._act, agent._value, agent.episode_stats)
        assert buf.policy_state is None and state.policy_state is None
        bufs.append((buf.actions.clone(), buf.logprobs.clone(), buf.rewards.clone()))
        agent.envs.close()
    for a, b in zip(*bufs, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------- experts defaults, config module


def test_the_experts_flags_default_to_the_configs_defaults() -> None:
    from maskrl.agents.config import ExpertsConfig
    from maskrl.agents.runner import train_experts

    ns = train.build_parser().parse_args(["experts", "--env", BREAKOUT, "--run-name", "x"])
    for f in dataclasses.fields(ExpertsConfig):
        if not f.metadata.get("required"):
            assert getattr(ns, f.name) == f.default, f.name
    for f in dataclasses.fields(PPOConfig):
        if f.name not in ("invalid_actions", "invalid_penalty", "flicker"):  # ppo's alone
            assert getattr(ns, f.name) == f.default, f.name
    # The library call's defaults are the same values.
    params = inspect.signature(train_experts).parameters
    for name in ("runs_dir", "eval_episodes", "progress", "checkpoint_every"):
        assert params[name].default == getattr(ExpertsConfig(), name), name
    # Before, --eval-episodes defaulted to 50 in the parser and nowhere else.
    assert ExpertsConfig().eval_episodes == 50 and ExpertsConfig().total_timesteps == 1_000_000


def test_the_config_classes_live_in_one_module_and_keep_their_old_paths() -> None:
    import maskrl.agents.config as config
    from maskrl.agents import distributed, evaluation, mimic, mimic_losses, runner

    assert mimic.MimicConfig is config.MimicConfig
    assert runner.RunConfig is config.RunConfig
    assert distributed.DistConfig is config.DistConfig
    assert mimic.TOKENS_ATTENTION_LAYERS == config.TOKENS_ATTENTION_LAYERS == 2
    assert mimic_losses.MIN_TAU == config.MIN_TAU == 1e-4
    assert evaluation.MAX_EPISODES == config.MAX_EPISODES
    assert runner.DEFAULT_TOTAL_TIMESTEPS == config.DEFAULT_TOTAL_TIMESTEPS
    assert runner.check_run_name is config.check_run_name
    for cls in (config.PPOConfig, config.MimicConfig, config.RunConfig, config.DistConfig):
        assert cls.__module__ == "maskrl.agents.config"
