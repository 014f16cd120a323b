"""A trained run as one plain file: the unsharded model for inference and for the inspection tools.

`mmdlrm export runs/<name>` gathers the best checkpoint's shards (written by any number of processes) into full
tensors and saves them with what is needed to use them without the run folder: the config, the table sizes,
the genre names, and the raw MovieLens ids and titles behind the contiguous user and movie ids. Its SHA-256 sum
goes beside it (`model.pt.sha256`, as `sha256sum` writes it), so that loading names a damaged or cut-short file.
"""

from __future__ import annotations

import hashlib
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
    sums, sums_tmp = _sums(out), _sums(tmp)
    sums_tmp.write_text(f"{_sha256(tmp)}  {out.name}\n")  # the `sha256sum -c` format: load_exported checks it
    tmp.replace(out)
    sums_tmp.replace(sums)  # a crash between the two renames leaves a mismatch: named on load, fixed by exporting
    return out


def load_exported(path: str | Path) -> ExportedModel:
    """Load a file written by `export_run` (tensors only: no code is unpickled), checked against the SHA-256 sum
    written beside it (`model.pt.sha256`) where that is there.

    Raises:
        CheckpointError: the file is empty, damaged or cut short, or from another export format; the message says
            to export again.
    """
    path = Path(path)
    again = (f"run `mmdlrm export {path.parent}` again" if path.name == "model.pt"
             else f"export it again (`mmdlrm export <run> --out {path}`)")  # fmt: skip
    _check_sum(path, again)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a cut-short zip gives RuntimeError, EOFError or OSError, depending on where it ends
        raise checkpoint.CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err}); the file is damaged "
                                         f"or was cut short: {again}") from None  # fmt: skip
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else None
        raise checkpoint.CheckpointError(f"{path}: export format {found}, this mmdlrm reads {FORMAT_VERSION}; {again}")
    cfg = from_dict(payload["config"], source=str(path))
    vocab = Vocab(**{k: tuple(map(tuple, v)) if k == "extra" else v for k, v in payload["vocab"].items()})
    content = {m: MovieVectors(c["vectors"], c["missing"], c["model"]) for m, c in payload.get("content", {}).items()}
    module = _task(cfg, vocab, content)
    module.load_state_dict(payload["state_dict"])
    module.eval()
    return ExportedModel(module, module.objective, cfg, vocab, payload["genres"], payload["user_ids"], payload["movie_ids"],
                         payload["titles"], payload["meta"])  # fmt: skip


def _sums(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sum(path: Path, again: str) -> None:
    """Refuse a missing or empty export, or one whose SHA-256 differs from the sum written beside it at export."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; write it with `mmdlrm export <run>`")
    if path.stat().st_size == 0:
        raise checkpoint.CheckpointError(f"{path}: the file is empty (an export cut short?); {again}")
    sums = _sums(path)
    if not sums.is_file():
        return  # copied without its sum: torch.load's own checks remain
    expected = sums.read_text().split()[:1]
    actual = _sha256(path)
    if expected != [actual]:
        raise checkpoint.CheckpointError(
            f"{path}: the file is damaged or was cut short ({path.stat().st_size:,} bytes, sha256 {actual[:12]}; the "
            f"export wrote sha256 {(expected or ['?'])[0][:12]}, see {sums.name}); {again}"
        )


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
