"""Evaluation of a trained agent: mean and standard deviation of episode returns.

The module is ``evaluation`` so that the function :func:`maskrl.agents.evaluate`
does not hide it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskrl.agents.rollout import read_masks

__all__ = ["MAX_EPISODES", "evaluate"]

from maskrl.agents.config import MAX_EPISODES


def evaluate(
    agent: Any,
    env_id: str | list[str] | None = None,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = False,
    num_envs: int | None = None,
    max_steps: int = 10_000_000,
    stop: Any = None,
    use_mask: bool = True,
    flicker: float = 0.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Play ``episodes`` full episodes per game and report their returns.

    Args:
        agent: anything with ``predict(obs, action_mask, deterministic)``, e.g.
            :class:`maskrl.agents.PPO`; or a recurrent agent (``is_recurrent``
            true, e.g. :class:`maskrl.agents.RecurrentPPO`): its state is
            carried through ``predict_recurrent(obs, action_mask, state,
            deterministic, episode_start=...)`` and zeroed at each episode end.
        env_id: a registered id, a list of ids / a comma-separated string (the
            multi-game vector env: ``episodes`` episodes for *each* game); default:
            the ids the agent was trained on. A multi-game agent plays all of its
            games or some of them, in any order, each under the game id and in the
            padded layout it was trained with.
        episodes: episodes per game, in ``[1, MAX_EPISODES]``.
        seed: seeds the evaluation envs (env ``i`` gets ``seed + i``).
        deterministic: take the most probable valid action instead of sampling.
        num_envs: parallel envs (default: up to 8 per game; several games get
            ``num_envs // k`` each). Each env plays a fixed quota of episodes,
            so short episodes are not over-represented.
        max_steps: safety bound on vector steps.
        stop: an object with ``requested`` (e.g. :class:`maskrl.agents.runner.StopRequest`),
            read every vector step: once it is true the evaluation ends by raising
            ``KeyboardInterrupt``, as a Ctrl-C would (nothing is returned).
        use_mask: False evaluates "trained with masks, played without": the
            agent is shown every action as valid (it picks among all of them)
            and an invalid action gets the env's own rule for it (a no-op in
            MinAtar's full action set; see each env). The envs' true masks still
            count the invalid actions taken.
        flicker: blank each observation with this probability, in ``[0, 1)``
            (:class:`maskrl.envs.Flicker`; one game only): evaluates an agent
            trained with ``--flicker`` on the screens it was trained on.
        progress: show a progress bar on stderr (episodes finished of all games'
            episodes, and their mean return so far); the result does not depend on it.

    Returns:
        ``{"mean": ..., "std": ..., "episodes": n, "returns": [...],
        "invalid_action_rate": ...}`` for one game (the share of the counted
        episodes' steps whose action the env's mask marked invalid: 0 when
        ``use_mask``); for several, the same per game under ``"per_game"``
        (keyed by env id) plus the overall mean.
    """
    from maskrl.envs import make_multigame_vec, make_vec

    if not isinstance(episodes, bool) and isinstance(episodes, (int, np.integer)):
        if episodes > MAX_EPISODES:
            raise ValueError(f"episodes must be in [1, {MAX_EPISODES:,}], got {episodes}")
    for name, value, low in (
        ("episodes", episodes, 1),
        ("seed", seed, 0),
        ("max_steps", max_steps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if num_envs is not None and (
        isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1
    ):
        raise ValueError(f"num_envs must be None or an integer >= 1, got {num_envs!r}")
    if env_id is None:
        env_id = getattr(agent, "env_ids", None)
        if not env_id:
            raise ValueError(
                "evaluate needs env_id: the agent does not know which env it was trained on"
            )
    if isinstance(env_id, str):
        ids = [e.strip() for e in env_id.split(",") if e.strip()]  # as RunConfig.env_ids
    else:
        ids = list(env_id)
    k = len(ids)
    if num_envs is not None and num_envs < k:
        raise ValueError(f"num_envs={num_envs} is fewer than the {k} games to evaluate")
    per_game = max(1, min(8, episodes)) if num_envs is None else num_envs // k
    n = per_game * k
    trained_on = getattr(agent, "env_ids", None)
    layout: list[str] | None = None  # a multi-game agent on some of its games
    if trained_on and len(trained_on) > 1 and list(trained_on) != ids:
        # A multi-game agent knows its games by position: the env keeps the layout
        # and game ids of all its games while the slots play the ones asked for.
        unknown = [e for e in ids if e not in trained_on]
        if unknown or len(set(ids)) != len(ids):
            raise ValueError(
                f"this agent was trained on the games {list(trained_on)}; evaluate it on "
                f"those or some of them (each once), not on {ids}"
            )
        layout = list(trained_on)
    if flicker:
        from maskrl.envs.flicker import check_flicker_p, flicker_wrapper

        check_flicker_p(flicker)
        if k != 1 or _is_multigame(agent):
            raise ValueError(f"flicker={flicker} needs one single-game env, got {ids}")
    if k == 1 and not _is_multigame(agent):
        wrap = {"wrapper": flicker_wrapper(flicker)} if flicker else {}
        envs = make_vec(ids[0], n, seed=seed, **wrap)
    elif layout is not None:  # slot i plays ids[i % k], as game layout.index(ids[i % k])
        envs = make_multigame_vec(layout, n, seed=seed, play=ids)
    else:  # a multi-game agent of one game (a one-expert student) still reads {"obs", "game_id"}
        envs = make_multigame_vec(ids, n, seed=seed)
    bar = None
    try:
        _check_spaces(agent, envs)
        # Slot i plays game i % k; split each game's episodes over its slots.
        quota = np.zeros(n, dtype=np.int64)
        for g in range(k):
            slots = np.arange(g, n, k)
            q = np.full(len(slots), episodes // len(slots))
            q[: episodes % len(slots)] += 1
            quota[slots] = q
        returns: list[list[float]] = [[] for _ in range(k)]
        ep_ret = np.zeros(n)
        steps = np.zeros(n, dtype=np.int64)
        invalid = np.zeros(n, dtype=np.int64)
        recurrent = bool(getattr(agent, "is_recurrent", False))
        # A recurrent agent's state is carried from step to step and zeroed at episode ends.
        pstate: Any = None
        episode_start = np.zeros(n, dtype=np.bool_)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=episodes * k, unit="episode", dynamic_ncols=True, mininterval=1.0)
        finished_sum = 0.0
        obs, infos = envs.reset(seed=seed)
        n_logits = int(np.asarray(infos["action_mask"]).shape[1])
        nvec = getattr(getattr(agent, "head", None), "nvec", None)
        offsets = None if nvec is None else np.cumsum([0, *list(nvec)[:-1]])
        for _ in range(max_steps):
            if (quota == 0).all():
                break
            if stop is not None and stop.requested:
                raise KeyboardInterrupt("evaluation stopped on request")
            mask = read_masks(infos, n, n_logits, nvec)
            shown = mask if use_mask else np.ones_like(mask)
            if recurrent:
                action, pstate = agent.predict_recurrent(
                    obs, shown, pstate, deterministic, episode_start=episode_start
                )
            else:
                action = agent.predict(obs, shown, deterministic=deterministic)
            counted = quota > 0
            steps += counted
            invalid += counted & ~_action_valid(mask, np.asarray(action), offsets)
            obs, reward, term, trunc, infos = envs.step(action)
            ep_ret += reward
            episode_start = np.logical_or(term, trunc)
            for i in np.flatnonzero(np.logical_or(term, trunc)):
                if quota[i] > 0:
                    returns[i % k].append(float(ep_ret[i]))
                    quota[i] -= 1
                    if bar is not None:
                        finished_sum += float(ep_ret[i])
                        bar.update(1)
                        bar.set_postfix(mean_return=f"{finished_sum / bar.n:.2f}", refresh=False)
                ep_ret[i] = 0.0
        if (quota > 0).any():
            raise RuntimeError(
                f"evaluation did not finish {episodes} episodes within {max_steps} steps"
            )
    finally:
        if bar is not None:
            bar.close()
        envs.close()

    def summary(g: int) -> dict[str, Any]:
        r = returns[g]
        return {
            "mean": float(np.mean(r)),
            "std": float(np.std(r)),
            "episodes": len(r),
            "returns": r,
            "invalid_action_rate": float(invalid[g::k].sum() / max(1, steps[g::k].sum())),
        }

    if k == 1:
        return {"env_id": ids[0], **summary(0)}
    by_game = {e: summary(g) for g, e in enumerate(ids)}
    mean = float(np.mean([by_game[e]["mean"] for e in ids]))
    return {"env_ids": ids, "per_game": by_game, "mean": mean}


def _action_valid(mask: np.ndarray, action: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Per env, whether ``action`` is valid under ``mask`` (every dimension, for ``MultiDiscrete``)."""
    rows = np.arange(mask.shape[0])
    if offsets is None:
        return mask[rows, action.reshape(mask.shape[0])]
    cols = action.reshape(mask.shape[0], len(offsets)) + offsets
    return mask[rows[:, None], cols].all(axis=1)


def _is_multigame(agent: Any) -> bool:
    """Whether the agent reads multi-game observations (a ``Dict`` with ``obs`` and ``game_id``)."""
    from maskrl.agents.policy import is_multigame_space

    return is_multigame_space(getattr(agent, "observation_space", None))


def _check_spaces(agent: Any, envs: Any) -> None:
    """Refuse an env whose observations or actions are not what the agent was built for."""
    from maskrl.agents.checkpoint import space_to_dict

    for what in ("observation_space", "action_space"):
        mine = getattr(agent, what, None)
        if mine is None:
            continue
        theirs = getattr(envs, f"single_{what}")
        if space_to_dict(mine) != space_to_dict(theirs):
            raise ValueError(
                f"the evaluation env's {what.replace('_', ' ')} {theirs} differs from the "
                f"agent's {mine}: evaluate the agent on the env it was trained on"
            )
