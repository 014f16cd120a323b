"""The benchmark suite's quick mode runs end to end (CI smoke) and writes what the full mode writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_suite_writes_tables_and_json_with_baselines(tmp_path):
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--cache-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training, one process" in done.stdout and "processes and sharding types" in done.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "quick" and result["machine"]["cpu_count"] >= 1 and "torch" in result["machine"]["versions"]
    names = [row["name"] for row in result["training"]]
    assert any(n.startswith("(a)") for n in names) and any(n.startswith("(b)") for n in names)
    plain = next(r for r in result["training"] if r["name"].startswith("(b)"))
    assert plain["vs_b"] == 1.0 and all(r["samples_per_s"] > 0 for r in result["training"])
    ours = next(r for r in result["training"] if r["name"].startswith("mmdlrm") and "CLIP" not in r["name"])
    assert set(ours["step_ms"]) == {"input", "forward", "backward", "optimizer"}
    assert ours["inference"]["top10_ms"] > 0 and 0 < ours["lookup_fraction_of_copy_bandwidth"] < 1
    assert [(s["world"], s["clip"]) for s in result["scaling"]] == [(1, False), (2, False), (1, True), (2, True)]
    assert result["scaling"][0]["communication_ms"] == 0 and result["scaling"][1]["communication_ms"] > 0
