"""torchx components for mmdlrm: `dist.ddp` with the project's own arguments.

    torchx run launch/components.py:train --config configs/debug.yaml -j 1x2
    torchx run launch/components.py:train --config configs/ml25m.yaml -j 2x8 --gpu 8 -- sharding.plan=row_wise
    torchx run -s slurm launch/components.py:train -j 4x8 --gpu 8 --config configs/ml25m.yaml
    torchx run -s kubernetes -cfg queue=default launch/components.py:train --image <your image> -j 2x4 --gpu 4

Overrides after `--` are `key=value` config overrides, as on the `mmdlrm train` command line.
"""

from typing import Optional

import torchx
import torchx.specs as specs
from torchx.components.dist import ddp

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def train(
    *overrides: str,
    config: str = "configs/synthetic.yaml",
    j: str = "1x2",
    image: str = torchx.IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,  # noqa: UP007 (torchx's component linter reads Optional only)
    name: str = "mmdlrm/train",
    max_retries: int = 0,
    rdzv_port: int = 29500,
    venv: str = ".venv",
) -> specs.AppDef:
    """Train mmdlrm with torchrun on `j` = {nodes}x{processes per node}; tables are sharded over all of them.

    Args:
        overrides: config overrides, e.g. train.batch_size=8192 sharding.plan=table_wise
        config: YAML config (a path inside the image / working directory)
        j: {nnodes}x{nproc_per_node}; on GPU hosts nproc_per_node is at most the GPUs per host
        image: container image (docker, kubernetes) or working directory (local_cwd, slurm)
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        h: a named resource (overrides cpu, gpu, memMB)
        name: {experiment}/{run} name for the scheduler
        max_retries: scheduler retries; a retried job resumes from its last checkpoint
        rdzv_port: c10d rendezvous port on the first node (multi-node jobs)
        venv: the virtual environment setup.sh made, relative to the image / working directory; its bin/ goes first
            on PATH, so torchrun and mmdlrm are found without activating it
    """
    return ddp(
        "train", "--config", config, *overrides,
        m="mmdlrm", image=image, name=name, h=h, cpu=cpu, gpu=gpu, memMB=memMB, j=j,
        max_retries=max_retries, rdzv_port=rdzv_port, env={"PATH": f"{venv}/bin:{SYSTEM_PATH}"},
    )  # fmt: skip
