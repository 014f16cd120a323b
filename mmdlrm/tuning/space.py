"""What a study searches: config keys and their ranges, the pruner and the sampler; read from a space file or
chosen per task (`default_space`).

A space file (`mmdlrm tune --space SPACE.yaml`) names dotted config keys, each with a range or a list of choices;
the field's type says whether a range is of whole numbers or not. `zero: true` adds 0 (off) to a log range: the
decade below `low` is searched too and means 0, so that "off" is one more value on the scale, not a second key:

    params:
      model.embedding_dim: {choices: [16, 32, 64]}
      train.dense_lr: {low: 1.0e-4, high: 1.0e-2, log: true}
      model.embedding_l2: {low: 1.0e-5, high: 0.1, log: true, zero: true}
      model.history_length: {low: 25, high: 200, step: 25}
      model.over_arch: {choices: [[64, 32], [128, 64]]}
    pruner: {startup_trials: 3, warmup_epochs: 1}
    sampler: {startup_trials: 5}

`pruner.startup_trials`: trials that finish before any is pruned; `pruner.warmup_epochs`: epochs of each trial
never pruned (a trial is stopped after an epoch whose best validation value so far is worse than the median of
the finished trials' at that epoch: Optuna's MedianPruner). `sampler.startup_trials`: trials drawn at random
before TPE models the results. Without `--space`, `default_space` picks the knobs that matter for the task.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml

from mmdlrm.config import ConfigError, RunConfig, dotted_value, field_type, read_yaml

SCALARS = (bool, int, float, str, type(None))
"""What Optuna stores as a categorical choice; any other choice (a list) is stored as its YAML text."""


@dataclass(frozen=True)
class Param:
    """One searched config key: a range (`low`..`high`, on a log scale with `log`, in steps of `step`, and 0 below
    `low` with `zero`) or `choices`."""

    key: str
    kind: Literal["int", "float", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    zero: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        """This key's config value for `trial`: from the one it has already, else a new draw (Optuna keeps it)."""
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            low = self.low / 10 if self.zero else self.low
            return self.value(trial.suggest_float(self.key, low, self.high, step=self.step, log=self.log))
        return self.value(trial.suggest_categorical(self.key, [as_choice(c) for c in self.choices]))

    def value(self, stored: Any) -> Any:
        """The config value of what Optuna stores for this key (a list's YAML text, a draw below a `zero` range)."""
        if self.kind == "choice":
            return from_choice(stored)
        if self.zero and stored < self.low:
            return 0.0
        return stored

    def nearest(self, value: Any) -> Any:
        """What Optuna stores for the value of this range or list closest to `value` (the base config's, for the
        first trial)."""
        if self.zero and value == 0:
            return self.low / 10
        if self.kind == "choice":
            if value in self.choices:
                return value
            numbers = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if isinstance(value, (int, float)) and numbers:
                return min(numbers, key=lambda c: abs(c - value))
            return self.choices[0]
        clipped = min(max(value, self.low), self.high)
        if self.step:
            clipped = self.low + round((clipped - self.low) / self.step) * self.step
        return int(clipped) if self.kind == "int" else float(clipped)

    def describe(self) -> str:
        """How the README and the log show it: `[8, 16, 32]` or `1e-04..0.01 (log)`."""
        if self.kind == "choice":
            return "{" + ", ".join(yaml.safe_dump(c, default_flow_style=True).strip().removesuffix("...").strip()
                                   for c in self.choices) + "}"  # fmt: skip
        scale = " (log)" if self.log else f" step {self.step:g}" if self.step else ""
        return f"{'0 or ' if self.zero else ''}{self.low:g}..{self.high:g}{scale}"


def as_choice(value: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, lists as their YAML text."""
    return value if isinstance(value, SCALARS) else yaml.safe_dump(value, default_flow_style=True).strip()


def from_choice(stored: Any) -> Any:
    """A stored choice back as the config value (the inverse of `as_choice`)."""
    return yaml.safe_load(stored) if isinstance(stored, str) and stored.startswith("[") else stored


@dataclass(frozen=True)
class PrunerSettings:
    startup_trials: int = 3
    """Finished trials before any trial is pruned (the median needs a few curves)."""
    warmup_epochs: int = 1
    """Epochs of each trial never pruned."""


@dataclass(frozen=True)
class SamplerSettings:
    startup_trials: int = 5
    """Trials that finish before TPE models the results (the first, the base config's, among them); until then
    values are drawn at random. Few, because a trial costs minutes: TPE learns from the pruned ones too."""


@dataclass(frozen=True)
class Space:
    """The searched keys, the pruner and the sampler settings of one study."""

    params: tuple[Param, ...]
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Every key's config value for `trial` (those it holds already kept: a resumed trial keeps its values)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def values(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The config values of a trial's stored parameters (`FrozenTrial.params`)."""
        by_key = {p.key: p for p in self.params}
        return {k: by_key[k].value(v) if k in by_key else v for k, v in stored.items()}

    def base_values(self, base: RunConfig) -> tuple[dict[str, Any], list[str]]:
        """The base config's value of each key, moved into the space where it lies outside; and a note per move.

        These are the first trial's values, so that a study starts from the config it was given.
        """
        stored, notes = {}, []
        for p in self.params:
            value = dotted_value(base, p.key)
            stored[p.key] = p.nearest(value)
            if p.value(stored[p.key]) != value:
                notes.append(f"{p.key}: {value!r} is outside {p.describe()}; the first trial uses {p.value(stored[p.key])!r}")
        return {k: as_choice(v) for k, v in stored.items()}, notes

    def to_dict(self) -> dict:
        """The space as a space file holds it (written into the study's folder and its manifest)."""
        params = {}
        for p in self.params:
            spec: dict[str, Any] = {"choices": list(p.choices)} if p.kind == "choice" else {"low": p.low, "high": p.high}
            if p.log:
                spec["log"] = True
            if p.zero:
                spec["zero"] = True
            if p.step:
                spec["step"] = p.step
            params[p.key] = spec
        return {"params": params, "pruner": asdict(self.pruner), "sampler": asdict(self.sampler)}


def read_space(path: str | Path) -> Space:
    """The space in a space file (see the module docstring).

    Raises:
        ConfigError: naming the file and the key: an unknown key, a range on a field that is not a number, a range
            whose ends are missing or reversed, an empty list of choices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"space file {path} not found")
    return space_from_dict(read_yaml(path), str(path))


def space_from_dict(tree: Any, source: str) -> Space:
    """A Space from its plain form (`Space.to_dict`, or a space file's contents)."""
    if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict) or not tree["params"]:
        raise ConfigError(f"{source}: a space file maps `params:` to dotted config keys, each with a range or choices "
                          "(model.embedding_dim: {choices: [16, 32]}, train.dense_lr: {low: 1.0e-4, high: 1.0e-2, log: true})")
    unknown = set(tree) - {"params", "pruner", "sampler"}
    if unknown:
        raise ConfigError(f"{source}: unknown section {sorted(unknown)[0]}; a space file has params, pruner and sampler")
    params = tuple(_param(str(key), spec, source) for key, spec in tree["params"].items())
    pruner = _settings(PrunerSettings, tree.get("pruner"), f"{source}: pruner")
    sampler = _settings(SamplerSettings, tree.get("sampler"), f"{source}: sampler")
    return Space(params, pruner, sampler)


def _param(key: str, spec: Any, source: str) -> Param:
    hint = field_type(key, source)
    where = f"{source}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: give {{low: ..., high: ...}} or {{choices: [...]}}, not {spec!r}")
    extra = set(spec) - {"low", "high", "log", "step", "choices", "zero"}
    if extra:
        raise ConfigError(f"{where}: unknown setting {sorted(extra)[0]}; use low, high, log, zero, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or set(spec) != {"choices"}:
            raise ConfigError(f"{where}: choices is a non-empty list, given alone (no low / high)")
        return Param(key, "choice", choices=tuple(choices))
    number = _number_type(hint)
    if number is None:
        raise ConfigError(f"{where}: the field is {getattr(hint, '__name__', hint)}, not a number; give choices: [...]")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high = (_as_number(spec[end], f"{where}.{end}") for end in ("low", "high"))
    log, step, zero = bool(spec.get("log", False)), spec.get("step"), bool(spec.get("zero", False))
    if not low < high:
        raise ConfigError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: a log range needs low > 0 and no step")
    if number is int and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: the field is a whole number; give whole low and high")
    if zero and (number is int or not log):
        raise ConfigError(f"{where}: zero: true goes with a log range of a decimal field (0 joins its bottom end)")
    return Param(key, "int" if number is int else "float", float(low), float(high), log,
                 None if step is None else _as_number(step, f"{where}.step"), zero=zero)  # fmt: skip


def _number_type(hint: Any) -> type | None:
    """int or float for a numeric field (also `float | None`), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        numbers = [a for a in typing.get_args(hint) if a in (int, float)]
        return numbers[0] if numbers else None
    return hint if hint in (int, float) else None


def _as_number(value: Any, where: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a number")
    return float(value)


def _settings(cls: type, tree: Any, where: str) -> Any:
    if tree is None:
        return cls()
    if not isinstance(tree, dict) or set(tree) - set(cls.__dataclass_fields__):
        raise ConfigError(f"{where}: give a mapping of {', '.join(cls.__dataclass_fields__)}")
    for name, value in tree.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{name}: a whole number >= 0, got {value!r}")
    return cls(**tree)


def default_space(base: RunConfig) -> Space:
    """The knobs worth searching for the task of `base` (README "Tuning" lists them).

    Every task: embedding width, dense and sparse learning rates, embedding L2, dense weight decay, batch size,
    history length; the DLRM tasks also over-arch dropout; `ranking` its negatives per positive; `retrieval` the
    tower width, temperature, negatives and history dropout; a split with new movies (`cold_movies`) movie-id dropout.
    """
    task, model = base.model.task, base.model
    history = [25, 50, 100, 200] if not model.user_id or task == "retrieval" else [0, 25, 50, 100, 200]
    params = [
        Param("model.embedding_dim", "choice", choices=(8, 16, 32, 64) if task in ("rating", "binary") else (16, 32, 64, 128)),
        Param("model.history_length", "choice", choices=tuple(history)),
        Param("train.dense_lr", "float", 1e-4, 1e-2, log=True),
        Param("sharding.sparse_lr", "float", 0.005, 0.3, log=True),
        Param("model.embedding_l2", "float", 1e-5, 0.1, log=True, zero=True),
        Param("train.dense_weight_decay", "float", 1e-5, 0.1, log=True, zero=True),
    ]
    if task == "retrieval":
        params += [
            Param("train.batch_size", "choice", choices=(256, 512, 1024, 2048, 4096)),
            Param("model.retrieval.dim", "choice", choices=(32, 64, 128)),
            Param("model.retrieval.temperature", "float", 0.02, 0.5, log=True),
            Param("model.retrieval.negatives", "choice", choices=("auto", "sampled", "in_batch")),
            Param("model.retrieval.history_dropout", "float", 0.0, 0.5),
        ]
    else:
        params.append(Param("model.dropout", "float", 0.0, 0.5))
        batches = (128, 256, 512, 1024, 2048, 4096) if task in ("rating", "binary") else (128, 256, 512, 1024)
        params.append(Param("train.batch_size", "choice", choices=batches))
    if task == "ranking":
        # Each positive costs 1 + negatives rows a step: beyond 128 a trial takes hours on a small machine.
        params.append(Param("model.ranking.negatives", "choice", choices=(16, 32, 64, 128)))
    if base.data.split == "cold_movies":
        params.append(Param("model.movie_id_dropout", "float", 0.0, 0.8))
    return Space(tuple(params))
