"""``train.py pack-experts``: an experts folder copied with policy-only checkpoints.

The packed folder must be interchangeable with the original wherever a policy is
read (``mimic --experts``, ``eval``, ``--init-from``), and refused where the
optimizer's state would be needed (``--resume``). Tiny untrained experts, through
``train.main(argv)`` in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_module import train

from maskrl.agents import PPO, PPOConfig, load_policy
from maskrl.agents.checkpoint import load_checkpoint
from maskrl.agents.mimic import file_sha256, load_experts
from maskrl.agents.runner import PACKED_KEYS
from maskrl.agents.transfer import build_ppo_from

BREAKOUT = "maskrl/MinAtar-Breakout-v0"
INVADERS = "maskrl/MinAtar-SpaceInvaders-v0"
TINY = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "1", "--device", "cpu",
        "--no-progress"]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder written by ``train.py experts``: Breakout and SpaceInvaders, 32 steps each."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["experts", "--env", f"{BREAKOUT},{INVADERS}", "--total-timesteps", "32",
            "--runs-dir", str(runs), "--run-name", "ex", "--eval-episodes", "1", *TINY]  # fmt: skip
    assert train.main(argv) == 0
    return runs / "ex"


@pytest.fixture(scope="module")
def packed(experts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "minatar"
    assert train.main(["pack-experts", str(experts), "--out", str(out)]) == 0
    return out


def test_packed_experts_keep_the_policy_and_drop_the_optimizer(experts: Path, packed: Path) -> None:
    source = json.loads((experts / "experts.json").read_text())["experts"]
    entries = json.loads((packed / "experts.json").read_text())["experts"]
    assert [e["env_id"] for e in entries] == [BREAKOUT, INVADERS]
    for src, entry in zip(source, entries, strict=True):
        # Everything the original entry said, plus the packed file's digest.
        assert {k: v for k, v in entry.items() if k != "sha256"} == src
        path = packed / entry["checkpoint"]
        assert entry["sha256"] == file_sha256(path)
        state = load_checkpoint(path)
        original = load_checkpoint(experts / src["checkpoint"])
        assert set(state) == {*PACKED_KEYS, "policy_only"}
        assert state["policy_only"] is True
        assert state["global_step"] == original["global_step"] == 32
        assert state["config"] == original["config"]
        assert state["model"].keys() == original["model"].keys()
        for key, value in state["model"].items():
            assert torch.equal(value, original["model"][key]), key
        # Adam's two moments are gone: well under half of the original file.
        assert path.stat().st_size < 0.5 * (experts / src["checkpoint"]).stat().st_size
        for name in ("config.json", "eval.json"):
            assert (path.parent / name).read_bytes() == (
                experts / src["run_dir"] / name
            ).read_bytes()


def test_a_packed_policy_acts_exactly_as_the_original(experts: Path, packed: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("MinAtar-Breakout-v0", "MinAtar-SpaceInvaders-v0"):
        a = load_policy(experts / name / "checkpoint.pt", device="cpu")
        b = load_policy(packed / name / "checkpoint.pt", device="cpu")
        shape = a.observation_space.shape
        obs = rng.integers(0, 2, size=(64, *shape)).astype(np.float32)
        for x, y in zip(
            a.teacher_outputs(torch.as_tensor(obs)),
            b.teacher_outputs(torch.as_tensor(obs)),
            strict=True,
        ):
            assert torch.equal(x, y)  # logits, features, value
        mask = rng.random((64, 6)) < 0.5
        mask[np.arange(64), rng.integers(0, 6, 64)] = True  # at least one valid action a row
        greedy = b.predict(obs, mask, deterministic=True)
        assert np.array_equal(a.predict(obs, mask, deterministic=True), greedy)
        assert mask[np.arange(64), greedy].all()


def test_a_student_distilled_from_the_packed_folder_is_the_same_student(
    experts: Path, packed: Path, tmp_path: Path
) -> None:
    common = ["--total-timesteps", "32", "--eval-episodes", "0", "--runs-dir", str(tmp_path),
              *TINY]  # fmt: skip
    assert train.main(["mimic", "--experts", str(experts), "--run-name", "a", *common]) == 0
    assert train.main(["mimic", "--experts", str(packed), "--run-name", "b", *common]) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    assert [x.env_id for x in load_experts(packed)] == [BREAKOUT, INVADERS]


def test_eval_and_init_from_read_a_packed_checkpoint(
    experts: Path, packed: Path, tmp_path: Path
) -> None:
    results = []
    for folder in (experts, packed):
        out = tmp_path / f"{folder.name}.json"
        argv = ["eval", "--checkpoint", str(folder / "MinAtar-Breakout-v0" / "checkpoint.pt"),
                "--episodes", "2", "--seed", "5", "--no-progress", "--device", "cpu",
                "--output", str(out)]  # fmt: skip
        assert train.main(argv) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["returns"] == results[1]["returns"]
    source = load_policy(packed / "MinAtar-Breakout-v0" / "checkpoint.pt", device="cpu")
    cfg = PPOConfig(num_envs=2, num_steps=8, num_minibatches=1, device="cpu")
    agent, rec = build_ppo_from(
        [BREAKOUT], cfg, str(packed / "MinAtar-Breakout-v0" / "checkpoint.pt"), "all"
    )
    agent.envs.close()
    assert not rec["fresh"] and agent.global_step == 0
    for key, value in agent.policy.net.state_dict().items():
        assert torch.equal(value, source.net.state_dict()[key]), key


def test_a_packed_checkpoint_cannot_be_resumed(
    packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    argv = ["ppo", "--resume", str(packed / "MinAtar-Breakout-v0"), "--total-timesteps", "64",
            "--no-progress"]  # fmt: skip
    assert train.main(argv) == 2
    line = _one_error_line(capsys)
    assert "holds a policy only" in line and "cannot be resumed" in line, line
    with pytest.raises(ValueError, match="holds a policy only"):
        PPO.load(packed / "MinAtar-Breakout-v0" / "checkpoint.pt", device="cpu")


def test_packing_refuses_a_used_out_folder_and_a_folder_without_experts(
    experts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert train.main(["pack-experts", str(experts), "--out", str(used)]) == 2
    assert "is not an empty folder" in _one_error_line(capsys)
    assert (used / "notes.txt").read_text() == "mine" and len(list(used.iterdir())) == 1
    assert train.main(["pack-experts", str(tmp_path), "--out", str(tmp_path / "new")]) == 2
    assert "holds no experts.json" in _one_error_line(capsys)
    assert not (tmp_path / "new").exists()
    assert train.main(["pack-experts", str(experts), "--out", str(experts)]) == 2
    _one_error_line(capsys)


# ------------------------------------------------------- the committed MinAtar experts

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained" / "minatar-experts"
# In the order the student numbers its games (experts.json's).
GAMES = ["SpaceInvaders", "Seaquest", "Asterix", "Freeway", "Breakout"]


def test_the_committed_minatar_experts_are_the_five_games_packed_and_unchanged() -> None:
    entries = json.loads((PRETRAINED / "experts.json").read_text())["experts"]
    assert [e["env_id"] for e in entries] == [f"maskrl/MinAtar-{g}-v0" for g in GAMES]
    for entry in entries:
        path = PRETRAINED / entry["checkpoint"]
        assert file_sha256(path) == entry["sha256"], f"{path} changed since it was packed"
        state = load_checkpoint(path)
        assert state["policy_only"] is True and "optimizer" not in state
        assert state["env_ids"] == [entry["env_id"]]
        assert state["global_step"] == entry["steps"] >= 3_000_000
    experts = load_experts(PRETRAINED)  # each checked to be an expert of its own game
    assert [x.policy.n_logits for x in experts] == [6] * 5


@pytest.mark.parametrize(("game", "floor"), [("Breakout", 20.0), ("Freeway", 55.0)])
def test_a_committed_expert_plays_its_game_at_the_published_level(
    game: str, floor: float, tmp_path: Path
) -> None:
    # Greedy, 8 episodes from a fixed seed; the floors sit well below the experts'
    # 200-episode means (pretrained/minatar-experts/README.md) and near the
    # published levels (Breakout 28, Freeway 58), far above an untrained policy.
    out = tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(PRETRAINED / f"MinAtar-{game}-v0" / "checkpoint.pt"),
            "--episodes", "8", "--seed", "100000", "--deterministic", "--no-progress",
            "--device", "cpu", "--torch-threads", "1", "--output", str(out)]  # fmt: skip
    assert train.main(argv) == 0
    assert json.loads(out.read_text())["mean"] >= floor
