"""Env ids before anything is built: missing extras, Gymnasium's ``module:id`` form, duplicates.

The command-line cases run ``train.py`` in a subprocess, so that a missing optional
dependency can be simulated for real (a module blocked in ``sys.modules``, or a
broken install found first on ``PYTHONPATH``) and the one-line message and exit
status are those a user sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import maskrl.envs
from maskrl.envs import make_multigame_vec, make_vec, missing_dependency
from maskrl.envs.registration import install_hint, optional_extra

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--num-envs",
    "2",
    "--num-steps",
    "16",
    "--num-minibatches",
    "2",
    "--num-epochs",
    "1",
    "--total-timesteps",
    "64",
    "--eval-episodes",
    "0",
    "--no-progress",
]

ATARI_HINT = 'pip install "maskrl[atari]" (or pip install -e ".[atari]" from a checkout)'
PZ_HINT = 'pip install "maskrl[pettingzoo]" (or pip install -e ".[pettingzoo]" from a checkout)'


def run_train(
    args: list[str], tmp_path: Path, block: tuple[str, ...] = (), pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``train.py`` in a fresh interpreter, with ``block`` modules marked missing in ``sys.modules``."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import sys
            for name in {list(block)!r}:
                sys.modules[name] = None  # how Python marks a module as not importable
            sys.path.insert(0, {str(ROOT)!r})
            import train
            sys.exit(train.main(sys.argv[1:]))
            """
        )
    )
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    runs = ["--runs-dir", str(tmp_path / "runs")]
    return subprocess.run(
        [sys.executable, str(driver), *args, *runs],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (asserting exit 2 and no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train.py: error: ")
    return lines[0].removeprefix("train.py: error: ")


# ------------------------------------------------------------ missing optional dependencies


@pytest.mark.parametrize(
    ("env_id", "blocked", "message"),
    [
        (
            "maskrl/Atari-Pong-v0",
            "ale_py",
            "maskrl/Atari-Pong-v0 needs maskrl's 'atari' extra, which is not installed "
            f"(missing module: ale_py): {ATARI_HINT}",
        ),
        (
            "maskrl/Atari-Breakout-v0",
            "cv2",
            "maskrl/Atari-Breakout-v0 needs maskrl's 'atari' extra, which is not installed "
            f"(missing module: cv2): {ATARI_HINT}",
        ),
        (
            "maskrl/ConnectFour-v0",
            "pettingzoo",
            "maskrl/ConnectFour-v0 needs maskrl's 'pettingzoo' extra, which is not installed "
            f"(missing module: pettingzoo): {PZ_HINT}",
        ),
        (
            "maskrl/TicTacToe-v0",
            "pygame",
            "maskrl/TicTacToe-v0 needs maskrl's 'pettingzoo' extra, which is not installed "
            f"(missing module: pygame): {PZ_HINT}",
        ),
    ],
)
def test_missing_extra_is_one_line_naming_the_extra(
    env_id: str, blocked: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)
    assert missing_dependency(env_id) == message
    assert missing_dependency(f"maskrl.envs:{env_id}") == message  # the module:id form too
    with pytest.raises(ValueError) as err:
        make_vec(env_id, 2)
    assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        make_multigame_vec(["maskrl/MinAtar-Breakout-v0", env_id], 2)
    assert str(err.value) == message


def test_missing_dependency_lists_every_missing_module_and_ignores_ids_without_extras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ale_py", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert "(missing modules: ale_py, cv2)" in str(missing_dependency("maskrl/Atari-Pong-v0"))
    for env_id in [*maskrl.envs.minatar_ids(), "maskrl/Knapsack-v0", "CartPole-v1"]:
        assert missing_dependency(env_id) is None
    assert optional_extra("maskrl/Atari-Pong-v0") == "atari"
    assert optional_extra("maskrl/TicTacToe-v0") == "pettingzoo"
    assert optional_extra("maskrl/Knapsack-v0") is None
    assert install_hint("atari") == ATARI_HINT


def test_the_named_extras_exist_in_pyproject_and_install_the_modules() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("ale-py") for r in extras["atari"])
    assert any(r.startswith("opencv-python") for r in extras["atari"])  # provides cv2
    assert any(r.startswith("pettingzoo[classic]") for r in extras["pettingzoo"])  # + pygame


@pytest.mark.parametrize(
    ("env_id", "blocked", "extra"),
    [
        ("maskrl/Atari-Pong-v0", "ale_py", "atari"),
        ("maskrl/ConnectFour-v0", "pettingzoo", "pettingzoo"),
    ],
)
def test_cli_missing_extra_is_one_line_and_exit_2(
    env_id: str, blocked: str, extra: str, tmp_path: Path
) -> None:
    proc = run_train(["ppo", "--env", env_id, *TINY], tmp_path, block=(blocked,))
    message = one_line_error(proc)
    assert message.startswith(f"{env_id} needs maskrl's '{extra}' extra, which is not installed")
    assert f'pip install "maskrl[{extra}]"' in message and f'".[{extra}]"' in message
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made


def test_cli_broken_install_of_an_extra_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # An installed ale_py that fails to import (a missing shared library, say):
    # find_spec sees it, so the failure comes from the import when the env is made.
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "ale_py.py").write_text('raise ImportError("libale.so: cannot open shared object")\n')
    proc = run_train(["ppo", "--env", "maskrl/Atari-Pong-v0", *TINY], tmp_path, pythonpath=stub)
    assert one_line_error(proc) == (
        "maskrl/Atari-Pong-v0 needs maskrl's 'atari' extra, and importing it failed "
        f"(libale.so: cannot open shared object): {ATARI_HINT}"
    )


# ------------------------------------------------------------ Gymnasium's module:id form

USER_MODULE = '''
"""A user's package: importing it registers {env_id} (an env with an action_masks() method)."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Coin(gym.Env):
    """Three actions; action 1 is valid only on even steps; five steps an episode."""

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self._t = 0

    def action_masks(self):
        return np.array([True, self._t % 2 == 0, True])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(3, np.float32), {{}}

    def step(self, action):
        assert self.action_masks()[int(action)], "an invalid action reached the env"
        self._t += 1
        return np.full(3, self._t / 10, np.float32), float(action == 0), self._t >= 5, False, {{}}


gym.register("{env_id}", entry_point=Coin)
gym.register("Other{env_id}", entry_point=Coin)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, str]]:
    """A package ``<name>.games`` in a temp dir on ``sys.path``; yields (dir, module, env id)."""
    package = f"user_envs_{tmp_path.name.replace('-', '_')}"
    env_id = "UserCoin-v0"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "games.py").write_text(USER_MODULE.format(env_id=env_id))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, f"{package}.games", env_id
    gym.registry.pop(env_id, None)
    gym.registry.pop(f"Other{env_id}", None)
    for name in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[name]


def test_module_id_form_imports_the_module_and_builds_the_env(
    user_module: tuple[Path, str, str],
) -> None:
    _, module, env_id = user_module
    assert env_id not in gym.registry  # only importing the module registers it
    envs = make_vec(f"{module}:{env_id}", 2, seed=0)
    try:
        assert env_id in gym.registry
        obs, infos = envs.reset()
        assert obs.shape == (2, 3)
        for t in range(12):
            expected = np.array([True, (t % 5) % 2 == 0, True])
            np.testing.assert_array_equal(infos["action_mask"], np.tile(expected, (2, 1)))
            obs, _, _, _, infos = envs.step(np.array([1 if expected[1] else 2, 0]))
    finally:
        envs.close()
    multi = make_multigame_vec([f"{module}:{env_id}", f"{module}:Other{env_id}"], 2, seed=0)
    try:
        obs, infos = multi.reset()
        np.testing.assert_array_equal(obs["game_id"], [0, 1])
        np.testing.assert_array_equal(infos["action_mask"], [[1, 1, 1], [1, 1, 1]])
    finally:
        multi.close()


def test_module_id_form_in_async_workers(user_module: tuple[Path, str, str]) -> None:
    # Each worker rebuilds the env from the id, so gym.make imports the module there too.
    _, module, env_id = user_module
    envs = make_vec(f"{module}:{env_id}", 2, vectorization="async", seed=0)
    try:
        _, infos = envs.reset()
        np.testing.assert_array_equal(infos["action_mask"], [[1, 1, 1], [1, 1, 1]])
    finally:
        envs.close()


def test_module_id_form_errors_name_the_module(user_module: tuple[Path, str, str]) -> None:
    _, module, env_id = user_module
    with pytest.raises(
        ValueError,
        match=r"cannot import module 'no_such_pkg_xyz' of env id 'no_such_pkg_xyz:X-v0' "
        r"\(No module named 'no_such_pkg_xyz'\); .* installed or on PYTHONPATH",
    ):
        make_vec("no_such_pkg_xyz:X-v0", 1)
    with pytest.raises(
        ValueError,
        match=rf"unknown env id 'UserCoin-v9' .* module '{module}' was imported but did not "
        "register it",
    ):
        make_vec(f"{module}:UserCoin-v9", 1)
    for malformed in [f"{module}:{env_id}:x", f".{module}:{env_id}", f"{module}:", ":X-v0"]:
        with pytest.raises(ValueError, match=r"malformed env id .* 'module:id'"):
            make_vec(malformed, 1)
    with pytest.raises(ValueError, match="an env id must be a string, got int"):
        make_vec(3, 1)  # type: ignore[arg-type]


def test_unknown_plain_id_points_to_the_module_form() -> None:
    with pytest.raises(ValueError, match=r"unknown env id 'MyGame-v0' .*'module:id'\.$"):
        make_vec("MyGame-v0", 1)


def test_cli_trains_a_users_env_named_as_module_id(
    user_module: tuple[Path, str, str], tmp_path: Path
) -> None:
    root, module, env_id = user_module
    proc = run_train(
        ["ppo", "--env", f"{module}:{env_id}", "--run-name", "user", *TINY],
        tmp_path,
        pythonpath=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "user" / "checkpoint.pt").is_file()
    proc = run_train(["ppo", "--env", f"{module}:{env_id}", *TINY], tmp_path / "runs")
    assert f"cannot import module '{module}'" in one_line_error(proc)  # not on the path


# ------------------------------------------------------------ duplicate ids


def test_duplicate_ids_are_refused_naming_the_id() -> None:
    a, b = "maskrl/MinAtar-Breakout-v0", "maskrl/MinAtar-Seaquest-v0"
    with pytest.raises(
        ValueError, match=rf"env id '{a}' is listed twice in \['{a}', '{b}', '{a}'\]"
    ):
        make_multigame_vec([a, b, a], 3)
    with pytest.raises(
        ValueError, match=rf"env id '{a}' is listed twice \(as '{a}' and 'maskrl.envs:{a}'\)"
    ):
        make_multigame_vec([a, f"maskrl.envs:{a}"], 2)


def test_cli_duplicate_ids_exit_2(tmp_path: Path) -> None:
    a = "maskrl/MinAtar-Breakout-v0"
    proc = run_train(["ppo", "--env", f"{a},{a}", *TINY], tmp_path)
    message = one_line_error(proc)
    # The run configuration may refuse the list before make_multigame_vec sees it, in
    # its own words; either way it is one line naming the repeated id.
    assert a in message and re.search(r"twice|repeated|more than once", message), message
