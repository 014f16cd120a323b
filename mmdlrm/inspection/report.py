"""One self-contained HTML page for a run: config, metrics against baselines, curves, predictions, genre
embeddings, ranking and sample recommendations (with their posters where the run has them). Images are embedded as data URIs, so the file opens in any
browser with no server and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import jinja2
import yaml

from mmdlrm.inspection.commands import planted_truth
from mmdlrm.inspection.embeddings import genre_report, plot_genres
from mmdlrm.inspection.posters import poster_files, thumbnail_uri
from mmdlrm.inspection.recommend import recommend
from mmdlrm.inspection.run import Run, open_run
from mmdlrm.retrieval.recommenders import Recommender, recommender_for

TEMPLATE = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmdlrm run {{ name }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
 table { border-collapse: collapse; margin: 0.5em 0 1.5em; } td, th { border: 1px solid #ccc; padding: 3px 9px; }
 th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 img { max-width: 100%; border: 1px solid #eee; } .row { display: flex; gap: 1em; flex-wrap: wrap; }
 .row figure { flex: 1 1 480px; margin: 0; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
 img.poster { height: 72px; max-width: none; }
</style></head><body>
<h1>Run <code>{{ name }}</code></h1>
<p>{{ folder }} &middot; report written {{ written }} &middot; best epoch {{ best_epoch }} of {{ epochs }}</p>
{% for block in metric_blocks %}
<h2>Test results: {{ block.title }}</h2>
<table><tr><th>model</th>{% for n in block.names %}<th>{{ n | upper }}</th>{% endfor %}</tr>
{% for label, values in block.rows %}<tr><td>{{ label }}</td>{% for n in block.names %}<td class="num">{{ "%.4f" | format(values[n]) }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
<h2>Training</h2>
<div class="row">{% for title, uri in training_images %}<figure><img alt="{{ title }}" src="{{ uri }}"><figcaption>{{ title }}</figcaption></figure>{% endfor %}</div>
<h2>Genre embeddings</h2>
{% if planted is not none %}<p>Spearman correlation of learnt vs planted genre similarity: <b>{{ "%.3f" | format(planted) }}</b></p>{% endif %}
<div class="row">{% for title, uri in genre_images %}<figure><img alt="{{ title }}" src="{{ uri }}"><figcaption>{{ title }}</figcaption></figure>{% endfor %}</div>
<table><tr><th>genre</th><th>nearest genres (cosine)</th></tr>
{% for name, near in nearest %}<tr><td>{{ name }}</td><td>{{ near }}</td></tr>{% endfor %}</table>
{% if ranking %}
<h2>Ranking ({{ ranking.model.users }} test users, full ranking; <code>mmdlrm inspect ranking</code>)</h2>
<table><tr><th></th>{% for n in ranking_names %}<th>{{ n }}</th>{% endfor %}</tr>
{% for who, label in ranking_rows %}<tr><td>{{ label }}</td>{% for n in ranking_names %}<td class="num">{{ "%.4f" | format(ranking[who][n]) }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endif %}
<h2>Sample recommendations ({{ recommender }})</h2>
{% for user, items in recommendations %}
<h3>user {{ user }}</h3>
<table><tr><th>#</th>{% if thumbnails %}<th>poster</th>{% endif %}<th>movieId</th><th>title</th><th>genres</th><th>score</th></tr>
{% for r in items %}<tr><td>{{ loop.index }}</td>{% if thumbnails %}<td>{% if r.movie_id in thumbnails %}<img class="poster" alt="poster of {{ r.title }}" src="{{ thumbnails[r.movie_id] }}">{% endif %}</td>{% endif %}<td>{{ r.movie_id }}</td><td>{{ r.title }}</td><td>{{ r.genres | join(", ") }}</td><td class="num">{{ "%.3f" | format(r.score) }}</td></tr>{% endfor %}
</table>
{% endfor %}
<h2>Config</h2>
<pre>{{ config }}</pre>
</body></html>
""")


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(folder: str | Path, out: str | Path | None = None, sample_users: int = 3, ranker: str | Path | None = None) -> Path:
    """Write `<run>/report.html` (or `out`); genre plots are made if the run has none yet. The sample lists come
    from the run's recommender (its index for a retrieval run, re-ranked by the `ranker` run if given)."""
    run = open_run(folder)
    recommender = recommender_for(run, open_run(ranker) if ranker is not None else None)
    genres = genre_report(run.model, planted_truth(run))
    heatmap, projection = plot_genres(genres, run.folder / "plots")
    ranking_path = run.folder / "ranking.json"
    ranking = json.loads(ranking_path.read_text()) if ranking_path.is_file() else None
    samples = _samples(recommender, sample_users)
    page = TEMPLATE.render(
        name=run.model.config.name,
        folder=str(run.folder),
        written=datetime.datetime.now().isoformat(timespec="seconds"),
        best_epoch=run.results["best_epoch"],
        epochs=len(run.results["epochs"]),
        metric_blocks=run.model.objective.result_blocks(run.results["test"], run.results["baselines"]),
        training_images=[(t, data_uri(run.folder / "plots" / f)) for t, f in
                         (("Training loss and validation metric", "curves.png"), ("Predictions against true ratings", "predictions.png"))
                         if (run.folder / "plots" / f).is_file()],  # fmt: skip
        genre_images=[("Learnt genre similarity, clustered", data_uri(heatmap)), ("Genre projection (PCA)", data_uri(projection))],
        planted=genres.planted_correlation,
        nearest=[(n, ", ".join(f"{m} {s:.2f}" for m, s in genres.nearest(n))) for n in genres.names],
        ranking=ranking,
        ranking_rows=_ranking_rows(ranking or {}),
        ranking_names=[n for n in (ranking or {}).get("model", {}) if n != "users"],
        recommender=recommender.name,
        recommendations=samples,
        thumbnails=_thumbnails(run, [r.movie_id for _, items in samples for r in items]),
        config=yaml.safe_dump(_config(run), sort_keys=False),
    )
    out = Path(out) if out else run.folder / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def _ranking_rows(ranking: dict) -> list[tuple[str, str]]:
    """(key, label) of each model `inspect ranking` wrote into ranking.json, baselines first."""
    labels = {"popularity": "popularity", "ease": "EASE", "model": "DLRM"} | ranking.get("labels", {})
    return [(key, labels[key]) for key in ("popularity", "ease", "model", "ranker", "pipeline") if key in ranking]


def _samples(recommender: Recommender, count: int) -> list[tuple[int, list]]:
    users = recommender.run.data.users["user_id"]
    picks = users[:: max(1, len(users) // count)][:count]
    return [(int(u), recommend(recommender, int(u), k=10)[0]) for u in picks]


def _thumbnails(run: Run, movie_ids: list[int]) -> dict[int, str]:
    """movieId -> a small copy of its poster as a data URI, for those of `movie_ids` the run has a readable poster of."""
    posters = poster_files(run)
    found = {m: thumbnail_uri(posters[m]) for m in set(movie_ids) if m in posters}
    return {m: uri for m, uri in found.items() if uri is not None}


def _config(run: Run) -> dict:
    return yaml.safe_load((run.folder / "config.yaml").read_text())
