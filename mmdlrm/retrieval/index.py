"""A FAISS index over a retrieval run's movie vectors: built from the exported model, kept in the run folder.

`index.faiss` holds every movie's candidate vector (row i: contiguous movie id i) for inner-product search, and
`index.json` its manifest: the kind and its settings, the dimension and count, and the size and SHA-256 of the
`model.pt` the vectors came from, so that an index older than the model is detected and built again, never used.
Kinds (`model.retrieval.index`): `flat` (exact search, the default), `ivf` (inverted lists: `nprobe` of
`ivf_lists` cells are searched) and `hnsw` (a navigable small-world graph); the approximate kinds are for
catalogues of millions and record their recall@100 against exact search on a sample of the run's users.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mmdlrm.config import RetrievalConfig

log = logging.getLogger("mmdlrm")

INDEX_FILE = "index.faiss"
MANIFEST = "index.json"
FORMAT = 1


class IndexFileError(RuntimeError):
    """An index file that is missing, stale or damaged; the message says how to make it again."""


@dataclass
class MovieIndex:
    """The FAISS index of a run's movie vectors and its manifest."""

    index: faiss.Index
    manifest: dict

    @property
    def num_movies(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best movies for each query (U x dim float32), leaving out each query's `exclude` movies.

        Returns:
            (movies, scores), both U x k, best first; where fewer than k movies are left, the row ends in -1 and
            -inf.

        Users are searched in groups of similar `exclude` sizes, each for k + (the group's largest) results, so a
        user with thousands of rated movies costs a deeper search only for their own group.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        count = len(queries)
        movies = np.full((count, k), -1, dtype=np.int64)
        scores = np.full((count, k), -np.inf, dtype=np.float32)
        sizes = np.array([len(e) for e in exclude], dtype=np.int64) if exclude is not None else np.zeros(count, np.int64)
        order = np.argsort(sizes, kind="stable")
        for group in np.array_split(order, max(1, math.ceil(count / 1024))):
            if not len(group):
                continue
            depth = int(min(self.num_movies, k + sizes[group].max()))
            self._tune(depth)
            with _threads(1 if len(group) < SMALL_BATCH else None):
                found_scores, found = self.index.search(queries[group], depth)
            keep = found >= 0
            if exclude is not None and sizes[group].max():
                rows = np.repeat(np.arange(len(group)), sizes[group])
                left_out = np.concatenate([exclude[i] for i in group]).astype(np.int64)
                keys = rows * self.num_movies + left_out
                keep &= ~np.isin(np.arange(len(group))[:, None] * self.num_movies + found, keys)
            rank = np.cumsum(keep, axis=1) - 1
            take = keep & (rank < k)
            r, c = np.nonzero(take)
            movies[group[r], rank[r, c]] = found[r, c]
            scores[group[r], rank[r, c]] = found_scores[r, c]
        return movies, scores

    def _tune(self, depth: int) -> None:
        """Search settings that can return `depth` results."""
        settings = self.manifest["settings"]
        if self.manifest["kind"] == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = settings["nprobe"]
        elif self.manifest["kind"] == "hnsw":
            self.index.hnsw.efSearch = max(4 * settings["nprobe"], depth)


SMALL_BATCH = 64
"""Fewer queries than this are searched on one thread: FAISS's OpenMP threads cost more to start and to wait on
than a few queries take (one user's top 10 took 5x longer on two threads, on two busy cores)."""


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads set to `count` inside the block (None: as they are)."""
    before = faiss.omp_get_max_threads()
    if count is not None:
        faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def build_index(vectors: np.ndarray, cfg: RetrievalConfig) -> faiss.Index:
    """An inner-product index of `vectors` (movies x dim; row i is movie i) of the kind `cfg.index` names."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    if cfg.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.index == "ivf":
        # FAISS's rule of thumb: about 4 sqrt(n) cells, each trained from at least 39 vectors
        lists = min(cfg.ivf_lists or max(1, min(int(4 * math.sqrt(count)), count // 39)), count)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = cfg.nprobe
    else:
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * cfg.hnsw_m)
        index.hnsw.efSearch = max(4 * cfg.nprobe, 128)  # as searched (MovieIndex._tune); enough for a top 100
    index.add(vectors)
    return index


def settings_of(cfg: RetrievalConfig) -> dict:
    """The settings an index of kind `cfg.index` is built and searched with (its manifest's `settings`)."""
    return {"ivf_lists": cfg.ivf_lists, "nprobe": cfg.nprobe, "hnsw_m": cfg.hnsw_m}


def save_index(run_dir: Path, index: faiss.Index, manifest: dict) -> Path:
    """Write `index.faiss` and then `index.json` into `run_dir`, each aside first and renamed into place."""
    path = Path(run_dir) / INDEX_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    faiss.write_index(index, str(tmp))
    manifest = manifest | {"index": {"file": INDEX_FILE, "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}}
    tmp.replace(path)
    meta = path.with_name(MANIFEST)
    meta_tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    meta_tmp.replace(meta)
    return path


def load_index(run_dir: Path, model_file: Path) -> MovieIndex:
    """The run's index, checked against its manifest and against `model_file` (the exported model).

    Raises:
        IndexFileError: no index, one made from another model.pt, or a damaged file.
    """
    run_dir = Path(run_dir)
    meta, path = run_dir / MANIFEST, run_dir / INDEX_FILE
    if not meta.is_file() or not path.is_file():
        raise IndexFileError(f"{run_dir}: no movie index ({INDEX_FILE}); `mmdlrm index {run_dir}` builds it")
    manifest = json.loads(meta.read_text())
    if manifest.get("model") != model_fingerprint(model_file):
        raise IndexFileError(f"{path} was built from another {model_file.name}; `mmdlrm index {run_dir}` builds it again")
    recorded = manifest.get("index", {})
    if recorded.get("bytes") != path.stat().st_size or recorded.get("sha256") != file_sha256(path):
        raise IndexFileError(f"{path} is damaged (its size or SHA-256 differs from {meta.name}); `mmdlrm index {run_dir}` builds it again")
    return MovieIndex(faiss.read_index(str(path)), manifest)


def model_fingerprint(model_file: Path) -> dict:
    """What identifies an exported model file: its name, size and SHA-256."""
    return {"file": model_file.name, "bytes": model_file.stat().st_size, "sha256": file_sha256(model_file)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def recall_against_exact(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 100) -> float:
    """Share of the exact top-k (inner product over `vectors`) that `index` returns, over `queries`."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k = min(k, len(vectors))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hits = sum(len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found))
    return hits / truth.size
