"""Entry script for launchers that take a script path (torchx `dist.ddp --script`, plain `torchrun`).

    torchx run dist.ddp -j 1x2                                   # .torchxconfig names this script
    torchx run dist.ddp -j 1x4 train.py                          # the same: a leading `train.py` names this script
    torchx run dist.ddp -j 1x2 -- --config configs/debug.yaml train.max_epochs=2
Arguments are those of `mmdlrm train`: `--config FILE` and `key=value` overrides.
"""

import sys
from pathlib import Path

from mmdlrm.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and Path(args[0]).name == Path(__file__).name:  # `torchx run dist.ddp -j 1x4 train.py`: this script
        args = args[1:]
    sys.exit(main(["train", *args]))
