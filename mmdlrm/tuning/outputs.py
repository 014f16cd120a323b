"""What a study writes: the table of trials, the plots, the best config as YAML, tune.json, and the final run.

    trials.md, trials.csv   a row per trial: state, validation metric (its best epoch's), epochs, minutes, values
    plots/history.png       each trial's value (pruned ones at their last epoch) and the best so far
    plots/importance.png    how much each key moved the metric (Optuna's PED-ANOVA importances)
    best.yaml               the base config with the best trial's values: `mmdlrm train --config <study>/best.yaml`
    tune.json               the summary: trials by state, the best trial, the final run's validation and test
                            metrics beside the baselines, wall time and the machine's load while trials ran
    final-tNNNN/            best.yaml trained once more (same seed), now tested beside the baselines

Everything is chosen on validation; the test split is read once, by the final run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mmdlrm.config import config_tree, from_dict, load_config
from mmdlrm.distributed.env import DistEnv
from mmdlrm.folders import FolderBusy
from mmdlrm.inspection.plots import plot_importances, plot_tune_history
from mmdlrm.run_folder import RunFinished, finite
from mmdlrm.tuning.study import Study, overrides_of, trial_name

log = logging.getLogger("mmdlrm")

BEST = "best.yaml"
SUMMARY = "tune.json"


def write_outputs(study: Study, trials: int, seconds: float) -> dict:
    """Write the table, the plots, best.yaml and tune.json for the study as it stands; returns tune.json's content."""
    folder, monitor = study.folder, study.task.monitor
    frozen = study.optuna.get_trials(deepcopy=True)
    done = [t for t in frozen if t.state == TrialState.COMPLETE]
    best = study.optuna.best_trial if done else None
    rows = [_row(t, monitor, best, study.space.values(t.params)) for t in frozen]
    _write_atomic(folder / "trials.csv", _csv(rows))
    _write_atomic(folder / "trials.md", _markdown(rows))
    plot_tune_history([t.number for t in frozen], [_last_value(t) for t in frozen], [t.state.name for t in frozen],
                      study.metric, study.task.higher_is_better, folder / "plots" / "history.png")  # fmt: skip
    importances = _importances(study.optuna, len(done))
    if importances:
        plot_importances(importances, study.metric, folder / "plots" / "importance.png")
    states = {state.name.lower(): sum(t.state == state for t in frozen) for state in TrialState}
    loads = [t.user_attrs["load_1min"] for t in frozen if "load_1min" in t.user_attrs]
    summary: dict[str, Any] = {
        "study": str(folder), "task": study.task.name, "metric": study.metric,
        "direction": "maximize" if study.task.higher_is_better else "minimize", "trials_asked": trials,
        "trials": {k: v for k, v in states.items() if v}, "importances": importances, "importances_from": len(done),
        "seconds_this_process": seconds, "seconds_study": _span(frozen),
        "load": {"cpus": os.cpu_count(), "load_1min_at_trial_ends": _spread(loads), "now": list(os.getloadavg())},
        "best": None, "final": None,
    }  # fmt: skip
    if best is not None:
        values = study.space.values(best.params)
        _write_atomic(folder / BEST, best_yaml(study, best.number, values, best.value))
        summary["best"] = {"trial": trial_name(best.number), "number": best.number, "value": best.value, "values": values,
                           "best_epoch": best.user_attrs.get("best_epoch")}  # fmt: skip
    _write_atomic(folder / SUMMARY, json.dumps(finite(summary), indent=2, allow_nan=False) + "\n")
    log.info("tune %s: %s\n%s", folder, _states_line(summary), _markdown(rows))
    return summary


def best_yaml(study: Study, number: int, values: dict[str, Any], value: float) -> str:
    """The base config (its file's settings and the command line's) with the trial's values, as a config file."""
    tree = config_tree(study.config, [*study.overrides, *overrides_of(values), f"name={study.base.name}-tuned"])
    overridden = " and the command line" if study.overrides else ""
    head = (f"# Chosen by `mmdlrm tune` on validation {study.task.monitor} ({value:.4f}, trial {trial_name(number)} of "
            f"{study.folder}): {study.config or 'the defaults'}{overridden}\n# with the trial's values of "
            f"{', '.join(values)}.\n# The test split was not read to choose it. Train and test it with\n"
            f"#   mmdlrm train --config {study.folder / BEST}\n")  # fmt: skip
    from_dict(tree, BEST)  # checked as `train` will read it
    return head + yaml.safe_dump(tree, sort_keys=False)


def final_run(study: Study, summary: dict, env: DistEnv) -> dict:
    """Train best.yaml once more in the study folder, now testing it beside the baselines; add it to tune.json."""
    from mmdlrm.train import train

    if summary["best"] is None:
        log.warning("tune %s: no trial finished, so there is no best config to train and test", study.folder)
        return summary
    number = summary["best"]["number"]
    cfg = load_config(study.folder / BEST, [f"output_dir={study.folder}", f"name=final-{trial_name(number)}"])
    log.info("tune %s: training the best config (trial %s) once more, now with the test split", study.folder,
             trial_name(number))  # fmt: skip
    try:
        result = train(cfg, env).to_json()
    except RunFinished as finished:  # trained by an earlier tune of this study
        result = finished.results
    except FolderBusy as busy:
        log.info("tune %s: the final run is being trained by another process (%s)", study.folder, busy)
        return summary
    monitor = study.task.monitor
    val = result["epochs"][result["best_epoch"]]["val"][monitor]
    summary["final"] = {
        "run": str(cfg.run_dir), "best_epoch": result["best_epoch"], "val": val, "trial_val": summary["best"]["value"],
        "test": result["test"], "baselines": {name: b.get("test") for name, b in result["baselines"].items()},
    }  # fmt: skip
    _write_atomic(study.folder / SUMMARY, json.dumps(finite(summary), indent=2, allow_nan=False) + "\n")
    log.info("tune %s: best trial %s chosen on validation %s %.4f; trained once more from best.yaml: validation %.4f, "
             "test %s %.4f (the test split read this once, beside the baselines above)", study.folder,
             trial_name(number), monitor, summary["best"]["value"], val, monitor, result["test"][monitor])  # fmt: skip
    return summary


def _row(trial: FrozenTrial, monitor: str, best: FrozenTrial | None, values: dict[str, Any]) -> dict[str, Any]:
    seconds = trial.user_attrs.get("seconds")
    return {
        "trial": trial_name(trial.number) + (" (best)" if best is not None and trial.number == best.number else ""),
        "state": trial.state.name.lower(),
        f"val {monitor}": trial.value if trial.state == TrialState.COMPLETE else _last_value(trial),
        "best epoch": trial.user_attrs.get("best_epoch", ""),
        "epochs": len(trial.intermediate_values),
        "minutes": "" if seconds is None else f"{seconds / 60:.1f}",
        **dict(sorted(values.items())),
    }


def _last_value(trial: FrozenTrial) -> float | None:
    """A finished trial's value; a pruned or running one's last reported epoch."""
    if trial.value is not None:
        return trial.value
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.01 or abs(value) >= 1000 else f"{value:.4f}"
    return "" if value is None else str(value)


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    names = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(out, fieldnames=names)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _markdown(rows: list[dict]) -> str:
    names = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(row.get(n)) for n in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _importances(study: optuna.Study, complete: int) -> dict[str, float]:
    """Each key's share in reaching the best finished trials' values (PED-ANOVA: the top 10 %, or the top two
    where there are fewer than 20); {} before three trials have finished. A rough guide on few trials."""
    if complete < 3:
        return {}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(0.5, max(0.1, 2 / complete)))
    with warnings.catch_warnings():  # "importances will be equal" on a handful of trials: then they are
        warnings.simplefilter("ignore", UserWarning)
        return optuna.importance.get_param_importances(study, evaluator=evaluator)


def _span(trials: list[FrozenTrial]) -> float | None:
    """Seconds from the first trial's start to the last one's end (all processes together)."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _states_line(summary: dict) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    best = summary["best"]
    chosen = f"; best {best['trial']}: {summary['metric']} {best['value']:.4f}" if best else ""
    return f"{counts} ({summary['metric']}, {summary['direction']}){chosen}"


def _write_atomic(path: Path, text: str) -> None:
    """Write through a file beside `path`, renamed into place: processes sharing a study never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
