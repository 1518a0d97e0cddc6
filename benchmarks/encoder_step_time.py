#!/usr/bin/env python
"""Time per training step of the multi-game student's encoders, on the same screens.

Builds the student network of each encoder for the five MinAtar games
(``build_actor_critic`` on the multi-game vector env's spaces):

* ``cnn``          -- the padded-channel MinAtar CNN (the default);
* ``tokens``       -- ``GridTokenEncoder``, a bag of cell tokens (no self-attention);
* ``tokens+attn``  -- ``GridTokenEncoder`` with ``--layers`` self-attention blocks
  of ``--heads`` heads;
* ``tokens+relpos`` -- the same with ``relative_position=True`` (a learned
  logit bias per relative grid offset of two tokens);
* ``tokens+relpos+nb3`` -- the same with ``token_neighbourhood=3`` (each token
  embeds the 3 x 3 cells around its own).

and times, interleaved in one process so that a shared machine's load hits
each alike: one acting forward over ``--envs`` screens (no gradient), and one
minibatch update (forward, backward, Adam) over ``--minibatch`` screens --
the two parts of an Actor-Mimic step at its default sizes (40 slots, 320 per
minibatch). Screens are real ones, collected by random play. Prints the
median milliseconds per call and the implied env steps per second of the
learner (``--envs * --steps`` env steps cost ``--steps`` acting forwards plus
``epochs * minibatches`` updates).

Usage::

    python benchmarks/encoder_step_time.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

IDS = [
    "maskrl/MinAtar-Breakout-v0",
    "maskrl/MinAtar-SpaceInvaders-v0",
    "maskrl/MinAtar-Asterix-v0",
    "maskrl/MinAtar-Freeway-v0",
    "maskrl/MinAtar-Seaquest-v0",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=20, help="timed calls per part and encoder")
    p.add_argument("--envs", type=int, default=40, help="screens per acting forward")
    p.add_argument("--minibatch", type=int, default=320, help="screens per update")
    p.add_argument("--steps", type=int, default=32, help="rollout steps per update round")
    p.add_argument(
        "--updates", type=int, default=8, help="updates per round (epochs x minibatches)"
    )
    p.add_argument("--layers", type=int, default=2, help="self-attention blocks of tokens+attn")
    p.add_argument("--heads", type=int, default=4, help="heads per block of tokens+attn")
    p.add_argument("--threads", type=int, default=1, help="torch threads (restored at exit)")
    a = p.parse_args(argv)
    if min(a.repeats, a.envs, a.minibatch, a.steps, a.updates, a.threads, a.heads) < 1:
        p.error(
            "--repeats, --envs, --minibatch, --steps, --updates, --threads, --heads must be >= 1"
        )
    if a.layers < 0:
        p.error(f"--layers must be >= 0, got {a.layers}")

    import torch

    import maskrl.envs as E
    from maskrl.agents import build_actor_critic
    from maskrl.masking import masked_log_softmax

    envs = E.make_multigame_vec(IDS, 10, seed=0)
    channels = [s[0] for s in E.multigame_layout(IDS)]
    rng = np.random.default_rng(0)
    screens, games, masks = [], [], []
    obs, info = envs.reset(seed=0)
    while sum(len(s) for s in screens) < max(a.envs, a.minibatch):
        screens.append(obs["obs"])
        games.append(obs["game_id"])
        masks.append(info["action_mask"])
        acts = [int(rng.choice(np.flatnonzero(m))) for m in info["action_mask"]]
        obs, _, _, _, info = envs.step(np.asarray(acts))
    space, act_space = envs.single_observation_space, envs.single_action_space
    envs.close()
    all_obs = torch.as_tensor(np.concatenate(screens)).float()
    all_game = torch.as_tensor(np.concatenate(games)).long()
    all_mask = torch.as_tensor(np.concatenate(masks)).bool()

    def batch(n: int) -> tuple[dict[str, Any], Any]:
        return {"obs": all_obs[:n], "game_id": all_game[:n]}, all_mask[:n]

    kinds: dict[str, dict[str, Any]] = {
        "cnn": {},
        "tokens": {"multigame_encoder": "tokens", "channels_per_game": channels},
        "tokens+attn": {
            "multigame_encoder": "tokens",
            "channels_per_game": channels,
            "attention_layers": a.layers,
            "attention_heads": a.heads,
        },
    }
    if a.layers:
        kinds["tokens+relpos"] = {**kinds["tokens+attn"], "relative_position": True}
        kinds["tokens+relpos+nb3"] = {**kinds["tokens+relpos"], "token_neighbourhood": 3}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        nets = {k: build_actor_critic(space, act_space, **kw) for k, kw in kinds.items()}
        opts = {k: torch.optim.Adam(n.parameters(), lr=1e-4) for k, n in nets.items()}
        times: dict[str, dict[str, list[float]]] = {k: {"act": [], "update": []} for k in nets}
        act_obs, _ = batch(a.envs)
        upd_obs, upd_mask = batch(a.minibatch)
        for r in range(a.repeats + 1):  # the first round warms up, not timed
            for k, net in nets.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    net(act_obs)
                t1 = time.perf_counter()
                logits, value = net(upd_obs)
                loss = -masked_log_softmax(logits, upd_mask).mean() + value.pow(2).mean()
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
                t2 = time.perf_counter()
                if r:
                    times[k]["act"].append(t1 - t0)
                    times[k]["update"].append(t2 - t1)
    finally:
        torch.set_num_threads(old_threads)

    print(
        f"median ms per call over {a.repeats} calls ({a.threads} thread(s)); acting batch "
        f"{a.envs}, update minibatch {a.minibatch}; learner steps/s = {a.envs}x{a.steps} env "
        f"steps per ({a.steps} acting forwards + {a.updates} updates)"
    )
    print(f"  {'encoder':17s} {'act ms':>8s} {'update ms':>10s} {'steps/s':>8s} {'params':>8s}")
    for k, t in times.items():
        act, upd = statistics.median(t["act"]), statistics.median(t["update"])
        sps = a.envs * a.steps / (a.steps * act + a.updates * upd)
        params = sum(x.numel() for x in nets[k].parameters())
        print(f"  {k:17s} {act * 1e3:8.2f} {upd * 1e3:10.2f} {sps:8.0f} {params:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
