"""ActionMaskWrapper: every mask source, every bad-mask error, action checks, import hygiene."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import maskrl.envs
from maskrl.envs import ActionMaskWrapper, action_is_valid, make_vec, mask_size, validate_mask

ENVS_DIR = pathlib.Path(maskrl.envs.__file__).parent


class ScriptedEnv(gym.Env[np.ndarray, Any]):
    """Emits a scripted sequence of masks through a chosen channel.

    ``masks[t]`` is the mask after reset (t=0) and after step t. ``channel``:
    "method" (``action_masks()``), "info" (``info["action_mask"]``), "obs" (Dict
    observation with an ``"action_mask"`` key and one other key), "obs2" (two other
    keys), or "none".
    """

    def __init__(
        self,
        masks: list[Any],
        channel: str,
        action_space: spaces.Space[Any] | None = None,
    ) -> None:
        self.masks = masks
        self.channel = channel
        self.action_space = action_space if action_space is not None else spaces.Discrete(3)
        self._t = 0
        n = mask_size(self.action_space)
        board = spaces.Box(0.0, 1.0, (2,), np.float32)
        self.observation_space: spaces.Space[Any]
        if channel == "obs":
            self.observation_space = spaces.Dict(
                {"observation": board, "action_mask": spaces.Box(0, 1, (n,), np.int8)}
            )
        elif channel == "obs2":
            self.observation_space = spaces.Dict(
                {"board": board, "turn": spaces.Discrete(2), "action_mask": spaces.MultiBinary(n)}
            )
        else:
            self.observation_space = board
        if channel == "method":
            self.action_masks = lambda: self.masks[self._t]

    def _out(self) -> tuple[Any, dict[str, Any]]:
        board = np.full(2, self._t / 10, dtype=np.float32)
        info: dict[str, Any] = {}
        if self.channel == "info":
            info["action_mask"] = self.masks[self._t]
        if self.channel == "obs":
            return {"observation": board, "action_mask": np.asarray(self.masks[self._t])}, info
        if self.channel == "obs2":
            return {
                "board": board,
                "turn": self._t % 2,
                "action_mask": np.asarray(self.masks[self._t]),
            }, info
        return board, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return self._out()

    def step(self, action: Any) -> Any:
        self._t += 1
        obs, info = self._out()
        return obs, 0.0, self._t == len(self.masks) - 1, False, info


GOOD = [[1, 0, 1], [0, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize("channel", ["method", "info", "obs", "obs2"])
def test_each_source_gives_bool_masks_matching_the_script(channel: str) -> None:
    env = ActionMaskWrapper(ScriptedEnv(GOOD, channel))
    obs, info = env.reset(seed=0)
    expected_source = {
        "method": "method",
        "info": "info",
        "obs": "observation",
        "obs2": "observation",
    }
    assert env.mask_source == expected_source[channel]
    for t in range(3):
        mask = info["action_mask"]
        assert mask.dtype == np.bool_ and mask.shape == (3,)
        np.testing.assert_array_equal(mask, np.array(GOOD[t], dtype=bool))
        np.testing.assert_array_equal(env.action_masks(), mask)
        if channel == "obs":  # single other key: unwrapped to that space
            assert isinstance(obs, np.ndarray) and obs.shape == (2,)
            assert env.observation_space == spaces.Box(0.0, 1.0, (2,), np.float32)
        if channel == "obs2":  # several other keys: a Dict without the mask
            assert set(obs) == {"board", "turn"}
            assert set(env.observation_space.spaces) == {"board", "turn"}
        if t < 2:
            obs, _, _, _, info = env.step(int(np.flatnonzero(GOOD[t])[0]))


def test_mask_fn_takes_precedence_and_sees_the_env() -> None:
    seen: list[gym.Env[Any, Any]] = []

    def mask_fn(env: gym.Env[Any, Any]) -> np.ndarray:
        seen.append(env)
        return np.array([False, False, True])

    inner = ScriptedEnv(GOOD, "info")
    env = ActionMaskWrapper(inner, mask_fn=mask_fn)
    _, info = env.reset()
    assert env.mask_source == "mask_fn"
    np.testing.assert_array_equal(info["action_mask"], [False, False, True])
    assert seen == [inner]


def test_taxi_int8_info_masks_become_bool() -> None:
    raw = gym.make("Taxi-v4")
    _, raw_info = raw.reset(seed=3)
    assert raw_info["action_mask"].dtype == np.int8  # the source really is int8
    env = ActionMaskWrapper(gym.make("Taxi-v4"))
    _, info = env.reset(seed=3)
    assert info["action_mask"].dtype == np.bool_
    np.testing.assert_array_equal(info["action_mask"], raw_info["action_mask"].astype(bool))
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = int(rng.choice(np.flatnonzero(info["action_mask"])))
        _, _, term, trunc, info = env.step(a)
        _, _, _, _, raw_info = raw.step(a)
        np.testing.assert_array_equal(info["action_mask"], raw_info["action_mask"].astype(bool))
        if term or trunc:
            break


def test_masks_handed_out_are_read_only_and_not_the_envs_array() -> None:
    source = np.array([True, True, False])
    env = ActionMaskWrapper(ScriptedEnv([source, source, source], "info"))
    _, info = env.reset()
    assert info["action_mask"] is not source
    with pytest.raises(ValueError, match="read-only"):
        info["action_mask"][0] = False


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1, 0], r"shape \(2,\), expected \(3,\)"),
        ([[1, 0, 1]], r"shape \(1, 3\), expected \(3,\)"),
        ([0, 2, 1], r"dtype int64 and is not 0/1"),
        ([0.0, 0.5, 1.0], r"dtype float64; a mask must be boolean .* never floating point"),
        ([0.0, 1.0, 1.0], r"dtype float64; a mask must be boolean .* never floating point"),
        (["a", "b", "c"], r"dtype <U1"),
        ([0, 0, 0], r"no valid action at all"),
        ([False, False, False], r"no valid action at all"),
    ],
)
@pytest.mark.parametrize("at_step", [0, 2])
def test_bad_masks_raise_with_env_id_and_step(bad: Any, message: str, at_step: int) -> None:
    script: list[Any] = [[1, 1, 1]] * 4
    script[at_step] = bad
    creator: Any = ScriptedEnv  # an Env class is an entry point at runtime
    gym.register("test/Scripted-v0", entry_point=creator)
    try:
        env = ActionMaskWrapper(gym.make("test/Scripted-v0", masks=script, channel="info"))
        with pytest.raises(ValueError, match=message) as err:
            env.reset()
            for _ in range(at_step):
                env.step(0)
        assert f"env 'test/Scripted-v0' at step {at_step}" in str(err.value)
    finally:
        del gym.registry["test/Scripted-v0"]


def test_multidiscrete_masks_are_concatenated_and_empty_dimension_is_named() -> None:
    space = spaces.MultiDiscrete([3, 2])
    good = [1, 0, 1, 0, 1]
    env = ActionMaskWrapper(
        ScriptedEnv([good, good, [1, 1, 1, 0, 0], good], "method", space), check_actions=True
    )
    _, info = env.reset()
    np.testing.assert_array_equal(info["action_mask"], np.array(good, dtype=bool))
    assert action_is_valid(np.array([2, 1]), info["action_mask"], space)
    assert not action_is_valid(np.array([1, 1]), info["action_mask"], space)
    assert not action_is_valid(np.array([0, 0]), info["action_mask"], space)
    with pytest.raises(ValueError, match=r"invalid action .* at step 1"):
        env.step(np.array([1, 1]))
    env.step(np.array([0, 1]))
    with pytest.raises(
        ValueError, match=r"at step 2 has no valid action in dimension 1 \(mask entries 3:5\)"
    ):
        env.step(np.array([2, 1]))


def test_multibinary_masks_are_per_bit_can_be_0_can_be_1_pairs() -> None:
    space = spaces.MultiBinary(3)
    # bit 0 forced to 1, bit 1 free, bit 2 forced to 0
    good = [0, 1, 1, 1, 1, 0]
    env = ActionMaskWrapper(ScriptedEnv([good, good, [1, 0, 0, 0, 1, 1], good], "info", space))
    _, info = env.reset()
    assert info["action_mask"].shape == (6,)
    assert action_is_valid(np.array([1, 0, 0]), info["action_mask"], space)
    assert action_is_valid(np.array([1, 1, 0]), info["action_mask"], space)
    assert not action_is_valid(np.array([0, 1, 0]), info["action_mask"], space)
    assert not action_is_valid(np.array([1, 1, 1]), info["action_mask"], space)
    env.step(np.array([1, 1, 0]))
    with pytest.raises(ValueError, match=r"no valid action in bit 1"):
        env.step(np.array([1, 0, 0]))


def test_check_actions_raises_with_env_id_and_step_and_is_off_by_default() -> None:
    env = ActionMaskWrapper(gym.make("Taxi-v4"), check_actions=True)
    _, info = env.reset(seed=0)
    bad = int(np.flatnonzero(~info["action_mask"])[0])
    with pytest.raises(ValueError, match=rf"invalid action {bad} in env 'Taxi-v4' at step 1"):
        env.step(bad)
    lenient = ActionMaskWrapper(gym.make("Taxi-v4"))
    _, info = lenient.reset(seed=0)
    lenient.step(bad)  # passed on to the env unchanged


def test_terminal_observation_may_have_no_valid_action() -> None:
    # The last mask belongs to a terminal observation: nothing follows it.
    env = ActionMaskWrapper(ScriptedEnv([[1, 1, 1], [0, 0, 0]], "info"))
    env.reset()
    _, _, terminated, _, info = env.step(0)
    assert terminated and not info["action_mask"].any()


def test_no_mask_source_raises_clear_error_at_reset_and_in_make_vec() -> None:
    env = ActionMaskWrapper(gym.make("FrozenLake-v1"))
    with pytest.raises(
        ValueError, match=r"env 'FrozenLake-v1' has no action-mask source: .*mask_fn"
    ):
        env.reset()
    with pytest.raises(ValueError, match=r"env 'FrozenLake-v1' has no action-mask source"):
        make_vec("FrozenLake-v1", 2)


def test_unsupported_action_space_and_unknown_id() -> None:
    with pytest.raises(ValueError, match="Discrete, MultiDiscrete or MultiBinary"):
        ActionMaskWrapper(gym.make("Pendulum-v1"))
    with pytest.raises(
        ValueError, match=r"unknown env id 'maskrl/MinAtar-Breakout-v9'.*Did you mean"
    ):
        make_vec("maskrl/MinAtar-Breakout-v9", 2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_masks_are_refused_even_when_exactly_0_1(dtype: Any) -> None:
    # One rule for the whole package (as maskrl.as_bool_mask / MaskedCategorical):
    # boolean, or integers that are all 0/1; floats never.
    with pytest.raises(
        ValueError, match=rf"env '<env>' at step 0 has dtype {np.dtype(dtype).name}; .*floating"
    ):
        validate_mask(np.array([1.0, 0.0, 1.0], dtype=dtype), spaces.Discrete(3))
    env = ActionMaskWrapper(ScriptedEnv([np.array([1.0, 0.0, 1.0], dtype=dtype)], "method"))
    with pytest.raises(ValueError, match="never floating point"):
        env.reset()


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint8, np.int32, np.int64])
def test_bool_and_integer_0_1_masks_are_accepted(dtype: Any) -> None:
    out = validate_mask(np.array([1, 0, 1], dtype=dtype), spaces.Discrete(3))
    assert out.dtype == np.bool_ and out.tolist() == [True, False, True]


def test_package_wide_mask_dtype_rule_agrees_with_the_core() -> None:
    import torch

    from maskrl import MaskedCategorical, as_bool_mask

    logits = torch.zeros(3)
    for arr in (np.array([1, 0, 1], dtype=np.int8), np.array([True, False, True])):
        validate_mask(arr, spaces.Discrete(3))
        as_bool_mask(arr, logits)
        MaskedCategorical(logits=logits, mask=torch.from_numpy(arr))
    floats = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    with pytest.raises(ValueError):
        validate_mask(floats, spaces.Discrete(3))
    with pytest.raises(ValueError):
        as_bool_mask(floats, logits)
    with pytest.raises(ValueError):
        MaskedCategorical(logits=logits, mask=torch.from_numpy(floats))


def test_errors_name_the_env_index_when_given() -> None:
    with pytest.raises(
        ValueError,
        match=r"action mask of env 'x' \(index 3 of the vector env\) at step 7 has no valid",
    ):
        validate_mask([0, 0, 0], spaces.Discrete(3), env_id="x", step=7, env_index=3)
    env = ActionMaskWrapper(ScriptedEnv(GOOD, "info"), env_index=5, check_actions=True)
    env.reset()
    with pytest.raises(
        ValueError,
        match=r"invalid action 1 in env 'ScriptedEnv' \(index 5 of the vector env\) at step 1",
    ):
        env.step(1)


def test_validate_mask_returns_input_when_already_bool() -> None:
    m = np.array([True, False])
    assert validate_mask(m, spaces.Discrete(2)) is m
    out = validate_mask(np.array([1, 0], dtype=np.int8), spaces.Discrete(2))
    assert out.dtype == np.bool_


def test_sb3_contrib_reaches_action_masks_through_gym_make_stack() -> None:
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

    env = gym.make("maskrl/MinAtar-Breakout-v0")
    env.reset(seed=0)
    assert is_masking_supported(env)
    np.testing.assert_array_equal(get_action_masks(env), [1, 1, 0, 1, 0, 0])
    wrapped = ActionMaskWrapper(gym.make("Taxi-v4"))
    wrapped.reset(seed=0)
    assert is_masking_supported(wrapped)


# ----------------------------------------------------------------- import hygiene

HEAVY_OPTIONAL = {"ale_py", "pettingzoo", "pygame", "cv2"}


def test_envs_package_never_imports_torch_or_agents() -> None:
    for path in sorted(ENVS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not re.match(r"(torch|maskrl\.agents)(\.|$)", name), (
                    f"{path.name} imports {name}"
                )


def test_optional_dependencies_are_imported_only_inside_functions() -> None:
    for path in sorted(ENVS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            assert not HEAVY_OPTIONAL & set(mods), f"{path.name} imports {mods} at module level"


def test_importing_envs_loads_no_optional_dependency() -> None:
    code = (
        "import sys, maskrl.envs, gymnasium as gym\n"
        "assert 'maskrl/Atari-Pong-v0' in gym.registry and 'maskrl/ConnectFour-v0' in gym.registry\n"
        f"print(sorted(m for m in {sorted(HEAVY_OPTIONAL)!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    ["masks", "minatar_games", "knapsack", "board_games", "vector", "atari", "registration"],
)
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module(f"maskrl.envs.{module}")
    if module == "board_games" and maskrl.envs.missing_dependency("maskrl/TicTacToe-v0"):
        pytest.skip(maskrl.envs.missing_dependency("maskrl/TicTacToe-v0"))
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
