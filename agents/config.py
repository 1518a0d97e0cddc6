"""Configuration dataclasses, all in one module.

:class:`TrainerConfig` (what every on-policy trainer shares), :class:`PPOConfig`,
:class:`MimicConfig` (Actor-Mimic), :class:`RunConfig` (what to train on and
where the run goes), :class:`ExpertsConfig` (``train.py experts``) and
:class:`DistConfig` (torchrun). The modules that use them re-export them under
their old paths (``maskrl.agents.mimic.MimicConfig``,
``maskrl.agents.runner.RunConfig``, ``maskrl.agents.distributed.DistConfig``).

Each field carries its help text in ``metadata["help"]``; ``train.py`` builds
its command line from these, so ``--help`` documents every flag and there is
one source of truth for defaults. This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

#: Largest accepted seed: env slot ``i`` is seeded with ``seed + i``, and
#: Gymnasium / numpy seeds must stay below 2**32.
MAX_SEED = 2**31 - 1

#: The modes of ``--invalid-actions`` (as :data:`maskrl.envs.INVALID_ACTION_MODES`).
INVALID_ACTION_MODES: tuple[str, ...] = ("mask", "penalty", "none")
#: The reward of an invalid action under ``--invalid-actions penalty`` when
#: ``--invalid-penalty`` is not given: a tenth of the smallest reward of a
#: useful step in maskrl's envs (a MinAtar point, a Knapsack item of value 1),
#: so the penalty discourages an invalid action without swamping the returns.
DEFAULT_INVALID_PENALTY = -0.1
#: Units of recurrent PPO's LSTM when ``lstm_hidden`` (``--lstm-hidden``) is not given.
DEFAULT_LSTM_HIDDEN = 128
#: Most episodes (per game) one evaluation plays.
MAX_EPISODES = 10_000_000


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


class SavedConfig:
    """``to_dict`` / ``from_dict`` for a trainer's config dataclass (config.json, checkpoints)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build from a saved dict (config.json, a checkpoint); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
        cfg = cls(**d)
        check_types(cfg)
        return cfg


@dataclass
class TrainerConfig(SavedConfig):
    """Settings every on-policy trainer shares (PPO, Actor-Mimic): batch, optimiser, device, QAT.

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
    max_grad_norm: float = _f(0.5, "gradient norm clipping")
    adam_eps: float = _f(1e-5, "Adam epsilon")
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    seed: int = _f(
        1,
        "seed of the initial weights, action sampling, minibatches and the environments "
        "(env i gets seed + i)",
    )
    cpu_rollout_tuning: bool = _f(
        True,
        "on a CPU, run the rollout's small forward passes single-threaded without oneDNN "
        "(faster at that batch size; restored afterwards)",
    )
    torch_threads: int | None = _f(
        None,
        "CPU threads for torch while training (None: leave torch's default); restored "
        "afterwards; 1 is often fastest for small nets, and on a busy machine",
    )
    qat: bool = _f(
        False,
        "quantization-aware training: fake-quantize every layer's weights and inputs "
        "(straight-through gradients), so the policy converts to int8",
    )
    qat_bits: int = _f(8, "bits of the fake quantization (2..8)")
    qat_start_after: int = _f(
        0, "env steps of float training before fake quantization starts (QuaRL's delay)"
    )

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field (and its flag) for an impossible config."""
        check_types(self)
        for name in ("num_envs", "num_steps", "num_epochs", "num_minibatches"):
            _check(self, name, getattr(self, name) >= 1, ">= 1")
        _check(self, "num_envs", self.num_envs <= 1_000_000, "<= 1,000,000")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} (--num-minibatches) does not divide the batch "
                f"num_envs * num_steps = {self.num_envs} * {self.num_steps} = {self.batch_size}"
            )
        _check(self, "learning_rate", 0 < self.learning_rate <= 1, "in (0, 1]")
        # A negative norm would flip the gradient's sign (training would climb the loss).
        _check(self, "max_grad_norm", 0 < self.max_grad_norm < math.inf, "finite and > 0")
        _check(self, "adam_eps", 0 < self.adam_eps < 1, "in (0, 1)")
        _check_machine_settings(self)
        _check(self, "qat_bits", 2 <= self.qat_bits <= 8, "in [2, 8]")
        _check(self, "qat_start_after", self.qat_start_after >= 0, ">= 0")


@dataclass
class PPOConfig(TrainerConfig):
    """Masked PPO hyperparameters (plus the shared :class:`TrainerConfig`).

    The defaults are the ``fast`` preset: settings chosen for return per
    second of wall time on a small CPU (32 envs x 64 steps, 3 epochs of 4
    minibatches of 512, learning rate 1e-3); ``PRESETS["reference"]`` holds the
    settings of the sb3-contrib comparison (8 envs x 128 steps, 4 epochs of 4
    minibatches, 2.5e-4). ``docs/benchmarks.md`` has the measurements.
    """

    gamma: float = _f(0.99, "discount factor")
    gae_lambda: float = _f(0.95, "GAE lambda")
    clip_coef: float = _f(0.1, "PPO ratio clipping range")
    clip_vloss: bool = _f(False, "clip the value loss around the rollout's values")
    norm_adv: bool = _f(True, "normalise advantages per minibatch")
    ent_coef: float = _f(0.01, "entropy bonus (entropy over valid actions only)")
    ent_coef_final: float | None = _f(
        None,
        "anneal the entropy bonus linearly from --ent-coef at step 0 to this at the run's "
        "total steps (None: constant --ent-coef); e.g. 0 to sharpen the final policy",
    )
    vf_coef: float = _f(0.5, "value loss weight")
    reward_scale: float = _f(
        1.0,
        "multiply rewards by this before GAE (the value net learns scaled returns; "
        "logged returns stay raw); e.g. 0.01 for rewards in the hundreds",
    )
    target_kl: float | None = _f(
        None, "stop the epoch loop once approx-KL exceeds this (None: never)"
    )
    critic_warmup: int = _f(
        0,
        "env steps at the start of the run whose updates train only the value head, the "
        "rest of the network frozen: a policy started with --init-from (a distilled "
        "student) then meets its first policy-gradient step with a critic fitted to it "
        "instead of a fresh one (0: off)",
    )
    env_backend: str = _f(
        "numpy",
        "numpy: Python-stepped Gymnasium envs; torch: the MinAtar games as batched torch "
        "programs on the training device (MinAtar ids only)",
    )
    attention_layers: int = _f(
        0,
        "self-attention blocks in the set network (Knapsack) of the default network "
        "(0: items encoded on their own); set observations only",
    )
    attention_heads: int = _f(1, "heads of each self-attention block")
    hidden: int | None = _f(
        None,
        "width of the default network's dense encoder layer (None: the defaults, 128 for "
        "MinAtar grids, 512 for Atari frames, 64 for vectors and for the set network's "
        "item embeddings)",
    )
    conv_filters: int | None = _f(
        None, "filters of the MinAtar CNN's convolution (None: 16, as in the MinAtar paper)"
    )
    recurrent: bool = _f(
        False,
        "recurrent PPO: an LSTM between the encoder and the heads, its state carried per env "
        "and replayed over whole rollouts in the update (maskrl.agents.RecurrentPPO); "
        "num_minibatches must divide num_envs",
    )
    lstm_hidden: int | None = _f(
        None, f"units of the LSTM, --recurrent only (None: {DEFAULT_LSTM_HIDDEN})"
    )
    invalid_actions: str = _f(
        "mask",
        "the masking ablation: mask (sample among the valid actions only), penalty (sample "
        "over all actions; an invalid one is a no-op with reward --invalid-penalty) or none "
        "(sample over all actions; the env applies its own rule); penalty and none need the "
        "numpy backend and one --env",
    )
    invalid_penalty: float | None = _f(
        None,
        f"the reward of an invalid action, --invalid-actions penalty only (None: "
        f"{DEFAULT_INVALID_PENALTY})",
    )
    flicker: float = _f(
        0.0,
        "blank each observation (all zeros) with this probability, in [0, 1), in training "
        "and in the run's final evaluation (maskrl.envs.Flicker; masks and rewards "
        "untouched): a partially observed env; needs the numpy backend and one --env",
    )

    @property
    def penalty_reward(self) -> float:
        """The reward of an invalid action in mode ``penalty`` (0.0 in the other modes)."""
        if self.invalid_actions != "penalty":
            return 0.0
        if self.invalid_penalty is None:
            return DEFAULT_INVALID_PENALTY
        return float(self.invalid_penalty)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field (and its flag) for an impossible config."""
        super().validate()
        if self.hidden is not None:
            _check(self, "hidden", 1 <= self.hidden <= 65536, "in [1, 65536] or None")
        if self.conv_filters is not None:
            _check(self, "conv_filters", 1 <= self.conv_filters <= 4096, "in [1, 4096] or None")
        _check(self, "attention_layers", 0 <= self.attention_layers <= 64, "in [0, 64]")
        _check(self, "attention_heads", 1 <= self.attention_heads <= 64, "in [1, 64]")
        _check(self, "gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]")
        _check(self, "gae_lambda", 0.0 <= self.gae_lambda <= 1.0, "in [0, 1]")
        _check(self, "clip_coef", 0 < self.clip_coef < math.inf, "finite and > 0")
        _check(self, "ent_coef", 0 <= self.ent_coef < math.inf, "finite and >= 0")
        if self.ent_coef_final is not None:
            _check(
                self, "ent_coef_final", 0 <= self.ent_coef_final < math.inf,
                "finite and >= 0, or None",
            )  # fmt: skip
        _check(self, "vf_coef", 0 <= self.vf_coef < math.inf, "finite and >= 0")
        _check(self, "reward_scale", 0 < self.reward_scale < math.inf, "finite and > 0")
        _check(self, "critic_warmup", 0 <= self.critic_warmup <= 10**13, "in [0, 1e13]")
        if self.target_kl is not None:
            _check(self, "target_kl", 0 < self.target_kl < math.inf, "finite and > 0, or None")
        _check(self, "env_backend", self.env_backend in ("numpy", "torch"), "'numpy' or 'torch'")
        _check(
            self,
            "invalid_actions",
            self.invalid_actions in INVALID_ACTION_MODES,
            " or ".join(map(repr, INVALID_ACTION_MODES)),
        )
        if self.invalid_penalty is not None:
            if self.invalid_actions != "penalty":
                raise ValueError(
                    f"invalid_penalty (--invalid-penalty) applies only to --invalid-actions "
                    f"penalty, not {self.invalid_actions!r}: drop it or add --invalid-actions penalty"
                )
            _check(self, "invalid_penalty", math.isfinite(self.invalid_penalty), "finite")
        if self.lstm_hidden is not None:
            if not self.recurrent:
                raise ValueError(
                    "lstm_hidden (--lstm-hidden) applies only to recurrent PPO: add --recurrent "
                    "or drop it"
                )
            _check(self, "lstm_hidden", 1 <= self.lstm_hidden <= 65536, "in [1, 65536] or None")
        if self.recurrent:
            if self.qat:
                raise ValueError(
                    "recurrent (--recurrent) does not combine with qat (--qat): the LSTM has no "
                    "quantization-aware training; drop one of them"
                )
            if self.num_envs % self.num_minibatches:
                raise ValueError(
                    f"recurrent PPO splits the envs into minibatches of whole sequences: "
                    f"num_minibatches={self.num_minibatches} (--num-minibatches) must divide "
                    f"num_envs={self.num_envs} (--num-envs)"
                )
        _check(self, "flicker", math.isfinite(self.flicker) and 0 <= self.flicker < 1, "in [0, 1)")
        if self.flicker and self.env_backend != "numpy":
            raise ValueError(
                f"flicker={self.flicker} (--flicker) needs --env-backend numpy, not "
                f"{self.env_backend!r}: the batched torch games take no env wrapper"
            )
        if self.invalid_actions != "mask" and self.env_backend != "numpy":
            # The batched torch games take no Gymnasium wrapper (InvalidActionPolicy).
            raise ValueError(
                f"invalid_actions={self.invalid_actions!r} (--invalid-actions) needs "
                f"--env-backend numpy, not {self.env_backend!r}: the batched torch games take "
                "no env wrapper"
            )


# ------------------------------------------------------------------ Actor-Mimic

#: Smallest temperature accepted. ``expert_logits / tau`` is computed in the
#: logits' dtype: in float32 a tau of 1e-45 (a subnormal) turns every logit above
#: about 5e-7 into ``inf`` and the loss into NaN. From 1e-4 up, only logits beyond
#: 3e34 would overflow, and the target is already one-hot on the expert's greedy
#: action well above it (Rusu et al.'s policy distillation sharpens with 0.01).
MIN_TAU = 1e-4

#: Self-attention blocks of the tokens student by default: with 2 blocks of 4
#: heads it matched the CNN student on Breakout where the bag of tokens (0)
#: reached 60% of it (docs/benchmarks.md).
TOKENS_ATTENTION_LAYERS = 2

#: The tokens student's window by default (each token embeds the 3 x 3 cells
#: around its own), with relative positions in its self-attention: together
#: they took the five-game token student from 88% of the CNN student's return
#: on SpaceInvaders and Seaquest to 103% and 112%, and to 104-121% on the
#: other three games (1M steps, three token seeds against four CNN seeds;
#: README, "Self-attention encoders").
TOKENS_NEIGHBOURHOOD = 3


def parse_game_weights(spec: str) -> dict[str, float]:
    """Parse ``--game-weights`` (``GAME=W[,GAME=W...]``) into ``{GAME: W}``.

    Raises:
        ValueError: an item without ``=``, an empty name, a name given twice, or a
            weight that is not a finite number ``>= 0`` (the item is quoted).

    Example:
        >>> parse_game_weights("MinAtar-Asterix-v0=2, MinAtar-Breakout-v0=0.5")
        {'MinAtar-Asterix-v0': 2.0, 'MinAtar-Breakout-v0': 0.5}
    """
    where = "game_weights (--game-weights)"
    out: dict[str, float] = {}
    items = [x.strip() for x in spec.split(",")]
    if not any(items):
        raise ValueError(f"{where} is empty; give GAME=W[,GAME=W...] or leave it out")
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"{where}: {item!r} is not GAME=WEIGHT")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"{where}: the weight in {item!r} is not a number") from None
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"{where}: the weight in {item!r} must be finite and >= 0")
        if name in out:
            raise ValueError(f"{where} names {name} twice")
        out[name] = w
    return out


def resolve_game_weights(spec: str | None, env_ids: list[str]) -> list[float]:
    """Per-game loss weights, in ``env_ids``' order, rescaled to average 1.

    A name in ``spec`` matches a game by its full env id (``maskrl/MinAtar-Asterix-v0``)
    or the part after the last ``/`` (``MinAtar-Asterix-v0``); games not named weigh 1
    before the rescaling. ``spec=None``: every game weighs 1.

    Raises:
        ValueError: a name that matches none of ``env_ids`` (the games are listed),
            a game named twice, or weights that are all zero.

    Example:
        >>> resolve_game_weights("B=3", ["x/A", "x/B"])
        [0.5, 1.5]
    """
    if spec is None:
        return [1.0] * len(env_ids)
    given = parse_game_weights(spec)
    raw = [1.0] * len(env_ids)
    seen: dict[int, str] = {}
    for name, w in given.items():
        hits = [i for i, e in enumerate(env_ids) if name in (e, e.rsplit("/", 1)[-1])]
        if not hits:
            raise ValueError(
                f"game_weights (--game-weights) names {name}, which is not one of the "
                f"games: {', '.join(env_ids)}"
            )
        for i in hits:
            if i in seen:
                raise ValueError(
                    f"game_weights (--game-weights) weighs {env_ids[i]} twice "
                    f"({seen[i]} and {name})"
                )
            seen[i] = name
            raw[i] = w
    total = sum(raw)
    if total <= 0:
        raise ValueError("game_weights (--game-weights): every game weighs 0")
    return [w * len(raw) / total for w in raw]


@dataclass
class MimicConfig(TrainerConfig):
    """Actor-Mimic distillation hyperparameters (plus the shared :class:`TrainerConfig`).

    Defaults: the paper's ``tau = 1`` and ``beta = 0.01``; 40 slots (8 per game
    for five games) of 32 steps, 2 epochs of 4 minibatches.
    """

    num_envs: int = _f(40, "student's vector env slots (a multiple of the number of games)")
    num_steps: int = _f(32, "steps per slot per rollout")
    num_epochs: int = _f(2, "passes over each rollout")
    tau: float = _f(1.0, "temperature of the experts' softmax (the targets); >= 1e-4")
    beta: float = _f(0.01, "weight of the feature-regression loss")
    epsilon: float = _f(0.0, "probability of a uniformly random valid action while acting")
    game_weights: str | None = _f(
        None,
        "per-game weights of the distillation loss, GAME=W[,GAME=W...] (GAME: an env id or its "
        "name after the last '/', e.g. MinAtar-Asterix-v0=2); games not named weigh 1, and the "
        "weights are rescaled to average 1 over the games, so the loss keeps its scale "
        "(None: every game weighs 1)",
    )
    value_coef: float = _f(
        0.0,
        "weight of the value regression: the student's value for each game regresses (MSE) onto "
        "that game's expert's value, so a PPO fine-tune starts with a trained critic (0: off)",
    )
    multigame_encoder: str = _f(
        "cnn", "student's observation encoder: cnn (padded channels) or tokens (attention-pooled)"
    )
    hidden: int | None = _f(
        None, "width of the student's dense layer (None: the default network's, 128 for MinAtar)"
    )
    conv_filters: int | None = _f(
        None,
        "filters of the student's convolution, --multigame-encoder cnn (None: 16, as in the "
        "MinAtar paper)",
    )
    attention_layers: int | None = _f(
        None,
        "self-attention blocks of the tokens encoder (0: a bag of tokens; None: "
        f"{TOKENS_ATTENTION_LAYERS} with --multigame-encoder tokens, 0 with cnn)",
    )
    attention_heads: int = _f(4, "heads of each self-attention block of the tokens encoder")
    relative_position: bool | None = _f(
        None,
        "tokens encoder: a learned attention-logit bias per relative grid offset of two tokens "
        "(per block and head), so attention can relate objects by where they are from each "
        "other (None: on with --multigame-encoder tokens and self-attention, off otherwise)",
    )
    token_neighbourhood: int | None = _f(
        None,
        "tokens encoder: odd window k; each token (one per occupied cell) embeds the k x k cells "
        f"around its own, a convolutional stem; 1: its own cell only (None: {TOKENS_NEIGHBOURHOOD} "
        "with --multigame-encoder tokens, 1 with cnn)",
    )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field (and its flag) of an impossible value."""
        super().validate()
        # Below MIN_TAU, expert logits / tau overflow float32 and the loss turns NaN.
        _check(
            self,
            "tau",
            MIN_TAU <= self.tau < float("inf"),
            f"finite and >= {MIN_TAU:g} (smaller temperatures overflow expert logits / tau to inf)",
        )
        _check(self, "beta", 0 <= self.beta < float("inf"), "finite and >= 0")
        _check(self, "epsilon", 0 <= self.epsilon <= 1, "in [0, 1]")
        if self.game_weights is not None:
            parse_game_weights(self.game_weights)
        _check(self, "value_coef", 0 <= self.value_coef < float("inf"), "finite and >= 0")
        encoders = ("cnn", "tokens")
        _check(self, "multigame_encoder", self.multigame_encoder in encoders, "cnn or tokens")
        if self.hidden is not None:
            _check(self, "hidden", 1 <= self.hidden <= 65536, "in [1, 65536] or None")
        if self.conv_filters is not None:
            _check(self, "conv_filters", 1 <= self.conv_filters <= 4096, "in [1, 4096] or None")
            if self.multigame_encoder != "cnn":
                _check(self, "conv_filters", False, "None unless --multigame-encoder cnn")
        if self.attention_layers is not None:
            _check(self, "attention_layers", 0 <= self.attention_layers <= 64, "in [0, 64] or None")
            if self.attention_layers and self.multigame_encoder != "tokens":
                _check(self, "attention_layers", False, "0 unless --multigame-encoder tokens")
        _check(self, "attention_heads", 1 <= self.attention_heads <= 64, "in [1, 64]")
        if self.relative_position:
            if self.multigame_encoder != "tokens":
                _check(self, "relative_position", False, "off unless --multigame-encoder tokens")
            if self.attention_layers == 0:
                _check(self, "relative_position", False, "off with --attention-layers 0")
        k = self.token_neighbourhood
        if k is not None:
            _check(
                self, "token_neighbourhood", 1 <= k <= 19 and k % 2 == 1, "an odd window in [1, 19]"
            )
            if k != 1 and self.multigame_encoder != "tokens":
                _check(self, "token_neighbourhood", False, "1 unless --multigame-encoder tokens")

    def token_options(self) -> dict[str, Any]:
        """The encoder options the student is built with, the defaults resolved.

        ``attention_layers``, ``relative_position`` and ``token_neighbourhood``:
        a field left at None takes its default for :attr:`multigame_encoder`
        (tokens: :data:`TOKENS_ATTENTION_LAYERS` blocks, relative positions on,
        a :data:`TOKENS_NEIGHBOURHOOD` window; cnn: none of them).
        """
        tokens = self.multigame_encoder == "tokens"
        layers = self.attention_layers
        if layers is None:
            layers = TOKENS_ATTENTION_LAYERS if tokens else 0
        relative = self.relative_position
        if relative is None:
            relative = tokens and layers >= 1
        k = self.token_neighbourhood
        if k is None:
            k = TOKENS_NEIGHBOURHOOD if tokens else 1
        return {"attention_layers": layers, "relative_position": relative, "token_neighbourhood": k}


# ----------------------------------------------------------------- the run

#: ``total_timesteps`` of a new run when none is given.
DEFAULT_TOTAL_TIMESTEPS = 1_000_000
#: Longest run-folder name accepted (file systems allow 255 bytes; leave room for suffixes).
MAX_RUN_NAME = 128
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]*$")


@dataclass
class DQNConfig(SavedConfig):
    """Settings of masked DQN (:class:`maskrl.agents.DQN`, ``train.py dqn``).

    Steps are env steps, all envs counted (``global_step``). Every
    ``train_freq`` vector steps (``num_envs * train_freq`` env steps, one
    *iteration*) the trainer takes ``gradient_steps`` gradient steps once
    ``learning_starts`` env steps are in the replay buffer.
    """

    num_envs: int = _f(1, "parallel environments (vector env slots)")
    buffer_size: int = _f(100_000, "replay buffer capacity (transitions)")
    batch_size: int = _f(32, "transitions per gradient step")
    learning_rate: float = _f(1e-4, "Adam learning rate")
    adam_eps: float = _f(1e-5, "Adam epsilon")
    gamma: float = _f(0.99, "discount factor")
    learning_starts: int = _f(5_000, "env steps of acting before the first gradient step")
    train_freq: int = _f(4, "vector steps between gradient phases")
    gradient_steps: int = _f(1, "gradient steps per gradient phase")
    target_update_interval: int = _f(
        1_000, "env steps between hard copies of the online network into the target network"
    )
    exploration_initial_eps: float = _f(1.0, "epsilon of the epsilon-greedy policy at step 0")
    exploration_final_eps: float = _f(0.05, "epsilon after --exploration-steps env steps")
    exploration_steps: int = _f(
        100_000, "env steps over which epsilon decays linearly to its final value"
    )
    max_grad_norm: float = _f(10.0, "gradient norm clipping")
    double: bool = _f(
        True, "double DQN: the online network picks the next action, the target values it"
    )
    unmasked_target: bool = _f(
        False,
        "ablation: the target's max (and double DQN's argmax) over ALL actions of the next "
        "state, not just the valid ones (acting stays masked)",
    )
    hidden: int | None = _f(
        None, "dense layer width of the Q-network (None: the default network's)"
    )
    conv_filters: int | None = _f(
        None, "filters of the MinAtar CNN's convolution (None: 16, as in the MinAtar paper)"
    )
    env_backend: str = _f(
        "numpy",
        "numpy: Python-stepped Gymnasium envs; torch: the MinAtar games as batched torch "
        "programs on the training device, transitions stored without leaving it (MinAtar "
        "ids only)",
    )
    device: str = _f("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    seed: int = _f(1, "seed of the initial weights, exploration, replay sampling and the envs")
    torch_threads: int | None = _f(
        None,
        "CPU threads for torch while training (None: leave torch's default); restored afterwards",
    )
    log_interval: int = _f(
        1_000,
        "env steps between tensorboard points of the training metrics (loss, SPS, epsilon, "
        "...), each the mean over the iterations since the last point; episode returns are "
        "logged as episodes end",
    )

    @property
    def steps_per_iteration(self) -> int:
        """Env steps between gradient phases: ``num_envs * train_freq``."""
        return self.num_envs * self.train_freq

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field (and its flag) for an impossible config."""
        check_types(self)
        for name in ("num_envs", "buffer_size", "batch_size", "train_freq", "gradient_steps"):
            _check(self, name, getattr(self, name) >= 1, ">= 1")
        _check(self, "num_envs", self.num_envs <= 100_000, "<= 100,000")
        _check(self, "target_update_interval", self.target_update_interval >= 1, ">= 1")
        for name in ("learning_starts", "exploration_steps", "log_interval"):
            _check(self, name, getattr(self, name) >= 0, ">= 0")
        if self.buffer_size < self.batch_size:
            raise ValueError(
                f"buffer_size (--buffer-size) {self.buffer_size} is smaller than batch_size "
                f"(--batch-size) {self.batch_size}: a batch could never be drawn"
            )
        if self.buffer_size < self.num_envs:
            raise ValueError(
                f"buffer_size (--buffer-size) {self.buffer_size} is smaller than num_envs "
                f"(--num-envs) {self.num_envs}: one vector step would not fit"
            )
        _check(self, "learning_rate", 0 < self.learning_rate <= 1, "in (0, 1]")
        _check(self, "adam_eps", 0 < self.adam_eps < 1, "in (0, 1)")
        _check(self, "gamma", 0 <= self.gamma <= 1, "in [0, 1]")
        for name in ("exploration_initial_eps", "exploration_final_eps"):
            _check(self, name, 0 <= getattr(self, name) <= 1, "in [0, 1]")
        _check(self, "max_grad_norm", 0 < self.max_grad_norm < math.inf, "finite and > 0")
        if self.hidden is not None:
            _check(self, "hidden", self.hidden >= 1, ">= 1, or None")
        if self.conv_filters is not None:
            _check(self, "conv_filters", 1 <= self.conv_filters <= 4096, "in [1, 4096] or None")
        _check(self, "env_backend", self.env_backend in ("numpy", "torch"), "'numpy' or 'torch'")
        _check_machine_settings(self)


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
    # Experts for Actor-Mimic on MinAtar: long runs (5M-10M steps) on the batched
    # torch games. Against "fast" it makes more, smaller updates per sample
    # (4 epochs of 4 minibatches of 1,024), anneals the learning rate to 0 (the
    # final policy is what the student copies), clips at 0.2 and doubles the
    # dense layer. Pilot on SpaceInvaders, 2M steps, one seed each, 50-episode
    # evals (docs/benchmarks.md): this preset 86.4; 128 envs x 128 steps with
    # 8 minibatches 49.6 (43.2 at 128 units), the same at learning rate 1e-3 58.0.
    "minatar": dict(
        num_envs=64,
        num_steps=64,
        num_epochs=4,
        num_minibatches=4,
        learning_rate=5e-4,
        anneal_lr=True,
        clip_coef=0.2,
        ent_coef=0.01,
        gamma=0.99,
        gae_lambda=0.95,
        hidden=256,
        env_backend="torch",
    ),
}
# The MinAtar Breakout expert: "minatar" with a larger entropy bonus annealed
# to 0 (at 0.01 Breakout stalls near 6), a longer horizon (gamma 0.995), twice
# the updates per sample (64 envs x 32 steps, minibatches of 512) and twice the
# learning rate (1e-3, annealed to 0). Ten seeds at 10M steps reach the
# published 28 on every seed (docs/actor_mimic.md, "Breakout: twice the
# updates per sample"), where the same without the larger learning rate (the
# preset before it) or without the 32 steps reached it on five of six.
PRESETS["minatar-breakout"] = dict(
    PRESETS["minatar"],
    num_steps=32,
    gamma=0.995,
    ent_coef=0.05,
    ent_coef_final=0.0,
    learning_rate=1e-3,
)

#: The preset names as help texts list them.
_PRESET_NAMES = ", ".join(repr(name) for name in PRESETS)


@dataclass
class RunConfig:
    """What to train on and where the run goes (the rest is the trainer's config)."""

    env: str = _f(
        "maskrl/MinAtar-Breakout-v0",
        "Gymnasium id with an action-mask source (or module:id, which imports the module "
        "that registers it); several ids separated by commas train one multi-game agent",
    )
    total_timesteps: int | None = _f(
        None,
        f"environment steps to train for, all envs counted (default: {DEFAULT_TOTAL_TIMESTEPS:,} "
        "for a new run; on --resume, the run's own total)",
    )
    run_name: str | None = _f(
        None, "run folder name under --runs-dir (default: <env>__<seed>__<time>)"
    )
    runs_dir: str = _f("runs", "parent folder of run folders")
    resume: str | None = _f(
        None, "continue the run in this folder (runs/<name>) from its checkpoint"
    )
    preset: str | None = _f(
        None,
        f"settings preset from maskrl.agents.PRESETS ({_PRESET_NAMES}); "
        "flags given explicitly override it",
    )
    init_from: str | None = _f(
        None,
        "start a new run (ppo, mimic) from this run folder's (or checkpoint's) weights: a PPO "
        "run, an expert or an Actor-Mimic student (see maskrl.agents.transfer)",
    )
    init_layers: str = _f(
        "encoder", "with --init-from: the layers taken, encoder or all (encoder and heads)"
    )
    checkpoint_every: int = _f(100_000, "write checkpoint.pt every this many steps")
    eval_episodes: int = _f(10, "episodes (per game) of the final evaluation; 0 to skip")
    progress: bool = _f(True, "show a progress bar")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and flag of an impossible value."""
        check_types(self)
        if self.total_timesteps is not None and not 1 <= self.total_timesteps <= 10**13:
            raise ValueError(
                f"total_timesteps (--total-timesteps) must be in [1, 1e13], got {self.total_timesteps}"
            )
        if self.checkpoint_every < 1:
            raise ValueError(
                f"checkpoint_every (--checkpoint-every) must be >= 1, got {self.checkpoint_every}"
            )
        if not 0 <= self.eval_episodes <= MAX_EPISODES:
            raise ValueError(
                f"eval_episodes (--eval-episodes) must be in [0, {MAX_EPISODES:,}], "
                f"got {self.eval_episodes}"
            )
        if not self.env_ids:
            raise ValueError("env (--env) is empty")
        dup = sorted({e for e in self.env_ids if self.env_ids.count(e) > 1})
        if dup:
            raise ValueError(f"env (--env) lists {', '.join(dup)} more than once")
        if self.run_name is not None:
            check_run_name(self.run_name)
        if self.init_layers not in ("encoder", "all"):
            raise ValueError(
                f"init_layers (--init-layers) must be encoder or all, got {self.init_layers!r}"
            )

    @property
    def env_ids(self) -> list[str]:
        return [e.strip() for e in self.env.split(",") if e.strip()]

    @property
    def total(self) -> int:
        return self.total_timesteps if self.total_timesteps is not None else DEFAULT_TOTAL_TIMESTEPS


def check_run_name(name: str) -> None:
    """A run name is a plain folder name: letters, digits and ``._+=@-``, at most 128 characters."""
    if len(name) > MAX_RUN_NAME:
        raise ValueError(
            f"run_name (--run-name) is {len(name)} characters long; at most {MAX_RUN_NAME} are allowed"
        )
    if not _RUN_NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"run_name (--run-name) {name!r} must be a plain folder name "
            "(letters, digits and ._+=@-, not starting with a dot or dash)"
        )


@dataclass
class ExpertsConfig:
    """``train.py experts``: one masked-PPO expert per game (the PPO settings are a :class:`PPOConfig`).

    Fields with ``metadata["required"]`` are required flags (their default, None,
    is never used).
    """

    env: str | None = field(
        default=None,
        metadata={"help": "env ids, comma-separated (one expert each)", "required": True},
    )
    total_timesteps: int = _f(DEFAULT_TOTAL_TIMESTEPS, "environment steps per expert")
    run_name: str | None = field(
        default=None,
        metadata={"help": "folder under --runs-dir for the experts", "required": True},
    )
    runs_dir: str = _f("runs", "parent folder of the experts' folder")
    eval_episodes: int = _f(50, "evaluation episodes per expert")
    progress: bool = _f(True, "show a progress bar")
    preset: str | None = _f(None, f"PPO settings preset ({_PRESET_NAMES})")
    checkpoint_every: int = _f(100_000, "write each expert's checkpoint.pt every this many steps")


# --------------------------------------------------------------- torchrun

#: Seconds a rank waits in a collective for the others before the job stops.
DEFAULT_DIST_TIMEOUT = 300.0


@dataclass
class DistConfig:
    """Settings of a job launched by ``torchrun`` (ignored in a single process)."""

    dist_timeout: float = _f(
        DEFAULT_DIST_TIMEOUT,
        "under torchrun: seconds a rank waits for the others in a collective (gradient "
        "all-reduce, setup) before the job stops with an error; ignored in one process",
    )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag of an impossible value."""
        check_types(self)
        if not 1 <= self.dist_timeout <= 86_400 or math.isnan(self.dist_timeout):
            raise ValueError(
                f"dist_timeout (--dist-timeout) must be in [1, 86400] seconds, got {self.dist_timeout}"
            )


def flag_name(name: str) -> str:
    """The command-line flag of a config field: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


def _check_machine_settings(cfg: Any) -> None:
    """The checks every trainer config shares: ``seed`` (room for one seed per env),
    ``torch_threads`` and ``device``."""
    _check(
        cfg,
        "seed",
        0 <= cfg.seed <= MAX_SEED - cfg.num_envs,
        f"in [0, {MAX_SEED} - num_envs]",
    )
    if cfg.torch_threads is not None:
        cpus = os.cpu_count() or 1
        _check(
            cfg,
            "torch_threads",
            1 <= cfg.torch_threads <= cpus,
            f"in [1, {cpus}] (this machine's CPUs), or None",
        )
    _check(
        cfg,
        "device",
        isinstance(cfg.device, str) and cfg.device != "",
        "cpu, cuda, cuda:N or auto",
    )


def _check(cfg: Any, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(
            f"{name} ({flag_name(name)}) must be {allowed}, got {getattr(cfg, name)!r}"
        )


def check_types(cfg: Any) -> None:
    """Check each dataclass field's value against its annotation (int, float, bool, str, or None).

    Catches a hand-edited ``config.json`` (``"env": 123``, ``"checkpoint_every": "abc"``)
    before it reaches the trainer. NaN floats pass here; range checks refuse them.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        tp = hints[f.name]
        args = typing.get_args(tp)
        allowed = [a for a in args if a is not type(None)] if args else [tp]
        if value is None:
            if type(None) in args:
                continue
            raise ValueError(f"{f.name} ({flag_name(f.name)}) must not be None")
        ok = False
        for a in allowed:
            if a is bool:
                ok = ok or isinstance(value, bool)
            elif a is int:
                ok = ok or (isinstance(value, int) and not isinstance(value, bool))
            elif a is float:
                ok = ok or (isinstance(value, int | float) and not isinstance(value, bool))
            elif a is str:
                ok = ok or isinstance(value, str)
            else:
                ok = True
        if not ok:
            names = " or ".join(getattr(a, "__name__", str(a)) for a in allowed)
            raise ValueError(
                f"{f.name} ({flag_name(f.name)}) must be {names}, got {value!r} ({type(value).__name__})"
            )
