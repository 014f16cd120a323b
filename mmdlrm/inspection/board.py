"""TensorBoard logging of a run into `<run>/tensorboard`: what TorchRec users already look at.

Scalars: training loss and samples/s every `every` steps, each validation metric per epoch, the baselines'
validation value of the early-stopping metric as reference lines. At the end, the movie and genre embeddings
with titles and genre names as metadata, for TensorBoard's embedding projector. Open it with
`.venv/bin/tensorboard --logdir runs/<name>/tensorboard`.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from mmdlrm.config import ConfigError
from mmdlrm.folders import NO_SPACE

PROJECTOR_MOVIES = 20_000
"""The projector shows at most this many movies (the most-rated): its page slows down beyond that."""


class Board:
    """A SummaryWriter with the few things a run logs (call on rank 0 only)."""

    def __init__(self, folder: str | Path, every: int = 50) -> None:
        """Raises ConfigError where `folder` cannot take the logs (TensorBoard's writer thread would only print
        a traceback)."""
        _check_writable(Path(folder))
        self.writer = SummaryWriter(log_dir=str(folder))
        self.every = every
        self.folder = Path(folder)

    def step(self, global_step: int, loss: torch.Tensor, samples_per_s: float) -> None:
        """Training scalars of one step; written every `every` steps (only then is the loss read off the device)."""
        if global_step % self.every == 0:
            self.writer.add_scalar("train/loss", loss.item(), global_step)
            self.writer.add_scalar("train/samples_per_s", samples_per_s, global_step)

    def epoch(self, epoch: int, train_loss: float, val: dict, baselines: dict[str, float]) -> None:
        """One epoch: its mean training loss, every validation metric, the baselines' monitored value."""
        self.writer.add_scalar("epoch/train_loss", train_loss, epoch)
        for name, value in val.items():
            if isinstance(value, (int, float)) and name != "users":
                self.writer.add_scalar(f"val/{name}", value, epoch)
        for name, value in baselines.items():
            self.writer.add_scalar(f"baseline/{name}", value, epoch)
        self.writer.flush()

    def embeddings(self, movies: torch.Tensor, titles: list[str], popularity: np.ndarray, genres: torch.Tensor, genre_names: list[str]) -> None:
        """Movie vectors (the most-rated `PROJECTOR_MOVIES`) labelled by title, genre vectors by name."""
        keep = np.sort(np.argsort(-popularity, kind="stable")[:PROJECTOR_MOVIES])
        labels = [titles[i].replace("\t", " ") for i in keep]
        self.writer.add_embedding(movies[torch.from_numpy(keep)], metadata=labels, tag="movies")
        self.writer.add_embedding(genres, metadata=list(genre_names), tag="genres")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _check_writable(folder: Path) -> None:
    """Make `folder` and write a file into it, or say why not in one sentence."""
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        if err.errno in NO_SPACE:
            raise
        raise ConfigError(
            f"{folder}: TensorBoard logs cannot be written there ({err.strerror}); make it a writable folder "
            "(chmod u+w), or set train.tensorboard=false"
        ) from None
