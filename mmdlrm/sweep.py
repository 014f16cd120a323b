"""A grid of config overrides, trained one after another, chosen on validation only.

    mmdlrm sweep --config configs/ml-latest-small.yaml --grid configs/sweeps/ml-latest-small.yaml

The grid file maps dotted config keys to the values to try (every combination is trained):

    model.embedding_dim: [16, 32]
    model.history_length: [0, 100]

or lists the points themselves (an ablation: each point changes what it names, `{}` is the config as it is):

    - {}
    - {model.history_length: 100}
    - {model.history_length: 100, model.ranking.loss: softmax}

Each point is a run `<output_dir>/<sweep>/<point>` with the same seed; a finished point is read back, not trained
again, so a sweep that was stopped continues where it was. The point with the best validation value of the
task's early-stopping metric is chosen; its test metrics are reported beside every other point's, but never
used to choose. `sweep.json`, `sweep.md` (a table) and `sweep.png` are written beside the runs.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from mmdlrm.config import ConfigError, RunConfig, check_run_name, load_config, read_yaml
from mmdlrm.distributed.env import DistEnv, rank0_decides
from mmdlrm.folders import FolderLock, naming_full_disk
from mmdlrm.inspection.plots import plot_sweep
from mmdlrm.run_folder import RESULTS, RunFinished, finite
from mmdlrm.tasks import build_task

log = logging.getLogger("mmdlrm")


@dataclass
class Point:
    """One combination of the grid and what its run gave."""

    name: str
    overrides: list[str]
    val: float
    test: dict
    best_epoch: int
    baselines: dict


def read_grid(path: str | Path) -> list[list[str]]:
    """The points of a grid file (see the module docstring), each as `key=value` overrides.

    Raises:
        ConfigError: neither a mapping of keys to lists nor a list of mappings, or an empty list of values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    grid = read_yaml(path)
    if isinstance(grid, list) and grid and all(isinstance(p, dict) for p in grid):
        return [[_override(k, v) for k, v in point.items()] for point in grid]
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(
            f"{path}: a grid maps dotted config keys to lists of values (model.embedding_dim: [16, 32]), or lists "
            "points as mappings (- {model.embedding_dim: 16})"
        )
    values = {}
    for key, options in grid.items():
        options = options if isinstance(options, list) else [options]
        if not options:
            raise ConfigError(f"{path}: {key} has no values to try")
        values[str(key)] = options
    keys = list(values)
    return [[_override(k, v) for k, v in zip(keys, combo)] for combo in itertools.product(*(values[k] for k in keys))]


def _override(key: str, value: object) -> str:
    """`key=value` with the value written as YAML, so that lists and nulls survive the round trip."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def sweep(config: str | Path | None, grid_path: str | Path, overrides: list[str], env: DistEnv, name: str | None = None) -> dict:
    """Train every point of the grid, choose on validation, write the table and plot; returns sweep.json's content.

    The sweep folder is held by this sweep alone (rank 0 holds it for every rank), as each point's run folder is.

    Raises:
        FolderBusy: another process is running this sweep.
        NoSpace: the disk filled up; finished points are kept and the same command continues.
    """
    combos = read_grid(grid_path)
    base = load_config(config, overrides)
    sweep_name = name or Path(grid_path).stem
    try:
        check_run_name(sweep_name, "--name")
    except ConfigError as err:
        if name:
            raise
        raise ConfigError(f"{grid_path}: {err} (a sweep is named after its grid file unless --name is given)") from None
    folder = Path(base.output_dir) / sweep_name
    for combo in combos:  # every point's config is checked before the first one trains
        load_config(config, [*overrides, *combo])
    lock = FolderLock(folder, "mmdlrm sweep", "give this sweep another --name")
    rank0_decides(env, lambda: _hold(folder, lock))
    kept = "finished points are kept. Free some space there, then run the same command again: it goes on with the rest"
    try:
        with naming_full_disk(folder, lambda: kept):
            return _sweep(config, combos, overrides, env, base, sweep_name, folder)
    finally:
        lock.release()


def _hold(folder: Path, lock: FolderLock) -> None:
    for path in (folder.parent, folder):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a folder; set output_dir=... (or --name) to a folder for sweeps")
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock.acquire()


def _sweep(config, combos: list[list[str]], overrides: list[str], env: DistEnv, base: RunConfig, sweep_name: str,
           folder: Path) -> dict:  # fmt: skip
    from mmdlrm.train import train

    task = build_task(base.model, base.eval)
    results: list[Point] = []
    for index, combo in enumerate(combos):
        label = f"p{index:02d}"
        cfg = load_config(config, [*overrides, *combo, f"output_dir={folder}", f"name={label}"])
        log.info("sweep %s: point %d of %d: %s", sweep_name, index + 1, len(combos), " ".join(combo))
        results.append(_run_point(cfg, label, combo, env, train))
    pick = max(results, key=lambda p: p.val) if task.higher_is_better else min(results, key=lambda p: p.val)
    names = [n for n, v in results[0].test.items() if isinstance(v, float)]
    spread = {n: [float(np.mean([p.test[n] for p in results])), float(np.std([p.test[n] for p in results], ddof=1))
                  if len(results) > 1 else 0.0] for n in names}  # fmt: skip
    summary = {
        "sweep": sweep_name, "config": str(config), "overrides": overrides, "monitor": task.monitor,
        "higher_is_better": task.higher_is_better, "chosen": pick.name,
        "points": [p.__dict__ for p in results], "test_mean_sd": spread,
    }  # fmt: skip
    if env.is_rank0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sweep.json").write_text(json.dumps(finite(summary), indent=2, allow_nan=False) + "\n")
        (folder / "sweep.md").write_text(table(summary) + "\n")
        plot_sweep([p.name for p in results], [p.val for p in results], [p.test[task.monitor] for p in results],
                   task.monitor, pick.name, folder / "sweep.png")  # fmt: skip
        log.info("sweep %s (chosen on validation %s: %s):\n%s", sweep_name, task.monitor, pick.name, table(summary))
    return summary


def _run_point(cfg: RunConfig, label: str, combo: list[str], env: DistEnv, train) -> Point:
    try:
        result = train(cfg, env).to_json()
    except RunFinished:  # trained by an earlier, interrupted sweep: read it back
        result = json.loads((cfg.run_dir / RESULTS).read_text())
    task = build_task(cfg.model, cfg.eval)
    best = result["epochs"][result["best_epoch"]]
    return Point(label, combo, best["val"][task.monitor], result["test"], result["best_epoch"], result["baselines"])


def table(summary: dict) -> str:
    """The grid's points as a Markdown table: overrides, best epoch, validation metric, test metrics."""
    monitor = summary["monitor"]
    names = [n for n in summary["points"][0]["test"] if isinstance(summary["points"][0]["test"][n], float)]
    head = ["point", "overrides", "best epoch", f"val {monitor}", *[f"test {n}" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in summary["points"]:
        mark = " (chosen)" if p["name"] == summary["chosen"] else ""
        cells = [p["name"] + mark, " ".join(p["overrides"]), str(p["best_epoch"]), f"{p['val']:.4f}",
                 *[f"{p['test'][n]:.4f}" for n in names]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    spread = summary["test_mean_sd"]
    lines.append("| mean ± sd | over the points (e.g. folds) | | | " + " | ".join(f"{spread[n][0]:.4f} ± {spread[n][1]:.4f}" for n in names) + " |")
    return "\n".join(lines)
