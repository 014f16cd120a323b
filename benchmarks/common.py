"""Shared helpers for the benchmark scripts: machine description, timing, stages, table printing, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """What the numbers were measured on: CPU, GPU, thread count and the versions of the stack."""
    versions = {}
    for package in ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "pyarrow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": versions,
    }


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """Best wall-clock seconds of `repeat` calls, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


class Stages:
    """A suite's progress: a line when a stage starts, one when it ends, and one the moment it overruns.

    Each stage has the time it is expected to take on an idle 2-core machine; a stage still running past it says
    so at once (with how to see where it is), and its end line says by how much. `records` holds every stage's
    time for the JSON.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.records: list[dict] = []

    def clock(self) -> str:
        minutes, seconds = divmod(int(time.perf_counter() - self.start), 60)
        return f"[{minutes:02d}:{seconds:02d}]"

    @contextmanager
    def stage(self, name: str, expected_s: float) -> Iterator[None]:
        print(f"\n{self.clock()} {name}: started (expected about {expected_s:.0f} s)", flush=True)

        def overrun() -> None:
            print(f"{self.clock()} {name}: still running, past its expected {expected_s:.0f} s "
                  f"(`py-spy dump --pid {os.getpid()}` shows where)", flush=True)  # fmt: skip

        timer = threading.Timer(expected_s, overrun)
        timer.daemon = True
        timer.start()
        start, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            timer.cancel()
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        over = seconds > expected_s
        note = f", OVER its expected {expected_s:.0f} s" if over else ""
        print(f"{self.clock()} {name}: done in {seconds:.0f} s (CPU {cpu:.0f} s){note}", flush=True)
        self.records.append({"stage": name, "seconds": seconds, "cpu_s": cpu, "expected_s": expected_s, "over": over})


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes (the spawned workers).

    Beside wall time it says where a stage's time goes when other jobs share the machine: wall time then grows
    with the load, CPU time much less.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows of dicts as a fixed-width table (floats with 4 significant digits, thousands separated)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        if isinstance(value, int):
            return f"{value:,}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    sys.stdout.flush()  # a table shows as soon as its stage ends, even when stdout is a pipe


def write_json(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Write `payload` (plus the machine description) to `out` or benchmarks/results/<name>.json."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n")
    return path


def trained(config: str, overrides: list[str]) -> Path:
    """The run of `config` (a path from the repository root) with `overrides`: trained now, or found finished."""
    from mmdlrm.config import load_config
    from mmdlrm.distributed.env import init_distributed, teardown
    from mmdlrm.run_folder import RunFinished
    from mmdlrm.train import train

    cfg = load_config(Path(__file__).resolve().parents[1] / config, overrides)
    env = init_distributed(cfg.train.device)
    try:
        train(cfg, env)
    except RunFinished:
        pass
    finally:
        teardown()
    return cfg.run_dir
