"""Multi-worker training: the Trainer's images/s with 2 local workers
(``distribution.strategy: multi_worker``, 127.0.0.1) against 1, on the same data, model and
global batch.

    python -m benchmarks multiworker                       # 2000 synthetic SIGNS images, 5 epochs, batch 32
    python -m benchmarks multiworker --num-examples 1200 --epochs 8 --batch-size 64
    python -m benchmarks multiworker --max-load 2.5 --wait 300

What runs, each a fresh ``python -m pipeline component Trainer`` process (as a user runs it):

* ``default``        one process, no strategy (``model.fit``);
* ``mirrored_1``     MirroredStrategy on this process's one CPU device: the Trainer's training
                     loop for strategies (components/training.py ``fit_distributed``), no collectives;
* ``multi_worker_1`` one worker under MultiWorkerMirroredStrategy (TF_CONFIG with one worker):
                     the strategy's training loop without any cross-process traffic;
* ``multi_worker_2`` two workers on this machine, each reading its half of every global batch
                     and all-reducing the gradients over gRPC on 127.0.0.1.

images/s = training images per epoch / the median ``epoch_seconds`` of the chief's history,
the first epoch (tracing) left out. CPU seconds are the children's user+sys time (getrusage),
so CPU/wall says how many cores a setup kept busy. The machine is shared: the 1-minute load
average is read before every run (waiting up to ``--wait`` s while it is above
``--max-load``) and after it, and written with the numbers.
Results go to ``benchmarks/results/multiworker.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import PROJECT_ROOT, wait_for_load, write_result
from components.serving import free_ports


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(setup: str, workers: int, base: list[str], out: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("TF_CONFIG", None)
    cmds, envs = [], []
    if setup in ("default", "mirrored_1"):
        extra = ["--param", "distribution.strategy=mirrored"] if setup == "mirrored_1" else []
        cmds.append(base + extra + ["--out", str(out)])
        envs.append(env)
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
        for i in range(workers):
            cmds.append(base + ["--param", "distribution.strategy=multi_worker", "--out", str(out)])
            envs.append({**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
    cpu0, t0 = _children_cpu(), time.time()
    procs = [subprocess.Popen(c, env=e, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, e in zip(cmds, envs)]
    logs = [p.communicate(timeout=1800)[0] for p in procs]
    wall, cpu = time.time() - t0, _children_cpu() - cpu0
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{setup} failed:\n" + "\n---\n".join(x[-3000:] for x in logs))
    h = json.loads((out / "model" / "history.json").read_text())
    info = json.loads((out / "model" / "model_info.json").read_text())
    per_epoch = h["epoch_seconds"][1:] or h["epoch_seconds"]
    n = info["images_per_second"] * info["train_seconds"] / max(info["epochs_run"], 1)  # images per epoch
    return {"setup": setup, "workers": workers, "images_per_epoch": round(n),
            "epoch_seconds": [round(x, 3) for x in h["epoch_seconds"]],
            "images_per_s": round(n / statistics.median(per_epoch), 1),
            "process_wall_s": round(wall, 1), "process_cpu_s": round(cpu, 1),
            "cores_busy": round(cpu / wall, 2), "final_loss": h["loss"][-1]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks multiworker")
    ap.add_argument("--num-examples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="signs_cnn")
    ap.add_argument("--max-load", type=float, default=2.0, help="wait while the 1-min load average is above this")
    ap.add_argument("--wait", type=float, default=180, help="longest wait for the load (s) before running anyway")
    a = ap.parse_args(argv)
    from pipeline.runner import run_single

    with tempfile.TemporaryDirectory(prefix="bench-mw-") as tmp:
        d = Path(tmp)
        source = {"format": "synthetic_signs", "options": {"num_examples": a.num_examples}}
        run_single("ExampleGen", {}, {"source": source, "split_ratios": {"train": 0.9, "eval": 0.1}}, d / "gen")
        ex = d / "gen" / "examples"
        run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
        run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
        base = [sys.executable, "-m", "pipeline", "component", "Trainer", "--input", f"examples={ex}",
                "--input", f"transform={d / 'tf' / 'transform'}"]
        for k, v in {"model": a.model, "epochs": a.epochs, "batch_size": a.batch_size, "eval_split": "null",
                     "seed": 0}.items():
            base += ["--param", f"{k}={v}"]
        runs = []
        for setup, workers in (("default", 1), ("mirrored_1", 1), ("multi_worker_1", 1), ("multi_worker_2", 2)):
            load = wait_for_load(a.max_load, a.wait)
            r = _run(setup, workers, base, d / setup)
            r.update(load, load_after=[round(x, 2) for x in os.getloadavg()])
            runs.append(r)
            print(f"{setup:15s} {r['images_per_s']:8.1f} images/s  cores busy {r['cores_busy']:.2f}  "
                  f"load {r['load_at_start'][0]:.2f} -> {r['load_after'][0]:.2f}")
    by = {r["setup"]: r for r in runs}
    speedup = by["multi_worker_2"]["images_per_s"] / by["multi_worker_1"]["images_per_s"]
    result = {"config": {"num_examples": a.num_examples, "epochs": a.epochs, "global_batch_size": a.batch_size,
                         "model": a.model, "data": "synthetic_signs 64x64, 90% train, no held-out pass"},
              "command": "python -m benchmarks multiworker " + " ".join(argv or []),
              "runs": runs,
              "speedup_2_workers_vs_1_worker": round(speedup, 3),
              "speedup_2_workers_vs_default": round(by["multi_worker_2"]["images_per_s"]
                                                    / by["default"]["images_per_s"], 3)}
    ips = {k: v["images_per_s"] for k, v in by.items()}
    result["relative_to_default"] = {k: round(v / ips["default"], 3) for k, v in ips.items()}
    result["reading"] = (
        "mirrored_1 vs default: the cost of the strategies' training loop alone; multi_worker_1 vs mirrored_1: "
        "MultiWorkerMirroredStrategy's collective all-reduce of every gradient, paid even with one worker; "
        "multi_worker_2 vs multi_worker_1: a second process on the same 2 cores (each already uses "
        f"{by['multi_worker_1']['cores_busy']} cores' worth of CPU over its run) plus the all-reduce over gRPC on "
        "127.0.0.1. Two workers pay off with a core (or machine) each and a step long against the all-reduce.")
    path = write_result("multiworker", result)
    print(f"2 workers vs 1 worker: {speedup:.2f}x; written to {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
