"""Plots of a run (training / validation curves against the baselines, predictions against true ratings), of a sweep
and of a study (`mmdlrm tune`: each trial's value, the keys' importances)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(epochs: list[dict], baselines: dict[str, dict], metric: str, higher_is_better: bool, path: str | Path) -> Path:
    """Training loss and validation `metric` per epoch, with the baselines' validation `metric` as lines."""
    x = [e["epoch"] for e in epochs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(x, [e["train_loss"] for e in epochs], marker="o", label="train loss")
    left.set(xlabel="epoch", ylabel="loss", title="Training loss")
    left.grid(alpha=0.3)
    right.plot(x, [e["val"][metric] for e in epochs], marker="o", color="C1", label="DLRM")
    for (name, result), style in zip(baselines.items(), ("--", ":", "-.")):
        right.axhline(result["val"][metric], linestyle=style, color="grey", label=name.replace("_", " "))
    best = (max if higher_is_better else min)(epochs, key=lambda e: e["val"][metric])
    right.scatter([best["epoch"]], [best["val"][metric]], s=120, facecolors="none", edgecolors="C3", label="best")
    right.set(xlabel="epoch", ylabel=metric.upper(), title=f"Validation {metric.upper()}")
    right.grid(alpha=0.3)
    right.legend()
    for axes in (left, right):  # epochs are whole numbers: no 0.5 ticks on a short run
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_predictions(preds: np.ndarray, labels: np.ndarray, task: str, path: str | Path) -> Path:
    """Histogram of predictions against true ratings and their spread at each true rating (`rating`), or the
    probabilities by label and their calibration (`binary`)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if task == "rating":
        bins = np.arange(0.25, 5.5, 0.25)
        left.hist(labels, bins=bins, alpha=0.6, label="true rating")
        left.hist(preds, bins=bins, alpha=0.6, label="prediction")
        left.set(xlabel="stars", ylabel="ratings", title="Predicted and true ratings (test)")
        values = np.unique(labels)
        right.boxplot([preds[labels == v] for v in values], positions=values, widths=0.3, showfliers=False)
        right.plot([0.5, 5], [0.5, 5], linestyle="--", color="grey", label="perfect")
        right.set(xlabel="true rating", ylabel="prediction", title="Prediction by true rating (test)", xlim=(0.2, 5.3))
    else:
        bins = np.linspace(0, 1, 41)
        left.hist(preds[labels == 1], bins=bins, alpha=0.6, label="liked")
        left.hist(preds[labels == 0], bins=bins, alpha=0.6, label="not liked")
        left.set(xlabel="P(liked)", ylabel="ratings", title="Predicted probability by label (test)")
        order = np.argsort(preds)
        deciles = np.array_split(order, 10)
        right.plot([preds[d].mean() for d in deciles], [labels[d].mean() for d in deciles], marker="o", label="model")
        right.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
        right.set(xlabel="mean predicted P(liked)", ylabel="observed rate", title="Calibration (test deciles)")
    left.legend()
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(names: list[str], val: list[float], test: list[float], metric: str, chosen: str, path: str | Path) -> Path:
    """Validation and test `metric` of each point of a sweep, the point chosen on validation marked."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, val, width=0.4, label="validation (chooses)")
    ax.bar(x + 0.2, test, width=0.4, label="test (reported)")
    ax.set_xticks(x, [f"{n}*" if n == chosen else n for n in names], rotation=45)
    low = min(min(val), min(test))
    high = max(max(val), max(test))
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    ax.set(ylabel=metric.upper(), title=f"Sweep: {metric} per point (* chosen on validation)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, path)


def plot_tune_history(numbers: list[int], values: list[float | None], states: list[str], metric: str,
                      higher_is_better: bool, path: str | Path) -> Path:  # fmt: skip
    """Each trial's validation `metric` (pruned trials at their last epoch, marked x) and the best so far."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for state, marker, label in (("COMPLETE", "o", "finished"), ("PRUNED", "x", "pruned (last epoch)")):
        xs = [n for n, v, s in zip(numbers, values, states) if s == state and v is not None]
        ys = [v for v, s in zip(values, states) if s == state and v is not None]
        if xs:
            ax.scatter(xs, ys, marker=marker, label=label, color="C0" if state == "COMPLETE" else "C3")
    best, line = None, []
    for n, v, s in zip(numbers, values, states):
        if s == "COMPLETE" and v is not None and (best is None or (v > best if higher_is_better else v < best)):
            best = v
        line.append(best)
    ax.step(numbers, [float("nan") if b is None else b for b in line], where="post", color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title=f"Optimisation history: {metric} per trial (chosen on validation)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_importances(importances: dict[str, float], metric: str, path: str | Path) -> Path:
    """How much each searched key moved `metric` across the finished trials (shares summing to 1)."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names])
    ax.set(xlabel="importance (share)", title=f"Parameter importances for {metric} (PED-ANOVA)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
