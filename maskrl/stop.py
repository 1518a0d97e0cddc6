"""``StopRequest``: how a program asks a running training to stop (torch-free).

It lives in the core so that the command line can subclass it before torch is
imported (its signal handlers must be in place first), and the harness in
:mod:`maskrl.agents.runner` reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["StopRequest"]


class StopRequest:
    """A flag that asks a training to stop after its current update.

    The command line sets it from its SIGINT/SIGTERM handlers (a library never
    installs signal handlers itself); a program embedding maskrl can set it
    from anywhere with :meth:`request`.

    ``phase`` says what the run is doing: ``"setup"`` (loading, building envs),
    ``"loading"`` (the first env of each game, whose import may swallow a
    ``KeyboardInterrupt``; the request is read right after), ``"training"`` (a
    request is read between updates), ``"evaluation"`` (the final evaluation,
    after the checkpoint is written). The command line's handlers only set the
    request in ``"loading"`` and ``"training"``, and stop the other phases at once
    (they raise ``KeyboardInterrupt``): there is nothing there worth finishing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "setup"

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """Mark the block as ``phase`` (restored afterwards)."""
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous
