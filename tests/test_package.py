"""Package layout and import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import maskrl

ROOT = Path(__file__).resolve().parents[1]


def test_envs_and_agents_install_under_maskrl_only() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(cfg["packages"]) == ["maskrl", "maskrl.agents", "maskrl.envs"]
    assert cfg["package-dir"] == {
        "maskrl": "maskrl",
        "maskrl.envs": "envs",
        "maskrl.agents": "agents",
    }
    import maskrl.agents
    import maskrl.envs

    assert Path(maskrl.envs.__file__).parent == ROOT / "envs"
    assert Path(maskrl.agents.__file__).parent == ROOT / "agents"
    assert (ROOT / "maskrl" / "py.typed").is_file()


def test_public_names_resolve() -> None:
    for name in maskrl.__all__:
        assert getattr(maskrl, name) is not None, name


def test_importing_envs_does_not_import_torch() -> None:
    code = "import sys, maskrl.envs; print('torch' in sys.modules, 'maskrl.agents' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
