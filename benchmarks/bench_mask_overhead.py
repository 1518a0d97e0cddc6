"""What the mask plumbing adds to a bare Gymnasium vector env's step time.

Compares, on one MinAtar game:

* **bare**: a ``SyncVectorEnv`` of MinAtar envs with the same observation
  processing (channels-first ``float32``), the same ``gym.make`` wrapper stack
  (time limit included) and the same autoreset mode, but no mask anywhere;
* **masked**: ``maskrl.envs.make_vec(...)``, whose infos carry
  ``infos["action_mask"]`` ``(num_envs, 6)`` after every step.

Both take the same pre-drawn valid actions. Runs are short and interleaved in
pairs (alternating which goes first) so that a stall of a shared machine hits
both alike. The script prints the median steps/s of each, the best run of each,
and the overhead of the masked env in percent, as the median of the per-pair
step-time ratios (robust to load that drifts during the run) and as the ratio of
the best runs (the least disturbed ones).

Example:
    python benchmarks/bench_mask_overhead.py --env Breakout --num-envs 8 --steps 2000 --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

import maskrl.envs
from maskrl.envs.minatar_games import MINATAR_GAMES, MINATAR_MAX_EPISODE_STEPS, MinAtarEnv


class BareMinAtarEnv(MinAtarEnv):
    """MinAtarEnv without masks: same observations, an empty info, no action check."""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        reward, terminal = self._game.act(int(action))
        return self._obs(), float(reward), bool(terminal), False, {}


def make_bare(game: str, num_envs: int, seed: int) -> VectorEnv[Any, Any, Any]:
    """The baseline vector env: ``gym.make`` stack like the registered ids, no masks."""
    env_id = f"bench/BareMinAtar-{game}-v0"
    if env_id not in gym.registry:
        gym.register(
            env_id,
            entry_point=BareMinAtarEnv,  # type: ignore[arg-type]
            kwargs={"game": MINATAR_GAMES[game]},
            max_episode_steps=MINATAR_MAX_EPISODE_STEPS,
        )
    envs = SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(num_envs)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    envs.reset(seed=seed)
    return envs


def make_masked(game: str, num_envs: int, seed: int) -> VectorEnv[Any, Any, Any]:
    """The measured vector env: ``maskrl.envs.make_vec`` (same_step autoreset)."""
    envs = maskrl.envs.make_vec(f"maskrl/MinAtar-{game}-v0", num_envs, seed=seed)
    envs.reset()
    return envs


def steps_per_second(envs: VectorEnv[Any, Any, Any], actions: np.ndarray) -> float:
    """Env steps per second (``len(actions) * num_envs`` steps) of one timed run."""
    step = envs.step
    start = time.perf_counter()
    for a in actions:
        step(a)
    return actions.size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the interleaved comparison, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Breakout", choices=sorted(MINATAR_GAMES))
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2_000, help="vector steps per run")
    parser.add_argument("--repeats", type=int, default=40, help="runs of each, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    probe = MinAtarEnv(MINATAR_GAMES[args.env])
    valid = np.flatnonzero(probe.action_masks())
    rng = np.random.default_rng(args.seed)
    actions = rng.choice(valid, size=(args.steps, args.num_envs))

    bare, masked = (
        make_bare(args.env, args.num_envs, args.seed),
        make_masked(args.env, args.num_envs, args.seed),
    )
    # Warm-up so that first-call costs (env checker, caches) are not timed.
    steps_per_second(bare, actions[:200])
    steps_per_second(masked, actions[:200])
    results: dict[str, list[float]] = {"bare": [], "masked": []}
    envs = {"bare": bare, "masked": masked}
    for r in range(args.repeats):
        order = ("bare", "masked") if r % 2 == 0 else ("masked", "bare")
        for k in order:
            results[k].append(steps_per_second(envs[k], actions))
    bare.close()
    masked.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    best = {k: max(v) for k, v in results.items()}
    pair = statistics.median(b / m for b, m in zip(results["bare"], results["masked"], strict=True))
    print(
        f"MinAtar {args.env}, {args.num_envs} envs, SyncVectorEnv same_step, "
        f"{args.steps} vector steps x {args.repeats} interleaved pairs"
    )
    for k in ("bare", "masked"):
        print(f"  {k:6s}: median {med[k]:,.0f} steps/s, best {best[k]:,.0f} steps/s")
    print(
        "  mask plumbing overhead (step time): "
        f"{100 * (pair - 1):+.1f}% (median of pairs), "
        f"{100 * (best['bare'] / best['masked'] - 1):+.1f}% (best runs)"
    )


if __name__ == "__main__":
    main()
