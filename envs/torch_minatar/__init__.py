"""The five MinAtar games as batched torch programs (GPU-resident vector envs).

Breakout, SpaceInvaders, Asterix, Freeway and Seaquest keep the state of all
envs in tensors with a leading env dimension and step them with a fixed
sequence of tensor operations (loops only over a game's few object slots), on
CPU or CUDA. Observations, rewards, terminations, sticky actions (0.1),
difficulty ramping, the 6-action space with the minimal action sets as masks,
and truncation at 10,000 steps are those of maskrl's ``maskrl/MinAtar-*-v0`` ids.

Use them through :func:`maskrl.envs.make_vec` / :func:`maskrl.envs.make_multigame_vec`
with ``backend="torch"`` (and ``device=...``), or directly:
:class:`TorchMinAtarVectorEnv`, :class:`TorchMinAtarMultiGameVectorEnv`.
This subpackage imports torch, so ``maskrl.envs`` imports it only when such an
env is made and stays torch-free otherwise.

**Conformance.** Every random event of a game is a column of uniform draws fed
to the step (:mod:`maskrl.envs.torch_minatar._base`); in normal use they come
from the env's ``torch.Generator``, in
:func:`maskrl.envs.torch_minatar.reference.check_conformance` from the values
MinAtar's own ``RandomState`` returned, recorded while MinAtar's ``Environment``
runs side by side. Observations, rewards and terminations are then equal at
every step (tests: ``tests/test_torch_minatar.py``; full 10,000+ step runs per
game: ``benchmarks/minatar_conformance.py``). In torch-generator mode the
draws differ from MinAtar's stream, so there agreement is statistical (mean
episode return and length of a random policy, tested).

**Differences that cannot be observed in practice** (documented where they live):

* Freeway: MinAtar gives a car speed 0 when a direction draw is exactly 0.5
  (probability 2**-53 per draw); the torch generator's float32 draws never do.
* Seaquest: MinAtar removes list items by value, so two objects of one list equal
  in every field (position, direction and timers) could make it remove the other
  twin and then process the survivor twice; the slot lists here remove the object
  that was hit. No conformance run has produced such twins.
* Seaquest on a GPU holds at most 64 enemies (32 of each kind), more than any
  reachable state has (see :mod:`~maskrl.envs.torch_minatar.seaquest`); on CPU the
  list grows on demand.
"""

from maskrl.envs.torch_minatar.vector import (
    TORCH_MINATAR_IDS,
    GameBatch,
    TorchMinAtarMultiGameVectorEnv,
    TorchMinAtarVectorEnv,
    make_game,
)

__all__ = [
    "TORCH_MINATAR_IDS",
    "GameBatch",
    "TorchMinAtarMultiGameVectorEnv",
    "TorchMinAtarVectorEnv",
    "make_game",
]
