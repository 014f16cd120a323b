"""Entry script for launchers that take a script path (torchx `dist.ddp --script`, plain `torchrun`).

    torchx run dist.ddp -j 1x2 --script launch/train.py -- --config configs/debug.yaml
Arguments are those of `mmdlrm train`: `--config FILE` and `key=value` overrides.
"""

import sys

from mmdlrm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
