"""Helpers shared by the benchmarks: timing with medians, and one JSON file per benchmark
in benchmarks/results/ (the one place the project's speed and accuracy figures come from)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with machine facts, atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        **result,
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def wait_for_load(max_load: float, wait_s: float, poll_s: float = 5.0) -> dict:
    """Wait (at most ``wait_s``) until the 1-minute load average is under ``max_load``; what was
    seen goes into the result JSON, so a figure measured on a busy machine says so."""
    t0 = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - t0 < wait_s:
        time.sleep(poll_s)
    load = os.getloadavg()
    return {"waited_s": round(time.monotonic() - t0, 1), "load_at_start": [round(x, 2) for x in load],
            "max_load": max_load, "load_was_high": load[0] > max_load}
