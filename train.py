#!/usr/bin/env python
"""maskrl command line: train and evaluate masked agents.

    python train.py                      # the default job: masked PPO on MinAtar Breakout
    python train.py ppo --env maskrl/MinAtar-SpaceInvaders-v0 --total-timesteps 500000
    python train.py ppo --env maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-Asterix-v0   # one multi-game agent
    python train.py ppo --resume runs/NAME
    python train.py eval --checkpoint runs/NAME/checkpoint.pt --episodes 20
    python train.py plot runs/A runs/B --out curves.png   # learning curves (maskrl[plots])
    tensorboard --logdir runs

The parser and the commands live in :mod:`maskrl.cli`; this file is the
thin entry that runs them from a checkout.
"""

from __future__ import annotations

import sys

from maskrl.cli import (  # noqa: F401  (re-exported for callers of train.py)
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    RESUME_FLAGS,
    _pick,
    add_dataclass_args,
    apply_preset,
    build_parser,
    main,
)

if __name__ == "__main__":
    sys.exit(main())
