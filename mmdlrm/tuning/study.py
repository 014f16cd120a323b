"""A persistent study over config overrides: trials trained by the one training loop, chosen on validation alone.

    mmdlrm tune --config configs/ml-latest-small.yaml --trials 30 [--timeout 60] [--space SPACE.yaml] [key=value ...]

The study lives in `<output_dir>/<name>/` (name: the config's `name` + `-tune`, or `--name`):

    manifest.json   what made it: the base config (resolved), the overrides, the space, the metric, the prepared data
    study.db        Optuna's SQLite storage: every trial, its values, its per-epoch validation curve
    trials/tNNNN/   each trial's run folder (a validation-only run, eval.test=false; checkpoints removed once done)
    trials.md, trials.csv, plots/history.png, plots/importance.png, best.yaml, tune.json   (see tuning/outputs.py)
    final-tNNNN/    the best trial's config trained once more, now tested beside the baselines

Each trial is `train(cfg, env, on_epoch)` on the base config plus the trial's values, with `eval.test=false`: the
test split is never opened during the search. `on_epoch` reports each epoch's validation metric to the study and
stops the trial (Optuna's MedianPruner) when its curve is worse than the median of the finished trials'.

A trial is worked on by the process that holds its lock (`trials/.tNNNN.owner.lock`, an OS lock that ends with
its process). So a killed tune leaves its trial RUNNING and unlocked; the next `tune` on the folder adopts it and
resumes its run from the last checkpoint: the trial keeps its number and values, none is lost or counted twice.
Several processes may work on one study at once (each takes the trials it locks); `--trials N` is the study's
total (finished, failed and running trials), so the same command run again, or in parallel, goes on to N.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from mmdlrm import run_folder
from mmdlrm.config import ConfigError, RunConfig, check_run_name, load_config, to_dict
from mmdlrm.data.prepare import ensure_prepared, load_prepared
from mmdlrm.distributed.env import DistEnv
from mmdlrm.folders import FolderBusy, FolderLock
from mmdlrm.tasks import TASKS, Task, build_task
from mmdlrm.tuning.space import Space, default_space, read_space

log = logging.getLogger("mmdlrm")

STUDY_NAME = "mmdlrm"
MANIFEST = "manifest.json"
TRIAL_OVERRIDES = ("eval.test=false", "train.tensorboard=false")
"""What makes a trial a trial: validation only (the test split is never opened), no TensorBoard logs."""
UNCHANGED = ("name", "output_dir", "overwrite", *run_folder.RESUMABLE_CHANGES)
"""Base-config keys that may differ when a study is continued (they do not change what a trial computes)."""
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Study:
    """One open study: its folder, what it searches and how trials are configured."""

    folder: Path
    config: Path | None
    overrides: tuple[str, ...]
    base: RunConfig
    task: Task
    space: Space
    optuna: optuna.Study

    @property
    def metric(self) -> str:
        return f"val_{self.task.monitor}"

    def trial_config(self, number: int, values: dict[str, Any]) -> RunConfig:
        """The config trial `number` trains: the base, the trial's values, validation only, in trials/tNNNN."""
        return load_config(self.config, [*self.overrides, *overrides_of(values), *TRIAL_OVERRIDES,
                                         f"output_dir={self.folder / 'trials'}", f"name={trial_name(number)}"])  # fmt: skip


def trial_name(number: int) -> str:
    return f"t{number:04d}"


def overrides_of(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides of a trial's values, the values written as YAML (lists and nulls survive)."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def open_study(config: str | Path | None, overrides: list[str], metric: str | None, space_path: str | Path | None,
               name: str | None) -> Study:  # fmt: skip
    """The study folder for this base config, made or checked against its manifest, with its Optuna study open.

    Raises:
        ConfigError: as `tune`.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's outcome is logged here, once
    base = load_config(config, overrides)
    task = build_task(base.model, base.eval)
    _check_metric(metric, task)
    space = read_space(space_path) if space_path is not None else default_space(base)
    _check_space(space, config, overrides)
    folder_name = name or f"{base.name}-tune"
    check_run_name(folder_name, "--name" if name else "name")
    folder = Path(base.output_dir) / folder_name
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; give this study another --name")
    folder.mkdir(parents=True, exist_ok=True)
    # Preparation, not search: the data (and its seen-movie index) are made before any trial starts.
    prepared = ensure_prepared(base.data, progress=base.train.progress)
    load_prepared(prepared).seen(("train", "val"))
    manifest = _manifest(config, overrides, base, task, space, prepared)
    setup = FolderLock(folder, "mmdlrm tune, opening the study", "")
    setup.acquire(wait=True)  # processes joining at once: one makes the storage and the first trial, the others wait
    try:
        _check_manifest(folder, manifest)
        storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / 'study.db').resolve()}",
                                             engine_kwargs={"connect_args": {"timeout": 120}})  # fmt: skip
        direction = "maximize" if task.higher_is_better else "minimize"
        created = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True,
                                      pruner=_pruner(space))  # fmt: skip
        if not created.get_trials(deepcopy=False):
            first, notes = space.base_values(base)
            for note in notes:
                log.info("tune: %s", note)
            created.enqueue_trial(first, user_attrs={"origin": "the base config"})
        (folder / "space.yaml").write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    finally:
        setup.release()
    log.info("tune %s: %s by %s (%s), %d keys searched:\n%s", folder, task.name, manifest["metric"], direction, len(space.params),
             "\n".join(f"  {p.key}: {p.describe()}" for p in space.params))  # fmt: skip
    return Study(folder, Path(config) if config is not None else None, tuple(overrides), base, task, space, created)


def _check_metric(metric: str | None, task: Task) -> None:
    expected = f"val_{task.monitor}"
    if metric is None or metric == expected:
        return
    owners = [name for name, cls in TASKS.items() if f"val_{cls.monitor}" == metric]
    fix = f"add model.task={owners[0]} to study that task" if owners else "the tasks pick epochs by " + ", ".join(
        sorted({f"val_{cls.monitor}" for cls in TASKS.values()}))  # fmt: skip
    raise ConfigError(f"--metric {metric}: this config trains model.task={task.name}, which picks its best epoch by "
                      f"{expected} (the metric its trials are pruned and chosen on); {fix}, or leave --metric out")  # fmt: skip


def _check_space(space: Space, config: str | Path | None, overrides: list[str]) -> None:
    """Every end of every range and every choice makes a valid config with the base (checked before any trial)."""
    for param in space.params:
        ends = param.choices if param.kind == "choice" else (param.low, param.high, *([0.0] if param.zero else []))
        for value in ends:
            if param.kind == "int":
                value = int(value)
            try:
                load_config(config, [*overrides, *overrides_of({param.key: value})])
            except ConfigError as err:
                raise ConfigError(f"the space's {param.key}={value!r} makes no valid config with the base: {err}") from None


def _pruner(space: Space) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=space.pruner.startup_trials,
                                       n_warmup_steps=space.pruner.warmup_epochs)  # fmt: skip


def _manifest(config, overrides, base: RunConfig, task: Task, space: Space, prepared: Path) -> dict:
    data_manifest = (prepared / "manifest.json").read_bytes()
    tree = to_dict(base)
    for key in UNCHANGED:
        _drop(tree, key)
    return {
        "made_by": "mmdlrm tune", "config": str(config) if config is not None else None, "overrides": list(overrides),
        "base": tree, "task": task.name, "metric": f"val_{task.monitor}", "space": space.to_dict(),
        "prepared": {"folder": str(prepared.resolve()), "manifest_sha256": hashlib.sha256(data_manifest).hexdigest()},
        "versions": {"optuna": optuna.__version__},
    }  # fmt: skip


def _drop(tree: dict, key: str) -> None:
    *path, last = key.split(".")
    for part in path:
        tree = tree.get(part, {})
    tree.pop(last, None)


def _check_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest of a new study; refuse a folder whose study was made from other inputs (a stale study)."""
    path = folder / MANIFEST
    if not path.is_file():
        if (folder / "study.db").exists():
            raise ConfigError(f"{folder} holds a study.db but no {MANIFEST}; give this study another --name")
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        return
    saved = json.loads(path.read_text())
    changed = [k for k in ("task", "metric", "space", "prepared") if saved.get(k) != manifest[k]]
    changed += [f"base config {k}" for k in _differences(saved.get("base", {}), manifest["base"])]
    if changed:
        raise ConfigError(
            f"{folder} holds a study made from other inputs ({', '.join(changed[:5])}); its trials would not compare "
            "with this one's. Give this study another --name, or remove that folder to start it over"
        )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def work(study: Study, trials: int, env: DistEnv, deadline: float | None) -> None:
    """Take trials (orphans first, then new ones) until the study holds `trials` or the deadline passes.

    Interrupted (Ctrl-C, or any error), the trial in progress stays RUNNING, to be adopted and resumed.
    """
    while deadline is None or time.monotonic() < deadline:
        claimed = _adopt(study) or _new_trial(study, trials)
        if claimed is None:
            return
        number, lock = claimed
        try:
            _run_trial(study, number, env)
        except KeyboardInterrupt:
            log.info("tune %s: interrupted in trial %s; the same command resumes it from its last checkpoint",
                     study.folder, trial_name(number))  # fmt: skip
            raise
        finally:
            lock.release()
    log.info("tune %s: --timeout reached; no new trial is started", study.folder)


def _owner_lock(study: Study, number: int) -> FolderLock:
    return FolderLock(study.folder / "trials" / f"{trial_name(number)}.owner", "mmdlrm tune, running the trial", "")


def _claim(study: Study, number: int) -> FolderLock | None:
    """The trial's lock if this process can take it and the trial is still RUNNING (else None)."""
    lock = _owner_lock(study, number)
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except FolderBusy:
        return None
    if study.optuna.get_trials(deepcopy=False)[number].state != TrialState.RUNNING:
        lock.release()  # finished by the process that held it a moment ago
        return None
    return lock


def held_elsewhere(study: Study) -> list[int]:
    """The RUNNING trials another live process is working on (an orphan's lock is free: it is not among them)."""
    busy = []
    for trial in study.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock = _owner_lock(study, trial.number)
        try:
            lock.acquire()
        except FolderBusy:
            busy.append(trial.number)
        else:
            lock.release()
    return busy


def _adopt(study: Study) -> tuple[int, FolderLock] | None:
    """A RUNNING trial whose process has gone (its lock is free), now held by this process."""
    for trial in study.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lock = _claim(study, trial.number)
        if lock is not None:
            log.info("tune %s: trial %s was left running by a process that ended; resuming it", study.folder,
                     trial_name(trial.number))  # fmt: skip
            return trial.number, lock
    return None


def _new_trial(study: Study, trials: int) -> tuple[int, FolderLock] | None:
    """A new trial (an enqueued one first), held by this process; None once the study holds `trials`."""
    while True:
        held = study.optuna.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if len(held) >= trials:
            return None
        number = study.optuna.ask().number
        lock = _claim(study, number)
        if lock is not None:
            return number, lock
        # another process, looking for orphans, took it between our ask and our lock: it runs it; ask again


def _run_trial(study: Study, number: int, env: DistEnv) -> None:
    """Train trial `number` (resuming its run if it has one), report its curve, tell the study how it ended."""
    from mmdlrm.train import train

    # Seeded by the trial number: one process draws the same values as another would for that trial, and two
    # processes asking at once do not draw the same values.
    study.optuna.sampler = optuna.samplers.TPESampler(seed=(study.base.train.seed * 1_000_003 + number) % 2**31,
                                                      n_startup_trials=study.space.sampler.startup_trials)  # fmt: skip
    trial = optuna.trial.Trial(study.optuna, _trial_id(study, number))
    values = study.space.suggest(trial)
    name = trial_name(number)
    try:
        cfg = study.trial_config(number, values)
    except ConfigError as err:  # a combination the space allows but the config refuses
        trial.set_user_attr("error", str(err))
        study.optuna.tell(trial, state=TrialState.FAIL)
        log.warning("tune: trial %s failed: %s", name, err)
        return
    log.info("tune %s: trial %s: %s", study.folder, name, " ".join(overrides_of(values)))
    _set_attrs(trial, {"worker": f"{os.getpid()}@{socket.gethostname()}", "run": str(cfg.run_dir)})
    start = time.perf_counter()
    try:
        result = train(cfg, env, _reporter(trial, study.task.monitor)).to_json()
    except run_folder.RunFinished as finished:  # trained before a kill that came before the study was told
        result = finished.results
    except optuna.TrialPruned as pruned:
        _finish(trial, cfg, start)
        study.optuna.tell(trial, state=TrialState.PRUNED)
        log.info("tune: trial %s pruned: %s", name, pruned)
        return
    _finish(trial, cfg, start, result)
    if result["best_epoch"] < 0:  # no finite validation value in any epoch
        study.optuna.tell(trial, state=TrialState.FAIL)
        return
    value = result["epochs"][result["best_epoch"]]["val"][study.task.monitor]
    study.optuna.tell(trial, value)
    log.info("tune: trial %s: val %s %.4f (best epoch %d)", name, study.task.monitor, value, result["best_epoch"])


def _trial_id(study: Study, number: int) -> int:
    # Optuna's Trial is built from the storage's trial id, which FrozenTrial keeps (privately) beside the number.
    return study.optuna.get_trials(deepcopy=False)[number]._trial_id


def _reporter(trial: optuna.Trial, monitor: str):
    """The training loop's per-epoch hook: report the validation metric once per epoch, prune when told to."""
    reported = set(trial.study.get_trials(deepcopy=False)[trial.number].intermediate_values)

    def on_epoch(record: dict) -> None:
        epoch, value = record["epoch"], record["val"][monitor]
        if epoch not in reported:
            trial.report(value, epoch)
            reported.add(epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: val {monitor} {value:.4f}, worse than the finished trials' median")

    return on_epoch


def _finish(trial: optuna.Trial, cfg: RunConfig, start: float, result: dict | None = None) -> None:
    """Record how the trial went, and drop its checkpoints: a finished trial is never resumed."""
    attrs: dict[str, Any] = {"seconds": time.perf_counter() - start, "load_1min": os.getloadavg()[0]}
    if result is not None:
        attrs |= {"best_epoch": result["best_epoch"], "epochs": len(result["epochs"])}
    _set_attrs(trial, attrs)
    shutil.rmtree(cfg.run_dir / "checkpoints", ignore_errors=True)


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
