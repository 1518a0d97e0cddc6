#!/usr/bin/env python
"""Returns of float, post-training int8, QAT int8 and QAT 4-bit policies, and model sizes.

For each game, given a float checkpoint and QAT checkpoints (``train.py ppo
--qat [--qat-bits 4]``; ``train.py mimic --qat`` for a student), every policy
plays the same evaluation episodes (same seeds, ``--episodes`` per game):

* ``float``      -- the float policy;
* ``PTQ int8``   -- the float policy calibrated on its own env and converted
  (:func:`maskrl.agents.quantize.int8_policy`), with no training for it;
* ``QAT-N``      -- a QAT policy as trained (fake quantization), and
* ``QAT-N int8`` -- the same converted to integer kernels.

Sizes are serialized ``state_dict`` bytes (what a checkpoint holds).

    python benchmarks/qat_returns.py --episodes 50 \\
        --game Breakout runs/am5/MinAtar-Breakout-v0 runs/qat8-Breakout runs/qat4-Breakout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from maskrl.agents import evaluate, load_policy
from maskrl.agents.quantize import int8_policy, state_bytes


def _row(label: str, policy: Any, episodes: int, seed: int) -> dict[str, Any]:
    ev = evaluate(policy, None, episodes, seed=seed)
    if "per_game" in ev:
        games = {e: r["mean"] for e, r in ev["per_game"].items()}
        return {
            "policy": label,
            "mean": ev["mean"],
            "per_game": games,
            "bytes": state_bytes(policy.net),
        }
    return {
        "policy": label,
        "mean": ev["mean"],
        "std": ev["std"],
        "episodes": ev["episodes"],
        "bytes": state_bytes(policy.net),
    }


def measure(
    float_run: Path, qat_runs: list[Path], episodes: int, seed: int
) -> list[dict[str, Any]]:
    """One row per policy (see the module docstring)."""
    base = load_policy(float_run / "checkpoint.pt", device="cpu", seed=seed)
    rows = [_row("float", base, episodes, seed)]
    rows.append(_row("PTQ int8", int8_policy(base, seed=seed), episodes, seed))
    for run in qat_runs:
        q = load_policy(run / "checkpoint.pt", device="cpu", seed=seed)
        cfg = json.loads((run / "config.json").read_text())
        spec = (cfg.get("ppo") or cfg.get("mimic") or {}).get("qat_bits", 8)
        rows.append(_row(f"QAT-{spec}", q, episodes, seed))
        rows.append(_row(f"QAT-{spec} int8", int8_policy(q, seed=seed), episodes, seed))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--game",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME FLOAT_RUN", "QAT_RUN"),
        help="a name, the float run folder, then QAT run folders",
    )
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=10_001)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    results = {}
    for name, float_run, *qat in a.game:
        rows = measure(Path(float_run), [Path(q) for q in qat], a.episodes, a.seed)
        results[name] = rows
        ref = rows[0]["mean"]
        print(f"{name}: policy | mean return | % of float | bytes")
        for r in rows:
            pct = f"{100 * r['mean'] / ref:.1f}%" if ref else "-"
            print(f"  {r['policy']:<14} {r['mean']:8.2f}  {pct:>7}  {r['bytes']:>9,}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
