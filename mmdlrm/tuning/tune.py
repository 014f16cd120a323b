"""`mmdlrm tune`: open (or continue, or join) a study, work on its trials, write its outputs, train the best once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmdlrm.config import ConfigError
from mmdlrm.distributed.env import DistEnv
from mmdlrm.tuning.outputs import final_run, write_outputs
from mmdlrm.tuning.study import held_elsewhere, open_study, trial_name, work

log = logging.getLogger("mmdlrm")


def tune(config: str | Path | None, overrides: list[str], trials: int, env: DistEnv, *, timeout_min: float | None = None,
         metric: str | None = None, space_path: str | Path | None = None, name: str | None = None) -> dict:  # fmt: skip
    """Run (or continue, or join) the study until it holds `trials` trials or `timeout_min` minutes have passed, then
    write its outputs and, once no trial is left running, train the best config once more and test it.

    Returns tune.json's content (see tuning/outputs.py).

    Raises:
        ConfigError: a bad space, a metric the task does not pick epochs by, a study folder made from other inputs,
            a world of more than one process.
    """
    if env.world_size > 1:
        raise ConfigError("mmdlrm tune runs each trial in one process; to search faster, start several `mmdlrm tune` "
                          "processes on the same study (each takes its own trials), not one under torchrun")  # fmt: skip
    if trials < 1:
        raise ConfigError(f"--trials {trials}: a study needs at least one trial")
    if timeout_min is not None and timeout_min <= 0:
        raise ConfigError(f"--timeout {timeout_min}: give minutes > 0")
    started = time.monotonic()
    study = open_study(config, overrides, metric, space_path, name)
    work(study, trials, env, None if timeout_min is None else started + 60 * timeout_min)
    left = held_elsewhere(study)
    summary = write_outputs(study, trials, time.monotonic() - started)
    if left:
        log.info("tune %s: trials %s still run in other processes; the last process to finish trains the best config "
                 "once more and tests it", study.folder, ", ".join(map(trial_name, left)))  # fmt: skip
        return summary
    return final_run(study, summary, env)
