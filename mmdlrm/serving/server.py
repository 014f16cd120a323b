"""`mmdlrm serve`: a run's recommender loaded once and warmed, then served by uvicorn in this process."""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

import faiss
import numpy as np
import torch

from mmdlrm.config import ConfigError
from mmdlrm.inspection.posters import poster_files
from mmdlrm.inspection.recommend import recommend
from mmdlrm.retrieval.recommenders import Recommender, open_recommender

log = logging.getLogger("mmdlrm")

CONCURRENCY_MAX = 256
"""Connections and requests held at once; beyond them uvicorn answers 503 instead of queueing without bound."""


def one_thread_per_request() -> None:
    """Torch and FAISS compute each request on one thread; concurrent requests run side by side on the server's
    threads instead. Intra-op threads help one large request on an idle machine, but with other work on the cores
    their OpenMP teams spin against each other: on a busy 2-core machine one full-DLRM request over 2,000 movies
    took 33 ms with 2 threads against 6.7 ms with 1."""
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def warm(recommender: Recommender) -> None:
    """One request of each kind before serving, so that what loads on first use (the seen-movie index, the
    catalogue's vectors, lazily built tables) is not paid by the first visitor."""
    run = recommender.run
    recommend(recommender, int(run.data.users["user_id"][0]), 10)
    if recommender.visitor_problem() is None:
        recommender.top_k_for_history([np.array([0])], 10, [np.array([0])])


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: a port another program holds is said at once.

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, a privileged port).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, as getaddrinfo would: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a reply written in two parts waits for the client's delayed ACK (about 40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        hint = (f"another program listens there; pass --port with a free one (e.g. --port {port + 1 if port < 65535 else 8000})"
                if err.errno == errno.EADDRINUSE else "pass --host with an address of this machine (127.0.0.1: this machine only) "
                "and --port above 1023")  # fmt: skip
        raise ConfigError(f"mmdlrm serve cannot listen on {host}:{port} ({err.strerror}): {hint}") from None
    return sock


def serve(run_dir: Path, ranker_dir: Path | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the run in `run_dir` (re-ranked by `ranker_dir`) at http://host:port/ until interrupted.

    Raises:
        FileNotFoundError, ConfigError, CheckpointError, IndexFileError: the run (or ranker) cannot be opened; the
            message names the fix.
    """
    import uvicorn

    from mmdlrm.serving.app import create_app

    sock = listening_socket(host, port)
    one_thread_per_request()
    recommender = open_recommender(run_dir, ranker_dir)
    posters = poster_files(recommender.run)
    warm(recommender)
    app = create_app(recommender, posters)
    problem = recommender.visitor_problem()
    log.info("serving %s (%s, %d movies%s) at http://%s:%d/ (API docs at /docs)", run_dir, recommender.name,
             recommender.run.data.num_movies, f", {len(posters):,} posters" if posters else "", host, port)  # fmt: skip
    if problem is not None:
        log.warning("visitors (POST /recommend) are refused: %s", problem)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=CONCURRENCY_MAX, timeout_graceful_shutdown=5)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
