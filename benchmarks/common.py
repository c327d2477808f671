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
DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"  # the developers' copy of the real datasets
# where the shipped configs (configs/*.yaml: `../datasets/...`) expect a user's downloaded data
PROJECT_DATASETS = PROJECT_ROOT / "datasets"


def resolve_dataset(path: str | Path, base: str | Path) -> Path:
    """A config's data path (relative to ``base``, the config's folder) made absolute. A path
    into the project's ``datasets/`` folder is read from ``DATASETS`` instead when that folder
    is absent (developers have the data there, not in the repository)."""
    p = Path(path).expanduser()
    p = Path(os.path.normpath(p if p.is_absolute() else Path(base).resolve() / p))
    if not PROJECT_DATASETS.exists() and p.is_relative_to(PROJECT_DATASETS):
        return DATASETS / p.relative_to(PROJECT_DATASETS)
    return p


def dataset_overrides(config_path: str | Path) -> list[str]:
    """`--set` overrides (for ``python -m pipeline run --set`` or ``load_pipeline(overrides=)``)
    that point every ``../datasets/...`` path of a config's component params at ``DATASETS``
    when the project's ``datasets/`` folder is absent; [] when there is nothing to redirect."""
    import yaml

    config_path = Path(config_path)
    base = config_path.resolve().parent
    cfg = yaml.safe_load(config_path.read_text()) or {}

    def moved(v: str) -> str | None:
        if not v or "/" not in v or "://" in v or v.startswith("builtin:"):
            return None
        p = Path(v).expanduser()
        plain = Path(os.path.normpath(p if p.is_absolute() else base / p))
        new = resolve_dataset(v, base)
        return str(new) if new != plain else None

    out: list[str] = []

    def walk(v, key: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{key}.{k}")
        elif isinstance(v, str) and (new := moved(v)):
            out.append(f"{key}={json.dumps(new)}")
        elif isinstance(v, list) and any(isinstance(x, str) and moved(x) for x in v):
            out.append(f"{key}={json.dumps([moved(x) or x if isinstance(x, str) else x for x in v])}")

    for cid, comp in (cfg.get("components") or {}).items():
        if isinstance(comp, dict) and isinstance(comp.get("params"), dict):
            walk(comp["params"], f"components.{cid}.params")
    return out


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
