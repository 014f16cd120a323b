"""How a ranker's scores and the retrieval scores combine in the two stages, chosen on validation once per pair.

The second stage ranks a user's retrieved candidates by `z(ranker score) + weight * z(retrieval score)`, each
standardised over the user's candidates (so that the ranker may be any task: stars, probabilities or logits).
`weight` 0 is the ranker alone re-ranking the candidates; a large one keeps the retrieval order. Which weight
serves best is measured, not assumed: `choose_weight` ranks the validation users of the ranking protocol with each
weight of `WEIGHTS` and keeps the best NDCG@20. The choice is kept in the retrieval run's folder
(`two_stages.json`, one entry per ranker run, with both models' fingerprints), made on first use of a ranker and
made again when either model changes.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import torch

from mmdlrm.distributed.env import DistEnv
from mmdlrm.evaluation.ranking import EXCLUDED, KS, evaluate_ranking
from mmdlrm.inspection.run import Run
from mmdlrm.retrieval.index import model_fingerprint
from mmdlrm.tasks import Evaluation

log = logging.getLogger("mmdlrm")

FILE = "two_stages.json"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The retrieval score's weights tried (the ranker's is 1)."""


def combine(ranker: np.ndarray, retrieval: np.ndarray, weight: float) -> np.ndarray:
    """The second stage's scores of U users' candidates (U x N; -inf where a user has no candidate there)."""
    both = np.isfinite(ranker) & np.isfinite(retrieval)
    mixed = _standard(ranker) + weight * np.where(both, _standard(retrieval), 0.0)  # 0 x -inf would be NaN
    return np.where(both, mixed, -np.inf)


def _standard(scores: np.ndarray) -> np.ndarray:
    """Each row standardised over its finite entries (mean 0, standard deviation 1); -inf stays -inf."""
    finite = np.isfinite(scores)
    count = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / count
    spread = np.sqrt((np.where(finite, values - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    return np.where(finite, (values - mean) / np.maximum(spread, 1e-12), -np.inf)


def choose_weight(run: Run, ranker: Run, scores_of) -> dict:
    """The weight of `WEIGHTS` whose two stages give the best validation NDCG@20, and every weight's metrics.

    Args:
        scores_of: users, their movies to leave out -> (candidates, ranker scores, retrieval scores), all U x N.
    """
    cfg = run.model.config
    ev = Evaluation(run.data, run.builder, DistEnv(0, 1, 0, torch.device("cpu")), cfg.eval, cfg.train.seed)
    target = ev.target("val")
    exclude = run.data.seen(EXCLUDED["val"]).of_users(target.users)
    candidates, ranker_scores, retrieval_scores = scores_of(target.users, exclude)
    row_of = {int(u): i for i, u in enumerate(target.users)}
    tried = {}
    for weight in WEIGHTS:
        final = combine(ranker_scores, retrieval_scores, weight)

        def scorer(users: torch.Tensor, final=final) -> torch.Tensor:
            rows = [row_of[int(u)] for u in users]
            out = torch.full((len(rows), run.data.num_movies), -math.inf)
            r, c = np.nonzero(candidates[rows] >= 0)
            out[torch.from_numpy(r), torch.from_numpy(candidates[rows][r, c])] = torch.from_numpy(final[rows][r, c].astype(np.float32))
            return out

        tried[str(weight)] = evaluate_ranking(scorer, target, run.data.num_movies, KS, 256 * run.data.num_movies)
    best = max(WEIGHTS, key=lambda w: tried[str(w)]["ndcg@20"])
    return {"weight": best, "validation": tried}


def settings_for(run: Run, ranker: Run, scores_of) -> dict:
    """This ranker's entry of the run's two_stages.json, chosen now if missing or made with other models."""
    path = run.folder / FILE
    entries = json.loads(path.read_text()) if path.is_file() else {}
    key = str(ranker.folder.resolve())
    fingerprints = {"retrieval": model_fingerprint(run.folder / "model.pt"), "ranker": model_fingerprint(ranker.folder / "model.pt")}
    entry = entries.get(key)
    if entry is None or entry.get("models") != fingerprints:
        log.info("choosing how %s re-ranks the candidates of %s, on validation", ranker.folder, run.folder)
        entry = {"models": fingerprints, **choose_weight(run, ranker, scores_of)}
        entries[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=2) + "\n")
        tmp.replace(path)
        log.info("two stages: retrieval weight %s (validation NDCG@20 %s)", entry["weight"],
                 ", ".join(f"{w}: {m['ndcg@20']:.4f}" for w, m in entry["validation"].items()))  # fmt: skip
    return entry
