"""Run by ``torchrun --nproc_per_node=2`` from tests/test_distributed.py (not a test file itself).

Every rank computes, with no process group involved, the single-process PPO
update of a job's whole rollout (``num_envs`` envs, one process); then one
data-parallel update of the same data, each rank holding its own envs' columns
of that rollout. With one minibatch per epoch a single process and the ranks
see the same minibatches (the whole batch), so the weights must agree to float
rounding; with several minibatches the ranks must still agree bit for bit with
each other. Then the per-update collectives on made-up values: episode
statistics gathered, losses averaged, invalid actions summed, a stop and a
setup error seen by rank 1 alone reaching rank 0; and, once the command line's
process group (:func:`~maskrl.agents.distributed.process_group`) is left, the
threads still alive. Writes the results as JSON to ``argv[1]`` on rank 0.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from maskrl.agents import PPO, PPOConfig
from maskrl.agents.distributed import DataParallel, SetupFailed, process_group
from maskrl.agents.rollout import EpisodeStats, RolloutBuffer, collect_rollout

ENV = "maskrl/MinAtar-Breakout-v0"


def flat_weights(agent: PPO) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in agent.net.parameters()])


def columns(buf: RolloutBuffer, into: RolloutBuffer, lo: int, hi: int) -> None:
    """Copy env columns ``lo:hi`` of every per-env tensor of ``buf`` into ``into``."""
    for name, value in vars(buf).items():
        if name == "next_value":
            into.next_value.copy_(value[lo:hi])
        elif isinstance(value, dict):
            for k, v in value.items():
                getattr(into, name)[k].copy_(v[:, lo:hi])
        elif (
            isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == buf.num_envs
        ):
            getattr(into, name).copy_(value[:, lo:hi])


def reference_and_shares(cfg: PPOConfig, dp: DataParallel) -> tuple[float, float, torch.Tensor]:
    ref = PPO(ENV, cfg)  # one process: no process group is used
    start = flat_weights(ref)
    buf, state = ref._ensure_rollout_state()
    ref.net.eval()
    collect_rollout(ref.envs, buf, state, ref._act, ref._value, ref.episode_stats)
    ref.net.train()

    agent = PPO(ENV, cfg, data_parallel=dp)
    agent._start_ranks()
    start_diff = float((flat_weights(agent) - start).abs().max())
    n = agent.num_envs_local
    local = agent.allocate()
    columns(buf, local, dp.rank * n, (dp.rank + 1) * n)
    ref.update(buf)
    agent.update(local)
    ref.envs.close()
    agent.envs.close()
    mine = flat_weights(agent)
    return float((mine - flat_weights(ref)).abs().max()), start_diff, mine


def rank_spread(w: torch.Tensor) -> float:
    got = [torch.empty_like(w) for _ in range(dist.get_world_size())]
    dist.all_gather(got, w)
    return max(float((g - got[0]).abs().max()) for g in got)


def thread_names() -> list[str]:
    tasks = Path("/proc/self/task")
    return [(tasks / t / "comm").read_text().strip() for t in os.listdir(tasks)]


def main() -> None:
    # The command line's own group (gloo, --dist-timeout 60): joined, used, destroyed.
    with process_group("cpu", 60.0) as (dp, _):
        assert dp is not None
        out = checks(dp)
    # Destroyed with its threads: none may outlive Python (they abort its exit).
    out["threads_after"] = thread_names()
    if dp.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)


def checks(dp: DataParallel) -> dict[str, object]:
    # Two epochs of one minibatch: the single-process and the data-parallel updates
    # take the same steps (advantages normalised over the union, gradients averaged).
    cfg = PPOConfig(num_envs=4, num_steps=16, num_epochs=2, num_minibatches=1, device="cpu", seed=3)
    max_diff, start_diff, w = reference_and_shares(cfg, dp)
    spread = rank_spread(w)
    # Several minibatches (stratified by rank, so not one process's): ranks stay identical.
    cfg_mb = PPOConfig(
        num_envs=4, num_steps=16, num_epochs=2, num_minibatches=4, device="cpu", seed=5
    )
    _, _, w_mb = reference_and_shares(cfg_mb, dp)
    spread_mb = rank_spread(w_mb)
    out: dict[str, object] = {"max_diff": max_diff, "start_diff": start_diff}
    out.update(rank_diff=spread, rank_diff_mb=spread_mb)
    # Rank r finished r + 1 episodes of return r + 1 (after one it had before the update).
    r = dp.rank
    stats = EpisodeStats([-1.0], [1], [0])
    stats.returns += [r + 1.0] * (r + 1)
    stats.lengths += [10 * (r + 1)] * (r + 1)
    stats.game_ids += [r] * (r + 1)
    metrics, invalid = dp.sync_update({"loss": float(r), "kl": 2.0 * r}, 3 + r, stats, 1)
    out["stats"] = [stats.returns, stats.lengths, stats.game_ids]
    out["metrics"], out["invalid"] = metrics, invalid
    out["stop"] = dp.agree_stop(15 if r == 1 else None)
    try:
        dp.agree_setup("the run folder is busy" if r == 1 else None, f"runs/from-rank-{r}")
        out["setup"] = "no error"
    except SetupFailed as e:
        out["setup"] = str(e)
    out["setup_value"] = dp.agree_setup(None, f"runs/from-rank-{r}")
    dist.barrier()  # both ranks done with the group before either tears it down
    return out


if __name__ == "__main__":
    main()
