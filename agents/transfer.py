"""Transfer initialisation: start a new PPO agent (or Actor-Mimic student) from a trained network's weights.

``train.py ppo --env ID --init-from RUN_OR_CHECKPOINT [--init-layers encoder|all]``
(Parisotto, Ba & Salakhutdinov 2016, section 5: a multitask network's weights
initialise an agent for a game it never saw). The source is any maskrl
checkpoint of a default network: a single-game PPO run, an expert, or an
Actor-Mimic student.

How the layers map, by state-dict name (``encoder.*``, ``policy_head.*``,
``value_head.*``, ``game_embedding.*``):

* The new network is the default network for the new env, built with the
  source's encoder width (``hidden``), so the two encoders have the same layers.
  Every encoder layer must exist on both sides with the same shape; any other
  difference is a ``ValueError`` naming the layer.
* The one exception is the **input channels of the encoder's first
  convolution**. A multi-game student reads observations zero-padded at the end
  of the channel axis (:func:`maskrl.envs.multigame_layout`), so a game's
  channel ``i`` always enters the student's convolution at input channel ``i``,
  and the padding channels contribute nothing. The new network keeps the new
  game's own channel count and takes the source's weights for the channels both
  have: for a game with no more channels than the student reads, this is
  exactly the student's encoder applied to the game's observation padded as
  the student's layout pads it; a game with more channels (Seaquest's 10 after a
  student on games of at most 7) keeps its extra input channels freshly
  initialised -- what they would have been had the student been padded to 10
  channels, as weights on always-zero inputs never change. The same rule
  applies to a single-game source, and the run prints a note whenever it is used.
* ``--init-layers all`` also copies the heads. The policy head must agree in
  shape (the same number of actions; MinAtar games all have 6). Per-game layers
  of a multi-game network -- its game embedding and its value head, one output
  per game -- are copied only when source and new network play the same games in
  the same order; otherwise they have no counterpart (a game the student never
  saw has no embedding and no value output) and stay freshly initialised, with a
  note. A single-game source's value head is copied.

Layers not copied keep the new agent's own initialisation from its seed: the
same values a from-scratch run with that seed starts with. Only weights
transfer: the fake quantizers of a quantization-aware (``--qat``) source or new
network are left out, and the new run calibrates its own ranges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskrl.agents.config import PPOConfig
from maskrl.agents.policy import MaskedPolicy, load_policy
from maskrl.networks import MultiGameActorCritic

__all__ = [
    "INIT_LAYERS",
    "TransferReport",
    "build_ppo_from",
    "init_mimic_from",
    "load_init_source",
    "transfer_weights",
]

#: Values of ``--init-layers``.
INIT_LAYERS = ("encoder", "all")

#: Layers of a multi-game network that belong to its games, one row per game.
_PER_GAME = ("game_embedding", "value_head")


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did: layer names (state-dict keys) by outcome."""

    copied: list[str] = field(default_factory=list)
    #: Layers copied in part (the first convolution's shared input channels).
    partial: list[str] = field(default_factory=list)
    #: Layers left at their fresh initialisation although the layer set named them.
    fresh: list[str] = field(default_factory=list)
    #: One line each: why a layer was copied in part or left fresh.
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_init_checkpoint(path: str) -> Path:
    """The checkpoint file ``--init-from`` names: the file itself, or ``<run>/checkpoint.pt``.

    Raises:
        ValueError: nothing there, a folder without ``checkpoint.pt``, or an
            experts folder (which holds one run per game).
    """
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoint.pt"
        if ckpt.is_file():
            return ckpt
        if (p / "experts.json").is_file():
            raise ValueError(
                f"--init-from {path} is a folder of experts; give one expert's run folder "
                f"(e.g. {p / '<game>'}) or a student's run folder"
            )
        raise ValueError(f"--init-from {path}: the folder has no checkpoint.pt")
    if p.is_file():
        return p
    raise ValueError(f"--init-from {path} does not exist (give a run folder or a checkpoint.pt)")


def load_init_source(path: str) -> tuple[MaskedPolicy, Path]:
    """Load the policy ``--init-from`` names (on the CPU); returns ``(policy, checkpoint path)``.

    Raises:
        ValueError: a bad path or an unreadable checkpoint (one line, naming it).
    """
    ckpt = resolve_init_checkpoint(path)
    try:
        policy = load_policy(ckpt, device="cpu")
    except ValueError as e:
        raise ValueError(f"--init-from {path}: {e}") from e
    if policy.network_kwargs is None:  # pragma: no cover - load_policy refuses these first
        raise ValueError(f"--init-from {path}: the checkpoint holds a custom network")
    return policy, ckpt


def source_network_kwargs(source: MaskedPolicy) -> dict[str, Any]:
    """Settings the new network takes from the source so that the encoders line up: its width."""
    hidden = (source.network_kwargs or {}).get("hidden")
    return {} if hidden is None else {"hidden": int(hidden)}


def _weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net.state_dict()`` less the state of its fake quantizers (QAT)."""
    from maskrl.quant.observer import FakeQuant

    quant = tuple(f"{n}." for n, m in net.named_modules() if isinstance(m, FakeQuant))
    return {k: v for k, v in net.state_dict().items() if not (quant and k.startswith(quant))}


def _first_conv(keys: list[str]) -> str | None:
    return next((k for k in keys if k.startswith("encoder.") and k.endswith(".weight")), None)


def transfer_weights(
    target: nn.Module, source: nn.Module, layers: str = "encoder", same_games: bool = False
) -> TransferReport:
    """Copy ``source``'s weights into ``target`` in place (see the module docstring for the map).

    Args:
        target: the new network (its parameters are overwritten in place, so an
            optimizer already built on them stays valid).
        source: the trained network.
        layers: ``"encoder"`` or ``"all"`` (encoder and heads).
        same_games: both are multi-game networks of the same games in the same
            order (their per-game layers then transfer too).

    Raises:
        ValueError: a layer of the chosen set that has no counterpart or another
            shape in the source (one line naming it).
    """
    if layers not in INIT_LAYERS:
        raise ValueError(
            f"init_layers (--init-layers) must be one of {INIT_LAYERS}, got {layers!r}"
        )
    # The weights transfer; a QAT network's quantizer state (observed ranges) does
    # not: the new run calibrates its own.
    src, tgt = _weights(source), _weights(target)
    multi = isinstance(source, MultiGameActorCritic) or isinstance(target, MultiGameActorCritic)
    per_game_ok = same_games and all(isinstance(n, MultiGameActorCritic) for n in (source, target))
    src_enc = [k for k in src if k.startswith("encoder.")]
    tgt_enc = [k for k in tgt if k.startswith("encoder.")]
    extra = [k for k in src_enc if k not in tgt]
    if extra:
        raise ValueError(
            f"--init-from: layer {extra[0]} of the source has no counterpart in the new "
            "network (the encoders differ)"
        )
    first = _first_conv(tgt_enc)
    report = TransferReport()
    with torch.no_grad():
        for k, t in tgt.items():
            top = k.split(".")[0]
            if top != "encoder" and layers != "all":
                continue
            if multi and top in _PER_GAME and not per_game_ok:
                report.fresh.append(k)
                continue
            if k not in src:
                raise ValueError(
                    f"--init-from: layer {k} of the new network has no counterpart in the source"
                )
            s = src[k]
            if s.shape == t.shape:
                t.copy_(s)
                report.copied.append(k)
            elif (
                k == first
                and s.dim() == t.dim() == 4
                and s.shape[0] == t.shape[0]
                and s.shape[2:] == t.shape[2:]
            ):
                c = min(s.shape[1], t.shape[1])
                t[:, :c].copy_(s[:, :c])
                report.partial.append(k)
                if t.shape[1] > c:
                    what = f"input channels {c}-{t.shape[1] - 1} start freshly initialised"
                else:
                    what = "the source's extra channels read padding only and are dropped"
                report.notes.append(
                    f"{k}: the source reads {s.shape[1]} input channels, this game has "
                    f"{t.shape[1]}; channels 0-{c - 1} copied, {what}"
                )
            else:
                advice = "" if top == "encoder" else "; use --init-layers encoder"
                raise ValueError(
                    f"--init-from: layer {k} has shape {tuple(s.shape)} in the source and "
                    f"{tuple(t.shape)} in the new network{advice}"
                )
    if report.fresh:
        report.notes.append(
            f"{', '.join(report.fresh)}: per-game layers of a multi-game network, kept "
            "freshly initialised (the two networks do not play the same games)"
        )
    return report


def build_ppo_from(
    env_ids: list[str],
    config: PPOConfig,
    init_from: str,
    layers: str = "encoder",
    data_parallel: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """A new :class:`~maskrl.agents.PPO` agent on ``env_ids`` whose ``layers`` come from ``init_from``.

    ``data_parallel``: the run's :class:`~maskrl.agents.distributed.DataParallel`
    under ``torchrun`` (every rank reads the same source; rank 0's weights are
    broadcast when training starts, as for any run).

    Returns ``(agent, record)``; ``record`` (for the run's ``config.json``) holds
    the checkpoint read, its sha256 and the :class:`TransferReport`.

    Raises:
        ValueError: a bad path or checkpoint, or a layer that does not line up.
    """
    from maskrl.agents.ppo import PPO

    if layers not in INIT_LAYERS:
        raise ValueError(
            f"init_layers (--init-layers) must be one of {INIT_LAYERS}, got {layers!r}"
        )
    source, ckpt = load_init_source(init_from)
    width = source_network_kwargs(source)
    if config.hidden is not None and width and width["hidden"] != config.hidden:
        raise ValueError(
            f"hidden={config.hidden} (--hidden, or the preset's) differs from the width of the "
            f"--init-from network ({width['hidden']}): pass --hidden {width['hidden']} so the "
            "encoders line up"
        )
    agent = PPO(env_ids, config, network_kwargs=width, data_parallel=data_parallel)
    try:
        same = list(source.env_ids or []) == list(env_ids)
        report = transfer_weights(agent.policy.net, source.net, layers, same_games=same)
    except BaseException:
        agent.envs.close()
        raise
    return agent, _init_record(ckpt, source, report)


def _init_record(ckpt: Path, source: MaskedPolicy, report: TransferReport) -> dict[str, Any]:
    """What an ``--init-from`` run records in its ``config.json``: the checkpoint
    read, its sha256, the source's games and the :class:`TransferReport`."""
    from maskrl.agents.mimic import file_sha256

    return {
        "checkpoint": str(ckpt.absolute()),
        "sha256": file_sha256(ckpt),
        "source_env_ids": source.env_ids,
        **report.to_dict(),
    }


def init_mimic_from(trainer: Any, init_from: str, layers: str = "all") -> dict[str, Any]:
    """Copy ``init_from``'s weights into a new Actor-Mimic ``trainer``'s student, in place.

    ``train.py mimic --init-from RUN_OR_CHECKPOINT [--init-layers encoder|all]``:
    a new distillation run (fresh optimizer, step 0) starting from a trained
    network -- typically a student, to continue its distillation with other
    settings (``--game-weights``, ``--tau``, a learning rate) -- or any network
    whose encoder lines up. The layers map as for :func:`build_ppo_from`
    (:func:`transfer_weights`; the student is built with its own ``--hidden``
    and ``--conv-filters``, which must match the source's). With ``all``, a
    source that is itself an Actor-Mimic run of the same games in the same
    order also gives its feature-regression heads (same shapes required);
    otherwise they start fresh, with a note.

    Returns the record for the run's ``config.json``: the checkpoint read, its
    sha256 and the :class:`TransferReport`.

    Raises:
        ValueError: a bad path or checkpoint, or a layer that does not line up
            (one line naming it).
    """
    from maskrl.agents.checkpoint import load_checkpoint
    from maskrl.agents.mimic import ActorMimic

    if layers not in INIT_LAYERS:
        raise ValueError(
            f"init_layers (--init-layers) must be one of {INIT_LAYERS}, got {layers!r}"
        )
    source, ckpt = load_init_source(init_from)
    for key in ("hidden", "conv_filters"):
        theirs = (source.network_kwargs or {}).get(key)
        ours = (trainer.policy.network_kwargs or {}).get(key)
        if theirs is not None and theirs != ours:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{key} differs: the --init-from network has {theirs}, the student "
                f"{ours if ours is not None else 'the default'}; pass {flag} {theirs} so the "
                "encoders line up"
            )
    same = list(source.env_ids or []) == list(trainer.env_ids)
    report = transfer_weights(trainer.policy.net, source.net, layers, same_games=same)
    if layers == "all":
        state = load_checkpoint(ckpt)
        heads = state.get("feature_heads") if state.get("format") == ActorMimic.FORMAT else None
        own = trainer.feature_heads.state_dict()
        fits = (
            same
            and isinstance(heads, dict)
            and set(heads) == set(own)
            and all(tuple(heads[k].shape) == tuple(v.shape) for k, v in own.items())
        )
        if fits:
            assert isinstance(heads, dict)
            with torch.no_grad():
                for k, v in own.items():
                    v.copy_(heads[k])
            report.copied += [f"feature_heads.{k}" for k in own]
        else:
            why = (
                "the source is not an Actor-Mimic run of the same games"
                if not (same and isinstance(heads, dict))
                else "their shapes differ from the source's"
            )
            report.fresh += [f"feature_heads.{k}" for k in own]
            report.notes.append(f"feature-regression heads start freshly initialised: {why}")
    return _init_record(ckpt, source, report)
