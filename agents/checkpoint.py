"""Checkpoints that are safe to write and safe to read.

* Written atomically: to a temporary file in the same folder, flushed and
  fsynced, then renamed over the target, so a crash or Ctrl-C mid-write never
  leaves a truncated checkpoint where a good one was.
* Verified before they are read: ``torch.save`` writes a zip archive with a
  CRC-32 per member, which ``torch.load`` does not check; :func:`load_checkpoint`
  checks every member's CRC first, so a damaged file is refused with one line
  instead of loading damaged tensors (NaN in the weights or Adam's moments).
* Read with ``torch.load(..., weights_only=True)``: only tensors and plain
  containers are unpickled, never arbitrary objects. Everything stored is
  therefore tensors, numbers, strings, lists and dicts -- Gymnasium spaces are
  stored as plain dicts (:func:`space_to_dict`).
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "clean_stale_temporaries",
    "load_checkpoint",
    "save_checkpoint",
    "space_from_dict",
    "space_to_dict",
]


def clean_stale_temporaries(folder: str | Path, name: str = "checkpoint.pt") -> list[Path]:
    """Remove ``.{name}.*.tmp`` files a killed writer left in ``folder``; returns what was removed.

    Call it only while holding the folder's lock (no other writer is active).
    """
    removed = []
    for p in Path(folder).glob(f".{name}.*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); a checkpoint is an ordinary file.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a half-written temporary behind.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        ValueError: the file is missing, or is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            damaged = zf.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint ({e})") from e
    if damaged is not None:
        raise ValueError(
            f"checkpoint {path} is damaged: member {damaged!r} fails its CRC check "
            "(the file was changed after it was written)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise ValueError(_load_error(path, e)) from e
    if not isinstance(state, dict) or "format" not in state:
        raise ValueError(f"checkpoint {path} is not a maskrl checkpoint")
    return state


def _load_error(path: Path, e: Exception) -> str:
    """One line saying why ``torch.load`` refused ``path``.

    torch's own messages run over several lines (with terminal escape codes) and
    advise retrying with ``weights_only=False`` -- the wrong advice for a file
    that carries pickled code, so only the reason itself is kept.
    """
    msg = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
    reason = m.group(1) if m else (msg.strip().splitlines() or [""])[0]
    reason = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", reason).split())
    if m and reason.startswith("Unsupported global"):
        return (
            f"checkpoint {path} is refused: it holds pickled Python objects, and checkpoints are "
            f"read with torch.load(weights_only=True), which loads only tensors and plain "
            f"containers ({reason.split('. ')[0]})"
        )
    detail = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
    return f"checkpoint {path} is corrupt or not a torch checkpoint ({detail})"


def space_to_dict(space: Any) -> dict[str, Any]:
    """Describe a Gymnasium space with plain types (enough to rebuild its shape and dtype)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in np.asarray(space.nvec).ravel()]}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": [int(n) for n in np.atleast_1d(space.n)]}
    if isinstance(space, spaces.Box):
        low, high = np.asarray(space.low), np.asarray(space.high)
        # Bounds are kept when uniform (all that the networks need); else +-inf.
        lo = float(low.flat[0]) if low.size and (low == low.flat[0]).all() else -np.inf
        hi = float(high.flat[0]) if high.size and (high == high.flat[0]).all() else np.inf
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": lo,
            "high": hi,
        }
    raise ValueError(f"cannot store observation/action space {space} in a checkpoint")


def space_from_dict(d: dict[str, Any]) -> Any:
    """Inverse of :func:`space_to_dict`."""
    from gymnasium import spaces

    kind = d.get("type")
    if kind == "Dict":
        return spaces.Dict({k: space_from_dict(v) for k, v in d["spaces"].items()})
    if kind == "Discrete":
        return spaces.Discrete(int(d["n"]), start=int(d.get("start", 0)))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(np.asarray(d["nvec"], dtype=np.int64))
    if kind == "MultiBinary":
        n = d["n"]
        return spaces.MultiBinary(n[0] if len(n) == 1 else n)
    if kind == "Box":
        return spaces.Box(
            float(d["low"]), float(d["high"]), shape=tuple(d["shape"]), dtype=np.dtype(d["dtype"])
        )
    raise ValueError(f"unknown space description {d!r}")
