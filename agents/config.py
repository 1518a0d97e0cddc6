"""Configuration dataclasses.

Each field carries its help text in ``metadata["help"]``; ``train.py`` builds
its command line from these, so ``--help`` documents every flag and there is
one source of truth for defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class PPOConfig:
    """Masked PPO hyperparameters.

    The defaults are the ``fast`` preset: settings chosen for return per
    second of wall time on a small CPU (32 envs x 64 steps, 3 epochs of 4
    minibatches of 512, learning rate 1e-3); ``PRESETS["reference"]`` holds the
    settings of the sb3-contrib comparison (8 envs x 128 steps, 4 epochs of 4
    minibatches, 2.5e-4). ``docs/benchmarks.md`` has the measurements.

    ``batch_size = num_envs * num_steps`` and ``minibatch_size = batch_size //
    num_minibatches`` are derived, never set: :meth:`validate` rejects a batch
    that ``num_minibatches`` does not divide.
    """

    num_envs: int = _f(32, "parallel environments (vector env slots)")
    num_steps: int = _f(64, "steps per environment per rollout")
    num_epochs: int = _f(3, "passes over each rollout in the update")
    num_minibatches: int = _f(4, "minibatches per epoch; must divide num_envs * num_steps")
    learning_rate: float = _f(1e-3, "Adam learning rate")
    anneal_lr: bool = _f(False, "decay the learning rate linearly to 0 over total_timesteps")
    gamma: float = _f(0.99, "discount factor")
    gae_lambda: float = _f(0.95, "GAE lambda")
    clip_coef: float = _f(0.1, "PPO ratio clipping range")
    clip_vloss: bool = _f(False, "clip the value loss around the rollout's values")
    norm_adv: bool = _f(True, "normalise advantages per minibatch")
    ent_coef: float = _f(0.01, "entropy bonus (entropy over valid actions only)")
    vf_coef: float = _f(0.5, "value loss weight")
    reward_scale: float = _f(
        1.0,
        "multiply rewards by this before GAE (the value net learns scaled returns; "
        "logged returns stay raw); e.g. 0.01 for rewards in the hundreds",
    )
    max_grad_norm: float = _f(0.5, "gradient norm clipping")
    target_kl: float | None = _f(
        None, "stop the epoch loop once approx-KL exceeds this (None: never)"
    )
    adam_eps: float = _f(1e-5, "Adam epsilon")
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    seed: int = _f(
        1,
        "seed for torch (action sampling, minibatches) and the environments (env i gets seed + i)",
    )
    cpu_rollout_tuning: bool = _f(
        True,
        "on a CPU, run the rollout's small forward passes single-threaded without oneDNN "
        "(faster at that batch size; the update keeps torch's settings)",
    )
    torch_threads: int | None = _f(
        None,
        "CPU threads for torch (None: leave torch's default); 1 is often fastest for small nets",
    )

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field for an impossible config."""
        for name in ("num_envs", "num_steps", "num_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} does not divide the batch "
                f"num_envs * num_steps = {self.num_envs} * {self.num_steps} = {self.batch_size}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.reward_scale <= 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.clip_coef <= 0:
            raise ValueError(f"clip_coef must be > 0, got {self.clip_coef}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PPOConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PPOConfig field(s): {sorted(unknown)}")
        return cls(**d)


#: Named settings for ``train.py ppo --preset NAME`` (flags given explicitly win).
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: chosen for return per second of wall time. Against the
    # reference settings they step ~2x faster (more envs amortise each policy
    # step; 3 epochs of 512-sample minibatches) and learn faster per step
    # (learning rate 1e-3), measured on MinAtar Breakout and SpaceInvaders.
    "fast": dict(num_envs=32, num_steps=64, num_epochs=3, num_minibatches=4, learning_rate=1e-3),
    # The settings of the sb3-contrib MaskablePPO comparison (and of CleanRL's
    # and the MinAtar paper's PPO baselines): identical on both sides.
    "reference": dict(
        num_envs=8,
        num_steps=128,
        num_epochs=4,
        num_minibatches=4,
        learning_rate=2.5e-4,
        anneal_lr=False,
        gamma=0.99,
        gae_lambda=0.95,
        clip_coef=0.1,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
    ),
}
