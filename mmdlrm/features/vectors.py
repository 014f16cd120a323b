"""Which content vectors a run reads, and from which store: one answer for training and for export."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mmdlrm.config import DataConfig, FeatureConfig
from mmdlrm.features.extract import ensure_features, store_path
from mmdlrm.features.genome import genome_store
from mmdlrm.features.store import MovieVectors, load_vectors

log = logging.getLogger("mmdlrm")


def content_stores(cfg: FeatureConfig, data: DataConfig, release: Path, movie_ids: np.ndarray, make: bool,
                   device: torch.device | None = None, progress: bool = False) -> dict[str, str]:  # fmt: skip
    """Modality -> store folder for every modality the config asks for and the release has.

    Args:
        make: encode what is missing (training, on one rank); otherwise only locate the stores (export).
    """
    stores: dict[str, str] = {}
    encoded = [m for m in cfg.modality_names if m != "genome"]
    if encoded:
        folder = ensure_features(cfg, data, release, movie_ids.tolist(), device, progress) if make else store_path(cfg, data, release)
        stores |= dict.fromkeys(encoded, str(folder))
    if cfg.genome:
        folder = genome_store(release, data.cache_dir)
        if folder is None:
            log.info("features.genome: %s has no genome-scores.csv; training without the tag genome", release)
        else:
            stores["genome"] = str(folder)
    return stores


def load_content(stores: dict[str, str], movie_ids: np.ndarray) -> dict[str, MovieVectors]:
    """Each modality's vectors in contiguous movie-id order."""
    return {m: load_vectors(folder, movie_ids, m) for m, folder in stores.items()}
