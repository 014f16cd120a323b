"""What the releases carry beside ratings: demographics, the tag genome, predefined folds; the new-movie split."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mmdlrm.config import ModelConfig
from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.data.movielens import read_genome, read_release, read_users
from mmdlrm.data.prepare import load_prepared, prepare, split_rows
from mmdlrm.data.tables import DataError
from mmdlrm.model.tables import feature_names, vocab_of

U_ITEM = "".join(f"{m}|Movie {m} (199{m % 10})|01-Jan-1995||http://x|0|1|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n" for m in range(1, 7))


def _ml100k(folder: Path, ratings: list[tuple[int, int, int, int]], folds: dict[str, tuple[list, list]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    line = lambda r: "\t".join(map(str, r)) + "\n"  # noqa: E731
    (folder / "u.data").write_text("".join(line(r) for r in ratings))
    (folder / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n4|24|M|technician|43537\n")
    for name, (base, test) in (folds or {}).items():
        (folder / f"{name}.base").write_text("".join(line(r) for r in base))
        (folder / f"{name}.test").write_text("".join(line(r) for r in test))
    return folder


RATINGS = [(u, m, 1 + (u * m) % 5, 880000000 + u * 10 + m) for u in range(1, 5) for m in range(1, 7) if (u + m) % 4]


def test_ml100k_u_user_and_ml1m_users_dat_are_read_in_their_formats(tmp_path):
    users = read_users(_ml100k(tmp_path / "ml-100k", RATINGS), "100k")
    assert users.column_names == ["user_id", "age", "gender", "occupation", "zip"]
    assert users.to_pylist()[1] == {"user_id": 2, "age": "53", "gender": "F", "occupation": "other", "zip": "94043"}
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    rows = read_users(ml1m, "dat").to_pylist()
    assert rows[0] == {"user_id": 1, "age": "1", "gender": "F", "occupation": "10", "zip": "48067"}
    assert read_users(tmp_path, "csv") is None


def test_demographics_become_codes_and_sparse_features(tmp_path):
    release = read_release(_ml100k(tmp_path / "ml-100k", RATINGS))
    prepare(release, tmp_path / "prep", "random", 0.2, 0.2, seed=0)
    data = load_prepared(tmp_path / "prep")
    # Ages 24, 53, 23, 24 fall in 18-24, 50-55, 18-24, 18-24 (codes 2, 6, 2, 2); M=1, F=2; occupations by name.
    assert data.users["age"].tolist() == [2, 6, 2, 2] and data.users["gender"].tolist() == [1, 2, 1, 1]
    assert data.users["occupation"][0] == data.users["occupation"][3] != data.users["occupation"][2]
    sizes = data.manifest["counts"]["user_features"]
    assert sizes == {"age": 7, "gender": 3, "occupation": 4, "zip": 5}
    cfg = ModelConfig(demographics=True, count_features=True)
    vocab = vocab_of(cfg, data.manifest["counts"])
    assert feature_names(cfg, vocab)[4:] == ["user_activity", "movie_popularity", "age", "gender", "occupation", "zip"]
    rows = SplitRows.from_prepared(data, "train")
    kjt = BatchBuilder(data, cfg).build(rows, torch.arange(len(rows)), leave_one_out=True).sparse_features.to_dict()
    np.testing.assert_array_equal(kjt["gender"].values().numpy(), data.users["gender"][rows.user.numpy()])
    own_count = data.users["train_count"][rows.user.numpy()] - 1  # leave one out: the row's own rating is not counted
    np.testing.assert_array_equal(kjt["user_activity"].values().numpy(), np.floor(np.log2(1 + own_count)))
    # A release without demographics trains without them.
    assert ModelConfig(demographics=True).extra_features({"user_features": {}}) == []


def test_genome_scores_are_read_into_a_movies_by_tags_matrix(tmp_path):
    (tmp_path / "genome-scores.csv").write_text(
        "movieId,tagId,relevance\n1,1,0.025\n1,2,0.5\n1,3,0.9\n7,1,0.1\n7,2,0.2\n7,3,0.3\n"
    )
    movie_ids, matrix = read_genome(tmp_path)
    assert movie_ids.tolist() == [1, 7] and matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix[1], [0.1, 0.2, 0.3], rtol=1e-6)
    (tmp_path / "genome-scores.csv").write_text("movieId,tagId,relevance\n1,1,0.025\n1,2,0.5\n7,1,0.1\n")
    with pytest.raises(DataError, match="every movie needs a score for every tag"):
        read_genome(tmp_path)
    assert read_genome(tmp_path / "nothing") is None


def _folded(tmp_path: Path, test_rows: list) -> Path:
    base = [r for r in RATINGS if r not in test_rows]
    return _ml100k(tmp_path / "ml-100k", RATINGS, {"u1": (base, test_rows)})


def test_predefined_fold_is_read_with_validation_carved_from_the_base(tmp_path):
    test_rows = RATINGS[::4]
    folder = _folded(tmp_path, test_rows)
    prepare(read_release(folder), tmp_path / "prep", "files", 0.25, 0.1, seed=0, fold="u1")
    data = load_prepared(tmp_path / "prep")
    ids = lambda s: {(int(data.users["user_id"][u]), int(data.movies["movie_id"][m])) for u, m in zip(data.splits[s]["user"], data.splits[s]["movie"])}  # noqa: E731
    assert ids("test") == {(u, m) for u, m, _, _ in test_rows}
    base = {(u, m) for u, m, _, _ in RATINGS} - ids("test")
    assert ids("train") | ids("val") == base and not ids("train") & ids("val")
    assert len(ids("val")) == round(0.25 * len(base))
    assert data.manifest["split"]["fold"] == "u1"


def test_missing_fold_files_and_unseen_test_ids_are_named(tmp_path, caplog):
    folder = _folded(tmp_path, [r for r in RATINGS if r[1] == 6])  # movie 6 only in test
    with pytest.raises(DataError, match=r"u2.base: no such file \(folds here: u1\)"):
        prepare(read_release(folder), tmp_path / "p2", "files", 0.1, 0.1, seed=0, fold="u2")
    prepare(read_release(folder), tmp_path / "prep", "files", 0.1, 0.1, seed=0, fold="u1")
    split = load_prepared(tmp_path / "prep").manifest["split"]
    assert split["test_ratings_of_unseen_movies"] == sum(r[1] == 6 for r in RATINGS)
    assert "absent from the training part" in caplog.text
    (folder / "u1.test").write_text("9\t9\t5\t1\n")
    with pytest.raises(DataError, match="do not hold the same ratings as u.data"):
        prepare(read_release(folder), tmp_path / "p3", "files", 0.1, 0.1, seed=0, fold="u1")


def test_cold_movie_split_holds_movies_out_whole_and_is_deterministic():
    rng = np.random.default_rng(0)
    users, movies = rng.integers(0, 50, 5000), rng.integers(0, 200, 5000)
    first = split_rows(users, np.arange(5000), movies, "cold_movies", 0.1, 0.2, seed=3)
    again = split_rows(users, np.arange(5000), movies, "cold_movies", 0.1, 0.2, seed=3)
    np.testing.assert_array_equal(first, again)
    train_movies = set(movies[first == 0].tolist())
    held = {s: set(movies[first == s].tolist()) for s in (1, 2)}
    assert not train_movies & held[1] and not train_movies & held[2] and not held[1] & held[2]
    assert len(held[2]) == round(0.2 * len(np.unique(movies))) and len(held[1]) == round(0.1 * len(np.unique(movies)))
    assert (split_rows(users, np.arange(5000), movies, "cold_movies", 0.1, 0.2, seed=4) != first).any()


def test_a_non_numeric_age_in_u_user_is_named_or_skipped(tmp_path, capsys):
    from mmdlrm.cli import main

    release = _ml100k(tmp_path / "ml-100k", RATINGS)
    (release / "u.user").write_text("1|24|M|technician|85711\n2|old|F|other|94043\n3|23|M|writer|32067\n4|24|M|x|43537\n")
    prepare = ["prepare", str(release), "--out", str(tmp_path / "out"), "data.val_fraction=0.2", "data.test_fraction=0.2"]
    assert main(prepare) == 2
    err = capsys.readouterr().err
    assert f"{release / 'u.user'} line 2, column 2 (age): 'old' is not an integer; fix the value, or pass " in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert main([*prepare, "data.on_bad_rows=skip"]) == 0
    data = load_prepared(tmp_path / "out")
    assert data.manifest["source"]["bad_rows_skipped"] == {"u.user: age is not an integer": 1}
    # User 2 keeps their ratings; only their demographics are unknown (code 0).
    assert data.users["user_id"].tolist() == [1, 2, 3, 4] and data.users["age"].tolist() == [2, 0, 2, 2]
