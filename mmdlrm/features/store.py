"""The feature store: one row per movie with its poster and summary vectors, as Parquet parts in a folder.

Columns: movieId, image and text (fixed-size float16 lists, L2-normalised), image_model and text_model (the encoder
and weights tag), image_missing and text_missing, text_source (`summary` or `catalogue`; with several summary
sources, those the movie has, joined by `+`). Parts are written whole or not at all (temporary name, then rename),
so an interrupted extraction keeps every finished part and a rerun encodes only the movies no part holds.
`manifest.json` names the encoders and the fingerprint of the inputs (posters, summaries, catalogue; see
`extract.input_fingerprint`); vectors made by other encoders or from other inputs are never mixed into one store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmdlrm.features.encoders import FeatureError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class StoreHeader:
    """What a store holds: the encoders (name includes the weights tag) and their vector sizes."""

    image_model: str | None
    image_dim: int
    text_model: str | None
    text_dim: int
    text_slots: list[str] | None = None
    """Several summary sources: the text vector is one `text_dim / len(text_slots)` vector per slot, concatenated."""


def open_store(folder: str | Path, header: StoreHeader, inputs: dict[str, str | None] | None = None) -> set[int]:
    """Create `folder` for `header` (and `inputs`, a fingerprint), or reopen it; returns the movie ids already stored.

    Raises:
        FeatureError: the folder holds vectors from other encoders, or from other inputs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST
    wanted = {"format_version": FORMAT_VERSION, **header.__dict__}
    if path.is_file():
        found = json.loads(path.read_text())
        if {k: found.get(k) for k in wanted} != wanted:
            raise _other_encoders(folder, found, header.image_model, header.text_model)
        check_inputs(folder, inputs)
    else:
        record = {"inputs": inputs} if inputs is not None else {}
        path.write_text(json.dumps({**wanted, **record, "complete": False}, indent=2) + "\n")
    return set(stored_movie_ids(folder))


def check_encoders(folder: str | Path, image_model: str | None, text_model: str) -> None:
    """Refuse a store whose vectors came from other encoders than these (names with their weights tags).

    A store made without posters has no image encoder to compare; its inputs (`check_inputs`) say whether posters
    have been given since.

    Raises:
        FeatureError: the store's manifest names other encoders.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return
    found = json.loads(path.read_text())
    if found.get("text_model") != text_model or found.get("image_model") not in (None, image_model or None):
        raise _other_encoders(Path(folder), found, image_model, text_model)


def _other_encoders(folder: Path, found: dict, image_model: str | None, text_model: str | None) -> FeatureError:
    return FeatureError(
        f"{folder} holds vectors from {found.get('image_model')} / {found.get('text_model')}, not "
        f"{image_model} / {text_model}; delete it or set features.store to another folder"
    )


def check_inputs(folder: str | Path, inputs: dict[str, str | None] | None) -> None:
    """Refuse a store made from other inputs than `inputs` (a fingerprint; None checks nothing).

    Raises:
        FeatureError: the store records other inputs, or none (made before stores recorded them).
    """
    path = Path(folder) / MANIFEST
    if inputs is None or not path.is_file():
        return
    found = json.loads(path.read_text()).get("inputs")
    if found == inputs:
        return
    if found is None:
        what = "does not record the posters and summaries it was made from (an older store)"
    else:
        changed = [name for name in inputs if found.get(name) != inputs[name]]
        what = f"was made from other inputs: {', '.join(changed)} changed since"
    raise FeatureError(
        f"{folder}: this feature store {what}; delete the folder to encode the current ones, or point "
        "features.store at another folder"
    )


def stored_movie_ids(folder: str | Path) -> list[int]:
    return [m for part in _parts(Path(folder)) for m in pq.read_table(part, columns=["movieId"])["movieId"].to_pylist()]


def write_part(folder: Path, header: StoreHeader, rows: dict[str, object]) -> Path:
    """Append one part: `rows` holds movie_ids, image / text (N x dim float arrays or None), and their flags."""
    n = len(rows["movie_ids"])
    columns = {"movieId": pa.array(rows["movie_ids"], pa.int64())}
    for modality, dim, model in (("image", header.image_dim, header.image_model), ("text", header.text_dim, header.text_model)):
        values = rows[modality]
        values = np.zeros((n, dim), np.float16) if values is None else np.asarray(values, dtype=np.float16)
        columns[modality] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float16()), dim)
        columns[f"{modality}_model"] = pa.array([model or ""] * n).dictionary_encode()
        columns[f"{modality}_missing"] = pa.array(rows[f"{modality}_missing"], pa.bool_())
    columns["text_source"] = pa.array(rows["text_source"]).dictionary_encode()
    index = len(_parts(folder))
    final = folder / f"part-{index:05d}.parquet"
    tmp = folder / f".part-{index:05d}.parquet.tmp"
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(final)
    return final


def mark_complete(folder: Path, counts: dict[str, int]) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(complete=True, counts=counts)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def is_complete(folder: str | Path) -> bool:
    path = Path(folder) / MANIFEST
    return path.is_file() and json.loads(path.read_text()).get("complete", False)


@dataclass
class MovieVectors:
    """A modality's vectors in contiguous movie-id order, with the rows that have none flagged."""

    vectors: torch.Tensor
    """num_movies x dim, float16."""
    missing: torch.Tensor
    """num_movies, bool."""
    model: str


def load_vectors(folder: str | Path, movie_ids: np.ndarray, modality: str) -> MovieVectors:
    """The store's `modality` vectors for `movie_ids` (raw MovieLens ids, in contiguous-id order).

    Movies the store lacks, or whose input was missing, are flagged missing (their vector is zero).

    Raises:
        FeatureError: no store at `folder`, or an empty one.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise FeatureError(
            f"{folder}: no feature store here; run `mmdlrm features clip --config <config>` (posters or summaries "
            "changed since the run trained give a new store)"
        )
    manifest = json.loads((folder / MANIFEST).read_text())
    parts = _parts(folder)
    if not parts:
        raise FeatureError(f"{folder}: the feature store is empty; run `mmdlrm features` first")
    table = pa.concat_tables([pq.read_table(p, columns=["movieId", modality, f"{modality}_missing"]) for p in parts])
    dim = manifest[f"{modality}_dim"]
    stored = table["movieId"].to_numpy()
    values = table[modality].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    order = np.argsort(stored)
    found = np.searchsorted(stored, np.asarray(movie_ids), sorter=order).clip(max=len(stored) - 1)
    rows = order[found]
    have = stored[rows] == np.asarray(movie_ids)
    vectors = np.zeros((len(movie_ids), dim), np.float16)
    vectors[have] = values[rows[have]]
    missing = ~have
    missing[have] |= table[f"{modality}_missing"].to_numpy(zero_copy_only=False)[rows[have]]
    return MovieVectors(torch.from_numpy(vectors), torch.from_numpy(missing), manifest[f"{modality}_model"] or "")


def vector_dim(folder: str | Path, modality: str) -> int:
    """The size of the store's `modality` vectors, read from its manifest alone.

    Raises:
        FeatureError: no store at `folder`.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FeatureError(f"{folder}: no feature store here; run `mmdlrm features clip --config <config>` first")
    return int(json.loads(path.read_text())[f"{modality}_dim"])


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))
