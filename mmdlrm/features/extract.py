"""Encoding every movie once: posters decoded in DataLoader workers, batched through the encoders, stored in parts.

`extract` is resumable (movies already in the store are skipped) and tolerant: an image that cannot be read is
reported by file name and stored as missing. `ensure_features` is what training calls: it makes the store for
the run's data on first use, on rank 0.

A store is keyed on its inputs' content, not only their paths: `input_fingerprint` digests the poster files (name,
size, mtime_ns of each, and the posters CSV itself), the summaries CSV and the release's catalogue files (movies and
tags, in whichever layout the release has them; size, mtime_ns). A fixed poster or an edited summaries.csv gives a
new store folder under the cache; an explicit `features.store` records the fingerprint in its manifest and is
refused once its inputs have changed.

Texts: with one summary source (a `movieId,summary` CSV), a movie's text vector encodes its summary, else its
catalogue text (title, genres, top tags). With several sources (a CSV with a `source` column, as `mmdlrm features
summaries` writes), each is encoded on its own and the text vector is their concatenation, source by source (zeros
where a movie has no text from that source), after a first slot for what any new movie has: title, year and genres
(no tags: they come from users who watched it). Averaging passages into one vector measured worse on the new-movie
split than keeping them apart.

Summaries and posters of movies the release's catalogue lacks are counted in the `ExtractReport` and logged with a
few of their ids; they are not an error (a summaries file gathered for ml-latest also names movies ml-1m lacks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmdlrm.config import SYNTHETIC, DataConfig, FeatureConfig
from mmdlrm.data.movielens import catalogue_files
from mmdlrm.features.encoders import FeatureError, ImageEncoder, TextEncoder, build_encoders, encoder_names
from mmdlrm.features.inputs import catalogue_texts, read_passages, read_posters
from mmdlrm.features.store import (
    StoreHeader,
    check_encoders,
    check_inputs,
    is_complete,
    mark_complete,
    open_store,
    write_part,
)

log = logging.getLogger("mmdlrm")


@dataclass
class ExtractReport:
    """What an extraction did."""

    store: Path
    encoded: int = 0
    skipped: int = 0
    """Movies already in the store (an earlier, interrupted run)."""
    missing_posters: int = 0
    unreadable: list[str] = field(default_factory=list)
    """Poster files that could not be decoded (counted as missing)."""
    catalogue_texts: int = 0
    """Movies whose text came from MovieLens (title, genres, tags) alone, for want of a summary."""
    unknown_summaries: list[int] = field(default_factory=list)
    """movieIds the summaries name that the release's catalogue lacks (sorted; their texts are not used)."""
    unknown_posters: list[int] = field(default_factory=list)
    """movieIds the posters name that the release's catalogue lacks (sorted; not used)."""


class _Posters(Dataset):
    """Decodes and preprocesses one poster per item (in a DataLoader worker)."""

    def __init__(self, movie_ids: list[int], posters: dict[int, Path], preprocess, size: int) -> None:
        self.movie_ids, self.posters, self.preprocess, self.size = movie_ids, posters, preprocess, size

    def __len__(self) -> int:
        return len(self.movie_ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int, str]:
        movie = self.movie_ids[i]
        path = self.posters.get(movie)
        blank = torch.zeros(3, self.size, self.size)
        if path is None or self.preprocess is None:
            return movie, blank, 0, ""
        try:
            with Image.open(path) as image:
                return movie, self.preprocess(image.convert("RGB")), 1, ""
        except Exception as err:  # truncated, corrupt, not an image: report, do not stop
            return movie, blank, 0, f"{path} ({type(err).__name__}: {err})"


def extract(
    cfg: FeatureConfig,
    store: str | Path,
    movie_ids: list[int],
    posters: dict[int, Path],
    summaries: dict[str, dict[int, str]],
    fallback: dict[int, str],
    device: torch.device,
    progress: bool = True,
    inputs: dict[str, str | None] | None = None,
) -> ExtractReport:
    """Encode the posters and texts of `movie_ids` into `store`, skipping movies it already holds.

    Args:
        summaries: source -> movieId -> text (`read_passages`): one source gives one vector per movie, several a
            catalogue slot and one slot per source (module docstring).
        fallback: the catalogue's text of every movie of the release (`catalogue_texts`): for movies without a
            summary, or the first slot; summaries and posters of movies it lacks are counted, not encoded.
        inputs: the `input_fingerprint` of what posters, summaries and fallback came from, recorded in (or checked
            against) the store's manifest; None records nothing.

    Raises:
        FeatureError: the store holds vectors from other encoders, or from other inputs.
    """
    store = Path(store)
    image_encoder, text_encoder = build_encoders(cfg, device, images=bool(posters), texts=True)
    slots = text_slots(summaries)
    header = StoreHeader(
        image_model=image_encoder.name if image_encoder else None,
        image_dim=image_encoder.dim if image_encoder else 1,
        text_model=text_encoder.name,
        text_dim=text_encoder.dim * (len(slots) if slots else 1),
        text_slots=slots,
    )
    done = open_store(store, header, inputs)
    todo = [m for m in movie_ids if m not in done]
    report = ExtractReport(store, skipped=len(movie_ids) - len(todo))
    known = set(fallback).union(movie_ids)
    report.unknown_summaries = sorted({m for texts in summaries.values() for m in texts if m not in known})
    report.unknown_posters = sorted(m for m in posters if m not in known)
    if report.skipped:
        log.info("%s: %d movies already encoded, %d to go", store, report.skipped, len(todo))
    size = _image_size(image_encoder)
    loader = DataLoader(
        _Posters(todo, posters, image_encoder.preprocess if image_encoder else None, size),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers if posters else 0, shuffle=False,
    )  # fmt: skip
    pending: dict[str, list] = _empty()
    bar = tqdm(total=len(todo), unit="movie", desc="encoding", disable=not progress, mininterval=1.0)
    for movie, pixels, ok, error in loader:
        movies = movie.tolist()
        ok = ok.bool()
        report.unreadable += [e for e in error if e]
        image = torch.zeros(len(movies), header.image_dim)
        if image_encoder is not None and ok.any():
            image[ok] = image_encoder.encode_images(pixels[ok]).cpu()
        texts, sources = _texts(movies, summaries, fallback, slots)
        pending["movie_ids"] += movies
        pending["image"].append(image.numpy())
        pending["image_missing"] += (~ok).tolist()
        pending["text"] += texts  # encoded a part at a time: the encoder can sort a whole part by length
        pending["text_missing"] += [False] * len(movies)
        pending["text_source"] += sources
        report.encoded += len(movies)
        report.missing_posters += int((~ok).sum())
        report.catalogue_texts += sources.count("catalogue")
        bar.update(len(movies))
        if len(pending["movie_ids"]) >= cfg.part_size:
            _flush(store, header, pending, text_encoder, cfg.batch_size)
            pending = _empty()
    if pending["movie_ids"]:
        _flush(store, header, pending, text_encoder, cfg.batch_size)
    bar.close()
    for problem in report.unreadable:
        log.warning("unreadable poster, stored as missing: %s", problem)
    mark_complete(store, {"movies": len(movie_ids), "missing_posters": report.missing_posters,
                          "summaries_not_in_catalogue": len(report.unknown_summaries),
                          "posters_not_in_catalogue": len(report.unknown_posters)})  # fmt: skip
    return report


CATALOGUE_SLOT = "catalogue"


def text_slots(summaries: dict[str, dict[int, str]]) -> list[str] | None:
    """The text vector's slots: None (one vector) for at most one summary source, else the catalogue and each source."""
    return [CATALOGUE_SLOT, *sorted(summaries)] if len(summaries) > 1 else None


def _texts(movies: list[int], summaries: dict[str, dict[int, str]], fallback: dict[int, str],
           slots: list[str] | None) -> tuple[list[list[str | None]], list[str]]:  # fmt: skip
    """Each movie's texts, one per slot (None: nothing from that source), and where they came from."""
    texts, sources = [], []
    for m in movies:
        catalogue = fallback.get(m, f"Movie {m}.")
        if slots:
            found = [summaries[name].get(m) for name in slots[1:]]
            texts.append([catalogue, *found])
            sources.append("+".join(name for name, text in zip(slots[1:], found) if text) or CATALOGUE_SLOT)
            continue
        summary = next((texts_[m] for texts_ in summaries.values() if m in texts_), None)
        texts.append([summary or catalogue])
        sources.append("summary" if summary else CATALOGUE_SLOT)
    return texts, sources


def _empty() -> dict[str, list]:
    return {"movie_ids": [], "image": [], "image_missing": [], "text": [], "text_missing": [], "text_source": []}


def _flush(store: Path, header: StoreHeader, pending: dict[str, list], text_encoder: TextEncoder, batch_size: int) -> None:
    rows = dict(pending)
    rows["image"] = np.concatenate(pending["image"])
    slots = pending["text"]  # per movie, one text or None per slot
    where = [(i, j) for i, row in enumerate(slots) for j, text in enumerate(row) if text]
    texts = [slots[i][j] for i, j in where]
    encoded = [text_encoder.encode_texts(texts[i : i + 4 * batch_size]).cpu().numpy() for i in range(0, len(texts), 4 * batch_size)]
    vectors = np.zeros((len(slots), len(slots[0]) if slots else 1, text_encoder.dim), np.float32)
    if where:
        rows_, columns = zip(*where)
        vectors[list(rows_), list(columns)] = np.concatenate(encoded)
    rows["text"] = vectors.reshape(len(slots), -1)
    write_part(store, header, rows)


def _image_size(encoder: ImageEncoder | None) -> int:
    if encoder is None:
        return 1
    if hasattr(encoder, "image_size"):
        return int(encoder.image_size)
    size = getattr(getattr(encoder, "model", None), "visual", None)
    size = getattr(size, "image_size", 224)
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def feature_inputs(cfg: FeatureConfig, release: Path, synthetic: bool) -> tuple[str | None, str | None]:
    """The posters and summaries to read: the config's, else a synthetic release's own posters/ and summaries.csv."""
    posters, summaries = cfg.posters, cfg.summaries
    if synthetic:
        posters = posters or (str(release / "posters") if (release / "posters").is_dir() else None)
        summaries = summaries or (str(release / "summaries.csv") if (release / "summaries.csv").is_file() else None)
    return posters, summaries


def input_fingerprint(cfg: FeatureConfig, data: DataConfig, release: Path) -> dict[str, str | None]:
    """Digests of the store's inputs ("posters", "summaries", "catalogue"); None where an input is not given.

    Stats only (no file is read but a posters CSV): a changed file changes its size or mtime_ns.
    """
    posters, summaries = feature_inputs(cfg, release, data.source == SYNTHETIC)
    catalogue = catalogue_files(release)  # movies.csv + tags.csv, movies.dat [+ tags.dat], u.item
    return {
        "posters": _posters_digest(Path(posters)) if posters else None,
        "summaries": _digest([_stat(Path(summaries))]) if summaries else None,
        "catalogue": _digest([_stat(f) for f in catalogue]),
    }


def _posters_digest(source: Path) -> str:
    images = read_posters(source)  # a folder's <movieId>.<ext> files, or the files a CSV lists
    entries = [[movie, *_stat(path)] for movie, path in sorted(images.items())]
    return _digest([_stat(source) if source.is_file() else None, entries])


def _stat(path: Path) -> list:
    """[name, size, mtime_ns], or [name, None, None] for a file that is not there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [path.name, None, None]
    return [path.name, st.st_size, st.st_mtime_ns]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def store_path(cfg: FeatureConfig, data: DataConfig, release: Path) -> Path:
    """The store folder: `features.store`, or one under the cache named by release, inputs and encoder settings.

    The cache name includes `input_fingerprint`, so changed posters or summaries get a new store.
    """
    if cfg.store:
        return Path(cfg.store)
    return _cache_path(cfg, data, release, input_fingerprint(cfg, data, release))


def _cache_path(cfg: FeatureConfig, data: DataConfig, release: Path, inputs: dict[str, str | None]) -> Path:
    posters, summaries = feature_inputs(cfg, release, data.source == SYNTHETIC)
    settings = {"release": str(release.resolve()), "posters": posters, "summaries": summaries, "text": cfg.text_encoder,
                "clip": [cfg.clip_model, cfg.clip_pretrained, cfg.clip_model_config], "inputs": inputs}  # fmt: skip
    if cfg.image_encoder != "clip":  # absent for clip, so that stores cached before the choice existed are found
        settings["image"] = cfg.image_encoder
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return Path(data.cache_dir) / "features" / f"{release.name}-{key}"


def ensure_features(cfg: FeatureConfig, data: DataConfig, release: Path, movie_ids: list[int], device, progress: bool) -> Path:
    """The complete store for this run's movies, extracting it first if needed (call on one rank).

    Raises:
        FeatureError: no posters for an image modality, or an explicit `features.store` made from other inputs or
            by other encoders.
    """
    inputs = input_fingerprint(cfg, data, release)
    store = Path(cfg.store) if cfg.store else _cache_path(cfg, data, release, inputs)
    check_inputs(store, inputs)
    posters_source, summaries_source = feature_inputs(cfg, release, data.source == SYNTHETIC)
    check_encoders(store, *encoder_names(cfg, images=posters_source is not None))
    if is_complete(store):
        return store
    if cfg.uses_image and posters_source is None:
        raise FeatureError("features.modalities uses images but no posters are given; set features.posters=<folder or CSV>")
    posters = read_posters(posters_source) if posters_source else {}
    summaries = read_passages(summaries_source) if summaries_source else {}
    tags = 0 if text_slots(summaries) else 5  # a slot for what every new movie has: no users' tags
    fallback = catalogue_texts(release, top_tags=tags, on_bad_rows=data.on_bad_rows)
    report = extract(cfg, store, movie_ids, posters, summaries, fallback, device, progress, inputs)
    for source, unknown, what in ((summaries_source, report.unknown_summaries, "summaries"),
                                  (posters_source, report.unknown_posters, "posters")):  # fmt: skip
        if unknown:
            log.warning(
                "%s: %d of its movieIds are not in the catalogue of %s (e.g. %s); their %s are not used. Is it keyed "
                "by this release's movieIds?", source, len(unknown), release, ", ".join(map(str, unknown[:5])), what,
            )  # fmt: skip
    log.info(
        "features: %d movies encoded into %s (%d without a poster, %d unreadable, %d texts from the catalogue; "
        "%d summaries and %d posters of movies not in the catalogue)",
        report.encoded, store, report.missing_posters, len(report.unreadable), report.catalogue_texts,
        len(report.unknown_summaries), len(report.unknown_posters),
    )  # fmt: skip
    return store
