"""The synthetic release: exact MovieLens CSV format, planted truth, determinism."""

import numpy as np
import pyarrow.csv as pacsv
import pytest

from mmdlrm.config import ConfigError, SyntheticConfig
from mmdlrm.data.movielens import read_catalogue, read_release, read_users
from mmdlrm.data.synthetic import GENRE_CLUSTERS, PlantedTruth, generate
from tests.conftest import shared


def test_files_are_in_ml25m_csv_format(tiny_release):
    lines = (tiny_release / "ratings.csv").read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    user, movie, rating, timestamp = lines[1].split(",")
    assert rating in {f"{h / 2:.1f}" for h in range(1, 11)}  # "0.5" .. "5.0", always one decimal
    assert int(timestamp) > 800_000_000 and int(user) >= 1 and int(movie) >= 1
    assert (tiny_release / "movies.csv").read_text().splitlines()[0] == "movieId,title,genres"
    assert (tiny_release / "links.csv").read_text().splitlines()[0] == "movieId,imdbId,tmdbId"
    assert (tiny_release / "tags.csv").read_text().splitlines()[0] == "userId,movieId,tag,timestamp"


def test_release_reads_back_with_the_requested_size(tiny_release):
    release = read_release(tiny_release)
    assert release.ratings.num_rows == 12_000
    assert release.movies.num_rows == 150
    pairs = release.ratings["user_id"].to_numpy() * 10**6 + release.ratings["movie_id"].to_numpy()
    assert len(np.unique(pairs)) == len(pairs), "each user rates a movie at most once"
    ratings = release.ratings["rating"].to_numpy()
    assert set(np.unique(ratings)) <= set(np.arange(1, 11) / 2)
    assert 3.0 < ratings.mean() < 4.2  # MovieLens-like level


def test_planted_truth_explains_the_ratings(tiny_release):
    truth = PlantedTruth.load(tiny_release / "truth.npz")
    release = read_release(tiny_release)
    users = release.ratings["user_id"].to_numpy() - 1
    movies = np.searchsorted(truth.movie_ids, release.ratings["movie_id"].to_numpy())
    signal = 3.5 + truth.user_bias[users] + truth.movie_quality[movies]
    signal += truth.alpha * np.einsum("ij,ij->i", truth.user_taste[users], truth.movie_latent[movies])
    residual = release.ratings["rating"].to_numpy() - np.clip(signal, 0.5, 5.0)
    # Left over: the planted noise (0.5) plus rounding to half stars, nothing systematic.
    assert np.sqrt(np.mean(residual**2)) < 0.6
    assert abs(residual.mean()) < 0.05
    sim = truth.genre_similarity
    names = list(truth.genre_names)
    same = sim[names.index("Action"), names.index("Adventure")]
    other = sim[names.index("Action"), names.index("Animation")]
    assert same > other, "genres of one planted cluster are more alike than across clusters"
    assert truth.genre_vectors.shape == (len(GENRE_CLUSTERS), 8)


def test_same_seed_same_bytes(tmp_path):
    cfg = SyntheticConfig(num_users=50, num_movies=30, num_ratings=500, seed=11)
    a, b = generate(cfg, tmp_path / "a"), generate(cfg, tmp_path / "b")
    for name in ("ratings.csv", "movies.csv", "links.csv", "tags.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = generate(SyntheticConfig(num_users=50, num_movies=30, num_ratings=500, seed=12), tmp_path / "c")
    assert (a / "ratings.csv").read_bytes() != (c / "ratings.csv").read_bytes()


def test_watch_taste_steers_the_watched_pairs_towards_the_users_tastes(tmp_path):
    def mean_match(watch_taste: float) -> float:
        cfg = SyntheticConfig(num_users=300, num_movies=200, num_ratings=6000, watch_taste=watch_taste, media=False)
        out = generate(cfg, tmp_path / str(watch_taste))
        truth = PlantedTruth.load(out / "truth.npz")
        ratings = pacsv.read_csv(out / "ratings.csv").to_pandas()
        users, movies = ratings["userId"].to_numpy() - 1, np.searchsorted(truth.movie_ids, ratings["movieId"])
        assert len(ratings) == 6000 and not ratings.duplicated(["userId", "movieId"]).any()
        return float(np.einsum("ij,ij->i", truth.user_taste[users], truth.movie_latent[movies]).mean())

    plain, steered = mean_match(0.0), mean_match(4.0)
    assert abs(plain) < 0.1  # tastes are centred: popularity alone picks no side
    assert steered > plain + 0.3
    with pytest.raises(ConfigError, match="watch_taste must be >= 0"):
        SyntheticConfig(watch_taste=-1.0)


def test_too_many_ratings_for_the_pairs_is_a_config_error():
    with pytest.raises(ConfigError, match="over half of all user-movie pairs"):
        SyntheticConfig(num_users=10, num_movies=10, num_ratings=80)


def test_borrowed_real_catalogue(tmp_path):
    movies_csv = shared("ml-25m") / "movies.csv"
    out = generate(SyntheticConfig(num_users=100, num_movies=300, num_ratings=3000, movies_csv=str(movies_csv)), tmp_path)
    release = read_release(out)
    real = pacsv.read_csv(movies_csv)
    titles = dict(zip(real["movieId"].to_pylist(), real["title"].to_pylist()))
    for movie in release.movies.to_pylist()[:20]:
        assert titles[movie["movie_id"]] == movie["title"]


def test_ml_1m_layout_is_read_as_ml_1m_with_whole_stars_and_demographics(tmp_path):
    cfg = SyntheticConfig(num_users=60, num_movies=40, num_ratings=800, layout="ml-1m", media=False, seed=4)
    out = generate(cfg, tmp_path / "release")
    assert sorted(p.name for p in out.iterdir()) == ["movies.dat", "ratings.dat", "truth.npz", "users.dat"]
    release = read_release(out)
    assert release.kind == "dat" and release.ratings.num_rows == 800 and release.movies.num_rows == 40
    stars = release.ratings["rating"].to_numpy()
    assert set(np.unique(stars)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert release.users.num_rows == 60 and set(release.users["gender"].to_pylist()) <= {"M", "F"}


def test_a_release_folder_lends_its_catalogue_and_users(tmp_path):
    ml1m = shared("ml-1m")
    cfg = SyntheticConfig(num_users=50, num_movies=100, num_ratings=1000, layout="ml-1m", catalogue=str(ml1m), media=False)
    release = read_release(generate(cfg, tmp_path / "release"))
    real_movies, _ = read_catalogue(ml1m)
    titles = dict(zip(real_movies["movie_id"].to_pylist(), real_movies["title"].to_pylist()))
    assert all(titles[m] == t for m, t in zip(release.movies["movie_id"].to_pylist(), release.movies["title"].to_pylist()))
    real_users = read_users(ml1m, "dat")
    assert release.users["zip"].to_pylist() == real_users["zip"].to_pylist()[:50]
