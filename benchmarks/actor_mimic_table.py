#!/usr/bin/env python
"""The Actor-Mimic results table from finished runs: experts, students and a from-scratch baseline.

The runs are made with ``train.py`` (the commands are in the README's
Actor-Mimic section and in ``docs/benchmarks.md``); this script reads their
``experts.json`` / ``eval.json`` and prints one markdown row per game: each
expert's mean return, each student's, the student as a percentage of its
expert, and the multi-game PPO baseline trained from scratch, with the budgets
(env steps and wall time) of every phase.

    python benchmarks/actor_mimic_table.py --experts runs/am5 \\
        --students runs/am5-student runs/am5-student-tokens --baseline runs/mg-baseline
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _eval(run: Path) -> dict[str, Any]:
    path = run / "eval.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: the run has not finished")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def table(experts_dir: Path, students: list[Path], baseline: Path | None) -> str:
    experts = json.loads((experts_dir / "experts.json").read_text())["experts"]
    studs = [(s, _eval(s)) for s in students]
    base = _eval(baseline) if baseline is not None else None
    head = "| game | expert |" + "".join(f" {s.name} | % of expert |" for s, _ in studs)
    head += " baseline (from scratch) | % of expert |" if base else ""
    sep = "| --- | ---: |" + " ---: | ---: |" * (len(studs) + (1 if base else 0))
    rows = [head, sep]
    for e in experts:
        env_id, mean = e["env_id"], e["mean_return"]
        row = f"| {env_id.split('/')[-1]} | {mean:.2f} |"
        for _, ev in studs + ([("baseline", base)] if base else []):
            assert ev is not None
            r = ev["eval"]["per_game"][env_id]["mean"]
            row += f" {r:.2f} | {100 * r / mean:.0f}% |" if mean else f" {r:.2f} | - |"
        rows.append(row)
    expert_steps = sum(e["steps"] for e in experts)
    expert_secs = sum(e["train_seconds"] for e in experts)
    budget = [f"experts: {expert_steps:,} env steps, {expert_secs:,.0f} s"]
    for s, ev in studs:
        budget.append(f"{s.name}: {ev['global_step']:,} steps, {ev['train_seconds']:,.0f} s")
    if base:
        budget.append(f"baseline: {base['global_step']:,} steps, {base['train_seconds']:,.0f} s")
    episodes = {e["episodes"] for e in experts}
    return "\n".join(rows) + f"\n\nBudgets: {'; '.join(budget)}. Episodes per mean: {episodes}."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experts", type=Path, required=True)
    p.add_argument("--students", type=Path, nargs="+", required=True)
    p.add_argument("--baseline", type=Path, default=None)
    a = p.parse_args()
    print(table(a.experts, a.students, a.baseline))


if __name__ == "__main__":
    main()
