"""Opening a finished run for inspection: its exported model (made on first use), prepared data and batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmdlrm.data.prepare import Prepared, load_prepared
from mmdlrm.export import ExportedModel, export_run, load_exported

NEEDED = ("config.yaml", "results.json", "checkpoints/best/complete.json")


@dataclass
class Run:
    folder: Path
    model: ExportedModel
    data: Prepared
    builder: object
    """The task's batch builder (`BatchBuilder`, or `TowerBatchBuilder` for the two-tower model)."""
    results: dict


def check_run_folder(folder: Path) -> None:
    """That `folder` holds a finished run, before anything is loaded from it.

    Raises:
        FileNotFoundError: no such folder, a folder of runs, or a run that did not finish (what is missing named).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder; runs are under output_dir (runs/ by default): "
                                "`ls runs` lists them")  # fmt: skip
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        inside = sorted(p.name for p in folder.iterdir() if (p / "results.json").is_file())
        if inside:
            some = ", ".join(str(folder / name) for name in inside[:5]) + (", ..." if len(inside) > 5 else "")
            raise FileNotFoundError(f"{folder}: a folder of runs, not a run; name one of them: {some}")
        raise FileNotFoundError(
            f"{folder}: not a finished run ({', '.join(missing)} missing); train it with `mmdlrm train` "
            "(a run stopped early resumes when started again)"
        )


def open_run(folder: str | Path) -> Run:
    """The run in `folder`, exporting its best checkpoint to model.pt if that is missing or older.

    Raises:
        FileNotFoundError: the folder lacks what a finished run has, or its prepared dataset is gone.
    """
    folder = Path(folder)
    check_run_folder(folder)
    exported = folder / "model.pt"
    best = folder / "checkpoints" / "best" / "complete.json"
    if not exported.is_file() or exported.stat().st_mtime < best.stat().st_mtime:
        export_run(folder)
    model = load_exported(exported)
    results = json.loads((folder / "results.json").read_text())
    prepared = Path(results["prepared_dir"])
    if not (prepared / "manifest.json").is_file():
        raise FileNotFoundError(f"{folder}: its prepared dataset {prepared} is gone; prepare it again with the run's config")
    data = load_prepared(prepared)
    builder = model.objective.builder(data)
    return Run(folder, model, data, builder, results)
