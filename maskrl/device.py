"""Resolve a device argument once, with one set of rules for the envs and the trainers."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` that ``device`` names, checked.

    ``"auto"`` is CUDA when available, else the CPU; ``"cpu"``, ``"cuda"`` and
    ``"cuda:N"`` are checked against this machine. CUDA comes back with an
    explicit index (``"cuda"`` -> ``cuda:<current device>``), so that it
    compares equal to the device of the tensors placed on it.

    Raises:
        TypeError: ``device`` is neither a string nor a ``torch.device``.
        ValueError: an unknown device string, a device type other than CPU or
            CUDA (maskrl runs on those), CUDA where there is none, or
            ``cuda:N`` beyond the device count.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from e
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device {str(device)!r} is not supported: maskrl runs on cpu, cuda, cuda:N or auto"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} was asked for but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
        dev = torch.device("cuda", index)
    return dev
