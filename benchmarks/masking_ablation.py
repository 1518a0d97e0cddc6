#!/usr/bin/env python
"""The masking ablation: PPO trained with ``--invalid-actions mask``, ``penalty`` and ``none``.

After Huang & Ontañón (2022, "A Closer Look at Invalid Action Masking in
Policy Gradient Algorithms"). Each mode trains masked PPO's network with the
same settings and seed on one env:

* ``mask``    -- samples among the valid actions only (maskrl's PPO);
* ``penalty`` -- samples over all actions; an invalid one is a no-op with
  reward ``--penalty`` (default :data:`maskrl.agents.config.DEFAULT_INVALID_PENALTY`);
* ``none``    -- samples over all actions; the env applies its own rule
  (Knapsack: the episode ends; ConnectFour: a loss; MinAtar: a no-op).

Each trained policy is then evaluated on the same instances (same seed)
twice: with the mask (``evaluate(use_mask=True)``: only valid actions) and
without it (``use_mask=False``: every action offered, the env's own rule for
an invalid one) -- the mask-trained policy played without its mask is
"trained with masks, evaluated without".

Columns: ``train return`` is the mean return of the last 100 training episodes
(penalties included in mode ``penalty``); ``train invalid`` the share of invalid
actions over the last 10% of training updates; ``eval`` returns are mean +- std
over ``--episodes`` episodes (no penalty in any evaluation); ``eval invalid`` the
share of invalid actions in the unmasked evaluation.

Several seeds (``--seeds 1 2 3``) train every mode once per seed; the output
has a table per seed and one of the mean over seeds with the spread (the
lowest and highest seed). Each run records its learning curve after every
update: env steps, the mean return of the training episodes that ended in
that update (``null`` if none did; penalties included), how many ended, and the
share of invalid actions in the update. ``--out`` writes all of it as JSON;
``--plot FILE.png`` (matplotlib: the ``plots`` extra) draws per mode the mean
over seeds with a min-max band, return and invalid share against env steps;
``--replot A.json [B.json ...]`` prints each saved file's table of the mean
over seeds again and, with ``--plot FILE.png``, draws them (one row per file),
without training; with ``--merge OUT.json`` it first merges the files (runs of
one setting trained in separate processes, e.g. ``--modes mask`` in one and
``--modes penalty`` in another) into one, written to ``OUT.json``, and prints
and draws that. The mean-over-seeds table's train return is the mean over
the episodes of the last 10% of updates (the window of ``train invalid``; read
off the curve), the per-seed table's the mean of the last 100 episodes. A
last table gives, per mode, the training return in windows of the run's steps
(0-10%, 10-25%, 25-50%, 50-100%) with the penalties taken out
(:func:`window_returns`): how fast each mode learns the game itself.

``--env-kwargs JSON`` makes the env with other keyword arguments (e.g.
``'{"slots": 50}'``: Knapsack with 50 item slots, so more invalid actions);
the script registers them under an id of its own (``ablation/...``) in this
process's Gymnasium registry, so training and evaluation make the same env.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/masking_ablation.py --env maskrl/Knapsack-v0 \\
        --total-timesteps 100000 --seeds 1 2 --out ablation_knapsack.json --plot ablation.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("mask", "penalty", "none")
#: The per-seed figures the summary averages (see :func:`_field`).
SUMMARY_FIELDS = (
    "train_return_tail", "train_invalid_rate", "eval_masked", "eval_unmasked", "eval_unmasked_invalid",
)  # fmt: skip


def tail_return(curve: dict[str, list[Any]]) -> float | None:
    """Mean return of the training episodes that ended in the last 10% of updates.

    The same window as ``train_invalid_rate``; read off the curve (each update's
    mean weighted by its episodes), so it can be recomputed from a saved JSON.
    ``None`` if no episode ended there.
    """
    k = max(1, len(curve["steps"]) // 10)
    pairs = [(v, n) for v, n in zip(curve["return"][-k:], curve["episodes"][-k:], strict=True) if n]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def _field(r: dict[str, Any], name: str) -> float | None:
    if name == "train_return_tail":
        return tail_return(r["curve"])
    if name == "eval_masked":
        return float(r["eval_masked"]["mean"])
    if name == "eval_unmasked":
        return float(r["eval_unmasked"]["mean"])
    if name == "eval_unmasked_invalid":
        return float(r["eval_unmasked"]["invalid_action_rate"])
    value = r[name]
    return None if value is None else float(value)


def env_with_kwargs(env_id: str, kwargs: dict[str, Any]) -> str:
    """An id that makes ``env_id`` with ``kwargs`` (``env_id`` itself when there are none).

    Registers ``ablation/<name>-<key><value>...-v<version>`` in this process's
    Gymnasium registry (a copy of ``env_id``'s spec with the kwargs merged in)
    and makes one env to check the kwargs.

    Raises:
        ValueError: an unknown ``env_id``, or kwargs the env refuses.
    """
    import gymnasium as gym

    if not kwargs:
        return env_id
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as e:
        raise ValueError(f"--env {env_id}: {e}") from e
    tag = "-".join(re.sub(r"[^\w.]", "", f"{k}{v}") for k, v in sorted(kwargs.items()))
    new_id = f"ablation/{spec.name}-{tag}-v{spec.version or 0}"
    merged = {**(spec.kwargs or {}), **kwargs}
    gym.registry[new_id] = dataclasses.replace(spec, id=new_id, kwargs=merged)
    try:
        gym.make(new_id).close()
    except (TypeError, ValueError) as e:
        del gym.registry[new_id]
        raise ValueError(f"--env-kwargs {json.dumps(kwargs)} for {env_id}: {e}") from e
    return new_id


def run_mode(args: argparse.Namespace, mode: str, seed: int, env_id: str) -> dict[str, Any]:
    """Train one mode with one seed, evaluate it with and without the mask.

    The result holds ``curve``: per update ``steps`` (env steps after it),
    ``return`` (mean of the episodes that ended in it, ``None`` if none did),
    ``episodes`` (how many ended) and ``invalid_rate`` (its share of invalid actions).
    """
    from maskrl.agents import PPO, PPOConfig, evaluate

    cfg = PPOConfig(
        seed=seed,
        device=args.device,
        torch_threads=1,
        num_envs=args.num_envs,
        invalid_actions=mode,
        invalid_penalty=args.penalty if mode == "penalty" else None,
    )
    agent = PPO(env_id, cfg)
    curve: dict[str, list[Any]] = {"steps": [], "return": [], "episodes": [], "invalid_rate": []}
    seen = [0]

    def record(trainer: Any, m: dict[str, float]) -> None:
        returns = trainer.episode_stats.returns
        new = returns[seen[0] :]
        seen[0] = len(returns)
        curve["steps"].append(int(trainer.global_step))
        curve["return"].append(float(np.mean(new)) if new else None)
        curve["episodes"].append(len(new))
        curve["invalid_rate"].append(float(m["invalid_action_rate"]))

    t0 = time.perf_counter()
    agent.learn(args.total_timesteps, callback=record)
    wall = time.perf_counter() - t0
    agent.envs.close()
    rates = curve["invalid_rate"]
    tail = rates[-max(1, len(rates) // 10) :]
    recent = agent.episode_stats.returns[-100:]
    out: dict[str, Any] = {
        "mode": mode,
        "seed": seed,
        "penalty": cfg.penalty_reward if mode == "penalty" else None,
        "steps": agent.global_step,
        "train_seconds": wall,
        "train_episodes": len(agent.episode_stats.returns),
        "train_return": float(np.mean(recent)) if recent else None,
        "train_invalid_rate": float(np.mean(tail)),
        "first_invalid_rate": rates[0],
    }
    for use_mask in (True, False):
        ev = evaluate(agent, env_id, args.episodes, seed=seed + 10_000, use_mask=use_mask)
        key = "eval_masked" if use_mask else "eval_unmasked"
        out[key] = {k: ev[k] for k in ("mean", "std", "episodes", "invalid_action_rate")}
    out["curve"] = curve
    return out


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per mode (in the order met): each :data:`SUMMARY_FIELDS` figure's mean, min and max over seeds.

    A figure some seed has no value for (no training episode ended) is ``None``.
    """
    modes: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        modes.setdefault(r["mode"], []).append(r)
    rows = []
    for mode, rs in modes.items():
        row: dict[str, Any] = {
            "mode": mode,
            "penalty": rs[0]["penalty"],
            "seeds": [r["seed"] for r in rs],
        }
        for name in SUMMARY_FIELDS:
            values = [_field(r, name) for r in rs]
            if any(v is None for v in values):
                row[name] = None
                continue
            v = np.asarray(values, dtype=np.float64)
            row[name] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        rows.append(row)
    return rows


def _mode_name(r: dict[str, Any]) -> str:
    return r["mode"] if r["penalty"] is None else f"penalty ({r['penalty']:g})"


def table(results: list[dict[str, Any]]) -> str:
    """One seed's results as a Markdown table."""
    rows = [
        "| mode | train return | train invalid | eval with mask | eval without mask "
        "| eval invalid (no mask) | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        m, u = r["eval_masked"], r["eval_unmasked"]
        ret = "n/a" if r["train_return"] is None else f"{r['train_return']:.2f}"
        rows.append(
            f"| {_mode_name(r)} | {ret} | {r['train_invalid_rate']:.1%} "
            f"| {m['mean']:.2f} +- {m['std']:.2f} | {u['mean']:.2f} +- {u['std']:.2f} "
            f"| {u['invalid_action_rate']:.1%} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(rows)


def summary_table(summary: list[dict[str, Any]]) -> str:
    """:func:`summarize`'s rows as a Markdown table: mean (min - max) over seeds.

    Its train return is :func:`tail_return` (the episodes of the last 10% of
    updates), not the per-seed table's last 100 episodes.
    """

    def cell(s: dict[str, float] | None, pct: bool) -> str:
        if s is None:
            return "n/a"
        f = (lambda x: f"{x:.1%}") if pct else (lambda x: f"{x:.2f}")
        return f"{f(s['mean'])} ({f(s['min'])} - {f(s['max'])})"

    rows = [
        "| mode | seeds | train return (last 10%) | train invalid | eval with mask | eval without mask "
        "| eval invalid (no mask) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        rows.append(
            f"| {_mode_name(s)} | {len(s['seeds'])} | {cell(s['train_return_tail'], False)} "
            f"| {cell(s['train_invalid_rate'], True)} | {cell(s['eval_masked'], False)} "
            f"| {cell(s['eval_unmasked'], False)} | {cell(s['eval_unmasked_invalid'], True)} |"
        )
    return "\n".join(rows)


#: The windows of :func:`window_returns`, as fractions of a run's steps.
WINDOWS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)


def window_returns(r: dict[str, Any], windows: tuple[float, ...] = WINDOWS) -> list[float | None]:
    """The game's own return per training episode in each window of run ``r``'s steps.

    Window ``i`` holds the updates whose last step lies in ``(windows[i] * T,
    windows[i + 1] * T]`` (``T``: the run's steps). Its figure is the sum of the
    returns of the episodes that ended in those updates, minus the penalties paid
    in them (``penalty`` times the invalid actions: their share times the update's
    steps), divided by the number of those episodes: in mode ``penalty`` the
    game's score without the penalties, exactly but for the episodes that
    straddle a window's edge; in the other modes the training return. ``None``
    where no episode ended in the window.
    """
    c = r["curve"]
    steps = np.asarray(c["steps"], dtype=np.float64)
    prev = np.concatenate([[0.0], steps[:-1]])
    returns = np.asarray([0.0 if x is None else x for x in c["return"]], dtype=np.float64)
    episodes = np.asarray(c["episodes"], dtype=np.float64)
    invalid = np.asarray(c["invalid_rate"], dtype=np.float64) * (steps - prev)
    penalty = r["penalty"] or 0.0
    total = float(r["steps"])
    out: list[float | None] = []
    for lo, hi in zip(windows[:-1], windows[1:], strict=True):
        sel = (steps > lo * total) & (steps <= hi * total)
        n = episodes[sel].sum()
        if n == 0:
            out.append(None)
            continue
        game = (returns[sel] * episodes[sel]).sum() - penalty * invalid[sel].sum()
        out.append(float(game / n))
    return out


def window_table(results: list[dict[str, Any]], windows: tuple[float, ...] = WINDOWS) -> str:
    """:func:`window_returns` per mode as a Markdown table: mean over seeds, and the
    steps of each window."""
    total = max(int(r["steps"]) for r in results)
    heads = [f"{lo * total / 1e3:.0f}k-{hi * total / 1e3:.0f}k" for lo, hi in
             zip(windows[:-1], windows[1:], strict=True)]  # fmt: skip
    rows = [
        "| mode | seeds | " + " | ".join(heads) + " |",
        "| --- | ---: |" + " ---: |" * len(heads),
    ]
    modes: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        modes.setdefault(_mode_name(r), []).append(r)
    for name, rs in modes.items():
        per_seed = [window_returns(r, windows) for r in rs]
        cells = []
        for i in range(len(heads)):
            vals = [w[i] for w in per_seed]
            cells.append("n/a" if any(v is None for v in vals) else f"{np.mean(vals):.2f}")
        rows.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _title(payload: dict[str, Any]) -> str:
    a = payload["args"]
    kw = a.get("env_kwargs") or {}
    extra = (" " + ", ".join(f"{k}={v}" for k, v in sorted(kw.items()))) if kw else ""
    seeds = sorted({r["seed"] for r in payload["results"]})
    return f"{a['env'].split('/')[-1]}{extra} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"


def curves_figure(payloads: list[dict[str, Any]], smooth_n: int = 1) -> Any:
    """A :class:`matplotlib.figure.Figure`: a row per payload (a ``--out`` JSON), two panels:
    training return and share of invalid actions against env steps, per mode the
    mean over seeds (:func:`maskrl.curves.mean_curve`) with a min-max band, each
    seed's curve first smoothed by a trailing mean over ``smooth_n`` updates.

    Raises:
        ValueError: matplotlib missing (the message names the extra), no payloads,
            a run without curve points, or ``smooth_n < 1``.
    """
    from maskrl.curves import mean_curve, smooth
    from maskrl.plots import require_matplotlib

    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    if not payloads:
        raise ValueError("nothing to plot")
    if smooth_n < 1:
        raise ValueError(f"--smooth must be >= 1, got {smooth_n}")
    fig = Figure(figsize=(10.0, 3.4 * len(payloads)), layout="constrained")
    axes = fig.subplots(len(payloads), 2, squeeze=False)
    for row, payload in zip(axes, payloads, strict=True):
        by_mode: dict[str, list[dict[str, Any]]] = {}
        for r in payload["results"]:
            by_mode.setdefault(r["mode"], []).append(r)
        for j, (mode, rs) in enumerate(by_mode.items()):
            label = f"{_mode_name(rs[0])}, {len(rs)} seed{'s' * (len(rs) > 1)}"
            for ax, key in zip(row, ("return", "invalid_rate"), strict=True):
                series = []
                for r in rs:
                    pts = [(s, v) for s, v in zip(r["curve"]["steps"], r["curve"][key], strict=True)
                           if v is not None]  # fmt: skip
                    if not pts:
                        raise ValueError(f"{mode} seed {r['seed']}: no {key} curve points")
                    s, v = np.asarray(pts, dtype=np.float64).T
                    series.append((s, smooth(v, smooth_n)))
                grid, mean, lo, hi = mean_curve(series)
                ax.plot(grid, mean, color=f"C{j}", label=label, linewidth=1.3)
                ax.fill_between(grid, lo, hi, color=f"C{j}", alpha=0.2, linewidth=0)
        title = _title(payload)
        row[0].set_title(f"{title}: training return")
        row[1].set_title(f"{title}: invalid actions")
        row[0].set_ylabel("episodic return")
        row[1].set_ylabel("share of invalid actions")
        for ax in row:
            ax.set_xlabel("env steps")
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, not 200000
            ax.grid(alpha=0.3)
        row[0].legend(fontsize="small")
    return fig


#: The settings that runs merged into one payload must share.
MERGE_KEYS = ("env", "env_kwargs", "total_timesteps", "num_envs", "episodes", "device")


def merge_payloads(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``--out`` payload from several runs of the same setting (e.g. one mode each).

    The results are concatenated in order and the summary recomputed; the
    args are the first payload's with ``modes`` and ``seeds`` the union.

    Raises:
        ValueError: no payloads, payloads whose :data:`MERGE_KEYS` settings
            differ (named), or a (mode, penalty, seed) run given twice.
    """
    if not payloads:
        raise ValueError("nothing to merge")
    first = payloads[0]["args"]
    for i, pl in enumerate(payloads[1:], start=1):
        for k in MERGE_KEYS:
            if pl["args"].get(k) != first.get(k):
                raise ValueError(
                    f"file {i + 1} has {k}={pl['args'].get(k)!r}, file 1 {first.get(k)!r}: "
                    "only runs of one setting merge"
                )
    results = [r for pl in payloads for r in pl["results"]]
    seen: set[tuple[Any, Any, Any]] = set()
    for r in results:
        key = (r["mode"], r["penalty"], r["seed"])
        if key in seen:
            raise ValueError(f"mode {r['mode']} seed {r['seed']} is in more than one file")
        seen.add(key)
    args = dict(first)
    args["modes"] = list(dict.fromkeys(r["mode"] for r in results))
    args["seeds"] = sorted({r["seed"] for r in results})
    return {
        "args": args,
        "env_id": payloads[0]["env_id"],
        "results": results,
        "summary": summarize(results),
    }


def _parse_kwargs(text: str) -> dict[str, Any]:
    try:
        kw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--env-kwargs {text!r} is not JSON: {e}") from e
    if not isinstance(kw, dict):
        raise ValueError(f"--env-kwargs {text!r} must be a JSON object, e.g. '{{\"slots\": 50}}'")
    return kw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="maskrl/Knapsack-v0")
    p.add_argument("--env-kwargs", default=None, help="JSON object of env keyword arguments")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--total-timesteps", type=int, default=100_000, help="per mode and seed")
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--penalty", type=float, default=None, help="mode penalty's reward")
    p.add_argument("--episodes", type=int, default=200, help="evaluation episodes")
    p.add_argument("--seed", type=int, default=None, help="one seed (default 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.add_argument("--plot", default=None, help="also draw the learning curves (FILE.png)")
    p.add_argument("--smooth", type=int, default=1, help="plot: trailing mean over N updates")
    p.add_argument("--dpi", type=int, default=100, help="plot: pixels per inch (10 inches wide)")
    p.add_argument("--replot", nargs="+", default=None, metavar="JSON",
                   help="print the saved --out files' tables (and draw --plot) instead of training")  # fmt: skip
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="with --replot: merge the files (runs of one setting, e.g. one mode "
                        "each) into this file first, then print and draw it as one")  # fmt: skip
    args = p.parse_args(argv)
    if args.seed is not None and args.seeds is not None:
        p.error("give --seed or --seeds, not both")
    seeds = args.seeds if args.seeds is not None else [1 if args.seed is None else args.seed]
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds repeats a seed: {seeds}")
    if args.smooth < 1:
        p.error(f"--smooth must be >= 1, got {args.smooth}")
    if args.dpi < 1:
        p.error(f"--dpi must be >= 1, got {args.dpi}")
    if args.plot is not None:
        from maskrl.plots import check_image_path

        try:
            check_image_path(args.plot, "--plot")
        except ValueError as e:
            p.error(str(e))
    if args.merge is not None and args.replot is None:
        p.error("--merge needs --replot FILE [FILE ...] (the files to merge)")
    if args.replot is not None:
        payloads = []
        for f in args.replot:
            try:
                payloads.append(json.loads(Path(f).read_text()))
            except (OSError, ValueError) as e:
                p.error(f"--replot {f}: {e}")
        if args.merge is not None:
            try:
                merged = merge_payloads(payloads)
                Path(args.merge).write_text(json.dumps(merged, indent=1))
            except (OSError, ValueError, KeyError, TypeError) as e:
                p.error(f"--merge: {e}")
            print(f"wrote {args.merge}")
            payloads, args.replot = [merged], [args.merge]
        try:
            for f, payload in zip(args.replot, payloads, strict=True):
                print(f"{f}: {_title(payload)}, mean (lowest - highest seed) over seeds")
                print(summary_table(summarize(payload["results"])))
                print("training return per window of steps, penalties removed (mean over seeds):")
                print(window_table(payload["results"]))
            if args.plot is not None:
                curves_figure(payloads, args.smooth).savefig(args.plot, dpi=args.dpi)
                print(f"wrote {args.plot}")
        except (ValueError, KeyError, TypeError) as e:
            p.error(f"--replot: not a masking_ablation.py --out file ({e!s})")
        return 0

    import maskrl.envs  # noqa: F401  (registers the maskrl/... ids)

    try:
        env_kwargs = _parse_kwargs(args.env_kwargs) if args.env_kwargs else {}
        env_id = env_with_kwargs(args.env, env_kwargs)
    except ValueError as e:
        p.error(str(e))
    args.env_kwargs = env_kwargs
    args.seeds, args.seed = seeds, None

    results = []
    try:
        for seed in seeds:
            for mode in args.modes:
                r = run_mode(args, mode, seed, env_id)
                results.append(r)
                print(
                    f"{mode} seed {seed}: {r['steps']} steps in {r['train_seconds']:.0f} s; "
                    f"invalid actions {r['first_invalid_rate']:.1%} -> "
                    f"{r['train_invalid_rate']:.1%}",
                    file=sys.stderr,
                )
    finally:
        if env_id != args.env:  # leave the registry as it was
            import gymnasium as gym

            gym.registry.pop(env_id, None)
    summary = summarize(results)
    kw = f" {json.dumps(env_kwargs)}" if env_kwargs else ""
    for seed in seeds:
        print(f"{args.env}{kw}, {args.total_timesteps} steps per mode, seed {seed}")
        print(table([r for r in results if r["seed"] == seed]))
    if len(seeds) > 1:
        print(f"{args.env}{kw}: mean (lowest - highest seed) over seeds {seeds}")
        print(summary_table(summary))
    print("training return per window of steps, penalties removed (mean over seeds):")
    print(window_table(results))
    payload = {"args": vars(args), "env_id": env_id, "results": results, "summary": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1))
    if args.plot:
        curves_figure([payload], args.smooth).savefig(args.plot, dpi=args.dpi)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
