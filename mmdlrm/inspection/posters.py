"""A run's movie posters: which image is a movie's, and a small copy of it for a page.

One place for every reader of a run that shows posters (the HTML report, `recommend --similar`, the service).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from mmdlrm.config import SYNTHETIC
from mmdlrm.features.extract import feature_inputs
from mmdlrm.features.inputs import read_posters
from mmdlrm.inspection.run import Run


def poster_files(run: Run) -> dict[int, Path]:
    """movieId -> poster image of each catalogue movie that has one: the run's `features.posters` (a folder or a
    CSV), or a synthetic release's own posters/; empty when the run names none or they are no longer there."""
    cfg = run.model.config
    release = Path(run.data.manifest["source"]["folder"])
    source, _ = feature_inputs(cfg.features, release, cfg.data.source == SYNTHETIC)
    if source is None or not Path(source).exists():
        return {}
    catalogue = set(run.data.movies["movie_id"].tolist())
    return {movie: path for movie, path in read_posters(source).items() if movie in catalogue}


def poster_path(run: Run, movie_id: int) -> Path | None:
    """The poster image of MovieLens `movie_id` in `run`, or None (for many movies, read `poster_files` once)."""
    return poster_files(run).get(movie_id)


def thumbnail_uri(path: Path, height: int = 96) -> str | None:
    """A JPEG copy of the image at `path`, at most `height` pixels high, as a data URI; None if it cannot be read.

    Re-encoding keeps a page small and its type right whatever the file's name says (a `.jpg` may hold a PNG).
    """
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((height * 2, height))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
    except (OSError, ValueError):  # missing, truncated or not an image: the page shows no poster for it
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
