"""The self-attention flags: ``train.py ppo --attention-layers`` (Knapsack),
``train.py mimic --attention-layers`` (the tokens encoder), and
``build_actor_critic(attention_layers=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from train_module import train

import maskrl.envs
from maskrl.agents import build_actor_critic, load_policy
from maskrl.agents.config import PPOConfig
from maskrl.agents.mimic import MimicConfig
from maskrl.attention import SelfAttentionBlock

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--num-envs", "4", "--num-steps", "64", "--num-epochs", "1", "--num-minibatches", "2",
    "--device", "cpu", "--seed", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Any:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _blocks(net: torch.nn.Module) -> list[SelfAttentionBlock]:
    return [m for m in net.modules() if isinstance(m, SelfAttentionBlock)]


def test_ppo_knapsack_with_attention_layers_trains_and_reloads(tmp_path: Path) -> None:
    argv = ["ppo", "--env", "maskrl/Knapsack-v0", "--attention-layers", "2"]
    argv += ["--attention-heads", "2", *TINY, "--total-timesteps", "256"]
    argv += ["--runs-dir", str(tmp_path), "--run-name", "k", "--eval-episodes", "2"]
    assert train.main(argv) == 0
    policy = load_policy(tmp_path / "k" / "checkpoint.pt", device="cpu")
    blocks = _blocks(policy.net)
    assert len(blocks) == 2 and all(b.num_heads == 2 for b in blocks)
    assert policy.network_kwargs is not None
    assert policy.network_kwargs["attention_layers"] == 2


def test_attention_flags_refuse_what_cannot_attend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ppo = ["ppo", "--runs-dir", str(tmp_path), "--no-progress", "--device", "cpu"]
    cases = [
        ([*ppo, "--attention-layers", "2"], "needs a set observation"),  # Breakout: a CNN
        ([*ppo, "--attention-layers", "-1"], "attention_layers (--attention-layers)"),
        ([*ppo, "--attention-heads", "0"], "attention_heads (--attention-heads)"),
        (
            ["mimic", "--experts", str(tmp_path), "--attention-layers", "1"],
            "0 unless --multigame-encoder tokens",
        ),
        (
            ["mimic", "--experts", str(tmp_path), "--relative-position"],
            "relative_position (--relative-position) must be off unless --multigame-encoder tokens",
        ),
        (
            ["mimic", "--experts", str(tmp_path), "--multigame-encoder", "tokens"]
            + ["--attention-layers", "0", "--relative-position"],
            "off with --attention-layers 0",
        ),
        (
            ["mimic", "--experts", str(tmp_path), "--token-neighbourhood", "3"],
            "token_neighbourhood (--token-neighbourhood) must be 1 unless --multigame-encoder tokens",
        ),
        (
            ["mimic", "--experts", str(tmp_path), "--multigame-encoder", "tokens"]
            + ["--token-neighbourhood", "2"],
            "must be an odd window in [1, 19]",
        ),
    ]
    for argv, needle in cases:
        assert train.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("train.py: error: "), err
        assert needle in err[0], (needle, err[0])
    assert not list(tmp_path.glob("*/checkpoint.pt"))


def test_config_defaults_keep_the_networks_without_attention() -> None:
    assert PPOConfig().attention_layers == 0 and MimicConfig().attention_layers is None
    env = maskrl.envs.make_vec("maskrl/Knapsack-v0", 2)
    net = build_actor_critic(env.single_observation_space, env.single_action_space)
    assert not _blocks(net)
    net = build_actor_critic(
        env.single_observation_space,
        env.single_action_space,
        attention_layers=3,
        attention_heads=4,
    )
    assert len(_blocks(net)) == 3 and _blocks(net)[0].num_heads == 4
    env.close()


def test_tokens_student_gets_self_attention_by_default(tmp_path: Path) -> None:
    from maskrl.agents.config import TOKENS_ATTENTION_LAYERS, TOKENS_NEIGHBOURHOOD

    ex = tmp_path / "ex"
    argv = ["experts", "--env", "maskrl/MinAtar-Breakout-v0", "--total-timesteps", "128"]
    argv += ["--run-name", "ex", "--runs-dir", str(tmp_path), "--eval-episodes", "1"]
    argv += ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1"]
    assert train.main([*argv, "--device", "cpu", "--no-progress"]) == 0
    common = ["mimic", "--experts", str(ex), "--total-timesteps", "64", "--num-envs", "4"]
    common += ["--num-steps", "16", "--num-minibatches", "2", "--num-epochs", "1"]
    common += [
        "--device",
        "cpu",
        "--no-progress",
        "--runs-dir",
        str(tmp_path),
        "--eval-episodes",
        "0",
    ]
    assert train.main([*common, "--run-name", "tok", "--multigame-encoder", "tokens"]) == 0
    tok = load_policy(tmp_path / "tok" / "checkpoint.pt", device="cpu")
    assert len(_blocks(tok.net)) == TOKENS_ATTENTION_LAYERS == 2
    assert all(b.num_heads == 4 for b in _blocks(tok.net))
    # The defaults: relative positions and a 3 x 3 window, recorded in the checkpoint.
    assert tok.network_kwargs is not None
    assert tok.network_kwargs["relative_position"] is True
    assert tok.network_kwargs["token_neighbourhood"] == TOKENS_NEIGHBOURHOOD == 3
    enc = tok.net.encoder
    assert enc.neighbourhood == 3  # type: ignore[union-attr]
    assert enc.channel_embedding.num_embeddings == sum(enc.channels_per_game) * 9 + 1  # type: ignore[union-attr, operator]
    table = enc.relative_bias  # type: ignore[union-attr]
    assert tuple(table.shape) == (TOKENS_ATTENTION_LAYERS, 4, 19, 19)
    assert bool((table != 0).any())  # trained: the bias left its zero start
    argv = [*common, "--run-name", "bag", "--multigame-encoder", "tokens"]
    assert train.main([*argv, "--attention-layers", "0"]) == 0
    bag = load_policy(tmp_path / "bag" / "checkpoint.pt", device="cpu")
    assert not _blocks(bag.net) and not bag.net.encoder.relative_position  # type: ignore[union-attr]
    assert bag.net.encoder.neighbourhood == 3  # type: ignore[union-attr]
    argv = [*common, "--run-name", "plain", "--multigame-encoder", "tokens"]
    assert train.main([*argv, "--no-relative-position", "--token-neighbourhood", "1"]) == 0
    plain = load_policy(tmp_path / "plain" / "checkpoint.pt", device="cpu")
    assert len(_blocks(plain.net)) == 2 and plain.network_kwargs is not None
    assert "relative_position" not in plain.network_kwargs
    assert "token_neighbourhood" not in plain.network_kwargs
    enc = plain.net.encoder
    assert not enc.relative_position and enc.neighbourhood == 1  # type: ignore[union-attr]
    assert train.main([*common, "--run-name", "cnn"]) == 0
    assert not _blocks(load_policy(tmp_path / "cnn" / "checkpoint.pt", device="cpu").net)


def test_build_tokens_student_with_attention_layers() -> None:
    ids = ["maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"]
    envs = maskrl.envs.make_multigame_vec(ids, 2)
    channels = [s[0] for s in maskrl.envs.multigame_layout(ids)]
    net = build_actor_critic(
        envs.single_observation_space,
        envs.single_action_space,
        multigame_encoder="tokens",
        channels_per_game=channels,
        attention_layers=2,
        attention_heads=4,
    )
    assert len(_blocks(net)) == 2
    obs, info = envs.reset(seed=0)
    logits, value = net({k: torch.as_tensor(v) for k, v in obs.items()})
    assert logits.shape[0] == value.shape[0] == 2 and bool(torch.isfinite(logits).all())
    tokens: dict[str, Any] = {"multigame_encoder": "tokens", "channels_per_game": channels}
    for kwargs in ({}, tokens):  # the CNN; tokens with attention_layers=0
        with pytest.raises(ValueError, match="relative_position=True biases the token encoder"):
            build_actor_critic(
                envs.single_observation_space,
                envs.single_action_space,
                relative_position=True,
                **kwargs,
            )
    with pytest.raises(ValueError, match="attention_heads must be >= 1"):
        build_actor_critic(
            envs.single_observation_space,
            envs.single_action_space,
            multigame_encoder="tokens",
            channels_per_game=channels,
            attention_heads=0,
        )
    envs.close()


def test_mimic_token_options_resolve_the_defaults_per_encoder() -> None:
    from maskrl.agents.config import MimicConfig

    def opts(**kw: object) -> dict[str, object]:
        c = MimicConfig(**kw)  # type: ignore[arg-type]
        c.validate()
        return c.token_options()

    plain = {"attention_layers": 0, "relative_position": False, "token_neighbourhood": 1}
    assert opts() == plain  # the CNN student: none of them
    assert opts(multigame_encoder="tokens") == {
        "attention_layers": 2,
        "relative_position": True,
        "token_neighbourhood": 3,
    }
    # No blocks: no bias to learn; the window does not need attention.
    assert opts(multigame_encoder="tokens", attention_layers=0) == {
        "attention_layers": 0,
        "relative_position": False,
        "token_neighbourhood": 3,
    }
    explicit = opts(multigame_encoder="tokens", relative_position=False, token_neighbourhood=5)
    assert explicit == {"attention_layers": 2, "relative_position": False, "token_neighbourhood": 5}
    assert opts(token_neighbourhood=1) == plain  # 1 is allowed with the CNN
