"""Package layout and import hygiene: what an install contains, what the names are, what loads."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import maskrl

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed (``tomllib`` is Python >= 3.11; skipped on 3.10)."""
    tomllib = pytest.importorskip("tomllib")
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text()))


def run_python(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter (so that nothing is imported yet)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


# ------------------------------------------------------------------ layout


def source_packages() -> set[str]:
    """Every package in the source tree, named as it installs (``envs/x`` -> ``maskrl.envs.x``)."""
    names = set()
    for folder, installed in (
        ("maskrl", "maskrl"),
        ("envs", "maskrl.envs"),
        ("agents", "maskrl.agents"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            names.add(".".join((installed, *rel)))
    return names


def test_setuptools_maps_envs_and_agents_under_maskrl_only() -> None:
    cfg = pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"] == {
        "maskrl": "maskrl",
        "maskrl.envs": "envs",
        "maskrl.agents": "agents",
    }
    # Every package of the tree is listed (a subpackage left out would be missing
    # from installs, though tests run from the checkout would not notice) and all
    # install under maskrl.
    assert sorted(cfg["packages"]) == sorted(source_packages())
    assert {"maskrl", "maskrl.envs", "maskrl.agents"} <= set(cfg["packages"])
    assert all(p == "maskrl" or p.startswith("maskrl.") for p in cfg["packages"])
    import maskrl.agents
    import maskrl.envs

    assert Path(maskrl.envs.__file__).parent == ROOT / "envs"
    assert Path(maskrl.agents.__file__).parent == ROOT / "agents"
    assert (ROOT / "maskrl" / "py.typed").is_file()


def test_built_wheel_installs_maskrl_envs_and_agents_and_no_top_level_envs(
    tmp_path: Path,
) -> None:
    # Build the wheel from a copy, so the working tree gets no build/ or egg-info.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("maskrl", "envs", "agents"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    dist.mkdir()
    code = f"import sys, setuptools.build_meta as b; print(b.build_wheel({str(dist)!r}))"
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("maskrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"maskrl"}, top  # no top-level envs/, agents/ or tests/
    for module in ("maskrl/__init__.py", "maskrl/envs/__init__.py", "maskrl/agents/__init__.py"):
        assert module in names
    assert "maskrl/py.typed" in names
    for folder in ("envs", "agents"):  # every module, subpackages included
        for path in (ROOT / folder).rglob("*.py"):
            assert f"maskrl/{folder}/{path.relative_to(ROOT / folder).as_posix()}" in names
    version = pyproject()["project"]["version"]
    assert wheel.name.startswith(f"maskrl-{version}-")


def test_version_matches_pyproject() -> None:
    version = pyproject()["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+([abc]\d+|\.dev\d+|rc\d+)?", version)
    assert maskrl.__version__ == version


# ------------------------------------------------------------------ public names


def test_core_exports_resolve_to_the_objects_of_their_modules() -> None:
    exports: dict[str, str] = maskrl._EXPORTS  # type: ignore[attr-defined]
    assert sorted(maskrl.__all__) == sorted([*exports, "__version__"])
    for name, module in exports.items():
        obj = getattr(maskrl, name)
        assert obj is getattr(importlib.import_module(module), name), name
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == module, (name, obj.__module__)
        assert name in dir(maskrl)
    with pytest.raises(AttributeError, match="module 'maskrl' has no attribute 'nope'"):
        maskrl.nope  # noqa: B018  # type: ignore[attr-defined]


def test_core_exports_are_what_their_names_say() -> None:
    import torch

    from maskrl.distributions import MaskedCategorical, MaskedMultiCategorical
    from maskrl.init import HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN

    assert issubclass(maskrl.MaskedCategorical, torch.distributions.Distribution)
    assert maskrl.MaskedCategorical is MaskedCategorical
    assert maskrl.MaskedMultiCategorical is MaskedMultiCategorical
    assert issubclass(maskrl.AttentionPool, torch.nn.Module)
    assert issubclass(maskrl.InstanceNorm, torch.nn.Module)
    assert (maskrl.HIDDEN_GAIN, maskrl.POLICY_GAIN, maskrl.VALUE_GAIN) == (
        HIDDEN_GAIN,
        POLICY_GAIN,
        VALUE_GAIN,
    )
    assert maskrl.HIDDEN_GAIN == pytest.approx(2**0.5) and maskrl.POLICY_GAIN == 0.01
    probs = maskrl.masked_softmax(torch.tensor([0.2, 0.2, 0.6]).log(), torch.tensor([0, 1, 1]))
    torch.testing.assert_close(probs, torch.tensor([0.0, 0.25, 0.75]))


@pytest.mark.parametrize("package", ["maskrl.envs", "maskrl.agents"])
def test_subpackage_exports_resolve_and_are_defined_in_maskrl(package: str) -> None:
    mod = importlib.import_module(package)
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        obj = getattr(mod, name)  # AttributeError: an __all__ entry that does not exist
        if inspect.isclass(obj) or inspect.isfunction(obj):
            # Defined in maskrl itself, not a third-party object re-exported by accident.
            assert obj.__module__.split(".")[0] == "maskrl", (name, obj.__module__)
            assert getattr(importlib.import_module(obj.__module__), name) is obj


# ------------------------------------------------------------------ what an import loads


def test_importing_maskrl_or_maskrl_envs_leaves_torch_unimported() -> None:
    code = (
        "import sys, maskrl, maskrl.envs\n"
        "print('torch' in sys.modules, 'maskrl.agents' in sys.modules)"
    )
    assert run_python(code).split() == ["False", "False"]


def test_making_and_stepping_a_numpy_env_leaves_torch_unimported() -> None:
    # Only the batched torch games load torch, and only when they are made.
    code = (
        "import sys, numpy as np, gymnasium as gym, maskrl.envs\n"
        "envs = maskrl.envs.make_vec('maskrl/MinAtar-Breakout-v0', 2, seed=0)\n"
        "envs.reset(); envs.step(np.zeros(2, dtype=np.int64)); envs.close()\n"
        "multi = maskrl.envs.make_multigame_vec(maskrl.envs.minatar_ids()[:2], 2, seed=0)\n"
        "multi.reset(); multi.close()\n"
        "gym.make('maskrl/Knapsack-v0').reset(seed=0)\n"
        "print('torch' in sys.modules)"
    )
    assert run_python(code) == "False"


def test_first_use_of_a_core_name_imports_torch() -> None:
    # The lazy exports must still work from a cold start, not only after a test imported torch.
    code = (
        "import sys, maskrl\n"
        "before = 'torch' in sys.modules\n"
        "pool = maskrl.AttentionPool\n"
        "print(before, 'torch' in sys.modules, pool.__name__)"
    )
    assert run_python(code).split() == ["False", "True", "AttentionPool"]


# ------------------------------------------------------------------ references in the docs


def _repository_texts() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "train.py", *(ROOT / "docs").glob("*.md")]
    for folder in ("maskrl", "envs", "agents", "benchmarks", "tests"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def test_docs_and_source_files_named_in_the_repository_exist() -> None:
    # ``docs/<file>`` and ``benchmarks|tests/<file>.py`` paths written in docstrings,
    # comments and Markdown must point at real files (benchmarks/results/ is an
    # output folder that runs create, so it is not a reference).
    pattern = re.compile(r"\b(docs/[\w./-]*\w|(?:benchmarks|tests)/[\w/-]+\.py)\b")
    dead = []
    for path in _repository_texts():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for ref in pattern.findall(line):
                if not (ROOT / ref).exists():
                    dead.append(f"{path.relative_to(ROOT)}:{n}: {ref}")
    assert not dead, "references to files that do not exist:\n" + "\n".join(dead)


def _github_slug(heading: str) -> str:
    # GitHub's anchor for a heading: lower case, everything but word characters, hyphens
    # and spaces dropped (backticks, dots, slashes, brackets), spaces turned into hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_slug_by_hand() -> None:
    assert _github_slug("The one mask convention") == "the-one-mask-convention"
    assert _github_slug("A sharper target: `--tau 0.5`") == "a-sharper-target---tau-05"
    assert _github_slug("Quantization (`benchmarks/qat_returns.py`)") == (
        "quantization-benchmarksqat_returnspy"
    )


def test_relative_markdown_links_resolve_to_files_and_headings() -> None:
    # Every relative link in the README and docs/*.md (outside code blocks) names a file
    # that exists, and its #anchor, if any, a heading of that file.
    fence = re.compile(r"```.*?```", re.S)
    link = re.compile(r"\]\(([^)\s]+)\)")
    dead = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in link.findall(fence.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = doc.parent / path if path else doc
            if not file.exists():
                dead.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", fence.sub("", file.read_text()), re.M)
                if anchor not in {_github_slug(h) for h in headings}:
                    dead.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_mask_convention_pointer_in_envs_masks_is_live() -> None:
    text = (ROOT / "envs" / "masks.py").read_text()
    assert 'README.md, "The one mask convention"' in text and "docs/design-notes.md" in text
    assert "## The one mask convention" in (ROOT / "README.md").read_text()
    assert "## Masks" in (ROOT / "docs" / "design-notes.md").read_text()
