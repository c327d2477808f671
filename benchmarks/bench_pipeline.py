"""Orchestration overhead: a cached rerun of the unchanged default pipeline, and CLI start-up.

    python -m benchmarks pipeline                         # default pipeline.yaml, unchanged settings
    python -m benchmarks pipeline --set signs_train.epochs=3 --set signs_gen.source.options.num_examples=300
    python -m benchmarks pipeline --help-only             # only `python -m pipeline --help`
    python -m benchmarks pipeline --jobs 1 2 --max-load 0.5   # fresh runs, one at a time vs two at once

* The repo's ``pipeline.yaml`` is copied to a temporary folder with ``root`` and
  ``tracking.uri`` pointing into it (the repo's pipeline_root and mlflow.db are not touched);
  relative source paths are made absolute against the repo.
* One full ``python -m pipeline run COPY --quiet [--set ...]`` fills the cache (timed, not the
  figure); then the same command, same ``--set``s, is timed ``--repeats`` times (median). Each
  rerun must report every component as cached, or the benchmark says so.
* One more cached rerun under ``python -X importtime`` (not timed) lists the heaviest imports
  and whether TensorFlow was imported on a cache-only run.
* ``python -m pipeline --help``: median wall time of ``--help-repeats`` runs (target < 1.5 s),
  a bare ``python -c pass`` for reference, and whether TensorFlow got imported
  (``-X importtime``).

* ``--jobs 1 2``: instead of the above, the wall time of a *fresh* run (empty artifact root and
  MLflow DB, ``--no-cache``) of the pipeline with ``run --jobs 1`` and with ``run --jobs 2``, on
  the same snapshot of the sources, and the ratio (jobs 1 time / jobs N time: above 1 means
  parallel mode is faster). Also the CPU time of each run (parent and workers) and the sum of its
  components' durations. A fresh default pipeline takes minutes per run and measures nothing
  useful while other jobs load the machine: ``--max-load`` refuses to start above that 1-minute
  load average. Stored under ``fresh_run_jobs``; the file's other keys are kept.

Results go to ``benchmarks/results/pipeline.json``.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import PROJECT_ROOT, write_result

HEAVY = ("tensorflow", "keras", "apache_beam", "mlflow", "matplotlib", "numpy", "pandas", "sklearn", "PIL",
         "pydantic", "rich", "click", "yaml", "sqlalchemy", "h5py")


def parse_importtime(stderr: str) -> dict[str, float]:
    """Cumulative import time (s) of each top-level package from `python -X importtime` output."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)", line)
        if not m:
            continue
        cumulative_us, name = int(m.group(2)), m.group(4)
        top = name.split(".")[0]
        # the first (outermost) line of a top-level package is its full cumulative cost
        if "." not in name:
            out[top] = max(out.get(top, 0.0), cumulative_us / 1e6)
        else:
            out.setdefault(top, 0.0)
    return out


def imported(stderr: str, package: str) -> bool:
    return package in parse_importtime(stderr)


def make_pipeline_copy(src: Path, dest_dir: Path) -> Path:
    """A copy of pipeline.yaml whose root and tracking DB live in dest_dir."""
    import yaml

    cfg = yaml.safe_load(Path(src).read_text())
    cfg["root"] = str(dest_dir / "pipeline_root")
    cfg.setdefault("tracking", {})["uri"] = f"sqlite:///{dest_dir / 'mlflow.db'}"
    base = Path(src).resolve().parent

    def fix(v):  # any relative path in params that exists next to the original file -> absolute
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, str) and v and not Path(v).expanduser().is_absolute() and "/" in v and (base / v).exists():
            return str((base / v).resolve())
        return v

    for comp in (cfg.get("components") or {}).values():
        if isinstance(comp, dict) and isinstance(comp.get("params"), dict):
            comp["params"] = fix(comp["params"])
    out = dest_dir / "pipeline.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


SNAPSHOT_SKIP = {".git", ".venv", "pipeline_root", "mlruns", "mlflow.db", "results", "__pycache__", ".pytest_cache"}


def snapshot_project(src: Path, dest: Path) -> Path:
    """Copy the project's sources (not the venv, artifacts or results) so that edits made to the
    working tree while the benchmark runs cannot change cache keys between the timed reruns."""
    import shutil

    shutil.copytree(src, dest, symlinks=True, ignore=lambda d, names: [n for n in names if n in SNAPSHOT_SKIP])
    return dest


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["COLUMNS"] = "250"  # rich wraps the summary line (and the MLflow run id) at 80 columns in a pipe
    return env


def tree_stamp(root: Path = PROJECT_ROOT) -> float:
    """Newest mtime of the project's Python sources: a code edit during the benchmark (another
    developer on the same tree) changes cache keys, and a rerun then executes for a good reason."""
    newest = 0.0
    for folder in ("components", "pipeline", "models", "data"):
        for f in (root / folder).rglob("*.py"):
            newest = max(newest, f.stat().st_mtime)
    return newest


def _run(cmd: list[str], cwd: Path, timeout: float | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    return time.perf_counter() - t0, p


def summary_line(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("pipeline run ")]
    return lines[-1] if lines else ""


def status_counts(line: str) -> dict[str, int]:
    """'pipeline run X: 7 cached; MLflow run Y' -> {'cached': 7}."""
    body = line.split(":", 1)[1].split(";")[0] if ":" in line else ""
    out = {}
    for part in body.split(","):
        m = re.match(r"\s*(\d+)\s+(\S+)", part)
        if m:
            out[m.group(2)] = int(m.group(1))
    return out


def _bench_help(py: str, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t, p = _run([py, "-m", "pipeline", "--help"], PROJECT_ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"pipeline --help failed: {p.stderr[-2000:]}")
        times.append(t)
    bare = statistics.median([_run([py, "-c", "pass"], PROJECT_ROOT)[0] for _ in range(3)])
    _, p = _run([py, "-X", "importtime", "-m", "pipeline", "--help"], PROJECT_ROOT)
    imp = parse_importtime(p.stderr)
    med = statistics.median(times)
    return {"median_s": med, "times_s": times, "target_s": 1.5, "target_met": med < 1.5,
            "python_bare_start_s": bare, "tensorflow_imported": "tensorflow" in imp,
            "heaviest_imports_s": dict(sorted(imp.items(), key=lambda kv: -kv[1])[:8])}


def _fresh_runs(py: str, pipeline: Path, overrides: list[str], jobs: list[int], snapshot: bool) -> dict:
    """One fresh, no-cache run of PIPELINE per value of ``--jobs``, each in its own temporary
    root and MLflow DB, all on one snapshot of the sources."""
    import resource
    import shutil
    import sqlite3

    base = Path(tempfile.mkdtemp(prefix="bench_pipeline_jobs_"))
    try:
        cwd = snapshot_project(PROJECT_ROOT, base / "src") if snapshot else PROJECT_ROOT
        runs = {}
        for n in jobs:
            d = base / f"jobs{n}"
            d.mkdir()
            yml = make_pipeline_copy(pipeline, d)
            cmd = [py, "-m", "pipeline", "run", str(yml), "--quiet", "--no-cache", "--jobs", str(n)]
            for s in overrides:
                cmd += ["--set", s]
            print(f"fresh run, --jobs {n}: {' '.join(cmd[1:])}")
            load = os.getloadavg()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t, p = _run(cmd, cwd)
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode != 0:
                raise RuntimeError(f"--jobs {n} run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            db = sqlite3.connect(d / "pipeline_root" / "executions.db")
            durations = dict(db.execute("SELECT component, duration FROM executions"))
            db.close()
            line = summary_line(p.stdout)
            runs[str(n)] = {"wall_s": t, "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
                            "sum_of_component_durations_s": sum(durations.values()), "summary": line,
                            "status_counts": status_counts(line), "component_durations_s": durations,
                            "loadavg_before": load, "loadavg_after": os.getloadavg()}
            print(f"  {t:.1f}s wall, {runs[str(n)]['cpu_s']:.1f}s CPU  {line}  (load {load[0]:.2f} -> "
                  f"{os.getloadavg()[0]:.2f})")
        first = runs[str(jobs[0])]["wall_s"]
        default = pipeline.resolve() == (PROJECT_ROOT / "pipeline.yaml").resolve()
        return {"command": " ".join(["python", "-m", "benchmarks", "pipeline", "--jobs", *map(str, jobs),
                                     *([] if default else ["--pipeline", str(pipeline)]),
                                     *sum((["--set", s] for s in overrides), [])]),
                "pipeline": str(pipeline),
                "overrides": overrides, "snapshot_of_sources": snapshot, "runs": runs,
                "ratio": {f"jobs{jobs[0]}/jobs{n}": first / runs[str(n)]["wall_s"] for n in jobs[1:]},
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _merge_result(key: str, value: dict) -> Path:
    """Store ``value`` under ``key`` in results/pipeline.json, keeping the file's other keys."""
    import json

    path = PROJECT_ROOT / "benchmarks" / "results" / "pipeline.json"
    data = json.loads(path.read_text()) if path.exists() else {"benchmark": "pipeline"}
    data[key] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default=str(PROJECT_ROOT / "pipeline.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to the first run and to every rerun alike")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--help-repeats", type=int, default=5)
    ap.add_argument("--help-only", action="store_true")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the live working tree instead of a copy of its sources")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    ap.add_argument("--jobs", type=int, nargs="+", metavar="N",
                    help="instead: time a fresh, no-cache run with each `run --jobs N` (e.g. --jobs 1 2)")
    ap.add_argument("--max-load", type=float, metavar="L",
                    help="refuse to start when the 1-minute load average is above L (others share the machine)")
    args = ap.parse_args(argv)
    py = sys.executable
    load_before = os.getloadavg()
    if args.max_load is not None and load_before[0] > args.max_load:
        raise SystemExit(f"load average {load_before[0]:.2f} is above --max-load {args.max_load}: "
                         "nothing measured (rerun when the machine is quiet)")
    if args.jobs:
        res = _fresh_runs(py, Path(args.pipeline), args.overrides, args.jobs, not args.no_snapshot)
        for name, ratio in res["ratio"].items():
            print(f"fresh run wall time {name}: {ratio:.2f}x")
        print(f"-> {_merge_result('fresh_run_jobs', res)}")
        return res
    result: dict = {"python": py}

    if not args.help_only:
        tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
        try:
            yml = make_pipeline_copy(Path(args.pipeline), tmp)
            cwd = PROJECT_ROOT if args.no_snapshot else snapshot_project(PROJECT_ROOT, tmp / "src")
            cmd = [py, "-m", "pipeline", "run", str(yml), "--quiet"]
            for s in args.overrides:
                cmd += ["--set", s]
            print(f"first run (fills the cache): {' '.join(cmd[1:])}")
            stamp0 = tree_stamp()
            t_first, p = _run(cmd, cwd)
            if p.returncode != 0:
                raise RuntimeError(f"first pipeline run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            first_line = summary_line(p.stdout)
            print(f"  {t_first:.1f}s  {first_line}")
            times, lines = [], []
            for i in range(args.repeats):
                t, p = _run(cmd, cwd)
                if p.returncode != 0:
                    raise RuntimeError(f"cached rerun failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
                times.append(t)
                lines.append(summary_line(p.stdout))
                print(f"  cached rerun {i + 1}: {t:.2f}s  {lines[-1]}  (load {os.getloadavg()[0]:.1f})")
            counts = [status_counts(ln) for ln in lines]
            all_cached = all(set(c) == {"cached"} for c in counts)
            code_changed = args.no_snapshot and tree_stamp() != stamp0
            if not all_cached:
                print(f"  WARNING: a rerun executed components: {counts}"
                      + ("; the project's sources were edited during the benchmark (cache keys changed): "
                         "rerun it on a quiet tree" if code_changed else ""))
            _, p = _run([py, "-X", "importtime", *cmd[1:]], cwd)
            imp = parse_importtime(p.stderr)
            result["cached_rerun"] = {
                "command": " ".join(["python", *cmd[1:]]).replace(str(yml), "<tmp>/pipeline.yaml"),
                "overrides": args.overrides, "snapshot_of_sources": not args.no_snapshot, "first_run_s": t_first, "first_run_summary": first_line,
                "median_s": statistics.median(times), "times_s": times, "summaries": lines,
                "status_counts": counts, "all_cached": all_cached, "sources_edited_during_run": code_changed,
                "tensorflow_imported": "tensorflow" in imp,
                "heaviest_imports_s": dict(sorted(imp.items(), key=lambda kv: -kv[1])[:10]),
            }
        finally:
            if args.keep:
                print(f"kept {tmp}")
            else:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)

    result["help"] = _bench_help(py, args.help_repeats)
    result["loadavg_before"] = load_before
    result["loadavg_after"] = os.getloadavg()

    print()
    if "cached_rerun" in result:
        c = result["cached_rerun"]
        print(f"cached rerun of the unchanged pipeline: median {c['median_s']:.2f}s over {len(c['times_s'])} "
              f"({', '.join(f'{t:.2f}' for t in c['times_s'])}); all cached: {c['all_cached']}; "
              f"TensorFlow imported: {c['tensorflow_imported']}")
        print("  heaviest imports: " + ", ".join(f"{k} {v:.2f}s" for k, v in list(c["heaviest_imports_s"].items())[:6]))
    h = result["help"]
    print(f"python -m pipeline --help: median {h['median_s']:.2f}s over {len(h['times_s'])} "
          f"(target < 1.5 s: {'met' if h['target_met'] else 'NOT met'}); bare python {h['python_bare_start_s']:.2f}s; "
          f"TensorFlow imported: {h['tensorflow_imported']}")
    print("  heaviest imports: " + ", ".join(f"{k} {v:.2f}s" for k, v in list(h["heaviest_imports_s"].items())[:6]))
    print(f"load average before {load_before[0]:.2f}, after {result['loadavg_after'][0]:.2f} (1-min)")
    path = write_result("pipeline", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
