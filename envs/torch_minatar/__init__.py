"""The five MinAtar games as batched torch programs (GPU-resident vector envs).

Imports torch: load it only when a torch-backend env is made
(``maskrl.envs.make_vec(..., backend="torch")`` does so), so that
``import maskrl.envs`` stays free of torch.
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
