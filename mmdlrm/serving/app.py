"""The HTTP API and the page over one recommender: thin routes over `mmdlrm.inspection.recommend` (issue 22).

Routes (JSON; the schema at /openapi.json, its docs at /docs, served offline from the swagger-ui-bundle package):
`GET /recommend?user=ID&k=10`, `POST /recommend {"liked": [movieId, ...], "k": 10}`, `GET /similar?movie=ID&k=10`,
`GET /movies?q=TEXT&limit=20`, `GET /health`, `GET /posters/{movieId}` and the page at `/`. Every list comes from
the function the CLI prints (`recommend`, `recommend_liked`, `similar_movies`), so the two never disagree.

Errors answer `{"detail": "<a sentence>"}`: 404 for an unknown user or movie, 422 for a bad `k` or `limit`,
malformed JSON, an empty `liked` list or a run that cannot describe a visitor, 413 for a body over the limit, 500
(logged) for anything else; none of them stops the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from mmdlrm.config import ConfigError
from mmdlrm.inspection.recommend import (
    Recommendation,
    TitleSearch,
    UnknownIdError,
    listing,
    movie_index,
    recommend,
    recommend_liked,
    similar_movies,
)
from mmdlrm.retrieval.recommenders import Recommender

log = logging.getLogger("mmdlrm")

K_MAX = 100
"""The most movies one list may ask for (`k`)."""
LIKED_MAX = 500
"""The most liked movies one visitor request may name."""
SEARCH_MAX = 100
"""The most titles one search returns (`limit`)."""
QUERY_MAX = 200
"""The longest title search, in characters."""
BODY_MAX = 64 * 1024
"""The largest request body, in bytes (LIKED_MAX ids fit many times over)."""
EXAMPLE_BODY = '{"liked": [1, 50, 260], "k": 10}'
UNKNOWN_USER_HINT = "add popular_if_unknown=true to the query for the most-rated movies"


class Movie(BaseModel):
    movieId: int
    title: str
    year: int | None
    genres: list[str]
    poster: str | None = Field(description="path of the movie's poster image on this server, where the run has one")


class ScoredMovie(Movie):
    score: float = Field(description="the model's score (a count of training ratings in a popularity fallback)")


class FoundMovie(Movie):
    ratings: int = Field(description="the movie's number of ratings in the training split")


class UserList(BaseModel):
    user: int
    fallback: bool = Field(description="the user is unknown: the most-rated movies instead (popular_if_unknown)")
    recommender: str
    items: list[ScoredMovie]


class VisitorList(BaseModel):
    liked: list[int] = Field(description="the liked movieIds the list was made from")
    unknown: list[int] = Field(description="liked movieIds that are not in the catalogue, left out")
    recommender: str
    items: list[ScoredMovie]


class SimilarList(BaseModel):
    movie: Movie
    items: list[ScoredMovie]


class SearchResult(BaseModel):
    query: str
    items: list[FoundMovie]


class Health(BaseModel):
    status: str
    run: str
    task: str
    model: str
    recommender: str
    ranker: str | None
    movies: int
    users: int
    visitors: bool = Field(description="whether POST /recommend can describe a visitor by the movies they like")
    visitor_problem: str | None = Field(description="why not, where it cannot")
    posters: int


class LikedRequest(BaseModel):
    """A visitor without an account, described by the movies they like."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"liked": [1, 50, 260], "k": 10}]})
    liked: list[StrictInt] = Field(min_length=1, max_length=LIKED_MAX, description="MovieLens movieIds the visitor likes")
    k: StrictInt = Field(10, ge=1, le=K_MAX, description="how many movies")


class Problem(BaseModel):
    detail: str


K = Annotated[int, Query(ge=1, le=K_MAX, description=f"how many movies (1..{K_MAX})")]
ERRORS = {404: {"model": Problem}, 422: {"model": Problem}}


@dataclass
class Service:
    """What the routes read: the recommender (loaded once), title search, the posters by movieId."""

    recommender: Recommender
    titles: TitleSearch
    posters: dict[int, Path]

    def movie(self, item: Recommendation) -> dict:
        return {"movieId": item.movie_id, "title": item.title, "year": item.year, "genres": item.genres,
                "poster": f"/posters/{item.movie_id}" if item.movie_id in self.posters else None}  # fmt: skip

    def scored(self, items: list[Recommendation]) -> list[dict]:
        return [self.movie(i) | {"score": i.score} for i in items]

    def health(self) -> dict:
        run = self.recommender.run
        ranker = getattr(self.recommender, "ranker", None)
        problem = self.recommender.visitor_problem()
        return {"status": "ok", "run": str(run.folder), "task": run.model.config.model.task,
                "model": run.model.objective.model_label, "recommender": self.recommender.name,
                "ranker": str(ranker.folder) if ranker is not None else None, "movies": run.data.num_movies,
                "users": run.data.num_users, "visitors": problem is None, "visitor_problem": problem,
                "posters": len(self.posters)}  # fmt: skip


def create_app(recommender: Recommender, posters: dict[int, Path] | None = None) -> FastAPI:
    """The FastAPI app serving `recommender` (and the poster files `posters`, by movieId)."""
    service = Service(recommender, TitleSearch(recommender.run), posters or {})
    app = FastAPI(title="mmdlrm", version="1", docs_url=None, redoc_url=None,
                  description=f"Movie recommendations from the run {recommender.run.folder} ({recommender.name}).")  # fmt: skip
    app.add_middleware(BodyLimit, limit=BODY_MAX)
    _errors(app)
    page = resources.files("mmdlrm.serving").joinpath("page.html").read_text(encoding="utf-8")
    assets = _swagger_assets()
    if assets is not None:
        app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/recommend", response_model=UserList, responses=ERRORS, summary="a user's top k unseen movies")
    def recommend_user(user: Annotated[int, Query(description="MovieLens userId")], k: K = 10,
                       popular_if_unknown: bool = False) -> dict:  # fmt: skip
        """The user's k best movies, leaving out every movie they rated."""
        items, fallback = recommend(service.recommender, user, k, popular_if_unknown, UNKNOWN_USER_HINT)
        return {"user": user, "fallback": fallback, "recommender": service.recommender.name, "items": service.scored(items)}

    @app.post("/recommend", response_model=VisitorList, responses=ERRORS, summary="a visitor's top k, from liked movies")
    def recommend_visitor(request: LikedRequest) -> dict:
        """The k best movies for a visitor without an account, described by the movies they like (the model's
        history feature); the liked movies are left out, and those not in the catalogue are named in `unknown`."""
        found = recommend_liked(service.recommender, request.liked, request.k)
        return {"liked": found.used, "unknown": found.unknown, "recommender": service.recommender.name,
                "items": service.scored(found.items)}  # fmt: skip

    @app.get("/similar", response_model=SimilarList, responses=ERRORS, summary="the movies nearest to a movie")
    def similar(movie: Annotated[int, Query(description="MovieLens movieId")], k: K = 10) -> dict:
        """The k movies whose vectors are nearest (cosine) to the movie's."""
        items = similar_movies(service.recommender, movie, k)  # raises UnknownIdError for an unknown movie
        run = service.recommender.run
        return {"movie": service.movie(listing(run, movie_index(run, movie), 0.0)), "items": service.scored(items)}

    @app.get("/movies", response_model=SearchResult, responses=ERRORS, summary="title search")
    def movies(q: Annotated[str, Query(min_length=1, max_length=QUERY_MAX, description="words of the title")],
               limit: Annotated[int, Query(ge=1, le=SEARCH_MAX)] = 20) -> dict:  # fmt: skip
        """Movies whose titles hold every word of `q` (case and accents ignored): titles starting with it first,
        then the most-rated."""
        found = service.titles.search(q, limit)
        return {"query": q, "items": [service.movie(m) | {"ratings": int(m.score)} for m in found]}

    @app.get("/health", response_model=Health, summary="the run, model and catalogue served")
    def health() -> dict:
        return service.health()

    @app.get("/posters/{movieId}", responses={404: {"model": Problem}}, summary="a movie's poster image")
    def poster(movieId: int) -> FileResponse:  # noqa: N803 (the name a bad value's error shows: the API's own)
        path = service.posters.get(movieId)
        if path is None or not path.is_file():
            raise UnknownIdError(f"movie {movieId} has no poster in this run's release")
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse("<p>The API docs need the swagger-ui-bundle-v2 package (./setup.sh installs it); "
                                "the schema is at <a href=/openapi.json>/openapi.json</a>.</p>")  # fmt: skip
        return get_swagger_ui_html(openapi_url="/openapi.json", title="mmdlrm API", swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css", swagger_favicon_url="/docs/assets/favicon-32x32.png")  # fmt: skip

    return app


def _errors(app: FastAPI) -> None:
    """Every error as {"detail": "<a sentence>"} with its status."""

    @app.exception_handler(UnknownIdError)
    async def unknown(request: Request, err: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(ConfigError)
    async def refused(request: Request, err: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_sentence(err.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the server failed on this request ({type(err).__name__}); it goes on serving"},
                            status_code=500)  # fmt: skip


def validation_sentence(errors: list[dict]) -> str:
    """FastAPI's validation errors as one sentence a person can act on."""
    return "; ".join(dict.fromkeys(_sentence(e) for e in errors))


def _sentence(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    kind, given = error.get("type", ""), error.get("input")
    where, field = (loc[0] if loc else ""), (loc[1] if len(loc) > 1 else "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({reason}); send e.g. {EXAMPLE_BODY}"
    if where == "body" and not field:
        if kind == "missing":
            return f"the request has no JSON body; send e.g. {EXAMPLE_BODY}"
        return f"the request body must be a JSON object such as {EXAMPLE_BODY}"
    if kind == "missing":
        return f"{field} is missing: {'/recommend needs user=<userId>' if field == 'user' else f'give {field}'}" if where == "query" \
            else f"{field} is missing from the body; send e.g. {EXAMPLE_BODY}"
    if field == "k":
        return f"k must be a whole number from 1 to {K_MAX}; got {given!r}"
    if field == "limit":
        return f"limit must be a whole number from 1 to {SEARCH_MAX}; got {given!r}"
    if field == "liked":
        if kind == "too_short":
            return f"liked is empty: name at least one movieId the visitor likes, e.g. {EXAMPLE_BODY}"
        if kind == "too_long":
            return f"liked names {len(given)} movies; at most {LIKED_MAX} are read"
        if len(loc) > 2:
            return f"liked[{loc[2]}] is {given!r}, not a movieId (a whole number)"
        return f"liked must be a list of movieIds, e.g. {EXAMPLE_BODY}; got {given!r}"
    if kind == "extra_forbidden":
        return f"unknown field {field!r} in the body; it takes liked and k, e.g. {EXAMPLE_BODY}"
    if field == "q":
        return f"q must be 1 to {QUERY_MAX} characters of a title"
    if field in ("user", "movie", "movieId"):
        name = f"/posters/{given}: the poster's movieId" if where == "path" else field
        return f"{name} must be a whole number (a MovieLens id); got {given!r}"
    return f"{where} {field}: {error.get('msg', 'invalid')}; got {given!r}"


def _swagger_assets() -> Path | None:
    """The folder of Swagger UI's script and style from the swagger-ui-bundle-v2 package, or None without it."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(swagger_ui_path)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before the app reads it (by its
    Content-Length, or counted as it arrives when it is sent in chunks)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._too_large(send)
        if length is None and headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, more = bytearray(), True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.limit:
                    return await self._too_large(send)
            receive = _replay(bytes(body))
        await self.app(scope, receive, send)

    async def _too_large(self, send) -> None:
        response = JSONResponse({"detail": f"the request body is over {self.limit:,} bytes; send at most "
                                           f"{LIKED_MAX} liked movieIds"}, status_code=413)  # fmt: skip
        await response({"type": "http"}, _nothing, send)


def _replay(body: bytes):
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _nothing() -> dict:
    return {"type": "http.disconnect"}
