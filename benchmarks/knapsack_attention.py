#!/usr/bin/env python
"""Masked PPO with the attention-pooled set encoder on ``maskrl/Knapsack-v0``.

Each episode is a fresh instance of 5-20 items (padded to 20 rows); the agent
picks items one at a time, the mask removing padding, picked and too-heavy
items. Scored as a fraction of the exact optimum (dynamic programming) over the
same evaluation instances for:

* ``random`` -- a uniformly random valid item each step;
* ``greedy`` -- the valid item with the best value/weight ratio (a strong
  classic heuristic);
* ``ppo``    -- maskrl's PPO (``SetActorCritic``: per-item MLP, ``--layers``
  masked self-attention blocks relating the items to each other and to the
  capacity left, additive attention pooling with padding masked out,
  pointer-style logits over the related item embeddings).

``--eval-sizes`` also scores the same trained policy on instances of exactly
that many items (``n_min = n_max = size``, e.g. 30, 50, 100: sizes never seen
in training), against the same exact optimum and greedy.

``--features scale-free`` trains and evaluates on an observation wrapper
(:class:`ScaleFreeFeatures`) whose item features do not change scale with
the number of items: the raw ones (weight / initial capacity) shrink as
instances grow, so a policy trained on 5-20 items reads 100-item instances
out of its training range.

``--features relaxation`` adds, per item, its place in the fractional
knapsack of the items left (:class:`RelaxationFeatures`: the weight of the
denser items ahead of it against the capacity left).

``--samples K`` adds a row ``ppo best of K``: per instance, the better of
the greedy decode and K solutions sampled from the policy (the sampled
decoding of neural combinatorial optimisation; it costs K + 1 episodes per
instance, and needs an env that can replay an instance -- here the seed).

``--self-improve ROUNDS`` then fine-tunes a copy of the trained policy by
sampling and imitation (:func:`self_improve`): each round decodes
``--si-instances`` fresh training instances greedily and ``--si-samples``
times by sampling, keeps each instance's best solution and trains the policy
to imitate it (cross-entropy under the same masks). It adds the rows
``ppo+si``: the improved policy's greedy decode, one episode per instance like
``ppo``. Its state is saved after each round (``--si-checkpoint``, default
next to ``--checkpoint`` as ``*.si.pt``); a rerun with more rounds and the same
settings goes on from there (other settings: an error).

``--checkpoint PATH`` saves the agent there every ``--save-every`` steps and,
when the file exists, resumes from it (an interrupted run is rerun with the
same command); ``--out`` writes the figures as JSON.

Usage::

    # the defaults: 2 self-attention blocks of 2 heads, scale-free features
    python benchmarks/knapsack_attention.py --total-timesteps 450000 --eval-sizes 30 50 100
    # the network before self-attention, on the env's own features
    python benchmarks/knapsack_attention.py --layers 0 --features raw --total-timesteps 300000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


class ScaleFreeFeatures(gym.ObservationWrapper):  # type: ignore[type-arg]
    """Knapsack item features that keep their scale whatever the number of items.

    Per present item (padded rows stay 0): ``log(v/w)`` and ``log w`` minus
    their means over the items still available (relative value density and
    relative weight), ``R / (w + R)`` (1 for an item that is tiny next to the
    remaining capacity ``R``, 1/2 for one that exactly fits, below 1/2 for
    one that does not), and ``v / max_value``. The capacity key (remaining
    / initial) is unchanged. The action mask and rewards are the env's.
    """

    def __init__(self, env: gym.Env) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        n = env.observation_space["item_features"].shape[0]  # type: ignore[index]
        self.observation_space = gym.spaces.Dict(
            {
                "item_features": gym.spaces.Box(-np.inf, np.inf, (n, 4), np.float32),
                "item_mask": env.observation_space["item_mask"],  # type: ignore[index]
                "capacity": env.observation_space["capacity"],  # type: ignore[index]
            }
        )

    def observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        f, present = obs["item_features"], obs["item_mask"].astype(bool)
        out = np.zeros((f.shape[0], 4), dtype=np.float32)
        if present.any():
            w, v = f[present, 0].astype(np.float64), f[present, 1].astype(np.float64)
            r = float(obs["capacity"][0])
            log_ratio, log_w = np.log(v / w), np.log(w)
            out[present, 0] = log_ratio - log_ratio.mean()
            out[present, 1] = log_w - log_w.mean()
            out[present, 2] = r / (w + r)
            out[present, 3] = v
        return {"item_features": out, "item_mask": obs["item_mask"], "capacity": obs["capacity"]}


class RelaxationFeatures(ScaleFreeFeatures):
    """:class:`ScaleFreeFeatures` plus each item's place in the fractional knapsack.

    The linear relaxation of the instance left (Dantzig's bound) fills the
    remaining capacity ``R`` with the items that still fit, best value density
    first. For such an item, with ``B`` the weight of the fitting items ahead
    of it in that order (denser; ties by index), two more features:
    ``B / (B + R)`` and ``(B + w) / (B + w + R)``. The item is in the greedy
    prefix iff the second is <= 1/2; the relaxation's split item has the first
    <= 1/2 < the second. Both are 1 for an item that no longer fits, and both
    keep their scale whatever the number of items. Exact 0/1 solutions mostly
    differ from the relaxation's around the split item (the "core" of the
    instance), which a sum over the items ranked ahead locates and a softmax
    attention does not compute easily.
    """

    def __init__(self, env: gym.Env) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        inner = self.observation_space
        n = inner["item_features"].shape[0]  # type: ignore[index]
        self.observation_space = gym.spaces.Dict(
            {
                "item_features": gym.spaces.Box(-np.inf, np.inf, (n, 6), np.float32),
                "item_mask": inner["item_mask"],  # type: ignore[index]
                "capacity": inner["capacity"],  # type: ignore[index]
            }
        )

    def observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().observation(obs)
        f, present = obs["item_features"], obs["item_mask"].astype(bool)
        rows = np.zeros((f.shape[0], 6), dtype=np.float32)
        rows[:, :4] = out["item_features"]
        r = float(obs["capacity"][0])
        w, v = f[:, 0].astype(np.float64), f[:, 1].astype(np.float64)
        fits = present & (w <= r) & (r > 0)
        rows[present & ~fits, 4:] = 1.0
        idx = np.flatnonzero(fits)
        if idx.size:
            # Densest first; a stable sort keeps ties in index order.
            order = idx[np.argsort(-(v[idx] / w[idx]), kind="stable")]
            ahead = np.concatenate(([0.0], np.cumsum(w[order])[:-1]))
            rows[order, 4] = ahead / (ahead + r)
            rows[order, 5] = (ahead + w[order]) / (ahead + w[order] + r)
        out["item_features"] = rows
        return out


def _make_wrapped(wrapper: type[gym.ObservationWrapper], **kwargs: Any) -> gym.Env:  # type: ignore[type-arg]
    import maskrl.envs  # noqa: F401

    return wrapper(gym.make("maskrl/Knapsack-v0", **kwargs).unwrapped)


RAW_ID = "maskrl/Knapsack-v0"
SCALE_FREE_ID = "maskrl_bench/KnapsackScaleFree-v0"
RELAXATION_ID = "maskrl_bench/KnapsackRelaxation-v0"
for _id, _wrapper in ((SCALE_FREE_ID, ScaleFreeFeatures), (RELAXATION_ID, RelaxationFeatures)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=partial(_make_wrapped, _wrapper))
FEATURE_IDS = {"raw": RAW_ID, "scale-free": SCALE_FREE_ID, "relaxation": RELAXATION_ID}


def score(
    policy: Callable[[dict[str, np.ndarray], np.ndarray], int],
    episodes: int,
    seed: int,
    size: int | None = None,
    env_id: str = "maskrl/Knapsack-v0",
) -> np.ndarray:
    """Fraction of the optimum reached in each of ``episodes`` episodes.

    ``size``: instances of exactly that many items; None: the env's default
    range (5-20, the training distribution).
    """
    import maskrl.envs  # noqa: F401

    kwargs = {} if size is None else {"n_min": size, "n_max": size}
    env = gym.make(env_id, **kwargs)
    out = []
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(policy(obs, info["action_mask"]))
            done = term or trunc
        out.append(info["total_value"] / info["optimal_value"])
    env.close()
    return np.asarray(out)


#: Instance seeds of the self-improvement rounds start here: apart from the
#: evaluation instances (10,000,000 on) and from PPO's training envs (small seeds).
SELF_IMPROVE_SEED = 20_000_000


def sample_solutions(
    net: Any,
    envs: list[gym.Env],  # type: ignore[type-arg]
    seeds: list[int],
    samples: int,
    gen: Any,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """The greedy decode and ``samples`` sampled solutions of each instance, in lockstep.

    ``envs`` holds at least ``len(seeds) * (samples + 1)`` envs of one id; copy
    ``0`` of each instance decodes greedily, the others sample from the policy
    (one batched forward per step for all of them), at ``temperature`` (the
    logits divided by it: above 1, more diverse samples). Returns per instance
    ``greedy`` and ``best`` (fractions of the optimum), ``trajectory``: the
    ``(obs, mask, action)`` steps of its best solution (the greedy decode's
    where no sample beats it), and ``samples``: ``(total value, trajectory)``
    of each sampled solution.
    """
    import torch

    from maskrl.masking import masked_log_softmax

    copies = samples + 1
    n = len(seeds) * copies
    obs: list[dict[str, np.ndarray]] = []
    masks: list[np.ndarray] = []
    for j in range(n):
        o, info = envs[j].reset(seed=seeds[j // copies])
        obs.append(o)
        masks.append(info["action_mask"])
    done = [False] * n
    frac = [0.0] * n
    value = [0.0] * n
    traj: list[list[tuple[dict[str, np.ndarray], np.ndarray, int]]] = [[] for _ in range(n)]
    while not all(done):
        idx = [j for j in range(n) if not done[j]]
        batch = {k: torch.as_tensor(np.stack([obs[j][k] for j in idx])) for k in obs[idx[0]]}
        mask = torch.as_tensor(np.stack([masks[j] for j in idx]))
        with torch.no_grad():
            logits, _ = net(batch)
            logp = masked_log_softmax(logits, mask)
            greedy = logp.argmax(-1).tolist()
            probs = (logp / temperature).softmax(-1) if temperature != 1.0 else logp.exp()
            sampled = torch.multinomial(probs, 1, generator=gen).squeeze(1).tolist()
        for r, j in enumerate(idx):
            a = greedy[r] if j % copies == 0 else sampled[r]
            traj[j].append((obs[j], masks[j], a))
            o, _, term, trunc, info = envs[j].step(a)
            obs[j], masks[j] = o, info["action_mask"]
            if term or trunc:
                done[j] = True
                frac[j] = info["total_value"] / info["optimal_value"]
                value[j] = float(info["total_value"])
    out = []
    for i in range(len(seeds)):
        js = range(i * copies, (i + 1) * copies)
        best = max(js, key=lambda j: (frac[j], j == i * copies))  # ties: the greedy decode
        sampled = [(value[j], traj[j]) for j in js if j != i * copies]
        out.append(
            {"greedy": frac[i * copies], "best": frac[best], "trajectory": traj[best],
             "samples": sampled}
        )  # fmt: skip
    return out


def set_targets(
    trajectory: list[tuple[dict[str, np.ndarray], np.ndarray, int]],
) -> list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    """``(obs, mask, target)`` per step of a solution: ``target`` marks every item the
    solution picks from that step on. A knapsack solution is a set, picked in any
    order; imitating the set (not the sampled order) is what the greedy decode needs."""
    out = []
    for t, (obs, mask, _) in enumerate(trajectory):
        target = np.zeros(mask.shape, dtype=bool)
        target[[a for _, _, a in trajectory[t:]]] = True
        out.append((obs, mask, target))
    return out


def _stack(steps: list[tuple[Any, ...]]) -> tuple[dict[str, Any], Any]:
    """The steps' observations (a dict of batched tensors) and masks, stacked."""
    import torch

    obs = {k: torch.as_tensor(np.stack([s[0][k] for s in steps])) for k in steps[0][0]}
    return obs, torch.as_tensor(np.stack([s[1] for s in steps]))


def _train_passes(
    net: Any,
    obs: dict[str, Any],
    mask: Any,
    loss_fn: Callable[[Any, Any], Any],
    optimizer: Any,
    epochs: int,
    batch_size: int,
    gen: Any,
    max_grad_norm: float,
) -> float:
    """``epochs`` shuffled passes of minibatch steps on ``loss_fn(masked log-probs, rows)``
    (gradients clipped at ``max_grad_norm``); returns the last pass's mean loss."""
    import torch

    from maskrl.masking import masked_log_softmax

    n, last = mask.shape[0], 0.0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for lo in range(0, n, batch_size):
            mb = perm[lo : lo + batch_size]
            logits, _ = net({k: v[mb] for k, v in obs.items()})
            loss = loss_fn(masked_log_softmax(logits, mask[mb]), mb)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
            optimizer.step()
            total += loss.item() * len(mb)
        last = total / n
    return last


def imitate(
    net: Any,
    steps: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]],
    optimizer: Any,
    epochs: int,
    batch_size: int,
    gen: Any,
    max_grad_norm: float = 0.5,
) -> float:
    """Minimise ``-log`` of the policy's probability of picking one of each step's
    ``target`` actions (``set_targets``; a one-hot target makes it the usual
    cross-entropy), under the step's mask, for ``epochs`` passes in shuffled
    minibatches; returns the last epoch's mean loss."""
    import torch

    obs, mask = _stack(steps)
    target = torch.as_tensor(np.stack([s[2] for s in steps]))
    if bool((target & ~mask).any()):
        raise ValueError("an imitation target includes an action outside its step's mask")

    def loss_fn(logp: Any, mb: Any) -> Any:
        return -torch.logsumexp(logp.masked_fill(~target[mb], -torch.inf), dim=1).mean()

    return _train_passes(net, obs, mask, loss_fn, optimizer, epochs, batch_size, gen, max_grad_norm)


def reinforce(
    net: Any,
    results: list[dict[str, Any]],
    optimizer: Any,
    batch_size: int,
    gen: Any,
    max_grad_norm: float = 0.5,
) -> float:
    """One policy-gradient pass over the sampled solutions of ``sample_solutions``
    (REINFORCE with the instance's own samples as the baseline, as in Kool, van
    Hoof & Welling 2019 and POMO): each solution's advantage is its total value
    minus the mean over the instance's samples, divided by that mean (no optimum
    is used), then normalised over the batch; every step of a solution is weighted
    by it. Returns the mean loss."""
    import torch

    steps: list[tuple[dict[str, np.ndarray], np.ndarray, int]] = []
    weights: list[float] = []
    for res in results:
        values = np.asarray([v for v, _ in res["samples"]])
        mean = values.mean()
        for v, traj in res["samples"]:
            adv = (v - mean) / max(mean, 1e-9)
            steps += traj
            weights += [adv] * len(traj)
    w = torch.as_tensor(weights, dtype=torch.float32)
    w = w / (w.std() + 1e-8)
    obs, mask = _stack(steps)
    act = torch.as_tensor([s[2] for s in steps], dtype=torch.int64)

    def loss_fn(logp: Any, mb: Any) -> Any:
        return -(w[mb] * logp.gather(1, act[mb, None]).squeeze(1)).mean()

    return _train_passes(net, obs, mask, loss_fn, optimizer, 1, batch_size, gen, max_grad_norm)


def self_improve(
    net: Any,
    env_id: str,
    rounds: int,
    instances: int,
    samples: int,
    epochs: int,
    learning_rate: float,
    seed: int,
    temperature: float = 1.0,
    mode: str = "imitate",
    start_round: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_round: Callable[[int, dict[str, float], Any], None] | None = None,
) -> None:
    """Sample-and-imitate rounds: each round draws ``instances`` fresh training
    instances, keeps each one's best of the greedy decode and ``samples`` sampled
    solutions, and trains the policy to pick, at each step of it, one of the
    items that solution picks from there on (``set_targets``, ``imitate``). The greedy
    decode then follows what sampling found (self-improvement, or expert
    iteration with sampling as the expert). With ``mode="reinforce"`` a round
    instead takes one policy-gradient pass over all the sampled solutions
    (``reinforce``; ``epochs`` unused). ``on_round(round, figures, optimizer)``
    after each; ``start_round`` and ``optimizer_state`` resume a run.
    """
    import torch

    group = 16  # instances decoded in lockstep
    envs = [gym.make(env_id) for _ in range(group * (samples + 1))]
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate, eps=1e-5)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    for r in range(start_round, rounds):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + r)
        t0 = time.perf_counter()
        base = SELF_IMPROVE_SEED + r * instances
        results: list[dict[str, Any]] = []
        net.eval()
        for lo in range(0, instances, group):
            seeds = list(range(base + lo, base + min(lo + group, instances)))
            results += sample_solutions(net, envs, seeds, samples, gen, temperature)
        net.train()
        steps = [s for res in results for s in set_targets(res["trajectory"])]
        if mode == "imitate":
            loss = imitate(net, steps, optimizer, epochs, 256, gen)
        else:
            loss = reinforce(net, results, optimizer, 2048, gen)
        greedy = np.asarray([res["greedy"] for res in results])
        best = np.asarray([res["best"] for res in results])
        figures = {
            "greedy": float(greedy.mean()),
            "greedy_optimal": float(np.mean(greedy >= 1 - 1e-9)),
            "best": float(best.mean()),
            "best_optimal": float(np.mean(best >= 1 - 1e-9)),
            "loss": loss,
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"self-improvement round {r + 1}/{rounds}: on its {instances} instances greedy "
            f"{figures['greedy']:.4f} ({figures['greedy_optimal']:.1%} optimal), best of "
            f"{samples} samples {figures['best']:.4f} ({figures['best_optimal']:.1%}); "
            f"{mode} loss {loss:.4f}, {figures['seconds']:.0f} s",
            flush=True,
        )
        if on_round is not None:
            on_round(r + 1, figures, optimizer)
    for env in envs:
        env.close()
    net.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--total-timesteps", type=int, default=300_000)
    p.add_argument("--episodes", type=int, default=500, help="evaluation instances")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument(
        "--reward-scale",
        type=float,
        default=0.02,
        help="raw item values are 1-20 by default: scale returns of ~100 down",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=0.99,
        help="discount (1.0: the episode's return is exactly the knapsack's value)",
    )
    p.add_argument("--gae-lambda", type=float, default=0.95, help="GAE lambda")
    p.add_argument("--num-envs", type=int, default=16, help="parallel envs")
    p.add_argument("--num-steps", type=int, default=64, help="steps per env per rollout")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per rollout")
    p.add_argument("--minibatches", type=int, default=4, help="minibatches per epoch")
    p.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus")
    p.add_argument(
        "--ent-coef-final",
        type=float,
        default=None,
        help="anneal the entropy bonus linearly to this at --total-timesteps (default: constant)",
    )
    p.add_argument("--anneal-lr", action="store_true", help="decay the learning rate linearly to 0")
    p.add_argument("--layers", type=int, default=2, help="self-attention blocks of the set network")
    p.add_argument("--heads", type=int, default=2, help="heads per self-attention block")
    p.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="width of the set network: item embeddings, self-attention blocks, heads "
        "(default 64); must be divisible by --heads",
    )
    p.add_argument(
        "--eval-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also score on instances of exactly these many items (e.g. 30 50 100)",
    )
    p.add_argument(
        "--features",
        choices=sorted(FEATURE_IDS),
        default="scale-free",
        help="the env's item features (raw), ScaleFreeFeatures, or RelaxationFeatures "
        "(scale-free plus each item's place in the fractional knapsack; see above)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also score 'ppo best of K': the better of the greedy decode and K solutions "
        "sampled from the policy on the same instance (0: off)",
    )
    p.add_argument(
        "--self-improve",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="after PPO, this many sample-and-imitate rounds (see self_improve; 0: off); "
        "adds the rows 'ppo+si' (the improved policy's greedy decode)",
    )
    p.add_argument("--si-instances", type=int, default=512, help="instances per round")
    p.add_argument("--si-samples", type=int, default=16, help="sampled solutions per instance")
    p.add_argument("--si-epochs", type=int, default=4, help="imitation epochs per round")
    p.add_argument("--si-lr", type=float, default=1e-4, help="imitation learning rate")
    p.add_argument(
        "--si-mode",
        choices=["imitate", "reinforce"],
        default="imitate",
        help="imitate each instance's best solution, or REINFORCE with the samples' mean "
        "as the baseline",
    )
    p.add_argument(
        "--si-temperature",
        type=float,
        default=1.0,
        help="sampling temperature of the rounds (above 1: more diverse samples)",
    )
    p.add_argument(
        "--si-checkpoint",
        type=Path,
        default=None,
        help="the self-improvement rounds' own checkpoint (default: --checkpoint's name with "
        "the suffix .si.pt)",
    )
    p.add_argument("--checkpoint", type=Path, help="save here and resume from here if it exists")
    p.add_argument("--save-every", type=int, default=50_000, help="steps between checkpoints")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    a = p.parse_args(argv)
    if a.layers < 0 or a.heads < 1:
        p.error(f"--layers must be >= 0 and --heads >= 1, got {a.layers}, {a.heads}")
    if a.hidden is not None and (a.hidden < 1 or a.hidden % a.heads):
        p.error(f"--hidden must be positive and divisible by --heads {a.heads}, got {a.hidden}")
    if a.samples < 0:
        p.error(f"--samples must be >= 0, got {a.samples}")
    if min(a.self_improve, a.si_instances, a.si_samples, a.si_epochs) < 0 or a.si_lr <= 0:
        p.error(
            "--self-improve, --si-instances, --si-samples, --si-epochs must be >= 0, --si-lr > 0"
        )
    if not a.si_temperature > 0:
        p.error(f"--si-temperature must be > 0, got {a.si_temperature}")
    if a.self_improve and min(a.si_instances, a.si_samples, a.si_epochs) < 1:
        p.error("--self-improve needs --si-instances, --si-samples and --si-epochs of at least 1")
    if any(n < 1 for n in a.eval_sizes):
        p.error(f"--eval-sizes must be positive, got {a.eval_sizes}")

    import torch

    from maskrl.agents import PPO, PPOConfig
    from maskrl.masking import masked_log_softmax

    rng = np.random.default_rng(a.seed)
    eval_seed = 10_000_000  # evaluation instances are never trained on (training seeds are small)

    def random_policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        return int(rng.choice(np.flatnonzero(mask)))

    def greedy_policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
        f = obs["item_features"]
        ratio = np.where(mask, f[:, 1] / np.maximum(f[:, 0], 1e-9), -np.inf)
        return int(np.argmax(ratio))

    cfg = PPOConfig(
        num_envs=a.num_envs,
        num_steps=a.num_steps,
        num_epochs=a.epochs,
        num_minibatches=a.minibatches,
        learning_rate=a.learning_rate,
        anneal_lr=a.anneal_lr,
        reward_scale=a.reward_scale,
        gamma=a.gamma,
        gae_lambda=a.gae_lambda,
        ent_coef=a.ent_coef,
        ent_coef_final=a.ent_coef_final,
        seed=a.seed,
        device="cpu",
        attention_layers=a.layers,
        attention_heads=a.heads,
        hidden=a.hidden,
    )
    env_id = FEATURE_IDS[a.features]
    resumed = a.checkpoint is not None and a.checkpoint.exists()
    try:
        agent = PPO.load(a.checkpoint, device="cpu", env=env_id) if resumed else PPO(env_id, cfg)
    except ValueError as e:
        p.error(f"{e}: pass the --features it was trained with, or another --checkpoint")
    if resumed:
        # The network comes from the checkpoint: refuse flags that ask for another one.
        saved = agent.config
        differ = {flag: (got, want) for flag, got, want in (
            ("--layers", saved.attention_layers, a.layers),
            ("--heads", saved.attention_heads, a.heads),
            ("--hidden", saved.hidden, a.hidden),
        ) if got != want}  # fmt: skip
        if differ:
            p.error(
                f"{a.checkpoint} holds a network with other settings (saved, given: {differ}); "
                "pass the saved ones or another --checkpoint"
            )
    start_step = agent.global_step
    t0 = time.perf_counter()
    invalid = 0.0
    last_save = start_step

    def cb(ag: Any, m: dict[str, float]) -> None:
        nonlocal invalid, last_save
        invalid += m["invalid_actions"]
        if a.checkpoint is not None and ag.global_step - last_save >= a.save_every:
            ag.save(a.checkpoint)
            last_save = ag.global_step

    agent.learn(a.total_timesteps, callback=cb)
    train_s = time.perf_counter() - t0
    if a.checkpoint is not None and agent.global_step > last_save:
        agent.save(a.checkpoint)
    net = agent.policy.net
    net.eval()

    def greedy_decode(network: Any) -> Callable[[dict[str, np.ndarray], np.ndarray], int]:
        def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
            # The network itself, not agent.predict: the pointer head scores a set
            # of any size, also sizes the agent's observation space does not have.
            batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
            with torch.no_grad():
                logits, _ = network(batch)
            return int(masked_log_softmax(logits, torch.as_tensor(mask)[None]).argmax())

        return policy

    ppo_policy = greedy_decode(net)
    si_history: list[dict[str, float]] = []
    if a.self_improve:
        # The improved policy is a copy; the PPO checkpoint stays as trained. Its
        # own checkpoint (next to --checkpoint) resumes an interrupted run.
        import copy

        si_net = copy.deepcopy(net)
        si_path = a.si_checkpoint
        if si_path is None and a.checkpoint is not None:
            si_path = a.checkpoint.with_suffix(".si.pt")
        settings = {"mode": a.si_mode, "instances": a.si_instances, "samples": a.si_samples,
                    "epochs": a.si_epochs, "lr": a.si_lr, "temperature": a.si_temperature}  # fmt: skip
        start, opt_state = 0, None
        if si_path is not None and si_path.exists():
            saved = torch.load(si_path, weights_only=False)
            old = saved.get("settings", {})
            differ = {k: (old.get(k), v) for k, v in settings.items()
                      if old.get(k) != v}  # fmt: skip
            if differ:
                p.error(
                    f"{si_path} holds self-improvement rounds with other settings "
                    f"(saved, given: {differ}); pass --si-checkpoint for a new run"
                )
            si_net.load_state_dict(saved["net"])
            start, opt_state, si_history = saved["rounds"], saved["optimizer"], saved["history"]

        def on_round(r: int, figures: dict[str, float], optimizer: Any) -> None:
            si_history.append(figures)
            if si_path is not None:
                state = {"net": si_net.state_dict(), "optimizer": optimizer.state_dict(),
                         "rounds": r, "history": si_history, "settings": settings}  # fmt: skip
                torch.save(state, si_path.with_suffix(".tmp"))
                si_path.with_suffix(".tmp").replace(si_path)

        t_si = time.perf_counter()
        self_improve(
            si_net, env_id, a.self_improve, a.si_instances, a.si_samples, a.si_epochs,
            a.si_lr, a.seed, a.si_temperature, a.si_mode, start_round=start, optimizer_state=opt_state, on_round=on_round,
        )  # fmt: skip
        print(
            f"self-improvement: {a.self_improve - start} rounds in {time.perf_counter() - t_si:.0f} s"
        )

    def sampling_policy(gen: torch.Generator) -> Callable[[dict[str, np.ndarray], np.ndarray], int]:
        def policy(obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
            batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
            with torch.no_grad():
                logits, _ = net(batch)
            probs = masked_log_softmax(logits, torch.as_tensor(mask)[None]).exp()
            return int(torch.multinomial(probs[0], 1, generator=gen))

        return policy

    policies = {"random": random_policy, "greedy": greedy_policy, "ppo": ppo_policy}
    if a.self_improve:
        policies["ppo+si"] = greedy_decode(si_net)
    sizes: list[int | None] = [None, *a.eval_sizes]
    steps = agent.global_step - start_step
    print(
        f"PPO trained {steps} steps in {train_s:.0f} s ({steps / max(train_s, 1e-9):.0f} steps/s; "
        f"{agent.global_step} in all{', resumed' if resumed else ''}), "
        f"invalid actions: {int(invalid)}, layers={a.layers}, heads={a.heads}, "
        f"width={a.hidden or 64}"
    )
    report: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "global_step": agent.global_step,
        "train_seconds": train_s,
        "self_improvement": si_history,
        "results": {},
    }
    for size in sizes:
        label = "5-20 items (training range)" if size is None else f"{size} items"
        print(f"fraction of the optimum over {a.episodes} unseen instances, {label}:")
        row = {}
        for name, policy in policies.items():
            # The references read the env's own features; the same seeds give
            # the same instances under the scale-free wrapper.
            own = name.startswith("ppo")
            r = score(policy, a.episodes, eval_seed, size, env_id if own else RAW_ID)
            optimal = float(np.mean(r >= 1 - 1e-9))
            row[name] = {"mean": float(r.mean()), "optimal": optimal}
            print(f"  {name:7s} {r.mean():.4f}  optimal in {optimal:.1%}")
        if a.samples:
            # Sampled decoding (as in neural combinatorial optimisation): the
            # same instances, K independent samples each, the best kept.
            best = score(ppo_policy, a.episodes, eval_seed, size, env_id)
            gen = torch.Generator().manual_seed(a.seed)
            for _ in range(a.samples):
                r = score(sampling_policy(gen), a.episodes, eval_seed, size, env_id)
                best = np.maximum(best, r)
            name = f"ppo best of {a.samples}"
            optimal = float(np.mean(best >= 1 - 1e-9))
            row[name] = {"mean": float(best.mean()), "optimal": optimal}
            print(f"  {name} {best.mean():.4f}  optimal in {optimal:.1%}")
        report["results"]["train" if size is None else str(size)] = row
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
