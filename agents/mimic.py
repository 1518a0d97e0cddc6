"""Actor-Mimic: one multi-game student distilled from per-game experts.

Parisotto, Ba & Salakhutdinov, "Actor-Mimic: Deep Multitask and Transfer
Reinforcement Learning" (ICLR 2016). The student is one network over the
union of the games' actions (each game's mask removes what it lacks); it acts
in the multi-game vector env, all games at once, and every state it visits
is labelled by that game's expert:

* **policy regression**: cross-entropy from the expert's softmax at temperature
  ``tau`` over the game's valid actions to the student's masked softmax
  (:func:`~maskrl.agents.mimic_losses.policy_regression_loss`);
* **feature regression**: ``beta`` times the mean squared error between
  ``f_i(h_student)`` (per-game linear heads) and expert ``i``'s hidden features;
* **value regression** (optional, not in the paper): ``value_coef`` times the
  mean squared error between the student's value for game ``i`` and expert
  ``i``'s value, so that a PPO fine-tune of the student starts with a critic
  that already knows each game's returns.

``game_weights`` (``--game-weights MinAtar-Asterix-v0=2``) weighs each game's
rows in all three terms (rescaled to average 1 over the games), to spend more
of the student's capacity on a game it holds least well; every game still gets
an equal share of the data. ``train.py mimic --init-from RUN`` starts a new
distillation from a trained student's weights (and its feature-regression
heads), e.g. to continue with other settings.

Data is on-policy: each update rolls the student out for ``num_steps`` steps
of ``num_envs`` slots (slot ``j`` plays game ``j % k``, so every game gets an
equal share of every batch), with probability ``epsilon`` of a uniformly
random valid action instead of the student's, then runs epochs of minibatches
of the distillation loss. Everything but the labelling and the loss is the
shared trainer core: the rollout (:func:`~maskrl.agents.rollout.collect_rollout`),
the optimisation loop (:func:`~maskrl.agents.trainer.optimize_minibatches`),
the policy (:class:`~maskrl.agents.MaskedPolicy`) and the run harness.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskrl.agents.base import (
    OnPolicyTrainer,
    local_env_seed,
    local_num_envs,
    read_trainer_checkpoint,
)
from maskrl.agents.checkpoint import load_checkpoint, space_to_dict
from maskrl.agents.config import TOKENS_ATTENTION_LAYERS as TOKENS_ATTENTION_LAYERS  # old path
from maskrl.agents.config import MimicConfig, resolve_game_weights
from maskrl.agents.distributed import DataParallel
from maskrl.agents.mimic_losses import (
    FeatureRegressionHeads,
    greedy_agreement,
    policy_regression_loss,
)
from maskrl.agents.policy import (
    MaskedPolicy,
    _stored_space,
    eval_mode,
    policy_from_checkpoint,
)
from maskrl.agents.quantize import prepare_for_qat
from maskrl.agents.rollout import Obs, RolloutBuffer, flatten_obs, index_obs
from maskrl.agents.trainer import make_adam, optimize_minibatches, resolve_device
from maskrl.distributions import gumbel_argmax

__all__ = ["ActorMimic", "Expert", "MimicConfig", "file_sha256", "load_expert", "load_experts"]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Expert:
    """A trained per-game expert: its env id, checkpoint (an absolute path) and policy.

    ``sha256`` is the checkpoint file's digest when it was loaded; a student's
    checkpoint records it so that a resume uses the very same experts.
    """

    env_id: str
    checkpoint: Path
    policy: MaskedPolicy
    mean_return: float | None = None
    sha256: str | None = None


#: Checkpoint formats of per-game runs (what an expert must be).
EXPERT_FORMATS = ("maskrl.ppo/1", "maskrl.ppo/2")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (how a student identifies its experts' checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _env_spaces(env_id: str) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of one env of ``env_id``, as the student's env builds it."""
    from maskrl.envs import make_vec

    envs = make_vec(env_id, 1)
    try:
        return envs.single_observation_space, envs.single_action_space
    finally:
        envs.close()


def load_expert(
    env_id: str,
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
    source: str = "experts.json",
) -> Expert:
    """Load the expert for ``env_id`` from ``checkpoint``, checked to be an expert *of that game*.

    Args:
        env_id: the game the expert labels.
        checkpoint: its ``checkpoint.pt`` (made absolute here).
        device: where its network runs.
        sha256: if given, the digest the file must have (:func:`file_sha256`): a
            resumed student uses exactly the experts it started with.
        source: what listed the expert, for the error messages.

    Raises:
        ValueError: the file is missing, changed (``sha256``), or not a per-game
            run (an Actor-Mimic student, a multi-game run); it was trained on
            another env; or its observation or action space is not the game's.
            Each message names the checkpoint and ``env_id``.
    """
    path = Path(checkpoint).absolute()
    what = f"{source}: the expert for {env_id} ({path})"
    if not path.is_file():
        raise ValueError(f"{what} does not exist")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise ValueError(
            f"{what} has changed since the student was started (its SHA-256 is {digest[:12]}..., "
            f"the student was trained with {sha256[:12]}...); restore that file or start a new run"
        )
    ckpt = load_checkpoint(path)
    fmt = ckpt.get("format")
    if fmt not in EXPERT_FORMATS:
        kind = "an Actor-Mimic student" if fmt == ActorMimic.FORMAT else f"format {fmt!r}"
        raise ValueError(
            f"{what} is {kind}, not a per-game PPO run (train experts with train.py experts)"
        )
    trained_on = ckpt.get("env_ids")
    if not isinstance(trained_on, list) or not trained_on:
        raise ValueError(f"{what} does not record the env it was trained on")
    if len(trained_on) > 1:
        raise ValueError(
            f"{what} is a multi-game run (trained on {', '.join(map(str, trained_on))}), "
            "not a per-game expert"
        )
    if trained_on[0] != env_id:
        raise ValueError(f"{what} was trained on {trained_on[0]}, not on {env_id}")
    # The spaces before the network: a network built for other spaces would only
    # fail later, inside a layer.
    obs_space, act_space = _env_spaces(env_id)
    for name, game in (("observation", obs_space), ("action", act_space)):
        mine = _stored_space(ckpt, f"{name}_space", path)
        if space_to_dict(mine) != space_to_dict(game):
            raise ValueError(f"{what} has {name} space {mine}, but {env_id} has {game}")
    policy = policy_from_checkpoint(ckpt, path, device, None)
    return Expert(env_id, path, policy, sha256=digest)


def load_experts(folder: str | Path, device: str | torch.device = "cpu") -> list[Expert]:
    """The experts listed in ``folder/experts.json`` (written by ``train.py experts``).

    Each is checked by :func:`load_expert`: a per-game run trained on the env
    the entry names, with that env's observation and action spaces.

    Raises:
        ValueError: the folder or ``experts.json`` is missing or unreadable, it lists
            no expert, a checkpoint is missing or unusable, an expert does not match
            the game it labels, or the experts disagree on the size of their action
            space.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--experts {folder} is not a folder")
    index = folder / "experts.json"
    if not index.is_file():
        raise ValueError(
            f"--experts {folder} holds no experts.json: train them with "
            f"python train.py experts --env ID1,ID2 --run-name {folder.name}"
        )
    try:
        entries = json.loads(index.read_text())["experts"]
        if not isinstance(entries, list):
            raise TypeError("'experts' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index} is unreadable ({e})") from e
    if not entries:
        raise ValueError(f"{index} lists no experts")
    parsed = []
    for entry in entries:
        try:
            parsed.append((str(entry["env_id"]), folder / str(entry["checkpoint"]), entry))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{index}: bad entry {entry!r} ({err})") from err
    ids = [env_id for env_id, _, _ in parsed]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{index} lists an env more than once: {ids}")
    experts = []
    for env_id, ckpt, entry in parsed:
        x = load_expert(env_id, ckpt, device, source=str(index))
        x.mean_return = entry.get("mean_return")
        experts.append(x)
    sizes = {x.env_id: x.policy.n_logits for x in experts}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the experts in {folder} disagree on action space size: {sizes}")
    return experts


def _experts_from_checkpoint(
    entries: Any, path: str | Path, device: str | torch.device
) -> list[Expert]:
    """The experts a student's checkpoint names, checked to be the same files (by SHA-256)."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"checkpoint {path} lists no experts")
    experts = []
    for e in entries:
        try:
            env_id, ckpt, digest = str(e["env_id"]), Path(e["checkpoint"]), e.get("sha256")
        except (KeyError, TypeError) as err:
            raise ValueError(f"checkpoint {path}: bad expert entry {e!r} ({err})") from err
        if digest is None:
            # Written before students recorded their experts' digests: the path is
            # all there is (relative to the folder the run was started from).
            warnings.warn(
                f"checkpoint {path} does not record the SHA-256 of its expert {ckpt}: "
                "it cannot be checked to be the file the student was trained with",
                stacklevel=3,
            )
        experts.append(
            load_expert(env_id, ckpt, device, sha256=digest, source=f"student checkpoint {path}")
        )
    return experts


def _game_slice(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A game's own observations ``[B, *shape]`` from padded multi-game ones ``[B, *padded]``.

    The multi-game env pads each axis at its end (see
    :class:`maskrl.envs.vector.GameSlotWrapper`), so the game's observation is the
    leading block of every axis: exactly what its expert saw.
    """
    return x[(slice(None),) + tuple(slice(0, s) for s in shape)]


class ActorMimic(OnPolicyTrainer):
    """The Actor-Mimic distillation trainer.

    Args:
        experts: per-game experts (:func:`load_experts`), in game order.
        config: :class:`MimicConfig`.
        data_parallel: this process's rank in a torchrun job (None: one process);
            see :class:`~maskrl.agents.PPO`.

    The student is a :class:`~maskrl.agents.MaskedPolicy` over the multi-game env
    (``self.policy``); ``learn``, ``save`` and ``load`` follow the same contract
    as :class:`~maskrl.agents.PPO`, so the same run harness drives both.
    """

    FORMAT = "maskrl.mimic/1"

    def __init__(
        self,
        experts: list[Expert],
        config: MimicConfig | None = None,
        data_parallel: DataParallel | None = None,
    ) -> None:
        from maskrl.envs import make_multigame_vec

        c = config or MimicConfig()
        c.validate()
        if not experts:
            raise ValueError("ActorMimic needs at least one expert")
        k = len(experts)
        if data_parallel is not None:
            # Every rank plays every game equally (slot j of each rank plays game j % k).
            data_parallel.check_config(c, games=k)
        if c.num_envs % k:
            raise ValueError(
                f"num_envs (--num-envs) = {c.num_envs} must be a multiple of the number of games "
                f"({k}) so that every game gets an equal share of every batch"
            )
        device = resolve_device(c.device)
        # Before any env is built: a name that matches no game is refused at once.
        weights = resolve_game_weights(c.game_weights, [x.env_id for x in experts])
        self.experts = experts
        for x in experts:
            if x.sha256 is None and Path(x.checkpoint).is_file():
                x.sha256 = file_sha256(x.checkpoint)
            x.policy.net.to(device).eval()
            x.policy.device = device
        self.env_ids = [x.env_id for x in experts]
        envs = make_multigame_vec(
            self.env_ids,
            local_num_envs(c, data_parallel),
            seed=local_env_seed(c, data_parallel),
        )
        obs_space = envs.single_observation_space
        act_space = envs.single_action_space
        net_kwargs: dict[str, Any] = {"obs_layout": "CHW"}
        if c.hidden is not None:
            net_kwargs["hidden"] = c.hidden
        if c.conv_filters is not None:
            net_kwargs["conv_filters"] = c.conv_filters
        if c.multigame_encoder != "cnn":
            net_kwargs["multigame_encoder"] = c.multigame_encoder
            net_kwargs["channels_per_game"] = [
                int(x.policy.observation_space.shape[0]) for x in experts
            ]
        # Recorded in the checkpoint's network kwargs (where not the builder's
        # default), so it rebuilds the same network whatever the defaults become.
        tok = c.token_options()
        if tok["attention_layers"]:
            net_kwargs["attention_layers"] = tok["attention_layers"]
            net_kwargs["attention_heads"] = c.attention_heads
        if tok["relative_position"]:
            net_kwargs["relative_position"] = True
        if tok["token_neighbourhood"] != 1:
            net_kwargs["token_neighbourhood"] = tok["token_neighbourhood"]
        policy = MaskedPolicy.build(
            obs_space, act_space, self.env_ids, device, c.seed, **net_kwargs
        )
        net = policy.net
        with torch.inference_mode():
            probe = {
                "obs": torch.zeros((1, *obs_space["obs"].shape), device=device),
                "game_id": torch.zeros(1, dtype=torch.int64, device=device),
            }
            student_dim = int(net.features(probe).shape[-1])  # type: ignore[operator]
            expert_dims = [
                int(
                    x.policy.net.features(  # type: ignore[operator]
                        torch.zeros((1, *x.policy.observation_space.shape), device=device)
                    ).shape[-1]
                )
                for x in experts
            ]
        if c.qat:  # before the optimizer: learned ranges add parameters
            prepare_for_qat(net, c.qat_bits, c.qat_start_after)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed + 1)
            feature_heads = FeatureRegressionHeads(student_dim, expert_dims).to(device)
        optimizer = make_adam(
            list(net.parameters()) + list(feature_heads.parameters()),
            c.learning_rate,
            c.adam_eps,
        )
        super().__init__(c, policy, optimizer, envs, device, data_parallel)
        self.config: MimicConfig = c
        self.feature_heads = feature_heads
        n = self.policy.n_logits
        T, N = c.num_steps, self.num_envs_local
        self._expert_logits = torch.zeros((T, N, n), device=self.device)
        self._expert_features = torch.zeros((T, N, self.feature_heads.out_dim), device=self.device)
        self._expert_values = torch.zeros((T, N), device=self.device)
        #: ``[k]`` per-game weights of the distillation loss (``game_weights``),
        #: averaging 1; None when every game weighs 1 (the plain mean).
        self.game_weights: torch.Tensor | None = (
            None
            if c.game_weights is None
            else torch.tensor(weights, dtype=torch.float32, device=self.device)
        )

    # ------------------------------------------------------------------ acting
    def _act(self, obs: Obs, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        action, logp, value = super()._act(obs, mask)
        eps = self.config.epsilon
        if eps > 0:
            g = self.rng.device_gen
            explore = torch.rand(action.shape, device=action.device, generator=g) < eps
            uniform = gumbel_argmax(torch.zeros(mask.shape, device=mask.device), mask, g)
            action = torch.where(explore, uniform, action)
        return action, logp, value

    def after_rollout(self, buffer: RolloutBuffer) -> None:
        """Label the rollout: the experts' logits, features and values for every step."""
        T, k = self.config.num_steps, len(self.experts)
        assert isinstance(buffer.obs, dict)
        padded = buffer.obs["obs"][:T]
        with torch.inference_mode():
            for g, x in enumerate(self.experts):
                # Slot j plays game j % k: this game's slots are g, g + k, ...
                own = _game_slice(padded[:, g::k].flatten(0, 1), x.policy.observation_space.shape)
                logits, feats, values = x.policy.teacher_outputs(own)
                n_g, d_g = logits.shape[-1], feats.shape[-1]
                rows = self._expert_logits[:, g::k]
                rows[..., :n_g] = logits.view(T, -1, n_g).float()
                self._expert_features[:, g::k, :d_g] = feats.view(T, -1, d_g).float()
                self._expert_values[:, g::k] = values.view(T, -1).float()

    # ---------------------------------------------------------------- training
    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """One distillation update on a labelled rollout; returns logged scalars."""
        c = self.config
        T, N = c.num_steps, self.num_envs_local
        B = T * N
        b_obs = flatten_obs(index_obs(buffer.obs, slice(0, T)), B)
        assert isinstance(b_obs, dict)
        b_masks = buffer.masks[:T].reshape(B, -1)
        b_logits = self._expert_logits.reshape(B, -1)
        b_feats = self._expert_features.reshape(B, -1)
        b_values = self._expert_values.reshape(B)
        net = self.net
        heads = self.feature_heads

        def student(obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            h = net.features(obs)  # type: ignore[operator]
            return net.policy_head(h), h  # type: ignore[operator]

        def loss_fn(mb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            obs = index_obs(b_obs, mb)
            assert isinstance(obs, dict)
            logits, h = student(obs)
            w = None if self.game_weights is None else self.game_weights[obs["game_id"]]
            pol = policy_regression_loss(logits, b_logits[mb], b_masks[mb], c.tau, w)
            feat = heads.loss(h, obs["game_id"], b_feats[mb], w)
            loss = pol + c.beta * feat
            logged = {"policy_regression": pol.detach(), "feature_regression": feat.detach()}
            if c.value_coef > 0:
                v = net.value_of_features(h, obs["game_id"])  # type: ignore[operator]
                sq = (v - b_values[mb]).pow(2)
                vloss = 0.5 * (sq if w is None else w * sq).mean()
                loss = loss + c.value_coef * vloss
                logged["value_regression"] = vloss.detach()
            return loss, logged

        # Per-game metrics of the acting student on this batch, before the update.
        per_game: dict[str, float] = {}
        with torch.no_grad():
            logits, h = student(b_obs)
            gid = b_obs["game_id"]
            for g, x in enumerate(self.experts):
                sel = gid == g
                label = x.env_id.split("/")[-1]
                m = b_masks[sel]
                per_game[f"mimic/{label}/policy_regression"] = float(
                    policy_regression_loss(logits[sel], b_logits[sel], m, c.tau)
                )
                per_game[f"mimic/{label}/feature_regression"] = float(
                    heads.loss(h[sel], gid[sel], b_feats[sel])
                )
                per_game[f"mimic/{label}/agreement"] = float(
                    greedy_agreement(logits[sel], b_logits[sel], m)
                )
        out = optimize_minibatches(
            loss_fn,
            self.optimizer,
            [p for group in self.optimizer.param_groups for p in group["params"]],
            B,
            c.num_minibatches,
            c.num_epochs,
            c.max_grad_norm,
            self.rng.device_gen,
            self.device,
            data_parallel=self.data_parallel,
        )
        out.pop("epochs")
        out.update(per_game)
        return out

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": self.FORMAT,
            "config": self.config.to_dict(),
            **self.policy.checkpoint_entries(),
            # Absolute paths and content digests: a resume from any folder finds,
            # and checks, the very same experts.
            "experts": [
                {
                    "env_id": x.env_id,
                    "checkpoint": str(Path(x.checkpoint).absolute()),
                    "sha256": x.sha256,
                }
                for x in self.experts
            ],
            "feature_heads": self.feature_heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "num_updates": self.num_updates,
            "rng": self.rng.state_dict(),
        }

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", data_parallel: DataParallel | None = None
    ) -> ActorMimic:
        """Resume a distillation run from its checkpoint (``data_parallel``: as one rank of a job).

        Its experts must still exist, unchanged: each is found by the absolute
        path the checkpoint records and checked against the recorded SHA-256
        (and, as when the run started, against its game).

        Raises:
            ValueError: a missing or corrupt checkpoint, or an expert that is
                missing, changed or no longer matches its game.
        """
        ckpt = read_trainer_checkpoint(path)  # refuses non-finite state anywhere in it
        if ckpt.get("format") != cls.FORMAT:
            raise ValueError(
                f"checkpoint {path} has format {ckpt.get('format')!r}, not {cls.FORMAT}"
            )
        try:
            config = MimicConfig.from_dict(dict(ckpt["config"]))
            config.device = device
            experts = _experts_from_checkpoint(ckpt["experts"], path, device)
            trainer = cls(experts, config, data_parallel)
            policy = policy_from_checkpoint(ckpt, path, device, None, config.seed)
            trainer.net.load_state_dict(policy.net.state_dict())
            trainer.feature_heads.load_state_dict(ckpt["feature_heads"])
            trainer.optimizer.load_state_dict(ckpt["optimizer"])
            trainer.global_step = int(ckpt["global_step"])
            trainer.num_updates = int(ckpt["num_updates"])
            trainer.rng.load_state_dict(ckpt["rng"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"checkpoint {path} is not a valid Actor-Mimic checkpoint: {e}") from e
        return trainer


def student_agreement(
    policy: MaskedPolicy, experts: list[Expert], steps: int = 200, seed: int = 0
) -> dict[str, float]:
    """Greedy agreement of a student with each expert on states the student visits (a check)."""
    from maskrl.envs import make_multigame_vec

    k = len(experts)
    envs = make_multigame_vec([x.env_id for x in experts], 2 * k, seed=seed)
    agree = np.zeros(k)
    count = np.zeros(k)
    try:
        obs, infos = envs.reset(seed=seed)
        for _ in range(steps):
            mask = np.asarray(infos["action_mask"])
            with torch.inference_mode(), eval_mode(policy.net):
                t_obs = {
                    "obs": torch.as_tensor(obs["obs"], device=policy.device),
                    "game_id": torch.as_tensor(obs["game_id"], device=policy.device),
                }
                s_logits, _ = policy.net(t_obs)
                m = torch.as_tensor(mask, device=policy.device)
                for g, x in enumerate(experts):
                    sel = t_obs["game_id"] == g
                    own = _game_slice(t_obs["obs"][sel], x.policy.observation_space.shape)
                    with eval_mode(x.policy.net):
                        e_logits, _ = x.policy.net(own)
                    n_g = e_logits.shape[-1]
                    agree[g] += float(
                        greedy_agreement(s_logits[sel][:, :n_g], e_logits, m[sel][:, :n_g])
                    ) * int(sel.sum())
                    count[g] += int(sel.sum())
            action = policy.predict(obs, mask, deterministic=True)
            obs, _, _, _, infos = envs.step(action)
    finally:
        envs.close()
    return {x.env_id: float(agree[g] / max(count[g], 1)) for g, x in enumerate(experts)}
