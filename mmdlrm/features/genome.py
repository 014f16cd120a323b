"""The tag genome as a content modality: each movie's 1,128 tag relevances (ml-20m/25m/32m), in the feature store.

The genome needs no encoder: `genome-scores.csv` is pivoted once into the store's layout (movieId, a float16
vector, a missing flag) under the cache, keyed by the file's size and modification time, and read back by
`load_vectors(folder, movie_ids, "genome")` like the poster and summary vectors. Movies the genome does not
cover (most of a catalogue's newest and rarest) are flagged missing and get the content arch's learnt stand-in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmdlrm.data.movielens import GENOME_FILE, read_genome
from mmdlrm.features.store import FORMAT_VERSION, MANIFEST

log = logging.getLogger("mmdlrm")
MODEL = "tag-genome"


def genome_store(release: Path, cache_dir: str | Path) -> Path | None:
    """The genome store for `release` (made on first use; call on one rank), or None if it has no genome."""
    path = Path(release) / GENOME_FILE
    if not path.is_file():
        return None
    stat = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns]).encode()).hexdigest()[:10]
    folder = Path(cache_dir) / "features" / f"{Path(release).name}-genome-{key}"
    if (folder / MANIFEST).is_file():
        return folder
    movie_ids, matrix = read_genome(release)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    dim = matrix.shape[1]
    table = pa.table({
        "movieId": pa.array(movie_ids, pa.int64()),
        "genome": pa.FixedSizeListArray.from_arrays(pa.array(matrix.astype(np.float16).reshape(-1), pa.float16()), dim),
        "genome_missing": pa.array(np.zeros(len(movie_ids), bool)),
    })  # fmt: skip
    pq.write_table(table, tmp / "part-00000.parquet")
    manifest = {"format_version": FORMAT_VERSION, "genome_dim": dim, "genome_model": MODEL, "complete": True,
                "counts": {"movies": len(movie_ids)}}  # fmt: skip
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(folder)
    log.info("tag genome: %d movies x %d tags from %s -> %s", len(movie_ids), dim, path, folder)
    return folder
