"""The run harness every trainer goes through: run folder, logging, checkpoints, resume.

Every run writes ``runs/<name>/``:

* tensorboard event files: whatever scalars the trainer reports after each
  update (a name with a ``/`` is used as the tag; ``SPS``,
  ``invalid_action_rate`` and ``learning_rate`` go under ``charts/``, any other
  plain name under ``losses/``), ``charts/episodic_return`` (per game too when
  there are several), ``charts/episodic_length``, and the hyperparameters as a
  text table;
* ``config.json``, the resolved configuration;
* ``checkpoint.pt``, rewritten atomically every ``checkpoint_every`` steps, at
  the end, and when the run is stopped (Ctrl-C or SIGTERM);
* ``eval.json``, the final evaluation (played without the mask when the run
  trained without it: ``--invalid-actions penalty`` or ``none``).

A trainer is anything with ``global_step``, ``steps_per_update``,
``metrics_interval``, ``episode_stats``, ``envs``, ``learn(total, callback)``, ``save(path)`` and a
``policy`` to evaluate (:class:`~maskrl.agents.PPO`,
:class:`~maskrl.agents.ActorMimic`).

Guarantees: the run folder is locked while a training writes to it (a second
training into it is refused); it is checked to be writable before anything
is trained; a stopped, crashed or interrupted run keeps its last good
checkpoint (a non-finite model is never saved over it); temporaries that a
killed run left are removed when the folder is next used.

In a data-parallel job (a trainer with a ``data_parallel``; see
:mod:`maskrl.agents.distributed`) every rank goes through the same calls, the
ranks agree on setup errors and on stops, and rank 0 alone writes the folder
(``config.json`` records ``world_size``) and evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskrl.agents.checkpoint import clean_stale_temporaries
from maskrl.agents.config import (  # noqa: F401  (RunConfig & co. stay importable from here)
    _RUN_NAME,
    DEFAULT_TOTAL_TIMESTEPS,
    MAX_RUN_NAME,
    ExpertsConfig,
    PPOConfig,
    RunConfig,
    check_run_name,
)
from maskrl.agents.distributed import DataParallel, check_world_size
from maskrl.agents.evaluation import MAX_EPISODES, evaluate
from maskrl.agents.ppo import PPO
from maskrl.agents.registry import RunContext, TrainerSpec, get_trainer, register_trainer
from maskrl.agents.trainer import NonFiniteError
from maskrl.stop import StopRequest

__all__ = [
    "DEFAULT_TOTAL_TIMESTEPS",
    "RunConfig",
    "RunLock",
    "StopRequest",
    "TrainingInterrupted",
    "run_trainer",
    "run_training",
    "finetune_ppo_config",
    "pack_experts",
    "train_experts",
    "train_mimic",
    "train_ppo",
]


class TrainingInterrupted(Exception):
    """Raised when a stop was requested, once the checkpoint is safely written.

    ``signum`` is the signal that asked (``signal.SIGINT`` or ``signal.SIGTERM``).
    ``resume`` is the folder that ``--resume`` continues (the run's own, or for a
    fine-tune its distillation run), or None when there is nothing to resume.
    """

    def __init__(
        self,
        run_dir: Path,
        step: int,
        signum: int,
        saved: bool,
        message: str | None = None,
        resume: Path | None = None,
    ) -> None:
        what = f"checkpoint saved in {run_dir}" if saved else "nothing was trained, nothing saved"
        super().__init__(message or f"stopped at step {step}; {what}")
        self.run_dir, self.step, self.signum, self.saved = run_dir, step, signum, saved
        if resume is None and (Path(run_dir) / "checkpoint.pt").is_file():
            resume = Path(run_dir)
        self.resume = resume


#: Longest wait for a new second before a resumed run opens its event file.
_EVENT_NAME_WAIT_S = 3.0


def wait_for_a_later_event_file_name(run_dir: Path, clock: Callable[[], float] = time.time) -> None:
    """Return once a new event file in ``run_dir`` would sort after every existing one.

    TensorBoard reads a folder's event files in name order, and a name starts
    with the second it was opened in (``events.out.tfevents.<second>.<host>.<pid>.<n>``).
    A resumed run's file must come after the old ones, or its ``purge_step``
    (which drops the points logged after the checkpoint) is read before them
    and the curves come out of order. Within the same second the rest of the
    name decides, and the counter ``n`` sorts as text (``10`` before ``9``). So
    when the newest existing file is from this second (a resume right after the
    run stopped), wait for the next one: at most :data:`_EVENT_NAME_WAIT_S`
    seconds (a clock set back further than that is left alone).
    """
    stamps = []
    for p in run_dir.glob("events.out.tfevents.*"):
        parts = p.name.split(".")
        if len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    if not stamps:
        return
    deadline = clock() + _EVENT_NAME_WAIT_S
    while int(clock()) <= max(stamps) and clock() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def _phase(stop: Any, phase: str) -> Iterator[None]:
    """``stop.during(phase)`` for any stop object (one without phases is left alone)."""
    during = getattr(stop, "during", None)
    if during is None:
        yield
        return
    with during(phase):
        yield


def _signum(stop: Any) -> int:
    got = getattr(stop, "signum", None)
    return int(got) if got is not None else int(signal.SIGINT)


class RunLock:
    """An exclusive lock on a run folder (``.lock``), held while a training writes to it.

    Raises:
        ValueError: another process holds it (the message names its pid), or the
            folder cannot be written.
    """

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.path = run_dir / ".lock"
        self.resume = resume
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"run folder {self.path.parent} is not writable ({e.strerror})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.read(fd, 64).decode().strip()
            except OSError:
                pass
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ValueError(
                    f"run folder {self.path.parent} is in use by another training"
                    + (f" (pid {holder})" if holder else "")
                    + (
                        "; wait for it to finish"
                        if self.resume
                        else "; wait for it to finish or choose another --run-name"
                    )
                ) from e
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def prepare_run_dir(run_dir: Path, resume: bool = False) -> RunLock:
    """Create (if needed), check writable, lock and tidy a run folder; returns the held lock.

    ``resume``: the folder is being resumed (a busy folder's message then does not
    suggest another ``--run-name``, which a resume cannot take).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} exists and is not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create run folder {run_dir} ({e.strerror or e})") from e
    lock = RunLock(run_dir, resume).acquire()
    try:
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        lock.release()
        raise ValueError(
            f"run folder {run_dir} is not writable ({e.strerror or e}): nothing could be saved"
        ) from e
    for name in ("checkpoint.pt", "config.json", "eval.json", "experts.json"):
        clean_stale_temporaries(run_dir, name)
    return lock


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` atomically (a temporary of its own, then a rename over the target)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _game_label(env_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", env_id.split("/")[-1].split(":")[-1])


def _hparam_table(d: dict[str, Any]) -> str:
    rows = "\n".join(f"|{k}|{v}|" for k, v in d.items())
    return f"|param|value|\n|-|-|\n{rows}"


#: Metrics the trainer core itself reports (logged under charts/); every other
#: plain metric name is a loss term (losses/<name>).
_CHART_METRICS = {"SPS", "invalid_action_rate", "learning_rate"}


def metric_tag(name: str) -> str:
    """Tensorboard tag of a trainer metric (see the module docstring)."""
    if "/" in name:
        return name
    return f"charts/{name}" if name in _CHART_METRICS else f"losses/{name}"


def run_training(
    trainer: Any,
    run_dir: Path,
    run: RunConfig,
    hparams: dict[str, Any],
    resumed: bool,
    stop: StopRequest | None = None,
    eval_fn: Callable[[Any, list[str], int, int], dict[str, Any]] | None = None,
    eval_seed: int = 10_000,
) -> dict[str, Any]:
    """Train ``trainer`` to ``run.total`` steps in ``run_dir`` and evaluate it.

    The caller has prepared (and locked) ``run_dir`` and written ``config.json``.

    Returns:
        ``{"run_dir", "global_step", "steps_trained", "train_seconds", "train_sps",
        "last_100_episode_return", "eval"?}``, also written to ``eval.json``.

    Raises:
        TrainingInterrupted: ``stop`` was requested; the checkpoint is written
            (if anything was trained).
        ValueError: a non-finite value stopped training, or a checkpoint could
            not be written; the message says where the last good checkpoint is.
    """
    from torch.utils.tensorboard import SummaryWriter

    dp = getattr(trainer, "data_parallel", None)
    if dp is not None:
        # Every rank set up (or the job stops with the one error); rank 0's folder is the run's.
        run_dir = Path(dp.agree_setup(None, str(run_dir)))
    main = dp is None or dp.is_main  # the rank that writes the run folder and evaluates
    ckpt_path = run_dir / "checkpoint.pt"
    labels = [_game_label(e) for e in run.env_ids]
    total = run.total
    step_start = trainer.global_step
    last_good: dict[str, Any] = {"step": step_start if ckpt_path.exists() else None}

    def save() -> None:
        if not main:
            return
        try:
            trainer.save(ckpt_path)
        except (OSError, ValueError) as e:
            where = (
                f"the last good checkpoint is {ckpt_path} (step {last_good['step']})"
                if last_good["step"] is not None
                else "no checkpoint was written"
            )
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ValueError(f"could not write {ckpt_path} ({reason}); {where}") from e
        last_good["step"] = trainer.global_step

    if _stopping(dp, stop):
        # Stopped while the envs were being built: nothing new to save.
        trainer.envs.close()
        raise TrainingInterrupted(run_dir, trainer.global_step, _signum(stop), saved=False)

    # On resume, drop what was logged after the checkpoint (work that was lost); the
    # points at the checkpoint's own step belong to the update it saved, so they stay.
    if resumed and main:
        wait_for_a_later_event_file_name(run_dir)
    writer: Any = (
        SummaryWriter(str(run_dir), purge_step=trainer.global_step + 1 if resumed else None)
        if main
        else _NoWriter()
    )
    if not resumed:
        writer.add_text("hyperparameters", _hparam_table(hparams))
    bar = None
    per_update = int(trainer.steps_per_update)
    # The run does whole updates: size the bar to the step count it will reach.
    remaining = max(0, total - step_start)
    end_step = step_start + math.ceil(remaining / per_update) * per_update
    if run.progress and main:
        from tqdm import tqdm

        bar = tqdm(
            total=end_step,
            initial=step_start,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,  # one refresh a second keeps non-interactive logs short
        )
    next_ckpt = (trainer.global_step // run.checkpoint_every + 1) * run.checkpoint_every
    recent: list[float] = []
    seen = len(trainer.episode_stats.returns)
    t_start = time.perf_counter()
    interval = int(trainer.metrics_interval)
    pending: dict[str, list[float]] = {}
    last_metrics_step = trainer.global_step

    def write_metrics(step: int) -> None:
        nonlocal last_metrics_step
        for k, vs in pending.items():
            writer.add_scalar(metric_tag(k), float(np.mean(vs)), step)
        pending.clear()
        last_metrics_step = step

    def on_update(t: Any, m: dict[str, float]) -> bool:
        nonlocal seen, next_ckpt
        s = t.global_step
        st = t.episode_stats
        new_r, new_l, new_g = st.returns[seen:], st.lengths[seen:], st.game_ids[seen:]
        seen = len(st.returns)
        if new_r:
            writer.add_scalar("charts/episodic_return", float(np.mean(new_r)), s)
            writer.add_scalar("charts/episodic_length", float(np.mean(new_l)), s)
            if len(labels) > 1:
                for g, lab in enumerate(labels):
                    rg = [r for r, gi in zip(new_r, new_g, strict=True) if gi == g]
                    if rg:
                        writer.add_scalar(f"charts/episodic_return/{lab}", float(np.mean(rg)), s)
            recent.extend(new_r)
            del recent[:-100]
        if len(st.returns) > 10_000:  # keep the statistics bounded on long runs
            st.clear()
            seen = 0
        # The metrics: one point per update, or with a metrics_interval (DQN's few-step
        # iterations) the mean of each metric over the updates since the last point.
        for k, v in m.items():
            pending.setdefault(k, []).append(v)
        if s - last_metrics_step >= interval:
            write_metrics(s)
        if bar is not None:
            bar.update(s - bar.n)
            sps = m.get("SPS")
            bar.set_postfix(
                SPS=f"{sps:.0f}" if sps is not None else "-",
                ret=f"{np.mean(recent):.2f}" if recent else "-",
                refresh=False,  # drawn at the bar's own pace (mininterval), not per update
            )
        if s >= next_ckpt:
            save()
            next_ckpt = (s // run.checkpoint_every + 1) * run.checkpoint_every
        return not _stopping(dp, stop)  # in a job: every rank stops after the same update

    try:
        with _phase(stop, "training"):
            trainer.learn(total, callback=on_update)
    except NonFiniteError as e:
        where = (
            f"the last good checkpoint is {ckpt_path} (step {last_good['step']})"
            if last_good["step"] is not None
            else "no checkpoint was written"
        )
        raise NonFiniteError(f"training stopped: {e}; {where}") from e
    finally:
        if pending:  # the updates after the last point (a run's end, a stop)
            write_metrics(trainer.global_step)
        if bar is not None:
            bar.close()
        writer.flush()
    finished = False  # the final checkpoint is written
    try:
        # Still "training" while saving: a signal now is read afterwards, never mid-write.
        with _phase(stop, "training"):
            if _stopping(dp, stop):
                # The model is at the end of its last completed update; save it so that
                # --resume continues from there.
                trained = trainer.global_step > step_start
                if trained:
                    save()
                raise TrainingInterrupted(run_dir, trainer.global_step, _signum(stop), trained)
            save()
            finished = True
        with _phase(stop, "evaluation"):
            elapsed = time.perf_counter() - t_start
            steps = trainer.global_step - step_start
            summary: dict[str, Any] = {
                "run_dir": str(run_dir),
                "global_step": trainer.global_step,
                "steps_trained": steps,
                "train_seconds": elapsed,
                "train_sps": steps / max(elapsed, 1e-9),
                "last_100_episode_return": float(np.mean(recent)) if recent else None,
            }
            if run.eval_episodes > 0 and main:
                if eval_fn is None:
                    # A policy trained without the mask (the masking ablation) plays without it.
                    mode = getattr(getattr(trainer, "config", None), "invalid_actions", "mask")
                    # A run trained on flickering screens is evaluated on them too.
                    flicker = float(getattr(getattr(trainer, "config", None), "flicker", 0.0))
                    # A value-based trainer (DQN) is evaluated greedily: the masked argmax.
                    ev = _default_eval(
                        trainer.policy, run.env_ids, run.eval_episodes, eval_seed, stop,
                        use_mask=mode == "mask",
                        deterministic=bool(getattr(trainer, "greedy_eval", False)),
                        flicker=flicker,
                    )  # fmt: skip
                else:
                    ev = eval_fn(trainer.policy, run.env_ids, run.eval_episodes, eval_seed)
                summary["eval"] = ev
                if "per_game" in ev:
                    for game, r in ev["per_game"].items():
                        writer.add_scalar(
                            f"eval/return/{_game_label(game)}", r["mean"], trainer.global_step
                        )
                writer.add_scalar("eval/return", ev["mean"], trainer.global_step)
            if main:
                _write_json(run_dir / "eval.json", summary)
        return summary
    except KeyboardInterrupt:
        if not finished:
            raise
        # Stopped in the final evaluation: the checkpoint is written, and --resume
        # trains nothing more and evaluates.
        raise TrainingInterrupted(
            run_dir,
            trainer.global_step,
            _signum(stop),
            True,
            message=f"stopped during the final evaluation at step {trainer.global_step}; "
            f"training is done and its checkpoint saved in {run_dir} (eval.json not written)",
        ) from None
    finally:
        writer.close()
        trainer.envs.close()


class _NoWriter:
    """What a data-parallel rank other than 0 logs to: nothing (rank 0 writes the run)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _stopping(dp: Any, stop: StopRequest | None) -> bool:
    """Whether the run stops now: ``stop.requested``, or in a job, what the ranks agree.

    In a data-parallel job a stop requested on any rank is requested on every
    rank, and the decision is the agreed one only: a signal that arrives during
    the agreement counts at the next one, on every rank alike.
    """
    if dp is None:
        return stop is not None and stop.requested
    signum = dp.agree_stop(getattr(stop, "signum", None))
    if signum is not None and stop is not None:
        stop.request(signum)
    return signum is not None


def _default_eval(
    policy: Any,
    ids: list[str],
    episodes: int,
    seed: int,
    stop: Any = None,
    use_mask: bool = True,
    deterministic: bool = False,
    flicker: float = 0.0,
) -> dict[str, Any]:
    return evaluate(
        policy, ids if len(ids) > 1 else ids[0], episodes, seed=seed, stop=stop,
        use_mask=use_mask, deterministic=deterministic, flicker=flicker,
    )  # fmt: skip


# ---------------------------------------------------------------------- PPO


def load_run_config(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's saved ``config.json``: its :class:`RunConfig` and the whole dict."""
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text())
        run = RunConfig(**{**saved["run"], "resume": str(run_dir)})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot resume: {path} is missing or unreadable ({e})") from e
    try:
        run.validate()
    except ValueError as e:
        raise ValueError(f"cannot resume: {path} holds a bad value: {e}") from e
    return run, saved


def open_resumed_run(
    run: RunConfig, lock: bool = True
) -> tuple[RunConfig, dict[str, Any], Path, RunLock | None]:
    """The saved run that ``run.resume`` names, locked: ``(run, config.json, run_dir, lock)``.

    ``lock=False`` (a data-parallel rank other than 0): read it only; no lock (None).

    What the user asked for now wins for the length of the run
    (``total_timesteps``, if given) and the bookkeeping (progress, evaluation);
    what shapes the network and the data comes from the saved run.
    """
    assert run.resume is not None
    run_dir = Path(run.resume)
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise ValueError(f"cannot resume: {ckpt} does not exist")
    saved_run, saved = load_run_config(run_dir)
    if run.total_timesteps is not None:
        saved_run.total_timesteps = run.total_timesteps
    saved_run.progress, saved_run.eval_episodes = run.progress, run.eval_episodes
    return saved_run, saved, run_dir, prepare_run_dir(run_dir, resume=True) if lock else None


def new_run_dir(run: RunConfig, seed: int) -> Path:
    """``runs_dir/run_name`` (default name ``<game>[+]__<seed>__<time>``), refused if it holds a run."""
    name = run.run_name or (
        f"{_game_label(run.env_ids[0])}{'+' if len(run.env_ids) > 1 else ''}__{seed}__{int(time.time())}"
    )
    check_run_name(name)
    runs_dir = Path(run.runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ValueError(f"runs_dir (--runs-dir) {runs_dir} exists and is not a folder")
    run_dir = runs_dir / name
    if (run_dir / "checkpoint.pt").exists():
        raise ValueError(
            f"run folder {run_dir} already holds a checkpoint: use --resume {run_dir} or another --run-name"
        )
    if (run_dir / "experts.json").exists():
        raise ValueError(
            f"run folder {run_dir} holds experts (experts.json), not a run: choose another --run-name"
        )
    run.run_name = name
    return run_dir


def _check_fits_first(stop: Any, *args: Any, **kwargs: Any) -> None:
    """:func:`~maskrl.agents.base.check_rollout_fits`, as the first step of a run's setup.

    It builds one env per game, which imports the games' modules; MinAtar's import
    swallows a ``KeyboardInterrupt`` (a bare ``try/except`` around matplotlib), so
    this step runs in the ``"loading"`` phase, where a signal only sets the stop
    request, and the request is read right after it. Building the run's envs
    afterwards imports nothing new, so a signal there stops it at once.
    """
    from maskrl.agents.base import check_rollout_fits

    with _phase(stop, "loading"):
        check_rollout_fits(*args, **kwargs)
    if stop is not None and stop.requested:
        raise KeyboardInterrupt


def check_resume_total(asked: int | None, step: int, run_dir: Path, saved: Any = None) -> None:
    """Refuse a ``--total-timesteps`` below the step a resumed run has reached.

    Such a resume would train nothing and overwrite the run's saved total. The
    run's own total (``asked`` None, or equal to ``saved``, the total in its
    ``config.json``) is always accepted: a run that ended a little past its total
    (runs do whole updates) resumes to be evaluated.
    """
    if asked is not None and asked < step and asked != saved:
        raise ValueError(
            f"--total-timesteps {asked} is below the step {run_dir} has reached ({step}): "
            f"give at least {step}, or leave it out to keep the run's own total"
        )


def run_trainer(
    name: str,
    run: RunConfig,
    config: Any,
    stop: StopRequest | None = None,
    data_parallel: DataParallel | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run of the registered trainer ``name`` and evaluate it.

    The flow every trainer shares: validate; on ``run.resume``, open and lock
    the saved run, check the world size, load the trainer
    (:meth:`TrainerSpec.load <maskrl.agents.registry.TrainerSpec.load>`), refuse a
    ``--total-timesteps`` below its step and call the trainer's ``on_resume``;
    for a new run, build the trainer (its ``build``), allocate its rollout
    buffer, name, create and lock the run folder. Then write ``config.json``
    (``run``, the config under ``name``, ``device``, the trainer's ``record``
    entries, a job's ``world_size``) and hand over to :func:`run_training`.

    ``options``: trainer-specific run options its hooks read (Actor-Mimic's
    ``experts`` folder and ``finetune_ppo``).

    Returns:
        the evaluation summary (see :func:`run_training`).

    Raises:
        ValueError: bad input, an unusable or busy run folder, a missing or
            corrupt checkpoint, a buffer that cannot fit, a non-finite value.
        TrainingInterrupted: after a stop request, once the checkpoint is written
            (or, stopped while a resume was being set up, with nothing changed).
    """
    return _run_trainer(name, run, config, stop, data_parallel, options).summary


@dataclass
class _Finished:
    summary: dict[str, Any]
    ctx: RunContext


def _run_trainer(
    name: str,
    run: RunConfig,
    config: Any,
    stop: StopRequest | None,
    data_parallel: DataParallel | None,
    options: dict[str, Any] | None,
) -> _Finished:
    """:func:`run_trainer`, also returning the run's context (its trainer, run folder)."""
    spec = get_trainer(name)
    run.validate()
    config.validate()
    dp = data_parallel
    main = dp is None or dp.is_main
    if dp is not None:
        dp.setup_done = False  # every rank is setting up: a setup error is agreed on
    ctx = RunContext(run, config, stop, dp, dict(options or {}), main=main)
    lock: RunLock | None = None
    resume_dir = Path(run.resume) if run.resume else None
    try:
        try:
            with _phase(stop, "setup"):
                if run.resume:
                    asked = run.total_timesteps
                    run, saved, run_dir, lock = open_resumed_run(run, lock=main)
                    ctx.run, ctx.saved, ctx.run_dir = run, saved, run_dir
                    check_world_size(saved, dp, run_dir, name)
                    trainer = spec.load(run_dir / "checkpoint.pt", config.device, dp)
                    ctx.trainer = trainer
                    check_resume_total(
                        asked, trainer.global_step, run_dir, saved["run"].get("total_timesteps")
                    )
                    if spec.on_resume is not None:
                        spec.on_resume(trainer, ctx)
                else:
                    if run.total_timesteps is None:
                        run.total_timesteps = DEFAULT_TOTAL_TIMESTEPS
                    trainer = ctx.trainer = spec.build(ctx)
                    try:
                        trainer.allocate()  # fails on an impossible buffer before a folder is made
                        run_dir = ctx.run_dir = new_run_dir(run, trainer.config.seed)
                        if main:
                            lock = prepare_run_dir(run_dir)
                    except BaseException:
                        if trainer.envs is not None:
                            trainer.envs.close()
                        raise
        except KeyboardInterrupt:
            if resume_dir is None:
                raise
            raise TrainingInterrupted(
                resume_dir,
                0,
                _signum(stop),
                False,
                message=f"stopped before training resumed; {resume_dir} is unchanged",
            ) from None
        config = trainer.config
        hparams = {**dataclasses.asdict(run), **config.to_dict()}
        record = {"run": dataclasses.asdict(run), name: config.to_dict()}
        if spec.record is not None:
            record.update(spec.record(trainer, ctx))
        record["device"] = str(trainer.device)
        # Written only now that everything loaded: a failed resume leaves config.json alone.
        if main:
            _write_json(run_dir / "config.json", {**record, **_world(dp)})
        if (
            spec.reuse_evaluation
            and run.resume
            and (run_dir / "eval.json").is_file()
            and trainer.global_step >= run.total
        ):
            # Trained and evaluated already (e.g. stopped before a follow-up began).
            trainer.envs.close()
            summary = json.loads((run_dir / "eval.json").read_text())
        else:
            summary = run_training(
                trainer, run_dir, run, hparams, bool(run.resume), stop,
                eval_seed=config.seed + 10_000,
            )  # fmt: skip
        return _Finished(summary, ctx)
    finally:
        if lock is not None:
            lock.release()


def train_ppo(
    run: RunConfig,
    config: PPOConfig,
    stop: StopRequest | None = None,
    data_parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Train (or resume) a masked PPO run and evaluate it; returns the evaluation summary.

    ``data_parallel``: this process is one rank of a torchrun job
    (:mod:`maskrl.agents.distributed`); rank 0 alone writes the run folder and
    evaluates, and a resume needs the world size the run was trained with.
    ``run_trainer("ppo", ...)`` (:func:`run_trainer`) with the ``--init-from`` check.

    Raises:
        ValueError: bad input (unknown env, no mask source, impossible config,
            missing or corrupt checkpoint, an unusable run folder, a run folder
            in use, a ``--total-timesteps`` below a resumed run's step, a rollout
            buffer that cannot fit in memory), or a non-finite value stopped training.
        TrainingInterrupted: after a stop request, once the checkpoint is written.
    """
    run.validate()
    config.validate()
    if run.resume and run.init_from is not None:
        raise ValueError(
            "--init-from starts a new run from another run's weights; --resume continues a "
            "run from its own checkpoint: give one or the other"
        )
    return run_trainer("ppo", run, config, stop, data_parallel)


def _build_ppo(ctx: RunContext) -> PPO:
    """The ``ppo`` trainer's ``build``: a new agent (or one ``--init-from`` another run)."""
    from maskrl.agents.trainer import resolve_device

    run, config, dp = ctx.run, ctx.config, ctx.data_parallel
    if config.recurrent and dp is not None:
        raise ValueError("recurrent PPO (--recurrent) runs in one process: run it without torchrun")
    if config.recurrent and run.init_from is not None:
        raise ValueError(
            "--init-from copies a feedforward run's layers; it does not combine with --recurrent"
        )
    if dp is not None:
        dp.check_config(config)  # before any env is built
    # Before the envs are built: an impossible buffer is refused at once.
    _check_fits_first(
        ctx.stop, run.env_ids,
        config.num_envs if dp is None else dp.local_envs(config.num_envs),
        config.num_steps, resolve_device(config.device), config.env_backend,
    )  # fmt: skip
    if run.init_from is not None:
        from maskrl.agents.transfer import build_ppo_from

        agent, init = build_ppo_from(run.env_ids, config, run.init_from, run.init_layers, dp)
        ctx.options["init"] = init
        return agent
    if config.recurrent:
        from maskrl.agents.recurrent import RecurrentPPO

        return RecurrentPPO(run.env_ids, config)
    return PPO(run.env_ids, config, data_parallel=dp)


def _resume_ppo(agent: PPO, ctx: RunContext) -> None:
    """The ``ppo`` trainer's ``on_resume``: the loaded agent gets its envs."""
    c, run = agent.config, ctx.run
    _check_fits_first(
        ctx.stop, run.env_ids, agent.num_envs_local, c.num_steps, agent.device, c.env_backend
    )
    agent.envs = _make_env(c, run.env_ids, agent.device, agent.policy.is_multigame, agent)
    agent.env_ids = run.env_ids


def _record_init(agent: Any, ctx: RunContext) -> dict[str, Any]:
    """A ``record`` (ppo, mimic): what an ``--init-from`` run started from."""
    init = ctx.options.get("init")
    if init is None and ctx.saved is not None:
        init = ctx.saved.get("init")  # what the run started from stays recorded
    elif init is not None:
        for note in init["notes"]:
            print(f"init-from: {note}", file=sys.stderr)
    return {} if init is None else {"init": init}


def _make_env(
    config: PPOConfig, ids: list[str], device: Any, multigame: bool = False, agent: Any = None
) -> Any:
    """The envs of a resumed run (``agent``'s share of them and seeds in a data-parallel job)."""
    from maskrl.agents.trainer import make_training_env

    n, seed = (
        (config.num_envs, config.seed) if agent is None else (agent.num_envs_local, agent.env_seed)
    )
    return make_training_env(
        ids, n, seed, config.env_backend, device, multigame,
        config.invalid_actions, config.penalty_reward, config.flicker,
    )  # fmt: skip


def _world(dp: DataParallel | None) -> dict[str, int]:
    """``config.json``'s record of a data-parallel job's size (nothing for one process)."""
    return {} if dp is None else {"world_size": dp.world_size}


# ------------------------------------------------------------- Actor-Mimic


#: PPO settings that change how fast an expert trains, not what it learns: an
#: interrupted expert may be resumed with other values of these.
_EXPERT_FREE_SETTINGS = frozenset({"device", "torch_threads", "cpu_rollout_tuning"})


def _expert_settings_differ(
    run_dir: Path, config: PPOConfig, total_timesteps: int, eval_episodes: int
) -> list[str]:
    """The settings (as flags) an expert's saved run differs in from those asked for now."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        saved_ppo, saved_run = dict(saved["ppo"]), dict(saved["run"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{run_dir} holds an expert whose config.json is missing or unreadable ({e}); "
            "move it away or choose another --run-name"
        ) from e
    asked = config.to_dict()
    # A setting added since the expert was saved has its default there.
    saved_ppo = {**PPOConfig().to_dict(), **saved_ppo}
    out = [
        f"--{k.replace('_', '-')} {asked[k]} (the expert has {saved_ppo.get(k)})"
        for k in asked
        if k not in _EXPERT_FREE_SETTINGS and saved_ppo.get(k) != asked[k]
    ]
    if saved_run.get("total_timesteps") != total_timesteps:
        out.append(
            f"--total-timesteps {total_timesteps} (the expert has {saved_run.get('total_timesteps')})"
        )
    if (run_dir / "eval.json").is_file() and saved_run.get("eval_episodes") != eval_episodes:
        out.append(
            f"--eval-episodes {eval_episodes} (the expert has {saved_run.get('eval_episodes')})"
        )
    return out


def _read_experts_json(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["experts"]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("env_id"), str) for e in entries
        ):
            raise TypeError("'experts' is not a list of entries with an env_id")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is unreadable ({e}); move it away or choose another --run-name"
        ) from e
    return entries


def merge_experts_json(path: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Add (or replace, by ``env_id``) one expert in ``experts.json``; returns all entries.

    Read, merge, then write atomically: every other expert already listed is
    kept, and a reader never sees a half-written file. The caller holds the
    folder's lock, so no other writer can interleave.
    """
    entries = _read_experts_json(path)
    for i, e in enumerate(entries):
        if e["env_id"] == entry["env_id"]:
            entries[i] = entry
            break
    else:
        entries.append(entry)
    _write_json(path, {"experts": entries})
    return entries


def train_experts(
    env_ids: list[str],
    config: PPOConfig,
    total_timesteps: int,
    run_name: str,
    runs_dir: str = ExpertsConfig.runs_dir,
    eval_episodes: int = ExpertsConfig.eval_episodes,
    progress: bool = ExpertsConfig.progress,
    stop: StopRequest | None = None,
    checkpoint_every: int = ExpertsConfig.checkpoint_every,
) -> dict[str, Any]:
    """Train one masked-PPO expert per game into ``runs_dir/run_name/<game>/``.

    The defaults are :class:`~maskrl.agents.config.ExpertsConfig`'s (as the
    ``train.py experts`` flags).

    Each expert is a normal run (``train.py eval`` accepts it). A game whose run
    already finished (it has ``eval.json``) is kept; one with only a checkpoint
    is resumed -- in both cases only if it was trained with the same settings
    (PPO config except device and thread settings, ``total_timesteps``, and for
    a finished one ``eval_episodes``): otherwise the call is refused (ValueError
    naming each differing flag), never silently answered with the old expert.

    The folder is locked for the whole call (a second ``experts`` run into it is
    refused, as for any run folder), and ``runs_dir/run_name/experts.json`` is
    merged one expert at a time, atomically: experts of games not listed in
    ``env_ids`` (from an earlier call) stay listed::

        {"experts": [{"env_id", "checkpoint", "run_dir", "mean_return", "std",
                      "episodes", "steps", "train_seconds"}, ...]}

    Returns ``{"experts": <the entries of env_ids, in that order>, "run_dir"}``.
    """
    check_run_name(run_name)
    if not 1 <= eval_episodes <= MAX_EPISODES:
        raise ValueError(
            f"eval_episodes (--eval-episodes) must be in [1, {MAX_EPISODES:,}], got {eval_episodes}"
        )
    if len(set(env_ids)) != len(env_ids) or not env_ids:
        raise ValueError(f"--env must list distinct ids, got {env_ids}")
    if not 1 <= total_timesteps <= 10**13:
        raise ValueError(
            f"total_timesteps (--total-timesteps) must be in [1, 1e13], got {total_timesteps}"
        )
    config.validate()
    root = Path(runs_dir) / run_name
    if (root / "checkpoint.pt").exists():
        raise ValueError(
            f"run folder {root} already holds a training run, not experts: choose another --run-name"
        )
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ValueError(f"runs_dir (--runs-dir) {runs_dir} exists and is not a folder")
    lock = prepare_run_dir(root)
    try:
        _read_experts_json(root / "experts.json")  # an unreadable one is refused up front
        labels = [_game_label(e) for e in env_ids]
        # Every game's settings first: nothing is trained if one of them is refused.
        for env_id, label in zip(env_ids, labels, strict=True):
            run_dir = root / label
            if (run_dir / "eval.json").is_file() or (run_dir / "checkpoint.pt").is_file():
                diff = _expert_settings_differ(run_dir, config, total_timesteps, eval_episodes)
                if diff:
                    raise ValueError(
                        f"{run_dir} holds the expert of {env_id} trained with other settings: "
                        f"{'; '.join(diff)}; rerun with the expert's settings, or choose "
                        "another --run-name"
                    )
        entries = []
        for env_id, label in zip(env_ids, labels, strict=True):
            run_dir = root / label
            done = run_dir / "eval.json"
            if done.is_file():
                summary = json.loads(done.read_text())
            elif (run_dir / "checkpoint.pt").is_file():
                summary = train_ppo(
                    RunConfig(
                        env=env_id, total_timesteps=total_timesteps, resume=str(run_dir),
                        eval_episodes=eval_episodes, progress=progress,
                    ),
                    dataclasses.replace(config),
                    stop,
                )  # fmt: skip
            else:
                summary = train_ppo(
                    RunConfig(
                        env=env_id, total_timesteps=total_timesteps, run_name=label,
                        runs_dir=str(root), eval_episodes=eval_episodes, progress=progress,
                        checkpoint_every=checkpoint_every,
                    ),
                    dataclasses.replace(config),
                    stop,
                )  # fmt: skip
            ev = summary.get("eval") or {}
            entry = {
                "env_id": env_id,
                "checkpoint": f"{label}/checkpoint.pt",
                "run_dir": label,
                "mean_return": ev.get("mean"),
                "std": ev.get("std"),
                "episodes": ev.get("episodes"),
                "steps": summary.get("global_step"),
                "train_seconds": summary.get("train_seconds"),
            }
            merge_experts_json(root / "experts.json", entry)
            entries.append(entry)
    finally:
        lock.release()
    return {"experts": entries, "run_dir": str(root)}


#: What a packed expert keeps of its run's checkpoint: the policy and where it came
#: from; the optimizer's moments, the RNG states and the update count are dropped.
PACKED_KEYS = (
    "format", "config", "env_ids", "observation_space", "action_space", "custom_network",
    "network_kwargs", "obs_layout", "model", "quant", "global_step",
)  # fmt: skip


def pack_experts(folder: str | Path, out: str | Path) -> list[dict[str, Any]]:
    """Copy the experts of ``folder`` (written by :func:`train_experts`) into ``out``, policy only.

    Each expert's checkpoint keeps its network, spaces, training config and step
    count (:data:`PACKED_KEYS`) and is marked ``"policy_only": True``: about a
    third of the file, since Adam's two moments are dropped. ``out`` is then a
    folder ``train.py mimic --experts`` reads like the original (same
    ``experts.json`` layout, each entry adding the packed file's ``sha256``),
    and ``train.py eval`` and ``--init-from`` accept its checkpoints; they
    cannot be resumed. Each packed network is read back and checked to equal
    the original before ``experts.json`` is written.

    Returns the entries of ``out/experts.json``.

    Raises:
        ValueError: ``folder`` holds no usable experts (as :func:`~maskrl.agents.mimic.load_experts`
            says), or ``out`` exists and is not an empty folder.
    """
    import torch

    from maskrl.agents.checkpoint import load_checkpoint, save_checkpoint
    from maskrl.agents.mimic import file_sha256, load_expert, load_experts

    folder, out = Path(folder), Path(out)
    load_experts(folder)  # every expert checked to be a per-game run of its game
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder: choose another one")
    entries = []
    for entry in _read_experts_json(folder / "experts.json"):
        source = folder / str(entry["checkpoint"])
        state = load_checkpoint(source)
        packed = {k: state[k] for k in PACKED_KEYS if k in state}
        packed["policy_only"] = True
        rel = Path(str(entry["checkpoint"]))
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(
                f"{folder / 'experts.json'}: the checkpoint of {entry['env_id']} ({rel}) is not a "
                "path inside the folder; only experts written by train.py experts can be packed"
            )
        target = out / rel
        save_checkpoint(packed, target)
        for name in ("config.json", "eval.json"):
            if (source.parent / name).is_file():
                (target.parent / name).write_bytes((source.parent / name).read_bytes())
        again = load_expert(str(entry["env_id"]), target, source=f"packed {target}")
        original = state["model"]
        for key, value in again.policy.net.state_dict().items():
            if not torch.equal(value, original[key]):
                raise RuntimeError(f"packed {target}: {key} differs from {source} when read back")
        entries.append({**entry, "checkpoint": rel.as_posix(), "sha256": file_sha256(target)})
    _write_json(out / "experts.json", {"experts": entries})
    return entries


def _mimic_of_finetune(run_dir: Path) -> Path | None:
    """The distillation run whose fine-tune ``run_dir`` is, or None."""
    parent = run_dir.resolve().parent
    if run_dir.resolve().name != "finetune":
        return None
    try:
        return parent if "mimic" in json.loads((parent / "config.json").read_text()) else None
    except (OSError, ValueError, TypeError):
        return None


def _check_finetune_steps(finetune_ppo: int | None) -> None:
    if finetune_ppo is not None and not 0 <= finetune_ppo <= 10**13:
        raise ValueError(f"finetune_ppo (--finetune-ppo) must be in [0, 1e13], got {finetune_ppo}")


#: A PPO fine-tune's learning rate as a share of the settings' own (from-scratch) one.
FINETUNE_LR_SHARE = 0.1


def finetune_ppo_config(
    preset: str | None = None,
    learning_rate: float | None = None,
    critic_warmup: int | None = None,
) -> PPOConfig:
    """PPO settings for fine-tuning a distilled student (``mimic --finetune-ppo``).

    ``preset``'s settings (None: :class:`PPOConfig`'s defaults) with the
    learning rate ``learning_rate``, or, when that is None, a tenth
    (:data:`FINETUNE_LR_SHARE`) of the settings' own, and ``critic_warmup``
    (None: the settings' own, 0 unless the preset says otherwise) steps of
    value-head-only updates first (:attr:`PPOConfig.critic_warmup`). Those learning rates are
    meant for training from scratch: on a trained student, Adam's steps (about
    ``lr`` per weight whatever the gradient's size, and a converged policy's
    gradient is mostly noise) undo what was distilled. Measured on the five
    MinAtar games (README, "Fine-tuning the student with PPO"): at the
    ``minatar`` preset's 5e-4 the student's Asterix return fell from 40 to
    19 within 1.5M steps; at 5e-5 it held.

    Raises:
        ValueError: an unknown preset, a learning rate outside ``(0, 1]``, or a
            negative ``critic_warmup``.
    """
    from maskrl.agents.config import PRESETS

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if learning_rate is not None and not 0 < learning_rate <= 1:
        raise ValueError(
            f"the fine-tune's learning rate (--finetune-learning-rate) must be in (0, 1], "
            f"got {learning_rate}"
        )
    if critic_warmup is not None and not 0 <= critic_warmup <= 10**13:
        raise ValueError(
            f"the fine-tune's critic warm-up (--finetune-critic-warmup) must be in [0, 1e13], "
            f"got {critic_warmup}"
        )
    cfg = PPOConfig(**(PRESETS[preset] if preset is not None else {}))
    lr = cfg.learning_rate * FINETUNE_LR_SHARE if learning_rate is None else learning_rate
    cfg = dataclasses.replace(cfg, learning_rate=lr)
    if critic_warmup is not None:
        cfg = dataclasses.replace(cfg, critic_warmup=critic_warmup)
    try:
        cfg.validate()
    except ValueError as e:  # name the flag the user typed, not PPO's
        raise ValueError(
            str(e).replace("(--critic-warmup)", "(--finetune-critic-warmup)")
        ) from None
    return cfg


def train_mimic(
    run: RunConfig,
    config: Any,
    experts_dir: str | None,
    stop: StopRequest | None = None,
    finetune_ppo: int | None = None,
    ppo_config: PPOConfig | None = None,
    data_parallel: DataParallel | None = None,
) -> dict[str, Any]:
    """Distil the experts of ``experts_dir`` into one student (or resume a distillation run).

    ``data_parallel``: this process is one rank of a torchrun job (see :func:`train_ppo`;
    the fine-tune runs on the same ranks).

    With ``finetune_ppo > 0``, the student then trains that many more steps with
    multi-game masked PPO, in ``<run>/finetune`` (a normal PPO run), with the
    settings of ``ppo_config`` (None: :func:`finetune_ppo_config`'s defaults,
    PPO's settings at a tenth of their learning rate; on resume, the run's
    own, saved in its ``config.json`` with ``finetune_ppo``).
    ``finetune_ppo=None``: 0 for a new run; on resume, the run's own setting.
    A student distilled with ``value_coef > 0`` (:class:`MimicConfig`) starts
    the fine-tune with a trained critic.

    Resuming a run resumes whatever it was doing: the distillation, or, once
    that is done, its fine-tune (``<run>/finetune``; a new ``finetune_ppo`` then
    sets the fine-tune's total). A resume that distils further (a larger
    ``total_timesteps``) keeps an existing fine-tune as
    ``<run>/finetune-from-step-<step>`` -- it belongs to the earlier student --
    and fine-tunes the new student afresh. ``run.resume`` naming the fine-tune
    folder itself is refused with the command that continues it.
    """
    run.validate()
    if run.resume and run.init_from is not None:
        raise ValueError(
            "--init-from starts a new run from another run's weights; --resume continues a "
            "run from its own checkpoint: give one or the other"
        )
    _check_finetune_steps(finetune_ppo)
    dp = data_parallel
    if run.resume:
        parent = _mimic_of_finetune(Path(run.resume))
        if parent is not None:
            raise ValueError(
                f"{run.resume} is the PPO fine-tune of the distillation run {parent}: "
                f"continue both with mimic --resume {parent}"
            )
        if (Path(run.resume) / "finetune" / "checkpoint.pt").is_file():
            saved_total = load_run_config(Path(run.resume))[0].total_timesteps
            if run.total_timesteps in (None, saved_total):  # no more distillation asked
                if dp is not None:
                    dp.setup_done = False
                return _resume_finetune(run, config, finetune_ppo, stop, dp)
    if ppo_config is None and not run.resume:
        ppo_config = finetune_ppo_config()  # recorded, so a resume fine-tunes the same way
    options = {
        "experts": experts_dir,
        "finetune_ppo": finetune_ppo,
        "finetune_config": None if ppo_config is None else ppo_config.to_dict(),
    }
    done = _run_trainer("mimic", run, config, stop, dp, options)
    summary, ctx = done.summary, done.ctx
    trainer, run, run_dir = ctx.trainer, ctx.run, ctx.run_dir
    assert run_dir is not None
    finetune_ppo = int(ctx.options["finetune_ppo"] or 0)
    saved_ppo = ctx.options.get("finetune_config")
    if saved_ppo is not None:
        ppo_config = PPOConfig.from_dict({**PPOConfig().to_dict(), **saved_ppo})
    if finetune_ppo > 0:
        try:
            if (run_dir / "finetune" / "checkpoint.pt").is_file():
                again = dataclasses.replace(run, resume=str(run_dir))
                summary["finetune"] = _resume_finetune(again, config, finetune_ppo, stop, dp)[
                    "finetune"
                ]
            else:
                summary["finetune"] = _new_finetune(
                    trainer, run, run_dir, finetune_ppo, ppo_config, stop
                )
        except TrainingInterrupted as e:
            e.resume = run_dir  # `mimic --resume <run>` continues the fine-tune
            raise
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                run_dir,
                trainer.global_step,
                _signum(stop),
                False,
                resume=run_dir,
                message=f"stopped before the PPO fine-tune began; the distilled student is "
                f"saved in {run_dir}",
            ) from None
    return summary


def _new_finetune(
    trainer: Any,
    run: RunConfig,
    run_dir: Path,
    finetune_ppo: int,
    ppo_config: PPOConfig | None,
    stop: StopRequest | None,
) -> dict[str, Any]:
    """Start the PPO fine-tune of a distilled student in ``run_dir/finetune``."""
    pcfg = dataclasses.replace(ppo_config or finetune_ppo_config(), device=str(trainer.device))
    pcfg.seed = trainer.config.seed
    dp = trainer.data_parallel
    main = dp is None or dp.is_main
    if dp is not None:
        dp.setup_done = False
    with _phase(stop, "setup"):
        agent = PPO(
            run.env_ids, pcfg, trainer.policy.net, network_kwargs=trainer.policy.network_kwargs,
            data_parallel=dp,
        )  # fmt: skip
    frun = RunConfig(
        env=run.env, total_timesteps=finetune_ppo, run_name="finetune", runs_dir=str(run_dir),
        eval_episodes=run.eval_episodes, progress=run.progress,
    )  # fmt: skip
    flock = prepare_run_dir(run_dir / "finetune") if main else None
    try:
        if main:
            _write_json(
                run_dir / "finetune" / "config.json",
                {
                    "run": dataclasses.asdict(frun),
                    "ppo": pcfg.to_dict(),
                    "device": str(agent.device),
                    **_world(dp),
                },
            )
        return run_training(
            agent, run_dir / "finetune", frun, {**dataclasses.asdict(frun), **pcfg.to_dict()},
            False, stop, eval_seed=pcfg.seed + 10_000,
        )  # fmt: skip
    finally:
        if flock is not None:
            flock.release()


def _resume_finetune(
    run: RunConfig,
    config: Any,
    finetune_ppo: int | None,
    stop: StopRequest | None,
    dp: DataParallel | None = None,
) -> dict[str, Any]:
    """``mimic --resume <run>`` once the distillation is done: continue its fine-tune."""
    assert run.resume is not None
    run_dir = Path(run.resume)
    try:
        summary = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot resume: {run_dir / 'eval.json'} is unreadable ({e})") from e
    try:
        summary["finetune"] = train_ppo(
            RunConfig(
                resume=str(run_dir / "finetune"), total_timesteps=finetune_ppo or None,
                eval_episodes=run.eval_episodes, progress=run.progress,
            ),
            PPOConfig(device=config.device),
            stop,
            dp,
        )  # fmt: skip
    except TrainingInterrupted as e:
        e.resume = run_dir
        raise
    return summary


def _build_mimic(ctx: RunContext) -> Any:
    """The ``mimic`` trainer's ``build``: a student of the experts in ``options["experts"]``."""
    from maskrl.agents.mimic import ActorMimic, load_experts
    from maskrl.agents.trainer import resolve_device

    run, config, dp = ctx.run, ctx.config, ctx.data_parallel
    experts_dir = ctx.options.get("experts")
    if not experts_dir:
        raise ValueError("--experts is required: a folder written by train.py experts")
    experts = load_experts(experts_dir, device=config.device)
    ctx.options["experts"] = str(Path(experts_dir).absolute())  # as the checkpoint records them
    run.env = ",".join(x.env_id for x in experts)
    new_run_dir(run, config.seed)  # a folder that holds a run is refused before any env is built
    # Before the envs are built, as for PPO: an impossible buffer is refused at once.
    if dp is not None:
        dp.check_config(config, games=len(experts))
    _check_fits_first(
        ctx.stop, run.env_ids,
        config.num_envs if dp is None else dp.local_envs(config.num_envs),
        config.num_steps, resolve_device(config.device), multigame=True,
    )  # fmt: skip
    trainer = ActorMimic(experts, config, dp)
    if run.init_from is not None:
        from maskrl.agents.transfer import init_mimic_from

        try:
            ctx.options["init"] = init_mimic_from(trainer, run.init_from, run.init_layers)
        except BaseException:
            trainer.envs.close()
            raise
    return trainer


def _resume_mimic(trainer: Any, ctx: RunContext) -> None:
    """The ``mimic`` trainer's ``on_resume``: its saved experts folder and fine-tune setting.

    A resume that distils further keeps an existing fine-tune (it started from
    the student as it was) as ``finetune-from-step-<step>``.
    """
    assert ctx.saved is not None and ctx.run_dir is not None
    if ctx.options.get("finetune_ppo") is None:
        ctx.options["finetune_ppo"] = int(ctx.saved.get("finetune_ppo") or 0)
    if ctx.options.get("finetune_config") is None:
        ctx.options["finetune_config"] = ctx.saved.get("finetune_config")
    ctx.options["experts"] = ctx.saved.get("experts")
    fine = ctx.run_dir / "finetune"
    if ctx.main and (fine / "checkpoint.pt").is_file() and trainer.global_step < ctx.run.total:
        os.replace(fine, ctx.run_dir / f"finetune-from-step-{trainer.global_step}")


def _record_mimic(trainer: Any, ctx: RunContext) -> dict[str, Any]:
    """The ``mimic`` trainer's ``record``: its experts folder, fine-tune steps, and
    what an ``--init-from`` run started from."""
    return {
        "experts": str(ctx.options.get("experts")),
        "finetune_ppo": int(ctx.options.get("finetune_ppo") or 0),
        "finetune_config": ctx.options.get("finetune_config"),
        **_record_init(trainer, ctx),
    }


def _register_builtins() -> None:
    from maskrl.agents.config import DQNConfig
    from maskrl.agents.dqn_trainer import DQN
    from maskrl.agents.mimic import ActorMimic, MimicConfig

    register_trainer(
        TrainerSpec(
            name="ppo",
            trainer_class=PPO,
            config_class=PPOConfig,
            build=_build_ppo,
            formats=("maskrl.ppo/1", PPO.FORMAT),
            on_resume=_resume_ppo,
            record=_record_init,
            help="masked PPO",
        )
    )
    register_trainer(
        TrainerSpec(
            name="mimic",
            trainer_class=ActorMimic,
            config_class=MimicConfig,
            build=_build_mimic,
            on_resume=_resume_mimic,
            record=_record_mimic,
            reuse_evaluation=True,
            help="Actor-Mimic distillation of per-game experts into one student",
        )
    )
    register_trainer(
        TrainerSpec(
            name="dqn",
            trainer_class=DQN,
            config_class=DQNConfig,
            build=_build_dqn,
            help="masked (double) DQN",
        )
    )


def _build_dqn(ctx: RunContext) -> Any:
    """The ``dqn`` trainer's ``build``: a new masked DQN on the run's one env."""
    from maskrl.agents.dqn_trainer import DQN

    return DQN(ctx.run.env_ids, ctx.config, ctx.data_parallel)


_register_builtins()
