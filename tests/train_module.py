"""``train.py`` loaded as a module, the way a checkout runs it: one copy for every test file."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_train_module() -> Any:
    spec = importlib.util.spec_from_file_location("train", REPO / "train.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


train = load_train_module()


def popen(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """``python train.py ARGS`` in ``cwd`` with SIGINT at its default (for the signal tests)."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Wait until ``path`` exists; fail if ``proc`` exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
