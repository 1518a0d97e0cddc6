"""Tests for the multi-game grid token encoder and the multi-game observation layout."""

from __future__ import annotations

import doctest
import math
from typing import Any

import numpy as np
import pytest
import torch

import maskrl.tokens
from maskrl.agents.networks import build_actor_critic
from maskrl.envs import game_observation, make_multigame_vec, make_vec, multigame_layout
from maskrl.networks import MultiGameActorCritic
from maskrl.tokens import GridTokenEncoder, compact_present

CHANNELS = [4, 10, 6, 6]  # games 2 and 3 have the same channel count
H = W = 5
MINATAR_IDS = [
    "maskrl/MinAtar-Breakout-v0",
    "maskrl/MinAtar-Seaquest-v0",
    "maskrl/MinAtar-SpaceInvaders-v0",
    "maskrl/MinAtar-Freeway-v0",
    "maskrl/MinAtar-Asterix-v0",
]


def make_encoder(seed: int = 0, **kwargs: Any) -> GridTokenEncoder:
    torch.manual_seed(seed)
    return GridTokenEncoder(CHANNELS, H, W, dim=16, **kwargs).double()


def random_screens(game_id: torch.Tensor, seed: int, density: float = 0.15) -> torch.Tensor:
    """0/1 screens ``[B, 10, H, W]`` with each game's padded channels zero."""
    g = torch.Generator().manual_seed(seed)
    obs = (torch.rand(len(game_id), max(CHANNELS), H, W, generator=g) < density).double()
    for b, gid in enumerate(game_id.tolist()):
        obs[b, CHANNELS[gid] :] = 0
    return obs


def finite_grads(module: torch.nn.Module) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in module.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"pool": "multihead", "num_heads": 4}, {"out_dim": 7}, {"max_tokens": H * W}],
)
def test_shapes_and_attributes(kwargs: dict[str, Any]) -> None:
    enc = make_encoder(**kwargs)
    game_id = torch.tensor([0, 1, 2, 3, 1])
    out = enc(random_screens(game_id, 0), game_id)
    assert out.shape == (5, enc.out_dim)
    assert enc.out_dim == kwargs.get("out_dim", 16)
    assert GridTokenEncoder.uses_game_id is True
    tokens, present = enc.tokenize(random_screens(game_id, 0), game_id)
    assert tokens.shape[:2] == present.shape and tokens.shape[2] == 16


@pytest.mark.parametrize("neighbourhood", [1, 3])
def test_padded_channels_are_never_read(neighbourhood: int) -> None:
    enc = make_encoder(neighbourhood=neighbourhood)
    game_id = torch.tensor([0, 2, 1, 0])
    obs = random_screens(game_id, 1)
    clean = enc(obs, game_id)
    for fill in (math.nan, math.inf, 1.0, -3.0):
        dirty = obs.clone()
        for b, gid in enumerate(game_id.tolist()):
            dirty[b, CHANNELS[gid] :] = fill
        enc.zero_grad()
        out = enc(dirty, game_id)
        assert torch.equal(out, clean)
        out.sum().backward()
        assert finite_grads(enc)


def test_absent_token_slots_are_ignored_whatever_they_hold() -> None:
    enc = make_encoder()
    game_id = torch.tensor([0, 1, 3])
    with torch.no_grad():
        tokens, present = enc.tokenize(random_screens(game_id, 2), game_id)
    assert (~present).any()  # the test needs padded slots
    clean = enc.encode(tokens, present)
    for fill in (math.nan, math.inf, 1e300):
        dirty = torch.where(present[..., None], tokens, torch.full_like(tokens, fill))
        enc.zero_grad()
        out = enc.encode(dirty, present)
        assert torch.equal(out, clean)
        out.sum().backward()
        assert finite_grads(enc)


def test_the_number_of_slots_does_not_change_the_output() -> None:
    game_id = torch.tensor([0, 1, 2, 3])
    obs = random_screens(game_id, 3)
    trimmed = make_encoder()(obs, game_id)  # slots = most occupied cells in the batch
    fixed = make_encoder(max_tokens=H * W)(obs, game_id)  # 25 slots
    torch.testing.assert_close(trimmed, fixed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("neighbourhood", [1, 3])
def test_empty_screen_gives_zeros_and_finite_gradients(neighbourhood: int) -> None:
    for pool in ("additive", "multihead"):
        heads = 2 if pool == "multihead" else 1
        enc = make_encoder(pool=pool, num_heads=heads, neighbourhood=neighbourhood)
        game_id = torch.tensor([1, 0, 2])
        obs = random_screens(game_id, 4)
        obs[1] = 0  # an empty screen in a batch with others
        obs[1, CHANNELS[0] :] = math.nan  # its padded channels hold garbage
        out = enc(obs, game_id)
        assert (out[1] == 0).all() and (out[0] != 0).any()
        out.sum().backward()
        assert finite_grads(enc)
        # A batch of empty screens only (one slot, none present).
        enc.zero_grad()
        empty = enc(torch.zeros(2, 10, H, W, dtype=torch.float64), torch.tensor([0, 3]))
        assert empty.shape == (2, 16) and (empty == 0).all()
        empty.sum().backward()
        assert finite_grads(enc)


def test_moving_an_object_changes_the_output() -> None:
    enc = make_encoder()
    game_id = torch.tensor([2, 2])
    obs = torch.zeros(2, 10, H, W, dtype=torch.float64)
    obs[:, 1, 0, 0] = 1  # the same object at (0, 0) in both rows...
    obs[0, 3, 2, 2] = 1
    obs[1, 3, 2, 3] = 1  # ...and a second object one cell apart
    out = enc(obs, game_id)
    assert not torch.allclose(out[0], out[1])


def test_the_same_screen_under_two_games_differs() -> None:
    enc = make_encoder()
    game_id = torch.tensor([2, 3])  # both have 6 channels
    obs = random_screens(torch.tensor([2, 2]), 5)
    out = enc(obs, game_id)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("neighbourhood", [1, 3])
def test_rows_are_independent_of_the_rest_of_the_batch(neighbourhood: int) -> None:
    enc = make_encoder(neighbourhood=neighbourhood)
    game_id = torch.tensor([0, 1, 2, 3, 1, 0])
    obs = random_screens(game_id, 6)
    full = enc(obs, game_id)
    other = random_screens(game_id, 7, density=0.6)  # more occupied cells: more slots
    other[2] = obs[2]
    for b in range(len(game_id)):
        alone = enc(obs[b : b + 1], game_id[b : b + 1])
        torch.testing.assert_close(alone[0], full[b], rtol=0, atol=1e-12)
    torch.testing.assert_close(enc(other, game_id)[2], full[2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("neighbourhood", [1, 3])
def test_gradients_reach_only_the_rows_own_game_channels(neighbourhood: int) -> None:
    enc = make_encoder(neighbourhood=neighbourhood)
    game_id = torch.tensor([0, 0])
    obs = random_screens(game_id, 8, density=0.5)
    enc(obs, game_id).sum().backward()
    grad = enc.channel_embedding.weight.grad
    assert grad is not None
    rows = CHANNELS[0] * neighbourhood**2  # game 0's (channel, offset) rows come first
    assert grad.shape[0] == sum(CHANNELS) * neighbourhood**2 + 1
    own = grad[:rows]
    assert (own != 0).any(dim=1).all()  # a dense screen reaches every (channel, offset) row
    assert (grad[rows:] == 0).all()  # other games' channels and the padding row


def test_neighbourhood_tokens_equal_a_convolution_of_the_games_own_channels() -> None:
    """Window k: a token is the k x k convolution (zero padding) of its game's channels at its cell."""
    for k in (3, 5):
        enc = make_encoder(neighbourhood=k)
        game_id = torch.tensor([0, 1, 2, 3, 1])
        obs = random_screens(game_id, 10, density=0.3)
        obs[0, CHANNELS[0] :] = math.nan  # padded channels are never read
        tokens, present, cells = enc.tokenize_cells(obs, game_id)
        weight = enc.channel_embedding.weight  # [sum(C) * k * k + 1, dim]
        pos = (enc.row_embedding[:, None] + enc.col_embedding[None, :]).reshape(H * W, -1)
        start = 0
        for g, c in enumerate(CHANNELS):
            # Rows of game g: channel-major, then the window's offsets in raster order.
            w = weight[start : start + c * k * k].reshape(c, k, k, -1).permute(3, 0, 1, 2)
            start += c * k * k
            for b in (game_id == g).nonzero().flatten().tolist():
                conv = torch.nn.functional.conv2d(obs[b : b + 1, :c], w, padding=k // 2)[0]
                want = conv.flatten(1).T + pos  # [HW, dim]
                for slot in present[b].nonzero().flatten().tolist():
                    cell = int(cells[b, slot])
                    torch.testing.assert_close(tokens[b, slot], want[cell], rtol=0, atol=1e-12)
                # The tokens are the occupied cells, whatever the window sees around them.
                occupied = (obs[b, :c] != 0).any(0).flatten().nonzero().flatten()
                assert cells[b, present[b]].tolist() == occupied.tolist()


def test_neighbourhood_hand_case_and_grid_edges() -> None:
    torch.manual_seed(0)
    enc = GridTokenEncoder([2, 3], 4, 5, dim=8, neighbourhood=3).double()
    obs = torch.zeros(1, 3, 4, 5, dtype=torch.float64)
    obs[0, 0, 1, 2] = 1.0
    obs[0, 1, 1, 3] = 2.0  # the right-hand neighbour, channel 1
    obs[0, 2, 3, 4] = 5.0  # channel 2 is padding for game 0: ignored
    obs[0, 0, 0, 0] = 1.0  # a corner cell: the window's cells past the edge read as empty
    tokens, present, cells = enc.tokenize_cells(obs, torch.tensor([0]))
    assert cells[0, present[0]].tolist() == [0, 7, 8]
    e = enc.channel_embedding.weight  # game 0: row c * 9 + (dr + 1) * 3 + (dc + 1)

    def pos(r: int, c: int) -> torch.Tensor:
        return enc.row_embedding[r] + enc.col_embedding[c]

    torch.testing.assert_close(tokens[0, 0], e[4] + pos(0, 0), rtol=0, atol=0)
    torch.testing.assert_close(tokens[0, 1], e[4] + 2 * e[9 + 5] + pos(1, 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(tokens[0, 2], 2 * e[9 + 4] + e[3] + pos(1, 3), rtol=0, atol=1e-15)
    # (0, 0) is two columns from (1, 2): outside its window, and (1, 2) outside (0, 0)'s.
    assert enc.channel_index.shape == (2, 3 * 9)
    assert (enc.channel_index[0, 2 * 9 :] == enc.channel_embedding.padding_idx).all()


@pytest.mark.parametrize("neighbourhood", [1, 3])
def test_integer_and_bool_screens_are_read_as_values(neighbourhood: int) -> None:
    enc = make_encoder(neighbourhood=neighbourhood)
    game_id = torch.tensor([0, 1])
    obs = random_screens(game_id, 9)
    want = enc(obs, game_id)
    torch.testing.assert_close(enc(obs.bool(), game_id), want)
    torch.testing.assert_close(enc(obs.to(torch.uint8), game_id), want)


def test_max_tokens_overflow_is_a_value_error_naming_rows() -> None:
    enc = make_encoder(max_tokens=3)
    game_id = torch.tensor([0, 0, 0])
    obs = torch.zeros(3, 10, H, W, dtype=torch.float64)
    obs[0, 0, 0, :2] = 1  # 2 cells: fits
    obs[1, 0, 0, :4] = 1  # 4 cells
    obs[2, :2, 1, :] = 1  # 5 cells (two objects in each)
    with pytest.raises(ValueError, match=r"row\(s\) \[1, 2\] have \[4, 5\] occupied cells"):
        enc(obs, game_id)
    out = enc(obs[:1], game_id[:1])
    torch.testing.assert_close(out, make_encoder()(obs[:1], game_id[:1]), rtol=0, atol=1e-12)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="channels_per_game"):
        GridTokenEncoder([], H, W)
    with pytest.raises(ValueError, match="channels_per_game"):
        GridTokenEncoder([3, 0], H, W)
    with pytest.raises(ValueError, match="max_tokens"):
        GridTokenEncoder([3], H, W, max_tokens=H * W + 1)
    with pytest.raises(ValueError, match="num_heads"):
        GridTokenEncoder([3], H, W, dim=10, pool="multihead", num_heads=3)
    for k in (0, 2, -1):
        with pytest.raises(
            ValueError, match=f"neighbourhood must be an odd window size >= 1, got {k}"
        ):
            GridTokenEncoder([3], H, W, neighbourhood=k)
    with pytest.raises(
        ValueError, match=r"neighbourhood=11 is wider than a 5 x 5 grid needs \(at most"
    ):
        GridTokenEncoder([3], H, W, neighbourhood=11)
    GridTokenEncoder([3], H, W, neighbourhood=9)  # the widest that still matters
    enc = make_encoder()
    with pytest.raises(ValueError, match=r"\[B, Cmax, H, W\]"):
        enc(torch.zeros(2, 6, H, W), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="game_id must have shape"):
        enc(torch.zeros(2, 10, H, W), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        enc(torch.zeros(2, 10, H, W), torch.tensor([0.0, 1.0]))


def test_doctests() -> None:
    result = doctest.testmod(maskrl.tokens)
    assert result.attempted > 0 and result.failed == 0


# -- in the multi-game actor-critic ----------------------------------------------------------


def test_multigame_actor_critic_passes_the_game_id_to_the_token_encoder() -> None:
    torch.manual_seed(0)
    net = MultiGameActorCritic(GridTokenEncoder(CHANNELS, H, W, dim=16), 6, len(CHANNELS))
    game_id = torch.tensor([0, 3, 2])
    obs = {"obs": random_screens(game_id, 10).float(), "game_id": game_id}
    logits, value = net(obs)
    assert logits.shape == (3, 6) and value.shape == (3,)
    torch.testing.assert_close(net.value(obs), value)
    h = net.features(obs)
    want = net.encoder(obs["obs"], game_id) + net.game_embedding(game_id)
    torch.testing.assert_close(h, want)


def test_build_actor_critic_multigame_encoders() -> None:
    ids = MINATAR_IDS[:2]
    envs = make_multigame_vec(ids, 2, seed=0)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    channels = [s[0] for s in multigame_layout(ids)]
    assert channels == [4, 10]
    tok = build_actor_critic(
        obs_space, act_space, multigame_encoder="tokens", channels_per_game=channels
    )
    cnn = build_actor_critic(obs_space, act_space)
    assert isinstance(tok, MultiGameActorCritic) and isinstance(tok.encoder, GridTokenEncoder)
    assert isinstance(cnn, MultiGameActorCritic) and not isinstance(cnn.encoder, GridTokenEncoder)
    obs, _ = envs.reset()
    batch = {k: torch.as_tensor(v) for k, v in obs.items()}
    logits, value = tok(batch)
    assert logits.shape == (2, 6) and value.shape == (2,)
    envs.close()
    with pytest.raises(ValueError, match="needs channels_per_game"):
        build_actor_critic(obs_space, act_space, multigame_encoder="tokens")
    with pytest.raises(ValueError, match="does not match"):
        build_actor_critic(
            obs_space, act_space, multigame_encoder="tokens", channels_per_game=[4, 6]
        )
    with pytest.raises(ValueError, match="multigame_encoder must be"):
        build_actor_critic(obs_space, act_space, multigame_encoder="mlp")  # type: ignore[arg-type]
    single = make_vec(ids[0], 1)
    with pytest.raises(ValueError, match="needs a multi-game observation space"):
        build_actor_critic(
            single.single_observation_space,
            single.single_action_space,
            multigame_encoder="tokens",
            channels_per_game=[4],
        )
    single.close()


# -- the multi-game observation layout -------------------------------------------------------


def test_multigame_layout_gives_each_games_own_shape() -> None:
    assert multigame_layout(MINATAR_IDS) == [
        (4, 10, 10),
        (10, 10, 10),
        (6, 10, 10),
        (7, 10, 10),
        (4, 10, 10),
    ]
    with pytest.raises(ValueError, match="unknown env id"):
        multigame_layout(["maskrl/MinAtar-Breakot-v0"])


def test_game_observation_round_trips_real_observations() -> None:
    seed = 3
    multi = make_multigame_vec(MINATAR_IDS, len(MINATAR_IDS), seed=seed)
    # Slot g of the multi-game env plays game g, seeded with seed + g, as is
    # slot 0 of a single-game vector env seeded with seed + g.
    singles = [make_vec(env_id, 1, seed=seed + g) for g, env_id in enumerate(MINATAR_IDS)]
    shapes = multigame_layout(MINATAR_IDS)
    obs, infos = multi.reset()
    own = [s.reset() for s in singles]
    rng = np.random.default_rng(0)
    compared = 0
    for _step in range(60):
        for g in range(len(MINATAR_IDS)):
            assert obs["game_id"][g] == g
            got = game_observation(obs["obs"][g], g, shapes)
            want = own[g][0][0]
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            # The batched form and the ids form agree with the single one.
            rows = game_observation(obs["obs"][g : g + 1], g, shapes)
            np.testing.assert_array_equal(rows[0], want)
            compared += 1
        actions = np.array(
            [rng.choice(np.flatnonzero(m)) for m in infos["action_mask"]], dtype=np.int64
        )
        obs, _, _, _, infos = multi.step(actions)
        own = [
            (s.step(actions[g : g + 1])[0], None) for g, s in enumerate(singles)
        ]  # same action in the game's own env
    np.testing.assert_array_equal(game_observation(obs["obs"][1], 1, MINATAR_IDS), own[1][0][0])
    assert compared == 60 * len(MINATAR_IDS)
    multi.close()
    for s in singles:
        s.close()


def test_game_observation_checks_its_arguments() -> None:
    shapes = [(4, 10, 10), (10, 10, 10)]
    padded = np.zeros((2, 10, 10, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="out of range"):
        game_observation(padded, 2, shapes)
    with pytest.raises(ValueError, match="does not end in the padded shape"):
        game_observation(np.zeros((2, 4, 10, 10)), 0, shapes)
    with pytest.raises(ValueError, match="different ranks"):
        game_observation(padded, 0, [(4, 10, 10), (10, 10)])
    with pytest.raises(ValueError, match="empty"):
        game_observation(padded, 0, [])
    # A torch tensor slices the same way.
    t = torch.arange(2 * 10 * 10 * 10.0).view(2, 10, 10, 10)
    assert torch.equal(game_observation(t, 0, shapes), t[:, :4])


def test_compact_present_hand_case() -> None:
    present = torch.tensor([[False, True, False, True, True], [False, False, False, False, False]])
    order, kept = compact_present(present, 3)
    assert order[0].tolist() == [1, 3, 4]
    assert kept.tolist() == [[True, True, True], [False, False, False]]
    # The second row's slots point at (absent) elements, each at most once.
    assert sorted(order[1].tolist()) == [0, 1, 2]


def test_compact_present_matches_a_stable_sort_over_random_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 100):
        present = torch.rand(64, n, generator=gen) < torch.rand(64, 1, generator=gen)
        slots = max(int(present.sum(1).max()), 1)
        order, kept = compact_present(present, slots)
        # Reference: stable sort putting present elements first.
        ref = torch.sort((~present).int(), dim=1, stable=True).indices[:, :slots]
        assert torch.equal(kept, torch.arange(slots)[None] < present.sum(1, keepdim=True))
        assert torch.equal(torch.where(kept, order, -1), torch.where(kept, ref, -1))
        assert bool(present.gather(1, order)[kept].all())
        # Every row's slots are distinct elements (a permutation's prefix).
        assert all(len(set(row.tolist())) == slots for row in order)


def test_compact_present_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, N\] bool"):
        compact_present(torch.ones(2, 3), 1)
    with pytest.raises(ValueError, match="slots must be in 1..3"):
        compact_present(torch.ones(2, 3, dtype=torch.bool), 4)
