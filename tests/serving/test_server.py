"""`mmdlrm serve` as a real uvicorn process on a free port: every endpoint, every bad input with its status and
sentence (and the server still answering after it), the page in headless Chromium, and the lists equal to what the
CLI's functions give."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from mmdlrm.cli import main
from mmdlrm.data.batches import BatchBuilder
from mmdlrm.inspection.recommend import recommend, recommend_liked
from mmdlrm.retrieval.recommenders import open_recommender
from mmdlrm.serving.app import K_MAX, create_app
from mmdlrm.serving.process import ServerProcess

REPO = Path(__file__).resolve().parents[2]
DATA = ["data.synthetic.num_users=400", "data.synthetic.num_movies=200", "data.synthetic.num_ratings=20000",
        "data.synthetic.watch_taste=2", "train.tensorboard=false", "model.user_id=false", "model.history_length=20",
        "train.max_epochs=1"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A retrieval run (its release has posters) and a ranking run on the same data (about a minute on 2 cores)."""
    tmp = tmp_path_factory.mktemp("serving")
    common = ["--config", str(REPO / "configs" / "debug.yaml"), f"output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'data'}", *DATA]
    assert main(["train", *common, "name=retrieval", "model.task=retrieval", "model.retrieval.dim=16"]) == 0
    assert main(["train", *common, "name=ranking", "model.task=ranking"]) == 0
    return {"retrieval": tmp / "runs" / "retrieval", "ranking": tmp / "runs" / "ranking", "tmp": tmp}


@pytest.fixture(scope="module")
def served(runs):
    """The retrieval run served by a real process on a free port."""
    with ServerProcess(runs["retrieval"], runs["tmp"] / "retrieval-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def recommender(runs):
    return open_recommender(runs["retrieval"])


def _ids(items: list[dict]) -> list[int]:
    return [item["movieId"] for item in items]


def test_health_names_the_run_model_and_catalogue(client, runs, recommender):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["run"] == str(runs["retrieval"]) and health["task"] == "retrieval"
    assert health["recommender"] == "two-tower, flat index" and health["ranker"] is None
    data = recommender.run.data
    assert (health["movies"], health["users"]) == (data.num_movies, data.num_users) == (200, data.num_users)
    assert health["visitors"] is True and health["visitor_problem"] is None
    assert health["posters"] == 200  # the synthetic release's posters/ folder, one per movie


def test_a_users_list_is_the_clis_list_without_their_rated_movies(client, recommender):
    run = recommender.run
    user_id = int(run.data.users["user_id"][3])
    reply = client.get("/recommend", params={"user": user_id, "k": 7})
    assert reply.status_code == 200
    body = reply.json()
    expected, _ = recommend(recommender, user_id, 7)
    assert body["user"] == user_id and body["fallback"] is False and len(body["items"]) == 7
    assert _ids(body["items"]) == [r.movie_id for r in expected]
    rated = set(run.data.movies["movie_id"][run.data.seen().of(3)].tolist())
    assert not rated & set(_ids(body["items"]))
    first = body["items"][0]
    assert first.keys() == {"movieId", "title", "year", "genres", "score", "poster"}
    assert first["genres"] and first["poster"] == f"/posters/{first['movieId']}"
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)
    fallback = client.get("/recommend", params={"user": 10**9, "k": 3, "popular_if_unknown": "true"}).json()
    assert fallback["fallback"] is True and len(fallback["items"]) == 3


def test_a_visitor_is_described_by_liked_movies_and_unknown_ones_are_named(client, recommender, capsys):
    movie_ids = recommender.run.data.movies["movie_id"]
    liked = [int(movie_ids[0]), int(movie_ids[10]), int(movie_ids[10]), 10**8]
    reply = client.post("/recommend", json={"liked": liked, "k": 6})
    assert reply.status_code == 200
    body = reply.json()
    assert body["liked"] == liked[:2] and body["unknown"] == [10**8]
    assert len(body["items"]) == 6 and not set(liked) & set(_ids(body["items"]))
    assert _ids(body["items"]) == [r.movie_id for r in recommend_liked(recommender, liked, 6).items]
    # the CLI prints the same list for the same visitor
    assert main(["recommend", str(recommender.run.folder), "--liked", *map(str, liked), "-k", "6"]) == 0
    out = capsys.readouterr().out
    assert f"left out, not in the catalogue: {10**8}" in out
    printed = [int(line.split()[1]) for line in out.splitlines()[2:]]
    assert printed == _ids(body["items"])


def test_similar_movies_and_title_search(client, recommender):
    run = recommender.run
    movie_id = int(run.data.movies["movie_id"][5])
    body = client.get("/similar", params={"movie": movie_id, "k": 4}).json()
    assert body["movie"]["movieId"] == movie_id and len(body["items"]) == 4 and movie_id not in _ids(body["items"])
    assert all(-1.0 - 1e-5 <= i["score"] <= 1.0 + 1e-5 for i in body["items"])  # cosines
    title = run.data.titles[5]
    found = client.get("/movies", params={"q": title.upper(), "limit": 5}).json()
    assert found["items"][0]["movieId"] == movie_id and found["items"][0]["ratings"] == int(run.data.movies["train_count"][5])
    assert client.get("/movies", params={"q": "no such title anywhere"}).json()["items"] == []


def test_posters_docs_schema_and_page_are_served_without_outside_assets(client, recommender):
    movie_id = int(recommender.run.data.movies["movie_id"][0])
    poster = client.get(f"/posters/{movie_id}")
    assert poster.status_code == 200 and poster.content[:4] == b"\x89PNG"
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/similar", "/movies", "/health"} <= schema["paths"].keys()
    assert {"get", "post"} <= schema["paths"]["/recommend"].keys()
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs and "cdn." not in docs and "fastapi.tiangolo.com" not in docs
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/").text
    assert "<script>" in page and "src=\"http" not in page and "href=\"http" not in page


BAD = [
    ("GET", "/recommend?user=999999&k=5", None, 404, "user 999999 is not in this run's data"),
    ("GET", "/recommend?user=1&k=0", None, 422, f"k must be a whole number from 1 to {K_MAX}; got '0'"),
    ("GET", "/recommend?user=1&k=-3", None, 422, "k must be a whole number from 1 to"),
    ("GET", f"/recommend?user=1&k={K_MAX + 1}", None, 422, "k must be a whole number from 1 to"),
    ("GET", "/recommend?user=1&k=ten", None, 422, "k must be a whole number from 1 to"),
    ("GET", "/recommend?k=3", None, 422, "/recommend needs user=<userId>"),
    ("GET", "/similar?movie=1&k=3", None, 404, "movie 1 is not in this model's catalogue"),
    ("GET", "/similar?movie=2&k=0", None, 422, "k must be a whole number"),
    ("GET", "/movies?q=", None, 422, "q must be 1 to"),
    ("GET", "/posters/abc", None, 422, "/posters/abc: the poster's movieId must be a whole number (a MovieLens id)"),
    ("POST", "/recommend", b'{"liked": [2, 3', 422, "the request body is not valid JSON"),
    ("POST", "/recommend", b"", 422, "the request has no JSON body"),
    ("POST", "/recommend", b'{"liked": [], "k": 5}', 422, "liked is empty"),
    ("POST", "/recommend", b'{"liked": [2], "k": 0}', 422, "k must be a whole number from 1 to"),
    ("POST", "/recommend", b'{"liked": [2], "k": 1000}', 422, "k must be a whole number from 1 to"),
    ("POST", "/recommend", b'{"liked": ["Toy Story"]}', 422, "liked[0] is 'Toy Story', not a movieId"),
    ("POST", "/recommend", b'{"liked": [1, 100000000]}', 404, "none of the liked movies (1, 100000000) is in this model's catalogue"),
    ("POST", "/recommend", b'{"liked": [2' + b", 2" * 40_000 + b"]}", 413, "the request body is over 65,536 bytes"),
]  # fmt: skip


def test_each_bad_input_gets_its_status_and_a_sentence_and_the_server_goes_on(client, recommender):
    user_id = int(recommender.run.data.users["user_id"][0])
    for method, path, body, status, sentence in BAD:
        reply = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == status, (method, path, reply.text)
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and sentence in detail, (method, path, detail)
        after = client.get("/recommend", params={"user": user_id, "k": 3})
        assert after.status_code == 200 and len(after.json()["items"]) == 3
    chunked = client.post("/recommend", content=iter([b'{"liked": [2'] + [b", 2" * 1000] * 40 + [b"]}"]),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert chunked.status_code == 413  # sent in chunks, without a length: counted as it arrives
    assert client.get("/health").status_code == 200


def test_the_dlrm_path_serves_users_and_visitors_and_similar_movies(runs):
    with ServerProcess(runs["ranking"], runs["tmp"] / "ranking-server.log") as server, httpx.Client(base_url=server.url, timeout=60) as c:
        health = c.get("/health").json()
        assert health["recommender"] == "DLRM, whole catalogue" and health["visitors"] is True
        recommender = open_recommender(runs["ranking"])
        user_id = int(recommender.run.data.users["user_id"][2])
        expected, _ = recommend(recommender, user_id, 5)
        assert _ids(c.get("/recommend", params={"user": user_id, "k": 5}).json()["items"]) == [r.movie_id for r in expected]
        liked = [int(m) for m in recommender.run.data.movies["movie_id"][[1, 4, 9]]]
        body = c.post("/recommend", json={"liked": liked, "k": 5}).json()
        assert _ids(body["items"]) == [r.movie_id for r in recommend_liked(recommender, liked, 5).items]
        assert len(c.get("/similar", params={"movie": liked[0], "k": 3}).json()["items"]) == 3


def test_two_stages_describe_a_visitor_to_both_models(runs):
    two_stages = open_recommender(runs["retrieval"], runs["ranking"])
    liked = [int(m) for m in two_stages.run.data.movies["movie_id"][[1, 4, 9]]]
    found = recommend_liked(two_stages, liked, 5)
    assert len(found.items) == 5 and not set(liked) & {r.movie_id for r in found.items}
    assert [r.score for r in found.items] == sorted((r.score for r in found.items), reverse=True)


def test_a_run_that_needs_a_user_id_refuses_visitors_with_422_and_says_so_in_health(runs, monkeypatch):
    from fastapi.testclient import TestClient

    recommender = open_recommender(runs["ranking"])
    with_user_ids = BatchBuilder(recommender.run.data, dataclasses.replace(recommender.run.model.config.model, user_id=True))
    monkeypatch.setattr(recommender.run.builder, "visitor_problem", with_user_ids.visitor_problem)  # as such a run's
    with TestClient(create_app(recommender)) as c:
        health = c.get("/health").json()
        assert health["visitors"] is False and "model.user_id=true" in health["visitor_problem"]
        reply = c.post("/recommend", json={"liked": [int(recommender.run.data.movies["movie_id"][0])]})
        assert reply.status_code == 422 and "this run cannot recommend for a visitor" in reply.json()["detail"]
        assert c.get("/recommend", params={"user": int(recommender.run.data.users["user_id"][0])}).status_code == 200


def test_the_page_in_headless_chromium_finds_a_title_adds_it_and_shows_recommendations(served, recommender):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is installed by setup.sh (the dev extra)")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("no Chromium here (setup.sh installs Debian's where it can)")
    title = recommender.run.data.titles[12]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(served.url + "/")
            page.wait_for_function("document.getElementById('health').textContent.includes('two-tower')")
            page.locator("#search").press_sequentially(title.lower(), delay=20)
            result = page.locator("#results li.result", has_text=title).first
            result.locator("button.add").click()
            page.wait_for_function("document.querySelectorAll('#recs .card').length >= 5", timeout=60_000)
            assert page.locator("#liked li").first.text_content().startswith(title)
            cards = page.locator("#recs .card")
            assert cards.count() >= 5
            assert all(cards.nth(i).locator(".meta").text_content() for i in range(cards.count()))  # year and genres
            page.wait_for_function("[...document.querySelectorAll('#recs .card img')].every(i => i.complete)")
            loaded = page.evaluate("[...document.querySelectorAll('#recs .card img')].filter(i => i.naturalWidth > 0).length")
            assert loaded == cards.count()  # every poster drawn, from this server
            shown = page.evaluate("[...document.querySelectorAll('#recs .card .title')].map(e => e.textContent)")
            assert title not in shown
        finally:
            browser.close()


def test_a_port_another_program_holds_is_refused_before_the_model_loads(runs, served, monkeypatch, capsys):
    def never(*args, **kwargs):  # the socket is bound first: the run is never opened
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr("mmdlrm.serving.server.open_recommender", never)
    port = served.port
    assert main(["serve", str(runs["retrieval"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"mmdlrm serve cannot listen on 127.0.0.1:{port} (Address already in use): another program listens there; " \
           f"pass --port with a free one (e.g. --port {port + 1})" in err, err
    assert httpx.get(f"{served.url}/health", timeout=30).status_code == 200
