"""A trained run as one plain file: the unsharded model for inference and for the inspection tools.

`mmdlrm export runs/<name>` gathers the best checkpoint's shards (written by any number of processes) into full
tensors and saves them with what is needed to use them without the run folder: the config, the table sizes,
the genre names, and the raw MovieLens ids and titles behind the contiguous user and movie ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import nn

from mmdlrm.config import RunConfig, from_dict, load_config, to_dict
from mmdlrm.distributed import checkpoint
from mmdlrm.features.store import MovieVectors
from mmdlrm.features.vectors import content_stores, load_content
from mmdlrm.model.tables import Vocab, vocab_of
from mmdlrm.tasks import Task, build_task

FORMAT_VERSION = 2


@dataclass
class ExportedModel:
    """An exported run, loaded: the model in eval mode on the CPU and its id maps."""

    task: nn.Module
    """The unsharded model with its task's objective (`model.task.TaskModule` or `RetrievalModule`): `task(batch)`
    gives `(loss, (loss, predictions, labels))`."""
    objective: Task
    config: RunConfig
    vocab: Vocab
    genres: list[str]
    user_ids: torch.Tensor
    """Raw MovieLens userId of each contiguous user id."""
    movie_ids: torch.Tensor
    """Raw MovieLens movieId of each contiguous movie id."""
    titles: list[str]
    meta: dict


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `<run_dir>/model.pt` (or `out`) from the run's best checkpoint; returns the path."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json; export a run that `mmdlrm train` has finished")
    cfg = load_config(run_dir / "config.yaml")
    prepared = Path(json.loads(results_path.read_text())["prepared_dir"])
    if not (prepared / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{run_dir}: its prepared dataset {prepared} is gone (or was named relative to another working folder); "
            f"prepare it again there: mmdlrm prepare <release> --out {prepared} with the data.* settings of "
            f"{run_dir / 'config.yaml'}"
        )
    manifest = json.loads((prepared / "manifest.json").read_text())
    vocab = vocab_of(cfg.model, manifest["counts"])
    content = _content_of_run(cfg, prepared, manifest)
    task = _task(cfg, vocab, content)
    meta = checkpoint.load_unsharded(task, run_dir / "checkpoints" / "best")
    movies = pq.read_table(prepared / "movies.parquet", columns=["movie_id", "title"])
    users = pq.read_table(prepared / "users.parquet", columns=["user_id"])
    payload = {
        "format_version": FORMAT_VERSION,
        "config": to_dict(cfg),
        "vocab": asdict(vocab),
        "genres": manifest["genres"],
        "user_ids": torch.from_numpy(users["user_id"].to_numpy().astype("int64")),
        "movie_ids": torch.from_numpy(movies["movie_id"].to_numpy().astype("int64")),
        "titles": movies["title"].to_pylist(),
        "meta": {"checkpoint": meta, "prepared_dir": str(prepared), "run_dir": str(run_dir)},
        "state_dict": task.state_dict(),
        "content": {m: {"vectors": v.vectors, "missing": v.missing, "model": v.model} for m, v in content.items()},
    }
    out = Path(out) if out else run_dir / "model.pt"
    tmp = out.with_name(out.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(out)
    return out


def load_exported(path: str | Path) -> ExportedModel:
    """Load a file written by `export_run` (tensors only: no code is unpickled)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: export format {payload.get('format_version')}, this mmdlrm reads {FORMAT_VERSION}")
    cfg = from_dict(payload["config"], source=str(path))
    vocab = Vocab(**{k: tuple(map(tuple, v)) if k == "extra" else v for k, v in payload["vocab"].items()})
    content = {m: MovieVectors(c["vectors"], c["missing"], c["model"]) for m, c in payload.get("content", {}).items()}
    module = _task(cfg, vocab, content)
    module.load_state_dict(payload["state_dict"])
    module.eval()
    return ExportedModel(module, module.objective, cfg, vocab, payload["genres"], payload["user_ids"], payload["movie_ids"],
                         payload["titles"], payload["meta"])  # fmt: skip


def _task(cfg: RunConfig, vocab: Vocab, content: dict[str, MovieVectors]) -> nn.Module:
    """The unsharded task module on the CPU, with its content vectors filled in."""
    module = build_task(cfg.model, cfg.eval).build_module(vocab, cfg.features, {m: v.vectors.shape[1] for m, v in content.items()},
                                                          device=torch.device("cpu"), sparse_device="cpu")  # fmt: skip
    for modality, vectors in content.items():
        module.model.content.set_vectors(modality, vectors.vectors, vectors.missing)
    return module


def _content_of_run(cfg: RunConfig, prepared: Path, manifest: dict) -> dict[str, MovieVectors]:
    """The content vectors the run trained with, from its feature stores (they are not in checkpoints)."""
    if not cfg.features.modality_names:
        return {}
    release = Path(manifest["source"]["folder"])
    movie_ids = pq.read_table(prepared / "movies.parquet", columns=["movie_id"])["movie_id"].to_numpy()
    return load_content(content_stores(cfg.features, cfg.data, release, movie_ids, make=False), movie_ids)
