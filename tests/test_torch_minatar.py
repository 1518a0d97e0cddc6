"""The batched torch MinAtar games: conformance with MinAtar, vector-env contract, statistics."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import maskrl.envs.torch_minatar.seaquest as seaquest_mod
from maskrl.envs import make_multigame_vec, make_vec
from maskrl.envs.torch_minatar import TorchMinAtarVectorEnv
from maskrl.envs.torch_minatar.reference import check_conformance

GAMES = ["Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders"]
IDS = [f"maskrl/MinAtar-{g}-v0" for g in GAMES]
# A uniform policy almost never gets Freeway's chicken across or Seaquest's sub to
# collect divers and surface; these weights exercise those rules too.
POLICIES: dict[str, list[float] | None] = {
    "Freeway": [0.1, 0.8, 0.1],
    "Seaquest": [0.1, 0.2, 0.05, 0.2, 0.2, 0.25],
}


def _numpy_mask(env_id: str) -> np.ndarray:
    env = gym.make(env_id)
    mask = np.asarray(env.unwrapped.action_masks())  # type: ignore[attr-defined]
    env.close()
    return mask


def _random_actions(masks: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One uniform valid action per row of ``masks`` (bool ``(N, 6)``)."""
    return torch.multinomial(masks.to(torch.float32), 1, generator=gen).flatten()


# -- conformance ---------------------------------------------------------------------------


@pytest.mark.parametrize("game", GAMES)
def test_frame_by_frame_equal_to_minatar(game: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if game == "Seaquest":
        # Start the CPU enemy lists at two slots so that growing them is exercised
        # (the sync-free path then merges two-slot starts into grown lists).
        monkeypatch.setattr(seaquest_mod, "CPU_ENEMY_SLOTS", 2)
    env_id = f"maskrl/MinAtar-{game}-v0"
    probs = POLICIES.get(game)
    many = check_conformance(env_id, 8, 250, seed=11, action_probs=probs)
    assert many.ok, many.mismatch
    one = check_conformance(env_id, 1, 600, seed=12, action_probs=probs, lazy_reset=False)
    assert one.ok, one.mismatch
    uniform = check_conformance(env_id, 4, 150, seed=13)
    assert uniform.ok, uniform.mismatch
    # Several envs on the sync-free path (reset everything, keep what ended).
    merged = check_conformance(env_id, 6, 200, seed=14, action_probs=probs, lazy_reset=False)
    assert merged.ok, merged.mismatch
    # The runs exercised scoring and (except Freeway's 2,500-step episodes) episode ends.
    assert many.total_reward + one.total_reward > 0
    if game != "Freeway":
        assert many.episodes > 0 and one.episodes > 0


def test_conformance_detects_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken rule must be caught: Breakout's paddle moving two cells instead of one.
    from maskrl.envs.torch_minatar import breakout

    real = breakout.Breakout.step

    def wrong(self, state, action, draws):  # type: ignore[no-untyped-def]
        state = dict(state)
        state["pos"] = torch.where(action == 3, (state["pos"] + 1).clamp_max(9), state["pos"])
        return real(self, state, action, draws)

    monkeypatch.setattr(breakout.Breakout, "step", wrong)
    result = check_conformance("maskrl/MinAtar-Breakout-v0", 2, 200, seed=0)
    assert not result.ok and "differs at step" in str(result.mismatch)


def _minatar(game: str) -> Any:
    from minatar import Environment

    env = Environment(game, sticky_action_prob=0.0)
    env.seed(0)
    env.reset()
    return env


def _chw(env: Any) -> torch.Tensor:
    return torch.as_tensor(env.state().transpose(2, 0, 1).astype(np.float32))


def test_breakout_refills_an_empty_wall_like_minatar() -> None:
    # A random policy never clears the wall: set up the last brick gone, ball about to
    # reach the paddle row, in both implementations, and compare one step.
    from maskrl.envs.torch_minatar.breakout import Breakout

    ref = _minatar("breakout")
    ref.env.brick_map[:] = 0
    ref.env.ball_x, ref.env.ball_y, ref.env.ball_dir, ref.env.pos = 3, 8, 2, 4
    game = Breakout()
    state = game.reset(1, torch.zeros(1, 1), torch.device("cpu"))
    state.update(
        ball_x=torch.tensor([3]),
        ball_y=torch.tensor([8]),
        ball_dir=torch.tensor([2]),
        bricks=torch.zeros(1, 10, 10, dtype=torch.bool),
        n_bricks=torch.tensor([0]),
    )
    reward, term = ref.act(0)
    state, r, t = game.step(state, torch.tensor([0]), torch.zeros(1, 0))
    assert torch.equal(game.render(state)[0], _chw(ref))
    assert (float(r[0]), bool(t[0])) == (reward, term) == (0, False)
    assert int(state["n_bricks"][0]) == 30 == int(ref.env.brick_map.sum())


def test_seaquest_surfacing_with_six_divers_like_minatar() -> None:
    # Six divers, the sub one row below the surface, moving up: reward from the oxygen
    # left, and MinAtar's diver_count ends at -1 (kept, see the module docstring).
    from maskrl.envs.torch_minatar.seaquest import Seaquest

    ref = _minatar("seaquest")
    ref.env.sub_y, ref.env.surface, ref.env.diver_count, ref.env.oxygen = 1, False, 6, 137
    game = Seaquest()
    state = game.reset(1, torch.zeros(1, 0), torch.device("cpu"))
    state.update(
        sub_y=torch.tensor([1]),
        surface=torch.tensor([False]),
        diver_count=torch.tensor([6]),
        oxygen=torch.tensor([137]),
    )
    for action in (2, 4, 2):  # surface (reward), dive, surface again (count -1 != 0)
        reward, term = ref.act(action)
        state, r, t = game.step(state, torch.tensor([action]), torch.full((1, 5), 0.5))
        assert torch.equal(game.render(state)[0], _chw(ref))
        assert (float(r[0]), bool(t[0])) == (reward, term)
    assert int(state["diver_count"][0]) == ref.env.diver_count == -2
    assert int(state["ramp_index"][0]) == ref.env.ramp_index == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("game", GAMES)
def test_conformance_on_cuda(game: str) -> None:
    for lazy in (False, True):
        result = check_conformance(
            f"maskrl/MinAtar-{game}-v0", 8, 150, seed=5, device="cuda", lazy_reset=lazy
        )
        assert result.ok, result.mismatch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_vector_env_on_cuda() -> None:
    envs = make_vec("maskrl/MinAtar-Seaquest-v0", 64, backend="torch", device="cuda", seed=0)
    obs, infos = envs.reset()
    assert obs.device.type == "cuda" and infos["action_mask"].device.type == "cuda"
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(50):
        obs, reward, term, trunc, infos = envs.step(_random_actions(infos["action_mask"], gen))
    for t in (obs, reward, term, trunc, infos["final_obs"], infos["episode"]["r"]):
        assert t.device.type == "cuda"
    with pytest.raises(ValueError, match="on cpu"):
        envs.step(torch.zeros(64, dtype=torch.int64))


# -- the vector-env contract ----------------------------------------------------------------


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_masks_and_dtypes(env_id: str) -> None:
    envs = make_vec(env_id, 3, backend="torch", seed=0)
    ref = gym.make(env_id)
    shape = ref.observation_space.shape
    assert shape is not None
    assert isinstance(envs, gym.vector.VectorEnv)
    assert getattr(envs, "backend", "numpy") == "torch"
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert envs.metadata["obs_layout"] == "CHW"
    assert envs.single_observation_space == ref.observation_space
    assert envs.single_action_space == gym.spaces.Discrete(6)
    assert envs.observation_space.shape == (3, *shape)
    obs, infos = envs.reset()
    assert obs.dtype == torch.float32 and obs.shape == (3, *shape)
    assert ((obs == 0) | (obs == 1)).all()
    mask = infos["action_mask"]
    assert mask.dtype == torch.bool and mask.shape == (3, 6)
    np.testing.assert_array_equal(mask.numpy(), np.tile(_numpy_mask(env_id), (3, 1)))
    obs, reward, term, trunc, infos = envs.step(_random_actions(mask))
    assert reward.dtype == torch.float32 and reward.shape == (3,)
    assert term.dtype == torch.bool and trunc.dtype == torch.bool
    assert infos["episode"]["r"].dtype == torch.float32
    assert infos["episode"]["l"].dtype == torch.int64
    assert infos["final_obs"].shape == obs.shape
    ref.close()


def test_same_step_autoreset_final_obs_and_episode_statistics() -> None:
    n = 8
    envs = make_vec("maskrl/MinAtar-Breakout-v0", n, backend="torch", seed=3)
    obs, infos = envs.reset()
    returns = torch.zeros(n)
    lengths = torch.zeros(n, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    ended = 0
    for _ in range(100):
        obs, reward, term, trunc, infos = envs.step(_random_actions(infos["action_mask"], gen))
        returns += reward
        lengths += 1
        done = term | trunc
        assert torch.equal(infos["_final_obs"], done) and torch.equal(infos["_episode"], done)
        for i in torch.nonzero(done).flatten().tolist():
            ended += 1
            # The new episode's first frame: paddle at (9, 4), ball in row 3 at a wall,
            # three full rows of bricks, trail under the ball.
            o = obs[i]
            assert o[0, 9, 4] == 1 and o[0].sum() == 1
            assert o[1, 3].sum() == 1 and (o[1, 3, 0] == 1 or o[1, 3, 9] == 1)
            assert o[3, 1:4].sum() == 30 and o[3].sum() == 30
            assert torch.equal(o[2], o[1])
            # The last frame of the old one: the ball fell to the bottom row.
            final = infos["final_obs"][i]
            assert term[i] and final[1, 9].sum() == 1 and not torch.equal(final, o)
            assert infos["episode"]["r"][i] == returns[i]
            assert infos["episode"]["l"][i] == lengths[i]
            returns[i] = 0
            lengths[i] = 0
        not_done = ~done
        assert (infos["final_obs"][not_done] == 0).all()
        assert (infos["episode"]["l"][not_done] == 0).all()
    assert ended > 20


def test_returned_observations_are_never_overwritten() -> None:
    # copy_obs=True (default): step returns new tensors, never written again.
    envs = make_vec("maskrl/MinAtar-Breakout-v0", 64, backend="torch", seed=0)
    obs, infos = envs.reset()
    gen = torch.Generator().manual_seed(0)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t in range(40):
        obs, _, _, _, infos = envs.step(_random_actions(infos["action_mask"], gen))
        if t % 10 == 0:  # a whole tensor, and a view of another
            kept.append((obs, obs.clone()))
            kept.append((infos["final_obs"][5:9], infos["final_obs"][5:9].clone()))
    for held, copy in kept:
        assert torch.equal(held, copy)


def test_truncation_at_the_time_limit() -> None:
    # Freeway never ends by itself before 2,500 steps: only the limit can end it.
    envs = make_vec("maskrl/MinAtar-Freeway-v0", 4, backend="torch", seed=0, max_episode_steps=7)
    obs, infos = envs.reset()
    noop = torch.zeros(4, dtype=torch.int64)
    for t in range(1, 8):
        obs, _, term, trunc, infos = envs.step(noop)
        assert not term.any()
        assert bool(trunc.all()) == (t == 7) and bool(trunc.any()) == (t == 7)
    assert (infos["episode"]["l"] == 7).all() and infos["_episode"].all()
    # The chicken starts again at the bottom; cars have new random speeds.
    assert (obs[:, 0, 9, 4] == 1).all() and not torch.equal(infos["final_obs"], obs)
    envs2 = make_vec("maskrl/MinAtar-Freeway-v0", 2, backend="torch", seed=0)
    assert envs2._batches[0].max_episode_steps == 10_000  # type: ignore[attr-defined]


def test_seeding_reproduces_and_leaves_global_rngs_alone() -> None:
    def run(seed: int | None, reset_seed: int | None = None) -> list[torch.Tensor]:
        envs = make_vec("maskrl/MinAtar-Asterix-v0", 8, backend="torch", seed=seed)
        obs, infos = envs.reset(seed=reset_seed)
        gen = torch.Generator().manual_seed(1)
        out = [obs]
        for _ in range(60):
            obs, reward, *_ = envs.step(_random_actions(infos["action_mask"], gen))
            out += [obs, reward]
        return out

    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # type: ignore[index]  # noqa: NPY002
    a, b, c = run(0), run(0), run(1)
    d, e = run(None, reset_seed=0), run(5, reset_seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    # reset(seed=s) reseeds, whatever the construction seed was.
    assert all(torch.equal(x, y) for x, y in zip(d, e, strict=True))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)  # type: ignore[index]  # noqa: NPY002


def test_bad_actions_raise_clear_errors() -> None:
    envs = make_vec("maskrl/MinAtar-Breakout-v0", 4, backend="torch", seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(torch.zeros(4, dtype=torch.int64))
    envs.reset()
    with pytest.raises(ValueError, match="torch.Tensor"):
        envs.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        envs.step(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        envs.step(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="meta"):
        envs.step(torch.zeros(4, dtype=torch.int64, device="meta"))
    for bad in (6, -1):
        with pytest.raises(ValueError, match=f"took {bad}"):
            envs.step(torch.tensor([0, 0, 0, bad]))
    # By default MinAtar's rules run any of the six actions (masked ones act as noop).
    envs.step(torch.tensor([0, 2, 4, 5]))
    # Checked, Breakout's minimal set is noop, left, right: "up" (2) is masked.
    strict = make_vec("maskrl/MinAtar-Breakout-v0", 4, backend="torch", seed=0, check_actions=True)
    strict.reset()
    with pytest.raises(ValueError, match=r"slot 2 .* took 2, valid \[0, 1, 3\]"):
        strict.step(torch.tensor([0, 1, 2, 3]))
    for bad in (6, -1):
        with pytest.raises(ValueError, match=f"took {bad}"):
            strict.step(torch.tensor([0, 0, 0, bad]))


def test_make_vec_argument_errors() -> None:
    with pytest.raises(ValueError, match="MinAtar-Breakout"):
        make_vec("CartPole-v1", 2, backend="torch")
    with pytest.raises(ValueError, match="backend='torch'"):
        make_vec("maskrl/MinAtar-Breakout-v0", 2, device="cpu")
    with pytest.raises(ValueError, match="backend must be"):
        make_vec("maskrl/MinAtar-Breakout-v0", 2, backend="jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same_step"):
        make_vec("maskrl/MinAtar-Breakout-v0", 2, backend="torch", autoreset_mode="next_step")
    with pytest.raises(ValueError, match="CUDA is not available|only"):
        if torch.cuda.is_available():
            make_vec("maskrl/MinAtar-Breakout-v0", 2, backend="torch", device="cuda:99")
        else:
            make_vec("maskrl/MinAtar-Breakout-v0", 2, backend="torch", device="cuda")
    with pytest.raises(ValueError, match="num_envs"):
        make_vec("maskrl/MinAtar-Breakout-v0", 0, backend="torch")
    with pytest.raises(ValueError, match="MinAtar"):
        make_multigame_vec(["maskrl/MinAtar-Breakout-v0", "CartPole-v1"], 4, backend="torch")


def test_multigame_form() -> None:
    n = 12
    envs = make_multigame_vec(IDS, n, backend="torch", seed=0)
    assert getattr(envs, "backend", "numpy") == "torch"
    obs, infos = envs.reset()
    assert set(obs) == {"obs", "game_id"}
    assert obs["obs"].shape == (n, 10, 10, 10) and obs["obs"].dtype == torch.float32
    expected_ids = torch.arange(n) % len(IDS)
    assert torch.equal(obs["game_id"], expected_ids) and torch.equal(infos["game_id"], expected_ids)
    channels = [gym.make(i).observation_space.shape[0] for i in IDS]  # type: ignore[index]
    for i in range(n):
        g = i % len(IDS)
        np.testing.assert_array_equal(infos["action_mask"][i].numpy(), _numpy_mask(IDS[g]))
        assert (obs["obs"][i, channels[g] :] == 0).all()
    gen = torch.Generator().manual_seed(0)
    ended = torch.zeros(n, dtype=torch.bool)
    for _ in range(80):
        obs, reward, term, trunc, infos = envs.step(_random_actions(infos["action_mask"], gen))
        final = infos["final_obs"]
        assert set(final) == {"obs", "game_id"} and final["obs"].shape == (n, 10, 10, 10)
        assert torch.equal(final["game_id"], expected_ids)
        for i in range(n):
            assert (obs["obs"][i, channels[i % len(IDS)] :] == 0).all()
        ended |= infos["_episode"]
    # Every game but Freeway (2,500-step episodes) ended some episodes in 80 steps.
    freeway = IDS.index("maskrl/MinAtar-Freeway-v0")
    assert ended[expected_ids != freeway].any()


def test_multigame_slots_play_their_game_exactly() -> None:
    # Slot i of a multi-game env runs the same program as a one-game env: compare the
    # Breakout slots' first frames with Breakout's start (bricks in channel 3).
    envs = make_multigame_vec(IDS[:2], 4, backend="torch", seed=0)
    obs, _ = envs.reset()
    breakout = obs["obs"][1::2]  # IDS[1] is Breakout
    assert (breakout[:, 3, 1:4] == 1).all() and (breakout[:, 0, 9, 4] == 1).all()
    asterix = obs["obs"][0::2]
    assert (asterix[:, 0, 5, 5] == 1).all() and asterix[:, 0].sum() == 2


def test_import_maskrl_envs_stays_torch_free() -> None:
    code = (
        "import sys, maskrl.envs; "
        "e = maskrl.envs.make_vec('maskrl/MinAtar-Breakout-v0', 2); e.reset(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


def test_constructor_argument_errors() -> None:
    with pytest.raises(ValueError, match="sticky_action_prob"):
        TorchMinAtarVectorEnv("maskrl/MinAtar-Breakout-v0", 2, sticky_action_prob=1.5)
    with pytest.raises(ValueError, match="max_episode_steps"):
        TorchMinAtarVectorEnv("maskrl/MinAtar-Breakout-v0", 2, max_episode_steps=0)
    with pytest.raises(ValueError, match="supports"):
        TorchMinAtarVectorEnv("maskrl/MinAtar-Pong-v0", 2)


# -- statistics in torch-generator mode -----------------------------------------------------


def _policy(env_id: str, probs: list[float] | None) -> tuple[np.ndarray, np.ndarray]:
    valid = np.flatnonzero(_numpy_mask(env_id))
    p = np.full(len(valid), 1 / len(valid)) if probs is None else np.asarray(probs)
    return valid, p / p.sum()


def _first_episodes_torch(
    env_id: str, n: int, max_steps: int, probs: list[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return and length of each env's first episode (an unbiased sample of episodes)."""
    envs = make_vec(env_id, n, backend="torch", seed=123)
    envs.reset()
    valid, p = _policy(env_id, probs)
    table = torch.as_tensor(valid)
    weights = torch.as_tensor(p, dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    ret = torch.zeros(n)
    length = torch.zeros(n, dtype=torch.int64)
    for t in range(max_steps):
        a = table[torch.multinomial(weights, n, replacement=True, generator=gen)]
        _, _, _, _, infos = envs.step(a)
        first = infos["_episode"] & (length == 0)
        ret = torch.where(first, infos["episode"]["r"], ret)
        length = torch.where(first, infos["episode"]["l"], length)
        if t % 25 == 0 and bool((length > 0).all()):
            break
    assert (length > 0).all(), "raise max_steps: some first episodes did not end"
    return ret.numpy(), length.numpy()


def _episodes_reference(
    env_id: str, episodes: int, probs: list[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Episodes of MinAtar itself (maskrl's numpy env) under the same policy."""
    env = gym.make(env_id).unwrapped
    valid, p = _policy(env_id, probs)
    rng = np.random.default_rng(9)
    rets, lens = [], []
    env.reset(seed=99)
    for _ in range(episodes):
        total, t, done = 0.0, 0, False
        actions = rng.choice(valid, size=10_000, p=p)
        while not done:
            _, r, done, _, _ = env.step(actions[t])
            total += float(r)
            t += 1
        rets.append(total)
        lens.append(t)
        env.reset()
    env.close()
    return np.asarray(rets), np.asarray(lens)


def _agree(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    """Means within 4 standard errors of their difference."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = abs(a.mean() - b.mean())
    ok = diff <= 4 * se if se > 0 else diff == 0
    return bool(ok), f"{a.mean():.3f} vs {b.mean():.3f} (se {se:.3f})"


@pytest.mark.parametrize(
    ("game", "n_torch", "n_ref", "max_steps"),
    [
        ("Asterix", 128, 150, 2000),
        ("Breakout", 256, 600, 500),
        ("Freeway", 16, 4, 2600),  # every episode lasts 2,500 steps; returns vary
        ("Seaquest", 128, 150, 2000),
        ("SpaceInvaders", 128, 100, 3000),
    ],
)
def test_random_policy_statistics_match_minatar(
    game: str, n_torch: int, n_ref: int, max_steps: int
) -> None:
    # Torch-generator mode draws differently from MinAtar's RandomState, so agreement
    # is statistical: mean return and length of a fixed random policy (the MinAtar
    # episodes run through the unwrapped env: no time limit, which none reaches).
    env_id = f"maskrl/MinAtar-{game}-v0"
    probs = POLICIES.get(game)
    r_t, l_t = _first_episodes_torch(env_id, n_torch, max_steps, probs)
    r_m, l_m = _episodes_reference(env_id, n_ref, probs)
    ok_r, msg_r = _agree(r_t, r_m)
    ok_l, msg_l = _agree(l_t.astype(float), l_m.astype(float))
    assert ok_r, f"{game} returns: {msg_r}"
    assert ok_l, f"{game} lengths: {msg_l}"
    assert r_t.std() > 0 and r_m.std() > 0  # the comparison had something to compare
