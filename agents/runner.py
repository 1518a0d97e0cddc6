"""Training runs: a run folder, tensorboard logging, a progress bar, checkpoints, resume.

Every run writes ``runs/<name>/``:

* tensorboard event files (``charts/episodic_return`` -- per game too when
  there are several --, ``charts/episodic_length``, ``charts/SPS``,
  ``charts/invalid_action_rate`` (0 unless something is broken),
  ``charts/learning_rate``, ``losses/policy``, ``losses/value``,
  ``losses/entropy``, ``losses/approx_kl``, ``losses/clipfrac``,
  ``losses/explained_variance``, and the hyperparameters as a text table);
* ``config.json``, the resolved configuration;
* ``checkpoint.pt``, rewritten atomically every ``checkpoint_every`` steps, at
  the end, and on Ctrl-C;
* ``eval.json``, the final evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskrl.agents.config import PPOConfig
from maskrl.agents.evaluate import evaluate
from maskrl.agents.ppo import PPO

__all__ = ["RunConfig", "TrainingInterrupted", "train_ppo"]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    """What to train on and where the run goes (the rest is :class:`PPOConfig`)."""

    env: str = _f(
        "maskrl/MinAtar-Breakout-v0",
        "Gymnasium id with an action-mask source; several ids separated by commas train one "
        "multi-game agent",
    )
    total_timesteps: int = _f(1_000_000, "environment steps to train for (all envs counted)")
    run_name: str | None = _f(
        None, "run folder name under --runs-dir (default: <env>__<seed>__<time>)"
    )
    runs_dir: str = _f("runs", "parent folder of run folders")
    resume: str | None = _f(
        None, "continue the run in this folder (runs/<name>) from its checkpoint"
    )
    preset: str | None = _f(
        None,
        "PPO settings preset from maskrl.agents.PRESETS ('reference', 'fast'); "
        "flags given explicitly override it",
    )
    checkpoint_every: int = _f(100_000, "write checkpoint.pt every this many steps")
    eval_episodes: int = _f(10, "episodes (per game) of the final evaluation; 0 to skip")
    progress: bool = _f(True, "show a progress bar")

    def validate(self) -> None:
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1, got {self.total_timesteps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes must be >= 0, got {self.eval_episodes}")
        if not [e for e in self.env.split(",") if e.strip()]:
            raise ValueError("env is empty")

    @property
    def env_ids(self) -> list[str]:
        return [e.strip() for e in self.env.split(",") if e.strip()]


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once the checkpoint is safely written."""

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved in {run_dir}")
        self.run_dir, self.step = run_dir, step


class _StopOnCtrlC:
    """While active, a first Ctrl-C asks training to stop after the current update.

    A KeyboardInterrupt raised in the middle of an update would leave the network
    with only some of its minibatch steps (possibly inside ``optimizer.step()``)
    while the counters still say the previous update: the checkpoint would mix
    two states. So the first Ctrl-C only sets :attr:`requested`; a second one
    raises KeyboardInterrupt at once. Installed only in the main thread and only
    over Python's default handler (a SIGINT that is ignored stays ignored).
    """

    def __init__(self) -> None:
        self.requested = False
        self.installed = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after the current update and saving a checkpoint "
            "(press Ctrl-C again to stop at once, without saving)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopOnCtrlC:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._previous)
            self.installed = False


def _game_label(env_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", env_id.split("/")[-1])


def _hparam_table(d: dict[str, Any]) -> str:
    rows = "\n".join(f"|{k}|{v}|" for k, v in d.items())
    return f"|param|value|\n|-|-|\n{rows}"


def train_ppo(run: RunConfig, config: PPOConfig) -> dict[str, Any]:
    """Train (or resume) a masked PPO run and evaluate it; returns the evaluation summary.

    Raises:
        ValueError: bad input (unknown env, no mask source, impossible config,
            missing or corrupt checkpoint).
        TrainingInterrupted: after Ctrl-C, once the checkpoint is written.
    """
    from torch.utils.tensorboard import SummaryWriter

    run.validate()
    config.validate()
    if run.resume:
        run_dir = Path(run.resume)
        ckpt = run_dir / "checkpoint.pt"
        if not ckpt.is_file():
            raise ValueError(f"cannot resume: {ckpt} does not exist")
        try:
            saved = json.loads((run_dir / "config.json").read_text())
            saved_run = RunConfig(**{**saved["run"], "resume": str(run_dir)})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"cannot resume: {run_dir / 'config.json'} is missing or unreadable ({e})"
            ) from e
        # What the user asked for now wins for the length of the run and the
        # bookkeeping; what shapes the network and the data comes from the run.
        saved_run.total_timesteps = run.total_timesteps
        saved_run.progress, saved_run.eval_episodes = run.progress, run.eval_episodes
        run = saved_run
        agent = PPO.load(ckpt, device=config.device)
        from maskrl.envs import make_multigame_vec, make_vec

        c = agent.config
        ids = run.env_ids
        envs = (
            make_vec(ids[0], c.num_envs, seed=c.seed)
            if len(ids) == 1
            else make_multigame_vec(ids, c.num_envs, seed=c.seed)
        )
        agent.envs = envs
        agent.env_ids = ids
        config = c
    else:
        seed = config.seed
        name = (
            run.run_name
            or f"{_game_label(run.env_ids[0])}{'+' if len(run.env_ids) > 1 else ''}__{seed}__{int(time.time())}"
        )
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"run_name {name!r} must be a plain folder name")
        run_dir = Path(run.runs_dir) / name
        if (run_dir / "checkpoint.pt").exists():
            raise ValueError(
                f"run folder {run_dir} already holds a checkpoint: use --resume {run_dir} or another --run-name"
            )
        agent = PPO(run.env_ids, config)
        run_dir.mkdir(parents=True, exist_ok=True)
        run.run_name = name

    resolved = {
        "run": dataclasses.asdict(run),
        "ppo": config.to_dict(),
        "device": str(agent.device),
    }
    tmp = run_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=2))
    os.replace(tmp, run_dir / "config.json")

    # On resume, drop what was logged after the checkpoint (work that was lost); the
    # points at the checkpoint's own step belong to the update it saved, so they stay.
    writer = SummaryWriter(str(run_dir), purge_step=agent.global_step + 1 if run.resume else None)
    if not run.resume:
        writer.add_text(
            "hyperparameters", _hparam_table({**dataclasses.asdict(run), **config.to_dict()})
        )
    labels = [_game_label(e) for e in run.env_ids]
    bar = None
    if run.progress:
        from tqdm import tqdm

        # mininterval: one refresh a second is plenty, and keeps logs of
        # non-interactive runs short.
        bar = tqdm(
            total=run.total_timesteps,
            initial=agent.global_step,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )
    next_ckpt = (agent.global_step // run.checkpoint_every + 1) * run.checkpoint_every
    recent: list[float] = []
    seen = len(agent.episode_stats.returns)
    t_start = time.perf_counter()
    step_start = agent.global_step

    stop = _StopOnCtrlC()

    def on_update(a: PPO, m: dict[str, float]) -> bool:
        nonlocal seen, next_ckpt
        s = a.global_step
        st = a.episode_stats
        new_r, new_l, new_g = st.returns[seen:], st.lengths[seen:], st.game_ids[seen:]
        seen = len(st.returns)
        if new_r:
            writer.add_scalar("charts/episodic_return", float(np.mean(new_r)), s)
            writer.add_scalar("charts/episodic_length", float(np.mean(new_l)), s)
            if len(labels) > 1:
                for g, lab in enumerate(labels):
                    rg = [r for r, gi in zip(new_r, new_g, strict=False) if gi == g]
                    if rg:
                        writer.add_scalar(f"charts/episodic_return/{lab}", float(np.mean(rg)), s)
            recent.extend(new_r)
            del recent[:-100]
        # Keep the statistics bounded on long runs.
        if len(st.returns) > 10_000:
            st.clear()
            seen = 0
        writer.add_scalar("charts/SPS", m["SPS"], s)
        writer.add_scalar("charts/invalid_action_rate", m["invalid_action_rate"], s)
        writer.add_scalar("charts/learning_rate", m["learning_rate"], s)
        for k in ("policy", "value", "entropy", "approx_kl", "clipfrac", "explained_variance"):
            writer.add_scalar(f"losses/{k}", m[k], s)
        if bar is not None:
            bar.update(s - bar.n)
            bar.set_postfix(SPS=f"{m['SPS']:.0f}", ret=f"{np.mean(recent):.2f}" if recent else "-")
        if s >= next_ckpt:
            a.save(run_dir / "checkpoint.pt")
            next_ckpt = (s // run.checkpoint_every + 1) * run.checkpoint_every
        return not stop.requested

    try:
        with stop:
            agent.learn(run.total_timesteps, callback=on_update)
    except KeyboardInterrupt:
        writer.close()
        if bar is not None:
            bar.close()
        agent.envs.close()
        if stop.requested:
            # A second Ctrl-C stopped an update midway: keep the last good checkpoint.
            raise
        # Ctrl-C reached us as a KeyboardInterrupt (a SIGINT handler other than
        # Python's default was in place): save what there is.
        agent.save(run_dir / "checkpoint.pt")
        raise TrainingInterrupted(run_dir, agent.global_step) from None
    finally:
        if bar is not None:
            bar.close()
    if stop.requested:
        # The model is at the end of its last completed update; save it so that
        # --resume continues from there.
        agent.save(run_dir / "checkpoint.pt")
        writer.close()
        agent.envs.close()
        raise TrainingInterrupted(run_dir, agent.global_step)
    agent.save(run_dir / "checkpoint.pt")
    elapsed = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "global_step": agent.global_step,
        "train_seconds": elapsed,
        "train_sps": (agent.global_step - step_start) / max(elapsed, 1e-9),
        "last_100_episode_return": float(np.mean(recent)) if recent else None,
    }
    if run.eval_episodes > 0:
        ev = evaluate(
            agent,
            run.env_ids if len(run.env_ids) > 1 else run.env_ids[0],
            run.eval_episodes,
            seed=config.seed + 10_000,
        )
        summary["eval"] = ev
        if "per_game" in ev:
            for e, r in ev["per_game"].items():
                writer.add_scalar(f"eval/return/{_game_label(e)}", r["mean"], agent.global_step)
        writer.add_scalar("eval/return", ev["mean"], agent.global_step)
    tmp = run_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / "eval.json")
    writer.close()
    agent.envs.close()
    return summary
