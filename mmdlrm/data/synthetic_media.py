"""Posters and plot summaries for the synthetic release, carrying each movie's hidden quality and traits.

The cues are deliberately strong, since a randomly initialised CLIP keeps only part of what it sees:
- poster (64 x 64 PNG): the background's hue runs from red (poor) to green (excellent) with the movie's hidden
  quality; a central square takes its colour from the first three latent traits; horizontal stripes (one to
  five) count the quality level again;
- summary: the title, then quality words and trait words, each repeated, e.g. "A masterpiece. Brilliant,
  brilliant, acclaimed. A gloomy, gloomy and fast story."
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

POSTER_SIZE = 64
QUALITY_EDGES = np.array([-0.4, -0.13, 0.13, 0.4])
"""Quality (normal, sd 0.4) -> five levels, about a fifth of the movies each."""
QUALITY_WORDS = [
    ("a dreadful flop", ["awful", "boring", "forgettable"]),
    ("a weak film", ["dull", "clumsy", "mediocre"]),
    ("a decent film", ["solid", "watchable", "competent"]),
    ("a very good film", ["excellent", "gripping", "memorable"]),
    ("a masterpiece", ["brilliant", "acclaimed", "unforgettable"]),
]
TRAIT_WORDS = [("gloomy", "bright"), ("slow", "fast"), ("quiet", "loud"), ("cold", "warm")]
"""Words for the sign of latent traits 0..3 (negative, positive)."""


def quality_levels(quality: np.ndarray) -> np.ndarray:
    """0 (poor) .. 4 (excellent) for each movie's hidden quality."""
    return np.searchsorted(QUALITY_EDGES, quality)


def write_media(out: Path, movie_ids: np.ndarray, titles: list[str], quality: np.ndarray, latent: np.ndarray) -> None:
    """Write `out/posters/<movieId>.png` and `out/summaries.csv` (movieId, summary) for every movie."""
    levels = quality_levels(quality)
    posters = out / "posters"
    posters.mkdir(parents=True, exist_ok=True)
    for movie_id, level, traits in zip(movie_ids.tolist(), levels.tolist(), latent):
        Image.fromarray(poster(level, traits)).save(posters / f"{movie_id}.png", optimize=False)
    tmp = out / "summaries.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "summary"])
        for movie_id, title, level, traits in zip(movie_ids.tolist(), titles, levels.tolist(), latent):
            writer.writerow([movie_id, summary(title, level, traits)])
    tmp.replace(out / "summaries.csv")


def poster(level: int, traits: np.ndarray) -> np.ndarray:
    """A POSTER_SIZE x POSTER_SIZE x 3 uint8 image for a movie of quality `level` with latent `traits`."""
    size = POSTER_SIZE
    image = np.empty((size, size, 3), dtype=np.uint8)
    goodness = level / 4.0
    image[:] = np.array([230 * (1 - goodness) + 20, 200 * goodness + 20, 40], dtype=np.uint8)
    rgb = (255 / (1 + np.exp(-3.0 * traits[:3]))).astype(np.uint8)
    image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rgb
    for stripe in range(level + 1):
        row = 2 + 4 * stripe
        image[row : row + 2, :] = 255
    return image


def summary(title: str, level: int, traits: np.ndarray) -> str:
    """A plot summary naming the movie's quality and traits, with repetition for emphasis."""
    phrase, words = QUALITY_WORDS[level]
    trait_words = [TRAIT_WORDS[d][int(traits[d] > 0)] for d in range(min(len(TRAIT_WORDS), len(traits)))]
    strongest = trait_words[int(np.argmax(np.abs(traits[: len(trait_words)])))]
    return (
        f"{title}: {phrase}. {words[0].capitalize()}, {words[0]}, {words[1]} and {words[2]}. "
        f"A {strongest}, {strongest}, {' and '.join(trait_words)} story. Critics call it {words[0]}."
    )
