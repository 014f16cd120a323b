"""Command line: synth | prepare | features | train | sweep | tune | evaluate | plan | export | index | inspect |
recommend | serve | report.

Every knob is a config field: `key=value` overrides after the options (e.g. `train.batch_size=1024`,
`data.split=temporal`, `data.synthetic.num_ratings=25000000`); options only name files, runs and ids.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from mmdlrm.config import ConfigError, load_config

# The only place that reads argv.
log = logging.getLogger("mmdlrm")


def _command(parent, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose own --help opens with the sentence its parent's list shows."""
    return parent.add_parser(name, help=text, description=text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmdlrm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = _command(sub, "synth", "write a synthetic release in ml-25m CSV format (sized by data.synthetic.*)")
    synth.add_argument("out", type=Path, help="folder to write ratings.csv, movies.csv, links.csv, tags.csv, truth.npz")

    prepare = _command(sub, "prepare", "turn a MovieLens release folder into a prepared Parquet dataset (data.*)")
    prepare.add_argument("source", type=Path, help="release folder (ml-25m, ml-1m, ml-100k, ...)")
    prepare.add_argument("--out", type=Path, required=True, help="folder for the prepared dataset (new, or one prepare wrote)")

    train = _command(sub, "train", "train, validate, early-stop, test beside the baselines, write plots")
    sweep = _command(sub, "sweep", "train a grid of config overrides, choose on validation, tabulate")
    sweep.add_argument("--grid", type=Path, required=True, help="YAML: dotted config key -> list of values to try")
    sweep.add_argument("--name", help="the sweep's folder under output_dir (default: the grid file's name)")
    tune = _command(sub, "tune", "search config overrides on validation (Optuna, pruned per epoch), then train the "
                          "best once and test it")
    tune.add_argument("--trials", type=_positive, required=True, help="trials the study holds when done (a study run "
                      "again, or by several processes at once, goes on to this many)")
    tune.add_argument("--timeout", type=_minutes, metavar="MIN", help="start no new trial after this many minutes")
    tune.add_argument("--metric", help="the validation metric chosen on: the task's, val_rmse (rating), val_auc "
                      "(binary), val_ndcg@20 (ranking, retrieval); given, it is checked against the task")
    tune.add_argument("--space", type=Path, help="YAML: config keys and their ranges (default: the task's space, "
                      "README \"Tuning\")")
    tune.add_argument("--name", help="the study's folder under output_dir (default: the config's name + -tune)")
    evaluate = _command(sub, "evaluate", "test a trained run's best checkpoint beside the baselines")
    evaluate.add_argument("run", type=Path, help="run folder (holds config.yaml and checkpoints/best)")
    features = _command(sub, "features", "movie content vectors: `clip` encodes, `summaries` gathers texts, "
                              "`probe` measures what they say about ratings")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    clip = _command(features_sub, "clip", "encode each movie's poster and summary once into the feature store "
                                   "(features.posters, features.summaries, features.store)")
    probe = _command(features_sub, "probe", "content-only probe: how well ridge fits on genres and year, poster "
                                    "and text vectors predict held-out movies' ratings (no recommender involved)")
    probe.add_argument("--out", type=Path, help="JSON to write (default <output_dir>/probes/<name>-seed<data.seed>.json)")
    texts = _command(features_sub, "summaries", "write summaries.csv (a row per movie and source) from TMDB / MeLU / DBpedia texts")
    texts.add_argument("--links", type=Path, help="MovieLens links.csv, or the release folder holding it (maps "
                       "TMDB ids to movieIds; only the CSV releases have one)")
    texts.add_argument("--tmdb", type=Path, help="TMDB movies CSV with id, overview [, tagline, keywords] (joined through --links)")
    texts.add_argument("--melu", type=Path, help="MeLU movies_extrainfos.dat (ml-1m plots and credits, keyed by movieId)")
    texts.add_argument("--dbpedia", type=Path, help="JSON {movieId: abstract}")
    texts.add_argument("--out", type=Path, required=True, help="summaries CSV to write")

    inspect = _command(sub, "inspect", "what a run learnt: genres, movies, ranking quality")
    inspect_sub = inspect.add_subparsers(dest="inspect_command", required=True)
    genres = _command(inspect_sub, "genres", "genre similarity heatmap, projection, nearest genres")
    movies = _command(inspect_sub, "movies", "nearest movies to one movie, by learnt embedding")
    movies.add_argument("--movie", type=int, required=True, help="MovieLens movieId")
    movies.add_argument("-k", type=_positive, default=10, help="how many movies")
    ranking = _command(inspect_sub, "ranking", "Recall/NDCG/HitRate@10,20 on test users vs popularity and EASE")
    ranking.add_argument("--users", type=_positive, default=500, help="test users sampled (full ranking for each)")
    ranking.add_argument("--ranker", type=Path, help="for a retrieval run: a ranking or rating run that re-ranks its "
                         "candidates (adds the ranker alone and the two stages to the table)")
    for command in (genres, movies, ranking):
        command.add_argument("run", type=Path, help="run folder written by `mmdlrm train`")
    recommend = _command(sub, "recommend", "a user's top-k unseen movies, or a movie's nearest movies")
    recommend.add_argument("run", type=Path, help="run folder written by `mmdlrm train`")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="MovieLens userId")
    who.add_argument("--similar", type=int, metavar="MOVIE_ID", help="movies nearest to this movieId")
    who.add_argument("--liked", type=int, nargs="+", metavar="MOVIE_ID", help="a visitor without an account who likes "
                     "these movieIds (a run with model.history_length > 0 and model.user_id=false)")
    who.add_argument("--all-users", action="store_true", help="every user's top k into --out (Parquet: user, rank, "
                     "movieId, score); shared out over the processes under torchrun")
    recommend.add_argument("-k", type=_positive, default=10, help="how many movies")
    recommend.add_argument("--popular-if-unknown", action="store_true", help="most-rated movies for an unknown user")
    recommend.add_argument("--ranker", type=Path, help="for a retrieval run: a ranking or rating run (same prepared "
                           "data) that re-ranks the retrieved candidates (model.retrieval.candidates of them)")
    recommend.add_argument("--out", type=Path, help="with --all-users: the Parquet file to write")

    serve = _command(sub, "serve", "answer recommendations over HTTP (JSON API, docs at /docs) with a page at /")
    serve.add_argument("run", type=Path, help="run folder written by `mmdlrm train` (a retrieval run is served from its index)")
    serve.add_argument("--ranker", type=Path, help="for a retrieval run: a ranking or rating run that re-ranks its candidates")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000)")

    index = _command(sub, "index", "(re)build a retrieval run's FAISS index of movie vectors (<run>/index.faiss)")
    index.add_argument("run", type=Path, help="run folder of a model.task=retrieval run")

    report = _command(sub, "report", "one self-contained HTML page for a run (<run>/report.html)")
    report.add_argument("run", type=Path, help="run folder written by `mmdlrm train`")
    report.add_argument("--out", type=Path, help="HTML file to write (default <run>/report.html)")
    report.add_argument("--ranker", type=Path, help="for a retrieval run: the run that re-ranks its candidates in the sample lists")

    plan = _command(sub, "plan", "shard the run's tables over a described cluster with TorchRec's planner: "
                          "the plan, memory and time per rank (no GPU needed). Without --nodes, --gpus-per-node, --hbm-gib, --ddr-gib "
                    "or --device it plans this machine's training world; with any of them, a cluster whose other "
                    "settings take the defaults below")
    plan.add_argument("--nodes", type=_positive, help="nodes of the described cluster (default 1)")
    plan.add_argument("--gpus-per-node", type=_positive, help="ranks per node: GPUs, or CPU processes (default 8)")
    plan.add_argument("--hbm-gib", type=float, help="GPU memory per rank in GiB (default 80)")
    plan.add_argument("--ddr-gib", type=float, help="host memory per rank in GiB (default TorchRec's, 128)")
    plan.add_argument("--device", choices=("cuda", "cpu"), help="the ranks' device (default cuda)")
    plan.add_argument("--users", type=_positive, help="plan for a release of this many users (default: the dataset's)")
    plan.add_argument("--movies", type=_positive, help="plan for a release of this many movies (default: the dataset's)")
    plan.add_argument("--out", type=Path, help="folder for plan.txt and plan.json (default <output_dir>/plans/<name>-"
                      "<nodes>x<ranks per node>-<device>)")  # fmt: skip

    export = _command(sub, "export", "write a run's best model as one plain file (<run>/model.pt)")
    export.add_argument("run", type=Path, help="run folder written by `mmdlrm train`")
    export.add_argument("--out", type=Path, help="file to write (default <run>/model.pt)")
    for command in (synth, prepare, train, sweep, tune, evaluate, clip, probe, plan):
        command.add_argument("--config", type=Path, help="YAML config (see configs/)")
        command.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    return parser


def _positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _minutes(text: str) -> float:
    """An argparse type: minutes > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 minutes, got {text}")
    return value


def _quiet_libraries(rank: int) -> None:
    """Our INFO lines on rank 0; libraries' warnings only (TorchRec and FBGEMM log a lot at INFO)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    # Deprecation notices from inside TorchRec / torch.distributed that we cannot act on.
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torchrec|torch|fbgemm_gpu)(\.|$)")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    logging.getLogger("torchrec.distributed.utils").setLevel(logging.ERROR)  # "caching params will be ignored"
    # TorchRec logs these through the root logger for every replicated (data_parallel) table: expected, not news.
    logging.getLogger().addFilter(lambda record: not str(record.msg).startswith("Sharding spec not found"))


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line and return 2 instead of a traceback."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list only the words before the first option: `prepare SRC --out DIR a=b`
    # leaves `a=b` over. Overrides may come anywhere after the command.
    if hasattr(args, "overrides"):
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # recommend's --all-users and --out go together: said here, before seconds of imports
    if args.command == "recommend" and args.all_users and args.out is None:
        print("mmdlrm recommend: error: --all-users writes a Parquet file: give --out, e.g. --out recs.parquet", file=sys.stderr)
        return 2
    if args.command == "recommend" and not args.all_users and args.out is not None:
        print("mmdlrm recommend: error: --out goes with --all-users (a single user's list is printed)", file=sys.stderr)
        return 2
    from mmdlrm.distributed.env import launch_rank

    _quiet_libraries(rank=launch_rank()[0])
    from mmdlrm.data.tables import DataError
    from mmdlrm.distributed.checkpoint import CheckpointError
    from mmdlrm.features.encoders import FeatureError
    from mmdlrm.folders import FolderBusy, NoSpace
    from mmdlrm.retrieval.index import IndexFileError
    from mmdlrm.run_folder import RunFinished

    try:
        return _run(args)
    except RunFinished as finished:
        log.info("%s", finished)
        return 0
    except KeyboardInterrupt:  # Ctrl-C: what was saved stays; say how to go on instead of a traceback
        again = {"train": " the same command continues from the run's last checkpoint (train.resume=false starts over)",
                 "sweep": " the same command continues: finished points are read back, the stopped one resumes",
                 "tune": " the same command continues the study: the trial in progress resumes from its last checkpoint",
                 "features": " the same command encodes only the movies the store does not hold yet"}  # fmt: skip
        print(f"mmdlrm {args.command}: interrupted;{again.get(args.command, ' nothing was left half-written')}",
              file=sys.stderr)  # fmt: skip
        return 130
    except (ConfigError, DataError, CheckpointError, FeatureError, FileNotFoundError, KeyError, IndexFileError, FolderBusy,
            NoSpace) as err:  # fmt: skip
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mmdlrm {args.command}: error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "features" and args.features_command == "summaries":
        return _summaries(args)
    if args.command == "report":
        from mmdlrm.inspection.report import write_report

        log.info("wrote %s", write_report(args.run, args.out, ranker=args.ranker))
        return 0
    if args.command == "recommend" and args.all_users:
        return _recommend_all(args)
    if args.command in ("inspect", "recommend"):
        print(_inspect(args))
        return 0
    if args.command == "serve":
        from mmdlrm.serving.server import serve

        serve(args.run, args.ranker, args.host, args.port)
        return 0
    if args.command == "index":
        from mmdlrm.inspection.run import open_run
        from mmdlrm.retrieval.recommenders import build_run_index, is_retrieval

        run = open_run(args.run)
        if not is_retrieval(run):
            raise ConfigError(f"{args.run} is a {run.model.config.model.task} run; only model.task=retrieval runs have a movie index")
        index = build_run_index(run)
        log.info("wrote %s/index.faiss: %d movies, %s", args.run, index.num_movies, index.manifest["kind"])
        return 0
    if args.command == "export":
        from mmdlrm.export import export_run

        log.info("exported %s", export_run(args.run, args.out))
        return 0
    if args.command == "evaluate":
        config_path = args.config or args.run / "config.yaml"
        if not Path(config_path).is_file():
            raise FileNotFoundError(f"{args.run}: no config.yaml; is this a run folder written by `mmdlrm train`?")
        cfg = load_config(config_path, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.command == "synth":
        from mmdlrm.data.synthetic import generate

        generate(cfg.data.synthetic, args.out)
        return 0
    if args.command == "features" and args.features_command == "probe":
        return _probe(cfg, args.out)
    if args.command == "features":
        return _features(cfg)
    if args.command == "plan":
        return _plan(args, cfg)
    if args.command == "prepare":
        from mmdlrm.data.prepare import prepare

        data = cfg.data
        prepare(args.source, args.out, data.split, data.val_fraction, data.test_fraction, data.seed, data.fold,
                on_bad_rows=data.on_bad_rows, progress=cfg.train.progress)  # fmt: skip
        return 0
    from mmdlrm import train as training
    from mmdlrm.distributed.env import init_distributed, teardown

    env = init_distributed(cfg.train.device)
    try:
        if args.command == "train":
            training.train(cfg, env)
        elif args.command == "sweep":
            from mmdlrm.sweep import sweep

            sweep(args.config, args.grid, args.overrides, env, args.name)
        elif args.command == "tune":
            from mmdlrm.tuning.tune import tune

            tune(args.config, args.overrides, args.trials, env, timeout_min=args.timeout, metric=args.metric,
                 space_path=args.space, name=args.name)  # fmt: skip
        else:
            training.evaluate_run(cfg, args.run, env)
    finally:
        teardown()
    return 0


def _inspect(args: argparse.Namespace) -> str:
    """The output of `inspect ...` or `recommend ...` (typed values go on, not the namespace)."""
    from mmdlrm.inspection import commands

    if args.command == "recommend":
        if args.similar is not None:
            return commands.inspect_movies(args.run, args.similar, args.k)
        if args.liked is not None:
            return commands.recommend_visitor(args.run, args.liked, args.k, args.ranker)
        return commands.recommend_user(args.run, args.user, args.k, args.popular_if_unknown, args.ranker)
    if args.inspect_command == "genres":
        return commands.inspect_genres(args.run)
    if args.inspect_command == "movies":
        return commands.inspect_movies(args.run, args.movie, args.k)
    return commands.inspect_ranking(args.run, args.users, args.ranker)


def _recommend_all(args: argparse.Namespace) -> int:
    """`recommend RUN --all-users -k K --out FILE`: every user's list, users shared out over the processes."""
    from mmdlrm.distributed.env import init_distributed, rank0_decides, teardown
    from mmdlrm.retrieval.all_users import recommend_all
    from mmdlrm.retrieval.recommenders import open_recommender

    env = init_distributed("cpu")
    try:
        rank0_decides(env, lambda: open_recommender(args.run, args.ranker) and None)  # export, index: once, on rank 0
        recommender = open_recommender(args.run, args.ranker)
        recommend_all(recommender, args.k, args.out, env)
    finally:
        teardown()
    return 0


def _plan(args: argparse.Namespace, cfg) -> int:
    """Plan the run's tables over the described cluster (this machine's training world if none is described)."""
    from mmdlrm import sizing
    from mmdlrm.distributed.planner import DEFAULT_RANKS_PER_NODE, described

    topology = (args.nodes, args.gpus_per_node, args.hbm_gib, args.ddr_gib, args.device)
    if all(value is None for value in topology):
        cluster = sizing.this_machine(cfg)
    else:
        cluster = described(args.nodes or 1, args.gpus_per_node or DEFAULT_RANKS_PER_NODE, args.device or "cuda",
                            args.hbm_gib, args.ddr_gib)  # fmt: skip
    planned = sizing.plan_cluster(cfg, cluster, sizing.release_sizes(cfg, args.users, args.movies))
    print(f"{planned.plan}\n\n{planned.estimate.summary()}")
    log.info("wrote plan.txt and plan.json to %s", sizing.write(planned, args.out or sizing.default_folder(cfg, cluster)))
    return 0


def _features(cfg) -> int:
    """Encode every movie of the configured dataset (prepared first if needed) into the feature store."""
    import json

    import pyarrow.parquet as pq

    from mmdlrm.data.prepare import ensure_prepared
    from mmdlrm.distributed.env import pick_device
    from mmdlrm.features.extract import ensure_features

    prepared = ensure_prepared(cfg.data)
    release = Path(json.loads((prepared / "manifest.json").read_text())["source"]["folder"])
    movie_ids = pq.read_table(prepared / "movies.parquet", columns=["movie_id"])["movie_id"].to_pylist()
    device = pick_device(cfg.features.device, 0)
    store = ensure_features(cfg.features, cfg.data, release, movie_ids, device, cfg.train.progress)
    log.info("feature store ready: %s", store)
    return 0


def _probe(cfg, out: Path | None) -> int:
    """Print the content-only probe's table for the configured data and split; write its JSON."""
    from mmdlrm.evaluation.probe import run_probe, table, write_probe

    result = run_probe(cfg, progress=cfg.train.progress)
    print(table(result))
    path = write_probe(result, out or Path(cfg.output_dir) / "probes" / f"{cfg.name}-seed{cfg.data.seed}.json")
    log.info("wrote %s", path)
    return 0


def _summaries(args: argparse.Namespace) -> int:
    """Gather each movie's texts from the given sources into one CSV: a row per movie and source (movieId, source,
    summary), so that training encodes each source's text on its own (`mmdlrm.features.extract`).

    Sources: TMDB overview and tagline + keywords (`tmdb_overview`, `tmdb_keywords`), MeLU plot and credits
    (`melu_plot`, `melu_credits`), DBpedia abstract (`dbpedia_abstract`). MeLU and DBpedia key their texts by movieId;
    TMDB by its own id, which only a MovieLens links.csv maps to movieIds (ml-100k, ml-1m and ml-10m have none). A
    source that cannot be joined is named with the reason and left out; the others are still written. With --links,
    movies that links.csv (the release's catalogue) lacks are left out, and counted.

    Raises:
        ConfigError: no source given, or none that can be joined.
    """
    from mmdlrm.data.movielens import read_links
    from mmdlrm.features import inputs

    sources: dict[str, dict[int, str]] = {}
    unjoined = {}
    if args.links is not None and not args.links.exists():
        raise ConfigError(f"--links {args.links}: no such file or folder; give a MovieLens links.csv or the release "
                          "folder holding it, or leave --links out")  # fmt: skip
    expected = {"--tmdb": (args.tmdb, "a TMDB movies CSV with id and overview columns"),
                "--melu": (args.melu, "MeLU's movies_extrainfos.dat"),
                "--dbpedia": (args.dbpedia, inputs.DBPEDIA_SHAPE)}  # fmt: skip
    for option, (path, what) in expected.items():
        if path is not None and not path.is_file():
            found = "a folder, not a file" if path.is_dir() else "no such file"
            raise ConfigError(f"{option} {path}: {found}; give {what}")
    links = args.links / "links.csv" if args.links is not None and args.links.is_dir() else args.links
    if args.tmdb is not None:
        if links is None:
            unjoined["tmdb"] = (f"{args.tmdb} keys movies by TMDB id, and no --links (links.csv: movieId, tmdbId) "
                                "maps them to movieIds; pass --links <CSV release>/links.csv")  # fmt: skip
        elif not links.is_file():
            unjoined["tmdb"] = (f"{links}: no such file, so no tmdbId -> movieId mapping for {args.tmdb} (ml-100k, "
                                "ml-1m and ml-10m have no links.csv); pass the links.csv of a CSV release")  # fmt: skip
        else:
            sources["tmdb_overview"] = inputs.tmdb_overviews(args.tmdb, links)
            sources["tmdb_keywords"] = inputs.tmdb_keywords(args.tmdb, links)
    if args.melu is not None:
        sources["melu_plot"] = inputs.melu_plots(args.melu)
        sources["melu_credits"] = inputs.melu_credits(args.melu)
    if args.dbpedia is not None:
        sources["dbpedia_abstract"] = inputs.dbpedia_abstracts(args.dbpedia)
    for name, reason in unjoined.items():
        log.warning("%s not joined: %s", name, reason)
    if not sources:
        found = "".join(f" ({name} not joined: {reason})" for name, reason in unjoined.items())
        raise ConfigError(f"no summary source can be used{found}; give --melu or --dbpedia (keyed by movieId), or "
                          "--tmdb with --links <release>/links.csv")  # fmt: skip
    dropped = 0
    if links is not None and links.is_file():
        catalogue = set(read_links(links)["movie_id"].to_pylist())
        dropped = len({m for texts in sources.values() for m in texts} - catalogue)
        sources = {name: {m: t for m, t in texts.items() if m in catalogue} for name, texts in sources.items()}
    given = ", ".join(sources)
    sources = {name: texts for name, texts in sources.items() if texts}
    if not sources:
        left_out = f" ({dropped:,} movies not in {links} left out)" if dropped else ""
        raise ConfigError(f"no movie has a text in {given}{left_out}; nothing was written to {args.out}")
    inputs.write_passages(sources, args.out)
    movies = len({m for texts in sources.values() for m in texts})
    counts = ", ".join(f"{name} {len(texts):,}" for name, texts in sources.items())
    notes = "".join([f"; not joined: {', '.join(unjoined)}" if unjoined else "",
                     f"; {dropped:,} movies not in {links} left out" if dropped else ""])  # fmt: skip
    log.info("wrote the texts of %d movies to %s (%s%s)", movies, args.out, counts, notes)
    return 0
