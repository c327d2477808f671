"""Faults: interrupt the SIGNS branch at a seeded random moment of each component, with SIGKILL
and with Ctrl-C (SIGINT), then rerun, and check that the records are true and nothing is lost.

    python -m benchmarks faults                     # every SIGNS component type x {SIGKILL, SIGINT}, 2 rounds
    python -m benchmarks faults --rounds 1 --components Trainer ExampleGen --seed 3

Each trial runs ``python -m pipeline run COPY --no-cache`` on a small copy of the default
pipeline's SIGNS branch (tracking on), waits until the chosen component is executing (its
``.tmp-*`` folder exists), waits a further seeded random delay, sends the signal, then reruns
the same command without ``--no-cache``. After every rerun it checks:

* the rerun exits 0 and every component is done or cached;
* nothing in the execution index is ``running``; no MLflow run is RUNNING;
* no ``.tmp-*`` folder remains;
* SIGINT: exit code 130 and one ``interrupted`` line, no traceback;
* the deterministic artifacts (ExampleGen's decoded records, StatisticsGen's statistics,
  the Transform's config) equal those of an uninterrupted reference run;
* the Trainer's exported history has every epoch.

Counts per component and signal go to ``benchmarks/results/faults.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

PROJECT = Path(__file__).resolve().parents[1]
BRANCH = {"ExampleGen": "signs_gen", "StatisticsGen": "signs_stats", "ExampleValidator": "signs_validate",
          "Transform": "signs_transform", "Trainer": "signs_train", "Evaluator": "signs_eval", "Pusher": "signs_push"}
EPOCHS = 6
SMALL = ["signs_gen.source.options.num_examples=240", f"signs_train.epochs={EPOCHS}", "signs_train.batch_size=16",
         "signs_eval.thresholds.accuracy=0.0", "signs_validate.min_examples_per_class=5"]


def write_pipeline(dest: Path) -> Path:
    import yaml

    data = yaml.safe_load((PROJECT / "pipeline.yaml").read_text())
    data["components"] = {k: v for k, v in data["components"].items() if k in BRANCH.values()}
    p = dest / "pipeline.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _cmd(y: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(y), "--quiet", *extra, *sum((["--set", s] for s in SMALL), [])]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _records(folder: Path) -> dict:
    """Decoded content of an examples folder: split -> sorted (key, label, sha256 of pixels)."""
    from data.tfrecord import decode_example_py

    import tensorflow as tf

    out = {}
    for split in sorted(p for p in folder.iterdir() if p.is_dir()):
        rows = []
        for f in sorted(split.glob("*.tfrecord*")):
            for rec in tf.data.TFRecordDataset(str(f)):
                d = decode_example_py(rec.numpy())
                rows.append((d["image/key"][0].decode(), int(d.get("image/class/label", [-1])[0]),
                             d["image/sha256"][0].decode()))
        out[split.name] = sorted(rows)
    return out


def snapshot(root: Path) -> dict:
    """The deterministic artifacts of the newest complete execution of each component."""
    def newest(cid):
        dirs = [d for d in (root / cid).iterdir() if not d.name.startswith(".") and (d / "metadata.json").exists()]
        return max(dirs, key=lambda d: json.loads((d / "metadata.json").read_text())["finished"])

    stats = json.loads((newest("signs_stats") / "statistics" / "statistics.json").read_text())
    transform = json.loads((newest("signs_transform") / "transform" / "transform.json").read_text())
    history = json.loads((newest("signs_train") / "model" / "history.json").read_text())
    return {"examples": _records(newest("signs_gen") / "examples"), "statistics": stats, "transform": transform,
            "epochs_in_history": len(history.get("loss", []))}


def check_records(root: Path, tracking_db: Path) -> list[str]:
    problems = []
    db = sqlite3.connect(root / "executions.db")
    running = db.execute("SELECT component FROM executions WHERE status = 'running'").fetchall()
    db.close()
    if running:
        problems.append(f"executions still running: {running}")
    if list(root.glob("*/.tmp-*")):
        problems.append(f"temporary folders left: {[str(p) for p in root.glob('*/.tmp-*')]}")
    db = sqlite3.connect(tracking_db)
    n = db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    db.close()
    if n:
        problems.append(f"{n} MLflow run(s) RUNNING")
    return problems


def trial(work: Path, y: Path, component: str, sig: int, delay: float, reference: dict) -> dict:
    root = work / "pipeline_root"
    cid = BRANCH[component]
    proc = subprocess.Popen(_cmd(y, "--no-cache"), cwd=work, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, started = time.time() + 600, None
    while time.time() < deadline and proc.poll() is None:
        if list((root / cid).glob(".tmp-*")):
            started = time.time()
            break
        time.sleep(0.05)
    hit = False
    if started is not None:
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
            hit = True
    out, err = proc.communicate(timeout=600)
    result = {"component": component, "signal": signal.Signals(sig).name, "delay_s": round(delay, 3),
              "interrupted": hit, "exit_code": proc.returncode, "problems": []}
    if hit and sig == signal.SIGINT:
        lines = [ln for ln in err.splitlines() if "interrupted" in ln]
        if proc.returncode != 130 or len(lines) != 1 or "Traceback" in out + err:
            result["problems"].append(f"Ctrl-C: exit {proc.returncode}, {len(lines)} interrupted line(s), "
                                      f"traceback={'Traceback' in out + err}")
    rerun = subprocess.run(_cmd(y), cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
    result["rerun_exit_code"] = rerun.returncode
    if rerun.returncode != 0:
        result["problems"].append(f"rerun exited {rerun.returncode}: {rerun.stdout[-500:]} {rerun.stderr[-500:]}")
    result["problems"] += check_records(root, work / "mlflow.db")
    if rerun.returncode == 0:
        snap = snapshot(root)
        for k in ("examples", "statistics", "transform"):
            if snap[k] != reference[k]:
                result["problems"].append(f"{k} differ from the uninterrupted run's")
        if snap["epochs_in_history"] != EPOCHS:
            result["problems"].append(f"history has {snap['epochs_in_history']} of {EPOCHS} epochs")
    result["ok"] = not result["problems"]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks faults", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="trials per component and signal")
    parser.add_argument("--components", nargs="+", default=list(BRANCH), choices=list(BRANCH))
    parser.add_argument("--signals", nargs="+", default=["SIGKILL", "SIGINT"], choices=["SIGKILL", "SIGINT"])
    parser.add_argument("--max-delay", type=float, default=2.0, help="seconds after the component starts, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/faults.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        y = write_pipeline(work)
        ref = subprocess.run(_cmd(y), cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
        if ref.returncode != 0:
            raise SystemExit(f"the uninterrupted reference run failed:\n{ref.stdout[-2000:]}\n{ref.stderr[-2000:]}")
        reference = snapshot(work / "pipeline_root")
        trials = []
        for r in range(args.rounds):
            for component in args.components:
                for name in args.signals:
                    t = trial(work, y, component, getattr(signal, name), rng.uniform(0, args.max_delay), reference)
                    t["round"] = r
                    trials.append(t)
                    print(f"{component:16s} {name:7s} delay {t['delay_s']:.2f}s interrupted={t['interrupted']} "
                          f"-> {'ok' if t['ok'] else 'PROBLEMS: ' + '; '.join(t['problems'])}", flush=True)
    summary = {}
    for t in trials:
        s = summary.setdefault(f"{t['component']}/{t['signal']}", {"trials": 0, "interrupted": 0, "ok": 0})
        s["trials"] += 1
        s["interrupted"] += int(t["interrupted"])
        s["ok"] += int(t["ok"])
    result = {"command": "python -m benchmarks faults " + " ".join(argv or []), "seed": args.seed,
              "trials": len(trials), "interrupted": sum(t["interrupted"] for t in trials),
              "ok": sum(t["ok"] for t in trials), "per_component_signal": summary, "details": trials,
              "checks": ["rerun exits 0", "nothing running in the index", "no MLflow run RUNNING",
                         "no .tmp- folder", "Ctrl-C: exit 130, one line, no traceback",
                         "ExampleGen records, statistics, transform identical to an uninterrupted run",
                         f"Trainer history has all {EPOCHS} epochs"]}
    print(f"{result['ok']} of {result['trials']} trials ok ({result['interrupted']} interrupted mid-component)")
    if not args.no_write:
        print(f"-> {write_result('faults', result)}")
    return result
