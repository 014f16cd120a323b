"""A run's folder and its life: start, resume or refuse; per-epoch records; results.

`runs/<name>/` is written by training alone, by one process at a time (`hold`: an OS lock, see mmdlrm.folders).
Starting a run decides once, on rank 0, between:
- **fresh**: no run there (or `train.resume=false`, or `overwrite=true`): mmdlrm's own outputs from an earlier
  run are removed (never any other file), the config is written;
- **resume**: an unfinished run with the same config and a checkpoint to continue from;
- **finished**: `results.json` is there: the run is left as it is (`RunFinished`), unless `overwrite=true`;
- a `ConfigError` for a run with another config, or a path that cannot be a run folder (a file where mmdlrm
  writes a folder, or the reverse, is the user's: it is left as it is and named).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import yaml

from mmdlrm.config import ConfigError, RunConfig, save_config, to_dict
from mmdlrm.folders import FolderLock

RESULTS = "results.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
OUTPUTS = (
    "checkpoints", RESULTS, METRICS, "plan.txt", "plots", "tensorboard", "model.pt", "model.pt.sha256", "report.html",
    "ranking.json", "genres.json",
)  # fmt: skip
"""What mmdlrm writes into a run folder: all that starting a run afresh may remove."""
OUTPUT_FOLDERS = ("checkpoints", "plots", "tensorboard")
"""The OUTPUTS that are folders (the others are files): a path of the other kind there is not mmdlrm's."""
RESUMABLE_CHANGES = ("train.progress", "train.resume", "train.device", "train.checkpoint_every", "train.pipeline",
                     "train.tensorboard", "overwrite")  # fmt: skip
"""Fields that may change between a run and its resumption without changing what it computes."""


class RunFinished(Exception):
    """The run folder holds a finished run with this config; it is left as it is. `results` is its results.json."""

    def __init__(self, message: str, results: dict) -> None:
        super().__init__(message)
        self.results = results


def decide_start(cfg: RunConfig, has_checkpoint: bool) -> str:
    """`fresh` or `resume` for `cfg.run_dir` (call on rank 0; the caller broadcasts the answer).

    Args:
        has_checkpoint: the run folder holds a complete `last` checkpoint to resume from.

    Raises:
        RunFinished: a finished run with the same config is there, and `overwrite` is off.
        ConfigError: a run with another config is there, or output_dir / the run folder is a file.
    """
    run_dir = cfg.run_dir
    _check_folders(cfg)
    finished = (run_dir / RESULTS).is_file()
    if finished and not cfg.overwrite:
        changed = config_changes(cfg, run_dir / CONFIG)
        if changed:
            raise ConfigError(
                f"{run_dir} holds a finished run with a different config ({', '.join(changed)}); give this run "
                "another name=..., or pass overwrite=true to replace the finished one"
            )
        raise RunFinished(
            f"{run_dir} holds a finished run of this config; it is left as it is. Start a new run with another "
            "name=..., or pass overwrite=true to train it again",
            json.loads((run_dir / RESULTS).read_text()),
        )
    if not finished and has_checkpoint and cfg.train.resume:
        changed = config_changes(cfg, run_dir / CONFIG)
        if changed:
            raise ConfigError(
                f"{run_dir} holds an unfinished run with a different config ({', '.join(changed)}); "
                "run the same config to resume it, add train.resume=false to start it over, or give a new name=..."
            )
        _check_outputs(cfg)
        return "resume"
    _check_outputs(cfg)
    return "fresh"


def hold(cfg: RunConfig, lock: FolderLock) -> None:
    """Take `lock` on `cfg.run_dir` (call on rank 0), making output_dir first if needed.

    Raises:
        ConfigError: output_dir or the run folder is a file.
        FolderBusy: another process holds the run folder.
    """
    _check_folders(cfg)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    lock.acquire()


def _check_folders(cfg: RunConfig) -> None:
    for path in (Path(cfg.output_dir), cfg.run_dir):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a folder; set output_dir=... (or name=...) to a folder for runs")


def _check_outputs(cfg: RunConfig) -> None:
    """Refuse a run folder where one of mmdlrm's outputs is of the other kind (a file where it writes a folder, or the
    reverse): that is the user's, and it is neither removed nor written over."""
    for name in OUTPUTS:
        path = cfg.run_dir / name
        if name == "tensorboard" and not cfg.train.tensorboard or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() != (name in OUTPUT_FOLDERS) or path.is_symlink():
            ours, theirs = ("folder", "file") if name in OUTPUT_FOLDERS else ("file", "folder")
            theirs = "link" if path.is_symlink() else theirs
            off = ", or set train.tensorboard=false" if name == "tensorboard" else ""
            raise ConfigError(
                f"{path} is a {theirs}, where mmdlrm writes its {name} {ours}; it is not mmdlrm's, so it is left as it "
                f"is: move it out of the run folder{off}, or give this run another name=..."
            )


def start_fresh(cfg: RunConfig) -> None:
    """Remove mmdlrm's outputs of an earlier run in `cfg.run_dir` (nothing else), write the config."""
    run_dir = cfg.run_dir
    for name in OUTPUTS:
        path = run_dir / name
        try:
            if path.is_dir() and not path.is_symlink() and name in OUTPUT_FOLDERS:
                shutil.rmtree(path)
            elif path.is_file() and not path.is_symlink() and name not in OUTPUT_FOLDERS:
                path.unlink()
        except OSError as err:
            raise ConfigError(
                f"{path}: cannot remove the earlier run's {name} ({err.strerror}); make the run folder writable, or "
                "give this run another name=..."
            ) from None
    for path in run_dir.glob("checkpoints*"):  # checkpoints.tmp / .old left by a save cut short
        shutil.rmtree(path, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG)
    (run_dir / METRICS).write_text("")


def config_changes(cfg: RunConfig, saved_path: Path) -> list[str]:
    """The dotted keys whose values differ between `cfg` and the config saved at `saved_path` (all, if none)."""
    if not saved_path.is_file():
        return ["config.yaml missing"]
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    current = _flatten(to_dict(cfg))
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)


def append_epoch(run_dir: Path, record: dict) -> None:
    """Add one epoch's record to metrics.jsonl."""
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_epochs(run_dir: Path, records: list[dict]) -> None:
    """metrics.jsonl as the resumed state knows it (a killed run may have logged an epoch its checkpoint lacks)."""
    (run_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))


def write_results(run_dir: Path, results: dict) -> Path:
    """results.json, written last: its presence marks the run finished. A metric that is not a number (NaN, such as
    an AUC over one class) is written as null: bare NaN is not JSON."""
    path = run_dir / RESULTS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite(results), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def finite(tree: object) -> object:
    """`tree` with every float that is NaN or infinite replaced by None (JSON's null)."""
    if isinstance(tree, float):
        return tree if math.isfinite(tree) else None
    if isinstance(tree, dict):
        return {k: finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(v) for v in tree]
    return tree


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
