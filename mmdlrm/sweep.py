"""A grid of config overrides, trained one after another, chosen on validation only.

    mmdlrm sweep --config configs/ml-latest-small.yaml --grid configs/sweeps/ml-latest-small.yaml

The grid file maps dotted config keys to the values to try (every combination is trained):

    model.embedding_dim: [16, 32]
    train.dense_weight_decay: [0.0, 1.0e-5]

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

import yaml

from mmdlrm.config import ConfigError, RunConfig, load_config
from mmdlrm.distributed.env import DistEnv
from mmdlrm.inspection.plots import plot_sweep
from mmdlrm.run_folder import RESULTS, RunFinished
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


def read_grid(path: str | Path) -> dict[str, list]:
    """The grid file: dotted key -> list of values (a single value is a list of one).

    Raises:
        ConfigError: not a mapping, an empty list, or a key the config does not have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    grid = yaml.safe_load(path.read_text())
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: a grid maps dotted config keys to lists of values, e.g. model.embedding_dim: [16, 32]")
    out = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path}: {key} has no values to try")
        out[str(key)] = values
    return out


def points(grid: dict[str, list]) -> list[list[str]]:
    """Every combination of the grid as `key=value` overrides (values written as YAML, so lists survive)."""
    keys = list(grid)
    return [[f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in zip(keys, combo)]
            for combo in itertools.product(*(grid[k] for k in keys))]  # fmt: skip


def sweep(config: str | Path | None, grid_path: str | Path, overrides: list[str], env: DistEnv, name: str | None = None) -> dict:
    """Train every point of the grid, choose on validation, write the table and plot; returns sweep.json's content."""
    from mmdlrm.train import train

    grid = read_grid(grid_path)
    base = load_config(config, overrides)
    sweep_name = name or Path(grid_path).stem
    folder = Path(base.output_dir) / sweep_name
    combos = points(grid)
    for combo in combos:  # every point's config is checked before the first one trains
        load_config(config, [*overrides, *combo])
    task = build_task(base.model, base.eval)
    results: list[Point] = []
    for index, combo in enumerate(combos):
        label = f"p{index:02d}"
        cfg = load_config(config, [*overrides, *combo, f"output_dir={folder}", f"name={label}"])
        log.info("sweep %s: point %d of %d: %s", sweep_name, index + 1, len(combos), " ".join(combo))
        results.append(_run_point(cfg, label, combo, env, train))
    pick = max(results, key=lambda p: p.val) if task.higher_is_better else min(results, key=lambda p: p.val)
    summary = {
        "sweep": sweep_name, "config": str(config), "overrides": overrides, "grid": grid, "monitor": task.monitor,
        "higher_is_better": task.higher_is_better, "chosen": pick.name,
        "points": [p.__dict__ for p in results],
    }  # fmt: skip
    if env.is_rank0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
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
    return "\n".join(lines)
