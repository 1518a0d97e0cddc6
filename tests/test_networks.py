"""Network blocks (maskrl.networks) and the default-network choice (maskrl.agents.build_actor_critic).

Shapes of every network, ``features()`` being exactly what the heads read, the
per-game value of the multi-game network against a hand-built case, padding and
permutation behaviour of the set network, the near-uniform initial policy, the
channels-last adapter, and which network each space and layout gets.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

import maskrl.envs  # registers the maskrl/... ids
from maskrl import masked_softmax
from maskrl.agents.networks import build_actor_critic, obs_layout_of
from maskrl.init import HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN
from maskrl.networks import (
    ActorCritic,
    AtariCNN,
    ChannelsLast,
    MinAtarCNN,
    MLPEncoder,
    MultiGameActorCritic,
    OneHotEncoder,
    SetActorCritic,
    SetEncoder,
)

B = 5


@pytest.fixture(autouse=True)
def _seed() -> None:
    # Tests build networks with random initial weights; fix them per test.
    torch.manual_seed(0)


def grid(b: int = B, c: int = 4, h: int = 10, w: int = 10) -> torch.Tensor:
    """A batch of 0/1 grids, as MinAtar gives them."""
    return (torch.rand(b, c, h, w) < 0.3).float()


def set_obs(b: int = B, n: int = 6, present: int | None = None) -> dict[str, torch.Tensor]:
    """A padded-set observation: ``present`` items (default: a different count per row)."""
    counts = torch.tensor([present if present is not None else 1 + i % n for i in range(b)])
    mask = torch.arange(n).expand(b, n) < counts.unsqueeze(1)
    items = torch.rand(b, n, 2) * mask.unsqueeze(-1)
    return {"item_features": items, "item_mask": mask.to(torch.int8), "capacity": torch.rand(b, 1)}


def knapsack_net(pool: str = "additive") -> SetActorCritic:
    return SetActorCritic(
        2,
        context_keys=("capacity",),
        context_dim=1,
        hidden=32,
        pool=pool,
        num_heads=2 if pool == "multihead" else 1,
        items_key="item_features",
    )


# ------------------------------------------------------------------ shapes


def test_encoder_output_shapes_and_out_dim() -> None:
    cases: list[tuple[nn.Module, torch.Tensor, int]] = [
        (MinAtarCNN(4), grid(), 128),
        (MinAtarCNN(2, height=6, width=7, filters=8, hidden=32), grid(c=2, h=6, w=7), 32),
        (AtariCNN(), torch.randint(0, 256, (B, 4, 84, 84), dtype=torch.uint8), 512),
        (MLPEncoder(12, hidden=(16, 8)), torch.rand(B, 12), 8),
        (MLPEncoder(6), torch.rand(B, 2, 3), 64),  # flattens what follows the batch axis
        (OneHotEncoder(7, hidden=(16,)), torch.randint(0, 7, (B,)), 16),
        (ChannelsLast(MinAtarCNN(2, 6, 7)), grid(c=2, h=6, w=7).permute(0, 2, 3, 1), 128),
    ]
    for net, x, out in cases:
        y = net(x)
        assert y.shape == (B, out), type(net).__name__
        assert net.out_dim == out and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_minatar_cnn_reads_bool_and_uint8_grids_as_floats() -> None:
    net = MinAtarCNN(4)
    x = grid()
    torch.testing.assert_close(net(x.bool()), net(x))
    torch.testing.assert_close(net(x.to(torch.uint8)), net(x))


def test_atari_cnn_scales_uint8_frames_to_unit_interval() -> None:
    net = AtariCNN()
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(net(frames), net(frames.float() / 255.0))


def test_set_encoder_shapes_and_missing_context() -> None:
    enc = SetEncoder(2, context_dim=3, hidden=16)
    obs = set_obs(n=7)
    per_item, summary = enc(obs["item_features"], obs["item_mask"], torch.rand(B, 3))
    assert per_item.shape == (B, 7, 16) and summary.shape == (B, 19) and enc.out_dim == 19
    with pytest.raises(ValueError, match="SetEncoder expects a context of size 3"):
        enc(obs["item_features"], obs["item_mask"])


@pytest.mark.parametrize("n_logits", [1, 6, 18])
def test_actor_critic_shapes(n_logits: int) -> None:
    net = ActorCritic(MinAtarCNN(4), n_logits)
    logits, value = net(grid())
    assert logits.shape == (B, n_logits) and value.shape == (B,)
    assert net.features(grid()).shape == (B, 128)
    keyed = ActorCritic(MLPEncoder(3), n_logits, obs_key="board")
    logits, value = keyed({"board": torch.rand(B, 3), "other": torch.rand(B, 9)})
    assert logits.shape == (B, n_logits) and value.shape == (B,)


def test_multigame_and_set_actor_critic_shapes() -> None:
    net = MultiGameActorCritic(MinAtarCNN(10), 6, num_games=3)
    obs = {"obs": grid(c=10), "game_id": torch.tensor([0, 1, 2, 1, 0])}
    logits, value = net(obs)
    assert logits.shape == (B, 6) and value.shape == (B,) and net.value(obs).shape == (B,)
    assert net.features(obs).shape == (B, 128)
    set_net = knapsack_net()
    logits, value = set_net(set_obs(n=9))
    assert logits.shape == (B, 9) and value.shape == (B,)
    assert set_net.features(set_obs(n=9)).shape == (B, 32 + 1)
    # Any number of item slots: one network serves every set size.
    assert set_net(set_obs(n=3))[0].shape == (B, 3)


# ------------------------------------------------------------------ features() is what the heads read


def test_actor_critic_heads_read_features() -> None:
    net = ActorCritic(MinAtarCNN(4), 6)
    x = grid()
    logits, value = net(x)
    h = net.features(x)
    torch.testing.assert_close(logits, net.policy_head(h))
    torch.testing.assert_close(value, net.value_head(h).squeeze(-1))
    torch.testing.assert_close(net.value(x), value)


def test_multigame_heads_read_features_including_the_game_embedding() -> None:
    net = MultiGameActorCritic(MinAtarCNN(4), 6, num_games=3)
    nn.init.normal_(net.game_embedding.weight)  # zeros at init would hide a missing embedding
    games = torch.tensor([2, 0, 1, 1, 2])
    obs = {"obs": grid(), "game_id": games}
    logits, value = net(obs)
    h = net.features(obs)
    torch.testing.assert_close(h, net.encoder(obs["obs"]) + net.game_embedding(games))
    torch.testing.assert_close(logits, net.policy_head(h))
    torch.testing.assert_close(value, net.value_head(h)[torch.arange(B), games])
    torch.testing.assert_close(net.value(obs), value)
    # The game id changes the features, so each game can get its own policy.
    other = {"obs": obs["obs"], "game_id": (games + 1) % 3}
    assert not torch.allclose(net.features(other), h)


def test_set_actor_critic_heads_read_features() -> None:
    net = knapsack_net()
    obs = set_obs()
    _, value = net(obs)
    summary = net.features(obs)
    torch.testing.assert_close(value, net.value_net(summary).squeeze(-1))
    torch.testing.assert_close(net.value(obs), value)


# ------------------------------------------------------------------ per-game value, by hand


def test_multigame_value_is_the_value_head_at_the_rows_own_game() -> None:
    net = MultiGameActorCritic(MLPEncoder(3, hidden=(4,)), 2, num_games=3)
    with torch.no_grad():
        # Value output g = 10 * (g + 1) + (sum of features): easy to read off by hand.
        net.value_head.weight.copy_(torch.ones(3, 4))
        net.value_head.bias.copy_(torch.tensor([10.0, 20.0, 30.0]))
        net.game_embedding.weight.zero_()
    x = torch.rand(4, 3)
    feat_sum = net.encoder(x).sum(-1)
    games = torch.tensor([2, 0, 1, 2])
    value = net({"obs": x, "game_id": games})[1]
    torch.testing.assert_close(value, torch.tensor([30.0, 10.0, 20.0, 30.0]) + feat_sum)
    # game ids arrive as int64 from the vector env, but any integer dtype works
    value32 = net({"obs": x, "game_id": games.to(torch.int32)})[1]
    torch.testing.assert_close(value32, value)


# ------------------------------------------------------------------ the set network and padding


@pytest.mark.parametrize("pool", ["additive", "multihead"])
def test_set_network_ignores_whatever_padded_items_hold(pool: str) -> None:
    net = knapsack_net(pool)
    obs = set_obs(n=6)
    pad = ~obs["item_mask"].bool()
    logits, value = net(obs)
    for garbage in (float("nan"), float("inf"), 1e6, -3.0):
        dirty = dict(obs)
        dirty["item_features"] = obs["item_features"].masked_fill(pad.unsqueeze(-1), garbage)
        logits2, value2 = net(dirty)
        torch.testing.assert_close(value2, value)
        torch.testing.assert_close(logits2[~pad], logits[~pad])
        assert torch.isfinite(logits2).all() and torch.isfinite(value2).all()
    # Gradients stay finite too (NaN in padding must not reach the weights).
    dirty["item_features"] = obs["item_features"].masked_fill(pad.unsqueeze(-1), float("nan"))
    logits2, value2 = net(dirty)
    (logits2[~pad].sum() + value2.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("pool", ["additive", "multihead"])
def test_padded_set_equals_the_unpadded_set(pool: str) -> None:
    net = knapsack_net(pool)
    small = set_obs(n=3, present=3)
    big = {
        "item_features": torch.cat([small["item_features"], torch.rand(B, 4, 2)], dim=1),
        "item_mask": torch.cat([small["item_mask"], torch.zeros(B, 4, dtype=torch.int8)], dim=1),
        "capacity": small["capacity"],
    }
    logits_s, value_s = net(small)
    logits_b, value_b = net(big)
    torch.testing.assert_close(value_b, value_s)
    torch.testing.assert_close(logits_b[:, :3], logits_s)


@pytest.mark.parametrize("pool", ["additive", "multihead"])
def test_item_logits_are_equivariant_to_permuting_items(pool: str) -> None:
    net = knapsack_net(pool)
    obs = set_obs(n=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = {
        "item_features": obs["item_features"][:, perm],
        "item_mask": obs["item_mask"][:, perm],
        "capacity": obs["capacity"],
    }
    logits, value = net(obs)
    logits_p, value_p = net(permuted)
    torch.testing.assert_close(logits_p, logits[:, perm])
    torch.testing.assert_close(value_p, value)


def test_empty_set_gives_finite_outputs() -> None:
    net = knapsack_net()
    obs = set_obs(n=4, present=0)
    logits, value = net(obs)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()


# ------------------------------------------------------------------ initialisation


def row_norms(layer: Any) -> torch.Tensor:
    """Norms of the rows of a layer's weight seen as ``[out, in * kernel]``."""
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach().flatten(1).norm(dim=1)


def test_heads_have_the_documented_gains() -> None:
    # Orthogonal init with gain g and fewer outputs than inputs: every row has norm g.
    ac = ActorCritic(MinAtarCNN(4), 6)
    mg = MultiGameActorCritic(MinAtarCNN(4), 6, num_games=3)
    for net in (ac, mg):
        torch.testing.assert_close(row_norms(net.policy_head), torch.full((6,), POLICY_GAIN))
        value_rows = net.value_head.weight.shape[0]
        torch.testing.assert_close(row_norms(net.value_head), torch.full((value_rows,), VALUE_GAIN))
        assert (net.policy_head.bias == 0).all() and (net.value_head.bias == 0).all()
    torch.testing.assert_close(row_norms(ac.encoder.conv), torch.full((16,), HIDDEN_GAIN))
    assert (mg.game_embedding.weight == 0).all()  # games start with the same features
    set_net = knapsack_net()
    torch.testing.assert_close(row_norms(set_net.score[-1]), torch.full((1,), POLICY_GAIN))
    torch.testing.assert_close(row_norms(set_net.value_net[-1]), torch.full((1,), VALUE_GAIN))


def test_initial_policy_is_near_uniform_over_the_valid_actions() -> None:
    mask = torch.tensor([[1, 1, 0, 1, 0, 0]] * B, dtype=torch.bool)
    for net, obs in [
        (ActorCritic(MinAtarCNN(4), 6), grid()),
        (ActorCritic(AtariCNN(), 6), torch.randint(0, 256, (B, 4, 84, 84), dtype=torch.uint8)),
        (MultiGameActorCritic(MinAtarCNN(4), 6, 2), {"obs": grid(), "game_id": torch.zeros(B)}),
    ]:
        probs = masked_softmax(net(obs)[0], mask)
        expected = mask.float() / 3
        assert (probs - expected).abs().max() < 0.02, type(net).__name__
    obs = set_obs(n=6)
    probs = masked_softmax(knapsack_net()(obs)[0], obs["item_mask"].bool())
    expected = obs["item_mask"].float() / obs["item_mask"].sum(1, keepdim=True)
    assert (probs - expected).abs().max() < 0.02


# ------------------------------------------------------------------ channels last


@pytest.mark.parametrize(
    ("encoder", "shape"),
    [(MinAtarCNN(2, 6, 7), (2, 6, 7)), (MinAtarCNN(2, 3, 3), (2, 3, 3)), (AtariCNN(), (4, 84, 84))],
)
def test_channels_last_equals_the_encoder_on_permuted_input(
    encoder: nn.Module, shape: tuple[int, int, int]
) -> None:
    x = torch.rand(B, *shape)
    wrapped = ChannelsLast(encoder)
    torch.testing.assert_close(wrapped(x.permute(0, 2, 3, 1)), encoder(x))
    assert wrapped.out_dim == encoder.out_dim
    assert list(wrapped.parameters()) == list(encoder.parameters())  # no weights of its own


# ------------------------------------------------------------------ build_actor_critic


def box(*shape: int, dtype: Any = np.float32) -> spaces.Box:
    return spaces.Box(0, 255 if dtype == np.uint8 else 1, shape, dtype)


def image_encoder(net: nn.Module) -> tuple[bool, nn.Module]:
    """(whether the encoder reads channels last, the image encoder inside)."""
    enc = net.encoder
    assert isinstance(enc, nn.Module)
    return (True, enc.encoder) if isinstance(enc, ChannelsLast) else (False, enc)


@pytest.mark.parametrize(
    ("obs_space", "layout", "channels_last", "encoder", "conv_in"),
    [
        (box(4, 10, 10), "CHW", False, MinAtarCNN, 4),
        (box(10, 10, 10), "CHW", False, MinAtarCNN, 10),
        (box(6, 7, 2), "HWC", True, MinAtarCNN, 2),  # Connect Four
        (box(3, 3, 2), "HWC", True, MinAtarCNN, 2),  # Tic-Tac-Toe
        (box(4, 84, 84, dtype=np.uint8), "CHW", False, AtariCNN, 4),
        (box(84, 84, 4, dtype=np.uint8), "HWC", True, AtariCNN, 4),
    ],
)
def test_build_actor_critic_picks_the_image_network_for_space_and_layout(
    obs_space: spaces.Box, layout: str, channels_last: bool, encoder: type, conv_in: int
) -> None:
    net = build_actor_critic(obs_space, spaces.Discrete(7), obs_layout=layout)
    assert type(net) is ActorCritic
    last, enc = image_encoder(net)
    assert last is channels_last and type(enc) is encoder
    first_conv = next(m for m in enc.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == conv_in
    obs = torch.as_tensor(obs_space.sample()[None].repeat(B, 0))
    logits, value = net(obs)
    assert logits.shape == (B, 7) and value.shape == (B,)


def test_build_actor_critic_for_flat_discrete_multigame_and_set_spaces() -> None:
    flat = build_actor_critic(box(8), spaces.MultiDiscrete([3, 4]))
    assert type(flat.encoder) is MLPEncoder and flat.policy_head.out_features == 7
    one_hot = build_actor_critic(spaces.Discrete(500), spaces.Discrete(6))  # Taxi
    assert type(one_hot.encoder) is OneHotEncoder and one_hot.encoder.n == 500
    multi = build_actor_critic(
        spaces.Dict({"obs": box(10, 10, 10), "game_id": spaces.Discrete(5)}), spaces.Discrete(6)
    )
    assert type(multi) is MultiGameActorCritic and multi.num_games == 5
    assert type(multi.encoder) is MinAtarCNN
    knapsack = gym.make("maskrl/Knapsack-v0")
    set_net = build_actor_critic(knapsack.observation_space, knapsack.action_space)
    assert type(set_net) is SetActorCritic
    assert set_net.items_key == "item_features" and set_net.context_keys == ("capacity",)
    obs, _ = knapsack.reset(seed=0)
    batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
    logits, value = set_net(batch)
    assert isinstance(knapsack.action_space, spaces.Discrete)
    assert logits.shape == (1, knapsack.action_space.n) and value.shape == (1,)
    knapsack.close()


@pytest.mark.parametrize(
    ("obs_space", "action_space", "kwargs", "message"),
    [
        (box(4, 10, 10), spaces.Box(-1, 1, (2,)), {}, "unsupported action space"),
        (box(4, 10, 10), spaces.Discrete(3), {"obs_layout": "NHWC"}, "obs_layout must be one of"),
        (box(4, 10, 10), spaces.Discrete(3), {"obs_layout": "hwc"}, "obs_layout must be one of"),
        (box(3, 100, 100), spaces.Discrete(3), {}, "no default encoder for CHW image"),
        (box(100, 100, 3), spaces.Discrete(3), {"obs_layout": "HWC"}, "no default encoder for HWC"),
        (
            spaces.Dict({"a": box(3)}),
            spaces.Discrete(3),
            {},
            r"no default network for Dict .*\['a'\]",
        ),
        (
            spaces.Dict({"item_features": box(4, 2), "item_mask": spaces.MultiBinary(4)}),
            spaces.Discrete(5),
            {},
            r"4 item slots needs action space Discrete\(4\)",
        ),
        (spaces.Tuple([box(3), box(3)]), spaces.Discrete(3), {}, "no default network"),
    ],
)
def test_build_actor_critic_refuses_what_it_has_no_default_for(
    obs_space: spaces.Space[Any], action_space: spaces.Space[Any], kwargs: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_actor_critic(obs_space, action_space, **kwargs)


def test_obs_layout_is_read_from_the_env() -> None:
    minatar = gym.make("maskrl/MinAtar-Breakout-v0")
    assert obs_layout_of(minatar) == "CHW"
    assert obs_layout_of(gym.make("CartPole-v1")) == "CHW"  # nothing declared
    missing = maskrl.envs.missing_dependency("maskrl/TicTacToe-v0")
    if missing:
        pytest.skip(missing)
    board = gym.make("maskrl/TicTacToe-v0")
    assert obs_layout_of(board) == "HWC"
    net = build_actor_critic(board.observation_space, board.action_space, obs_layout_of(board))
    obs, _ = board.reset(seed=0)
    assert net(torch.as_tensor(obs)[None])[0].shape == (1, 9)

    class Odd(gym.Env[Any, Any]):
        metadata = {"obs_layout": "WHC"}

    with pytest.raises(ValueError, match=r"obs_layout.*must be one of .* got 'WHC'"):
        obs_layout_of(Odd())
