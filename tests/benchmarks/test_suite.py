"""The benchmark suite's quick mode runs end to end (CI smoke) and writes what the full mode writes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_suite_writes_tables_and_json_with_baselines(tmp_path):
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--cache-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training, one process" in done.stdout and "processes and sharding types" in done.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "quick" and result["machine"]["cpu_count"] >= 1 and "torch" in result["machine"]["versions"]

    # Each stage says when it starts and ends, with its expected time, and shows its table before the next starts.
    stages = result["stages"]
    assert result["finished"] and len(stages) == 7
    progress, summary = done.stdout.split(" summary\n")
    for stage in stages:
        assert f"{stage['stage']}: started (expected about {stage['expected_s']:.0f} s)" in progress
        assert f"{stage['stage']}: done in " in progress and stage["over"] == (stage["seconds"] > stage["expected_s"])
    first_training = progress.index("training, one process, and inference: configs/debug.yaml: started")
    assert progress.index("per-row Python loop") < first_training  # the data table came out with its stage
    assert progress.index("(b) plain PyTorch DLRM") < progress.index("processes and sharding types: configs/debug.yaml: started")

    # Both baselines are measured in the same run, and every ratio is the figures' own ratio.
    training = result["training"]
    plain = next(r for r in training if r["name"].startswith("(b)"))
    notebook = next(r for r in training if r["name"].startswith("(a)"))
    for row in training:
        assert _positive(row["samples_per_s"]), row
        assert row["vs_b"] == pytest.approx(row["samples_per_s"] / plain["samples_per_s"], rel=1e-9)
        assert row["vs_a"] == pytest.approx(row["samples_per_s"] / notebook["samples_per_s"], rel=1e-9)
    ours = [r for r in training if r["name"].startswith("mmdlrm")]
    assert {r["name"].endswith("+ CLIP vectors") for r in ours} == {True, False}
    for row in ours:
        assert set(row["step_ms"]) == {"input", "forward", "backward", "optimizer"}
        assert all(_positive(v) for v in row["step_ms"].values()), row["step_ms"]
        assert 0 < row["lookup_fraction_of_copy_bandwidth"] < 1
    inference = next(r["inference"] for r in ours if r.get("inference"))
    assert _positive(inference["pairs_per_s"]) and _positive(inference["top10_ms"]) and inference["movies"] > 0
    # Each user's top-10 time includes their look-up, so the medians keep that order (no timing threshold).
    assert _positive(inference["seen_lookup_ms"]) and inference["seen_lookup_ms"] < inference["top10_ms"]
    assert inference["users"] == 10 and inference["seen_movies"] > 0

    # Scaling: 1 and 2 processes, ids only and with CLIP vectors; 2 processes spend time in collectives.
    scaling = result["scaling"]
    assert [(s["world"], s["clip"]) for s in scaling] == [(1, False), (2, False), (1, True), (2, True)]
    for row in scaling:
        assert _positive(row["samples_per_s"]) and _positive(row["step_ms"]) and len(row["ranks"]) == row["world"]
        single = next(s for s in scaling if s["world"] == 1 and s["clip"] == row["clip"])
        assert row["vs_1_process"] == pytest.approx(row["samples_per_s"] / single["samples_per_s"], rel=1e-9)
    assert all(_positive(s["communication_ms"]) for s in scaling if s["world"] == 2)
    assert "communication_ms" not in next(s for s in scaling if s["world"] == 1)
