"""``train.py ppo --hidden N``: the width of the default network's dense layer,
recorded in the checkpoint so that every loader rebuilds the same network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gymnasium import spaces
from train_module import train

import maskrl.envs  # noqa: F401  (registers the ids)
from maskrl.agents import build_actor_critic, load_policy
from maskrl.networks import MinAtarCNN

TINY = [
    "--num-envs", "4", "--num-steps", "32", "--num-epochs", "1", "--num-minibatches", "2",
    "--device", "cpu", "--seed", "1", "--no-progress", "--eval-episodes", "0",
]  # fmt: skip


def test_ppo_hidden_sets_the_minatar_dense_layer_and_survives_reload(tmp_path: Path) -> None:
    argv = ["ppo", "--env", "maskrl/MinAtar-Breakout-v0", "--hidden", "48", *TINY]
    argv += ["--total-timesteps", "128", "--runs-dir", str(tmp_path), "--run-name", "w"]
    assert train.main(argv) == 0
    policy = load_policy(tmp_path / "w" / "checkpoint.pt", device="cpu")
    cnn = [m for m in policy.net.modules() if isinstance(m, MinAtarCNN)]
    assert len(cnn) == 1 and cnn[0].fc.out_features == 48 and cnn[0].out_dim == 48
    assert policy.network_kwargs is not None and policy.network_kwargs["hidden"] == 48


def test_default_width_is_the_minatar_papers() -> None:
    obs = spaces.Box(0, 1, (4, 10, 10))
    net = build_actor_critic(obs, spaces.Discrete(3))
    cnn = [m for m in net.modules() if isinstance(m, MinAtarCNN)]
    assert cnn[0].fc.out_features == 128


def test_hidden_where_no_dense_encoder_layer_exists_is_refused() -> None:
    with pytest.raises(ValueError, match="has none"):
        build_actor_critic(spaces.Discrete(5), spaces.Discrete(3), hidden=32)


def test_hidden_sets_the_width_of_the_set_network() -> None:
    from maskrl.networks import SetActorCritic

    space = spaces.Dict(
        {
            "item_features": spaces.Box(0, 1, (4, 3)),
            "item_mask": spaces.MultiBinary(4),
            "capacity": spaces.Box(0, 1, (1,)),
        }
    )
    for hidden, width in ((None, 64), (96, 96)):
        net = build_actor_critic(
            space, spaces.Discrete(4), hidden=hidden, attention_layers=1, attention_heads=4
        )
        assert isinstance(net, SetActorCritic)
        blocks = [m for m in net.modules() if type(m).__name__ == "SelfAttentionBlock"]
        assert len(blocks) == 1
        # every linear layer reads or writes the chosen width (or the item / context input)
        widths = {m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)}
        assert width in widths and ({64, 96} - {width}).isdisjoint(widths)


def test_bad_hidden_flag_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ppo", "--hidden", "0", "--runs-dir", str(tmp_path), *TINY]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hidden (--hidden)" in err[0]


def test_help_texts_name_every_preset() -> None:
    from maskrl.agents.config import PRESETS
    from maskrl.agents.runner import RunConfig
    from maskrl.cli import build_parser

    help_text = RunConfig.__dataclass_fields__["preset"].metadata["help"]
    experts = build_parser()._subparsers._group_actions[0].choices["experts"].format_help()  # type: ignore[union-attr]
    for name in PRESETS:
        assert f"'{name}'" in help_text and name in experts


def test_ppo_hidden_sets_the_knapsack_width_and_survives_reload(tmp_path: Path) -> None:
    from maskrl.networks import SetActorCritic

    argv = ["ppo", "--env", "maskrl/Knapsack-v0", "--hidden", "32", "--attention-layers", "1"]
    argv += [*TINY, "--attention-heads", "2", "--total-timesteps", "128"]
    argv += ["--runs-dir", str(tmp_path), "--run-name", "k"]
    assert train.main(argv) == 0
    policy = load_policy(tmp_path / "k" / "checkpoint.pt", device="cpu")
    assert isinstance(policy.net, SetActorCritic)
    assert policy.network_kwargs is not None and policy.network_kwargs["hidden"] == 32
    assert policy.net.score[0].out_features == 32
