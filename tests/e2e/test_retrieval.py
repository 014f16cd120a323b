"""The retrieval task end to end: train, the index, two stages, top-k for every user (1 and 2 processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmdlrm.cli import main
from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.inspection.run import open_run
from mmdlrm.retrieval.recommenders import IndexRecommender, TwoStageRecommender, recommender_for
from mmdlrm.retrieval.two_stages import WEIGHTS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "distributed"))
from spawn import spawn  # noqa: E402

DATA = ["data.synthetic.num_users=500", "data.synthetic.num_movies=300", "data.synthetic.num_ratings=30000",
        "data.synthetic.media=false", "data.synthetic.watch_taste=2", "train.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A retrieval run and a ranking run on the same prepared data (about a minute on 2 cores)."""
    tmp = tmp_path_factory.mktemp("retrieval")
    common = ["--config", str(REPO / "configs" / "debug.yaml"), f"output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'data'}",
              *DATA, "model.user_id=false", "model.history_length=20", "train.max_epochs=2"]  # fmt: skip
    assert main(["train", *common, "name=retrieval", "model.task=retrieval", "model.retrieval.dim=16"]) == 0
    assert main(["train", *common, "name=ranking", "model.task=ranking"]) == 0
    return tmp / "runs" / "retrieval", tmp / "runs" / "ranking"


def test_a_retrieval_run_writes_its_index_and_scores_as_it_was_tested(runs, capsys):
    retrieval, _ = runs
    results = json.loads((retrieval / "results.json").read_text())
    assert results["baselines"].keys() == {"popularity", "ease"}
    manifest = json.loads((retrieval / "index.json").read_text())
    assert manifest["kind"] == "flat" and manifest["movies"] == 300 and manifest["dim"] == 16
    # the exported model and its index rank the test users exactly as the sharded model did in training
    assert main(["inspect", "ranking", str(retrieval), "--users", "1000"]) == 0
    ranking = json.loads((retrieval / "ranking.json").read_text())
    assert "two-tower (flat index)" in capsys.readouterr().out
    assert ranking["model"]["users"] == results["test"]["users"]
    for metric in ("recall@20", "ndcg@20"):
        assert ranking["model"][metric] == pytest.approx(results["test"][metric], abs=1e-6)


def test_two_stages_rerank_the_retrieved_candidates_by_the_rankers_scores(runs):
    retrieval, ranking = runs
    chosen = recommender_for(open_run(retrieval), open_run(ranking))
    assert isinstance(chosen, TwoStageRecommender) and chosen.candidates == 200
    settings = json.loads((retrieval / "two_stages.json").read_text())[str(ranking.resolve())]
    assert settings["weight"] == chosen.weight and set(settings["validation"]) == {str(w) for w in WEIGHTS}
    assert chosen.weight == max(WEIGHTS, key=lambda w: settings["validation"][str(w)]["ndcg@20"])
    ranker = chosen.ranker
    users = np.array([0, 5, 17, 230])
    exclude = ranker.data.seen().of_users(users)
    candidates, retrieval_scores = chosen.retriever.top_k(users, 200, exclude)
    # the ranker's own scores of each (user, candidate), through a batch built independently
    builder = BatchBuilder(ranker.data, ranker.model.config.model, ranker.model.objective.label)
    alone, blended = [], []
    for user, movies, retrieved in zip(users, candidates, retrieval_scores):
        movies, retrieved = movies[movies >= 0], retrieved[movies >= 0]
        rows = SplitRows(torch.full((len(movies),), int(user)), torch.from_numpy(movies), torch.zeros(len(movies)))
        with torch.no_grad():
            _, (_, scores, _) = ranker.model.task(builder.build(rows, torch.arange(len(movies))))
        scores = scores.numpy().astype(np.float64)
        alone.append(movies[np.argsort(-scores, kind="stable")][:10].tolist())
        z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
        blended.append(movies[np.argsort(-(z(scores) + 2.0 * z(retrieved.astype(np.float64))), kind="stable")][:10].tolist())
    reranked, scores = TwoStageRecommender(chosen.retriever, ranker, 200, 0.0).top_k(users, 10, exclude)
    assert reranked.tolist() == alone and (np.diff(scores, axis=1) <= 1e-6).all()
    assert TwoStageRecommender(chosen.retriever, ranker, 200, 2.0).top_k(users, 10, exclude)[0].tolist() == blended


def test_recommend_a_user_and_similar_movies_through_the_index(runs, capsys):
    retrieval, ranking = runs
    run = open_run(retrieval)
    user_id = int(run.data.users["user_id"][3])
    assert main(["recommend", str(retrieval), "--user", str(user_id), "-k", "5"]) == 0
    assert main(["recommend", str(retrieval), "--user", str(user_id), "-k", "5", "--ranker", str(ranking)]) == 0
    movie = int(run.data.movies["movie_id"][0])
    assert main(["recommend", str(retrieval), "--similar", str(movie), "-k", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 * 6 + 1 + 5 and out[12].startswith(f"nearest to {movie} ")
    seen = set(run.data.movies["movie_id"][run.data.seen().of(3)].tolist())
    listed = {int(line.split()[1]) for line in out[1:6] + out[7:12]}
    assert listed and not listed & seen
    # a ranker is for a retrieval run's candidates, trained on the same data
    assert main(["recommend", str(ranking), "--user", str(user_id), "--ranker", str(retrieval)]) == 2
    assert "re-ranks the candidates of a retrieval run" in capsys.readouterr().err
    assert main(["recommend", str(retrieval), "--user", str(user_id), "--ranker", str(retrieval)]) == 2
    assert "is a retrieval run; give a rating, binary or ranking run" in capsys.readouterr().err
    assert main(["recommend", str(retrieval), "--all-users", "-k", "3"]) == 2
    assert "give --out" in capsys.readouterr().err


def test_index_command_rebuilds_a_stale_index(runs, capsys):
    retrieval, _ = runs
    before = json.loads((retrieval / "index.json").read_text())
    (retrieval / "index.faiss").write_bytes(b"not an index")
    assert main(["recommend", str(retrieval), "--user", str(int(open_run(retrieval).data.users["user_id"][0]))]) == 0
    assert "is damaged" in capsys.readouterr().err  # said, then built again from the model
    assert json.loads((retrieval / "index.json").read_text())["model"] == before["model"]
    assert main(["index", str(retrieval)]) == 0


def _all_users(rank: int, world_size: int, store: str, run: str, out: str) -> None:
    import os

    from mmdlrm.distributed.env import init_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)
    assert main(["recommend", run, "--all-users", "-k", "7", "--out", out]) == 0


def test_top_k_for_every_user_is_complete_and_the_same_with_two_processes(runs, tmp_path):
    retrieval, _ = runs
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert main(["recommend", str(retrieval), "--all-users", "-k", "7", "--out", str(one)]) == 0
    spawn(_all_users, 2, str(retrieval), str(two))
    first, second = pq.read_table(one).to_pandas(), pq.read_table(two).to_pandas()
    run = open_run(retrieval)
    assert list(first.columns) == ["user", "rank", "movieId", "score"] and len(first) == run.data.num_users * 7
    assert first.groupby("user")["rank"].apply(list).map(lambda r: r == list(range(1, 8))).all()
    assert set(first["user"]) == set(run.data.users["user_id"].tolist())
    position = {int(m): i for i, m in enumerate(run.data.movies["movie_id"])}
    for user in (0, 250, run.data.num_users - 1):
        mine = first[first["user"] == int(run.data.users["user_id"][user])]
        assert not {position[m] for m in mine["movieId"]} & set(run.data.seen().of(user).tolist())
    assert (first["user"] == second["user"]).all() and (first["rank"] == second["rank"]).all()
    assert (first["movieId"] == second["movieId"]).mean() > 0.999  # float near-ties may swap two neighbours
    np.testing.assert_allclose(first["score"], second["score"], atol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no part or temporary file left beside the output
    index = IndexRecommender(run, recommender_for(run).index)
    assert index.top_k(np.array([0]), 7, [run.data.seen().of(0)])[0][0].tolist() == [
        position[m] for m in first[first["user"] == int(run.data.users["user_id"][0])]["movieId"]]
