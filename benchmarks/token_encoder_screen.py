#!/usr/bin/env python
"""Why the token student trails the CNN student on Seaquest: a one-game distillation screen.

The five-game student with the token encoder (``--multigame-encoder tokens``)
matches the padded-channel CNN student on four MinAtar games but not on
Seaquest (README, "Self-attention encoders"). This script distils a student on
**one** game from one expert of a ``train.py experts`` folder (a one-expert
folder is written under ``--out-dir``), so a variant of the token encoder costs
minutes, and compares encoder variants at equal steps and seeds:

* ``cnn``       -- the padded-channel MinAtar CNN student (the default);
* ``tokens``    -- the plain token encoder: 2 self-attention blocks x 4 heads,
  width 64, additive attention pool straight into the heads;
* ``post``      -- the same, plus a ReLU dense layer of 128 units after the pool
  (the CNN's dense width: the heads read 128 features in both);
* ``sumpost``   -- ``post`` fed with the attention pool *and* the sum of the
  token features (a count-aware readout: a weighted mean cannot count the
  oxygen or diver gauge's cells);
* ``mh4post``   -- ``post`` with a 4-head attention pool;
* ``d128``      -- token width 128 instead of 64;
* ``conv``      -- each token embeds its cell's 3x3 neighbourhood (a per-game
  3x3 convolution stem; occupied cells only are tokens), so an enemy and its
  trail, or the sub's front and back, meet in one token;
* ``convpost``  -- ``conv`` plus the dense layer of ``post``;
* ``post-l3``   -- ``post`` with 3 self-attention blocks;
* ``post-lr5e-4`` -- ``post`` at learning rate 5e-4;
* ``relpos``    -- ``tokens`` with ``--relative-position``: each self-attention
  logit gets a learned bias for the two tokens' relative grid offset;
* ``relpos-nb3`` -- ``relpos`` with ``--token-neighbourhood 3``: each token
  embeds the 3 x 3 cells around its own (the encoder's own form of ``conv``).

``cnn``, ``tokens``, ``relpos`` and ``relpos-nb3`` are ``train.py mimic``'s own encoders; the
other variants exist only here: each run is a
subprocess that replaces the builder of the token encoder
(``maskrl.agents.networks._token_encoder``) with the variant's, then runs
``train.py mimic`` unchanged. Per run it reports the greedy evaluation's mean
return over ``--episodes`` episodes and, from the run's tensorboard file, the
student's agreement with the expert's greedy action and its policy-regression
loss, averaged over the last 20% of training (less noisy than the return).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/token_encoder_screen.py --experts runs/am5-10m \\
        --game Seaquest --variants cnn tokens post --seeds 1 2 3 --total-timesteps 200000

Runs go to ``--out-dir`` (default ``runs/token_screen``), one folder per
variant and seed; an existing finished run is read, not retrained. Wall
times are indicative only on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Set in a child process: the variant whose training run it is.
CHILD = "MASKRL_TOKEN_SCREEN_VARIANT"

#: variant -> (encoder options, extra train.py mimic flags)
VARIANTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "cnn": ({}, []),
    "tokens": ({}, []),
    "post": ({"post": 128}, []),
    "sumpost": ({"post": 128, "sum": True}, []),
    "mh4post": ({"post": 128, "pool": "multihead", "num_heads": 4}, []),
    "d128": ({"dim": 128}, []),
    "conv": ({"conv": True}, []),
    "convpost": ({"conv": True, "post": 128}, []),
    "post-l3": ({"post": 128}, ["--attention-layers", "3"]),
    "post-lr5e-4": ({"post": 128}, ["--learning-rate", "0.0005"]),
    "relpos": ({}, ["--relative-position"]),
    "relpos-nb3": ({}, ["--relative-position", "--token-neighbourhood", "3"]),
}


#: The token encoder as the variants below define it (train.py mimic's defaults for
#: the tokens student are relative positions and a 3 x 3 window): a variant's own
#: flags come after these and override them.
PLAIN_TOKENS = ["--no-relative-position", "--token-neighbourhood", "1"]


def _install_variant(options: dict[str, Any]) -> None:
    """Replace the token encoder builder with one that builds this variant (subprocess only)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import maskrl.agents.networks as networks
    from maskrl.tokens import GridTokenEncoder, compact_present

    class VariantEncoder(GridTokenEncoder):
        def __init__(self, channels: list[int], h: int, w: int, layers: int, heads: int) -> None:
            kw = {k: options[k] for k in ("dim", "pool", "num_heads") if k in options}
            super().__init__(channels, h, w, layers=layers, attention_heads=heads, **kw)
            self.use_sum = bool(options.get("sum", False))
            self.use_conv = bool(options.get("conv", False))
            width = self.dim * (2 if self.use_sum else 1)
            self.post: nn.Linear | None = None
            if options.get("post"):
                self.post = nn.Linear(width, int(options["post"]))
                width = int(options["post"])
            self.out_dim = width
            if self.use_conv:
                fan_in = self.max_channels * 9
                self.neighbourhood = nn.Parameter(
                    torch.randn(self.num_games, fan_in, self.dim) / math.sqrt(fan_in / 4)
                )

        def tokenize_cells(self, obs: torch.Tensor, game_id: torch.Tensor) -> Any:
            if not self.use_conv:
                return super().tokenize_cells(obs, game_id)
            game_id = game_id.long()
            cells = self.height * self.width
            x = obs.float()
            x = torch.where(self.channel_valid[game_id][:, :, None, None], x, torch.zeros(()))
            nb = F.unfold(x, 3, padding=1).transpose(1, 2)  # [B, HW, C*9]
            present = (x.flatten(2).transpose(1, 2) != 0).any(dim=-1)
            count = present.sum(dim=1)
            k = max(int(count.max()), 1)
            order, present = compact_present(present, k)
            nbk = nb.gather(1, order[:, :, None].expand(-1, -1, nb.shape[-1]))
            pos = (self.row_embedding[:, None, :] + self.col_embedding[None, :, :]).reshape(
                cells, self.dim
            )
            return torch.bmm(nbk, self.neighbourhood[game_id]) + pos[order], present, order

        def encode(
            self, tokens: torch.Tensor, present: torch.Tensor, cells: Any = None
        ) -> torch.Tensor:
            zero = torch.zeros((), dtype=tokens.dtype)
            h = torch.where(present[..., None], tokens, zero)
            for block in self.blocks:
                h = block(h, present)
            h = torch.relu(self.token_mlp(torch.relu(h)))
            out = self.pool(h, present)
            if self.use_sum:
                out = torch.cat([out, torch.where(present[..., None], h, zero).sum(1) / 10.0], -1)
            if self.post is not None:
                out = torch.relu(self.post(out))
            return out

    def build(
        shape: Any,
        layout: Any,
        num_games: int,
        channels: Any,
        layers: int,
        heads: int,
        relative_position: bool = False,
        token_neighbourhood: int = 1,
    ) -> VariantEncoder:
        if relative_position or token_neighbourhood != 1:
            raise SystemExit(
                "the screen's own variants take neither --relative-position nor "
                "--token-neighbourhood"
            )
        return VariantEncoder([int(c) for c in channels], shape[1], shape[2], layers, heads)

    networks._token_encoder = build  # type: ignore[assignment]


def one_game_experts(folder: Path, game: str, out: Path) -> Path:
    """A one-expert copy of ``folder/experts.json`` (absolute checkpoint paths) under ``out``."""
    index = json.loads((folder / "experts.json").read_text())
    chosen = [e for e in index["experts"] if e["env_id"].endswith(f"MinAtar-{game}-v0")]
    if not chosen:
        games = ", ".join(e["env_id"] for e in index["experts"])
        raise SystemExit(f"--experts {folder} has no expert for {game} (it has: {games})")
    for e in chosen:
        for key in ("checkpoint", "run_dir"):
            e[key] = str((folder / e[key]).resolve())
    dest = out / f"experts-{game}"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "experts.json").write_text(json.dumps({**index, "experts": chosen}, indent=1))
    return dest


def read_run(run: Path) -> dict[str, Any]:
    """The eval mean and the last-20% agreement / policy regression of a finished run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = json.loads((run / "eval.json").read_text())["eval"]
    # A one-game student's summary is the game's own (no per-game table).
    game = next(iter(ev["per_game"].values())) if "per_game" in ev else ev
    found: dict[str, float] = {}
    for f in sorted(run.glob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            name = tag.rsplit("/", 1)[-1]
            if tag.startswith("mimic/") and name in ("agreement", "policy_regression"):
                values = [e.value for e in acc.Scalars(tag)]
                tail = values[int(len(values) * 0.8) :]
                found[name] = sum(tail) / len(tail)
    se = game["std"] / math.sqrt(game["episodes"])
    return {"return": game["mean"], "se": se, "episodes": game["episodes"], **found}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experts", required=True, help="a folder written by train.py experts")
    p.add_argument("--game", default="Seaquest", help="MinAtar game of the one expert")
    p.add_argument("--variants", nargs="+", default=["cnn", "tokens", "post"], choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--total-timesteps", type=int, default=200_000)
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per run")
    p.add_argument("--out-dir", default="runs/token_screen")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    args = p.parse_args()
    out = Path(args.out_dir)
    experts = one_game_experts(Path(args.experts), args.game, out)
    results: dict[str, list[dict[str, Any]]] = {}
    for variant in args.variants:
        options, flags = VARIANTS[variant]
        encoder = "cnn" if variant == "cnn" else "tokens"
        for seed in args.seeds:
            name = f"{args.game}-{variant}-s{seed}-{args.total_timesteps}"
            run = out / name
            if not (run / "eval.json").exists():
                cmd = [
                    sys.executable, __file__, "mimic", "--experts", str(experts), "--multigame-encoder", encoder,
                    "--total-timesteps", str(args.total_timesteps), "--seed", str(seed),
                    "--runs-dir", str(out), "--run-name", name,
                    "--eval-episodes", str(args.episodes), "--no-progress",
                    "--torch-threads", "1", *(PLAIN_TOKENS if encoder == "tokens" else []),
                    *flags,
                ]  # fmt: skip
                print("$", " ".join(cmd[1:]), flush=True)
                env = {**os.environ, CHILD: variant}
                subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            r = read_run(run)
            results.setdefault(variant, []).append({"seed": seed, **r})
            print(
                f"{variant:12s} seed {seed}: return {r['return']:.2f} +- {r['se']:.2f}, "
                f"agreement {r.get('agreement', float('nan')):.3f}, "
                f"policy regression {r.get('policy_regression', float('nan')):.3f}",
                flush=True,
            )
    base = results.get("cnn")
    base_mean = sum(r["return"] for r in base) / len(base) if base else None
    print(
        "\n| variant | seeds | return (mean over seeds) | % of cnn | agreement | policy regression |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for variant, rows in results.items():
        mean = sum(r["return"] for r in rows) / len(rows)
        agree = sum(r.get("agreement", math.nan) for r in rows) / len(rows)
        loss = sum(r.get("policy_regression", math.nan) for r in rows) / len(rows)
        pct = "" if base_mean is None else "n/a (cnn: 0)"
        if base_mean:
            pct = f"{100 * mean / base_mean:.0f}%"
        seeds = " / ".join(f"{r['return']:.1f}" for r in rows)
        print(f"| {variant} | {seeds} | {mean:.2f} | {pct} | {agree:.3f} | {loss:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    if os.environ.get(CHILD):  # a child: one train.py mimic run with the variant's encoder
        if VARIANTS[os.environ[CHILD]][0]:  # train.py's own encoder otherwise
            _install_variant(VARIANTS[os.environ[CHILD]][0])
        from maskrl.cli import main as cli_main

        sys.exit(cli_main(sys.argv[1:]))
    sys.exit(main())
