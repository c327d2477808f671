"""`run --jobs N`: independent components at once, each in its own worker process.

One small DAG with two independent branches (gen_a -> stats_a -> tf_a -> train_1, train_2 and
gen_b -> stats_b), run through the CLI: its executions overlap in time (the store's start and
duration), its cache keys are those of `--jobs 1`, Trainers respect `max_parallel_trainers`,
MLflow has one child run per execution, a failure skips its downstream only, and Ctrl-C or a
SIGKILL of `run` leaves no worker process and true records."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.test_pipeline_e2e import cli, executions, last_run_id

pytestmark = pytest.mark.slow

PIPELINE = """\
name: par
root: pipeline_root
tracking: {uri: sqlite:///mlflow.db, experiment: par}
components:
  gen_a:
    type: ExampleGen
    params: {source: {format: synthetic_signs, options: {num_examples: 60, seed: 0}}, image_size: [32, 32]}
  gen_b:
    type: ExampleGen
    params: {source: {format: synthetic_signs, options: {num_examples: 60, seed: 1}}, image_size: [32, 32]}
  stats_a:
    type: StatisticsGen
    inputs: {examples: gen_a.examples}
  stats_b:
    type: StatisticsGen
    inputs: {examples: gen_b.examples}
  tf_a:
    type: Transform
    inputs: {examples: gen_a.examples, statistics: stats_a.statistics}
  train_1:
    type: Trainer
    inputs: {examples: gen_a.examples, transform: tf_a.transform}
    params: {model: signs_cnn, epochs: 1, batch_size: 16, seed: 0}
  train_2:
    type: Trainer
    inputs: {examples: gen_a.examples, transform: tf_a.transform}
    params: {model: signs_cnn, epochs: 1, batch_size: 16, seed: 1}
"""
# a branch that fails at once (an empty image folder) and its downstream
FAILING = """\
  gen_bad:
    type: ExampleGen
    params: {source: {format: image_folder, path: empty}}
  stats_bad:
    type: StatisticsGen
    inputs: {examples: gen_bad.examples}
"""
WORKER_MARK = "pipeline.parallel import worker_main"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("parallel")
    y = d / "pipeline.yaml"
    y.write_text(PIPELINE)
    r = cli("run", str(y), "--quiet", "--jobs", "2", cwd=d)
    return d, y, last_run_id(r.stdout)


def _interval(row) -> tuple[float, float]:
    return row["started"], row["started"] + row["duration"]


def _overlap(a, b) -> bool:
    (a0, a1), (b0, b1) = _interval(a), _interval(b)
    return max(a0, b0) < min(a1, b1)


def test_jobs_2_runs_branches_at_once_with_the_cache_keys_of_jobs_1(project):
    d, y, rid = project
    root = d / "pipeline_root"
    ex = executions(root, rid)
    assert {e["status"] for e in ex.values()} == {"done"} and len(ex) == 7, ex
    assert _overlap(ex["gen_a"], ex["gen_b"])  # the two ExampleGens ran at the same time
    assert _overlap(ex["stats_b"], ex["tf_a"]) or _overlap(ex["stats_b"], ex["stats_a"]) or \
        _overlap(ex["gen_b"], ex["stats_a"])  # and the b branch alongside the a branch's next steps
    assert not _overlap(ex["train_1"], ex["train_2"])  # max_parallel_trainers: 1 by default
    # each execution committed its folder with the metadata of an in-process run
    assert all((root / c / e["cache_key"] / "metadata.json").exists() for c, e in ex.items())
    assert not list(root.glob("*/.tmp-*")) and not list(root.glob("logs/*/.*.result.json"))
    # a warm pool: two worker processes (--jobs 2) executed the 7 components between them
    import re

    pids = {m for c in ex for m in re.findall(r"started \(worker process (\d+)\)", (root / "logs" / rid / f"{c}.log").read_text())}
    assert 1 <= len(pids) <= 2, pids

    r = cli("run", str(y), "--quiet", "--jobs", "1", cwd=d)  # in process: everything is a cache hit
    again = executions(root, last_run_id(r.stdout))
    assert {c: e["status"] for c, e in again.items()} == {c: "cached" for c in ex}
    assert {c: e["cache_key"] for c, e in again.items()} == {c: e["cache_key"] for c, e in ex.items()}


def test_mlflow_has_one_parent_and_a_finished_child_run_per_execution(project):
    import mlflow

    d, y, rid = project
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    exp = client.get_experiment_by_name("par")
    runs = client.search_runs([exp.experiment_id], f"tags.pipeline_run = '{rid}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["component"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert set(children) == {"gen_a", "gen_b", "stats_a", "stats_b", "tf_a", "train_1", "train_2"}
    ex = executions(d / "pipeline_root", rid)
    for cid, run in children.items():
        assert run.info.status == "FINISHED", (cid, run.info.status)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.run_id == ex[cid]["mlflow_run_id"]  # `list` shows the run the worker logged to
        logs = [a.path for a in client.list_artifacts(run.info.run_id, "logs")]
        assert logs == [f"logs/{cid}.log"], logs
    # what the worker logged (per-epoch metrics, params) and what the parent logged (summary metrics)
    train = children["train_1"].info.run_id
    assert len(client.get_metric_history(train, "loss")) == 1 and children["train_1"].data.params["epochs"] == "1"
    assert "records" in children["gen_a"].data.metrics


def test_max_parallel_trainers_2_lets_two_trainers_overlap(project):
    d, y, _ = project
    r = cli("run", str(y), "--quiet", "--jobs", "2", "--no-cache", "--only", "train_1", "--only", "train_2",
            "--set", "max_parallel_trainers=2", cwd=d)
    ex = executions(d / "pipeline_root", last_run_id(r.stdout))
    assert ex["train_1"]["status"] == ex["train_2"]["status"] == "done"
    assert _overlap(ex["train_1"], ex["train_2"])


def test_a_failure_skips_only_its_downstream(project):
    d, _, _ = project
    (d / "empty").mkdir(exist_ok=True)
    y = d / "failing.yaml"
    y.write_text(PIPELINE + FAILING)
    # stats_b runs alongside (its input comes from the cache)
    r = cli("run", str(y), "--quiet", "--jobs", "2", "--no-cache", "--only", "gen_bad", "--only", "stats_bad",
            "--only", "stats_b", cwd=d, check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    ex = executions(d / "pipeline_root", last_run_id(r.stdout))
    assert {c: e["status"] for c, e in ex.items()} == {"gen_bad": "failed", "stats_b": "done"}
    assert _overlap(ex["gen_bad"], ex["stats_b"])
    assert ex["gen_bad"]["error"].startswith("ExampleGen: ") and "Traceback" not in r.stdout + r.stderr
    assert "stats_bad" in r.stdout and "skipped" in r.stdout  # never started: no row, in the summary
    log = next((d / "pipeline_root" / "logs").glob("*/gen_bad.log")).read_text()
    assert "Traceback" in log  # the worker's traceback, in the component's log


def _start(d, y, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(y), "--quiet", "--jobs", "2", *args],
                            cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers_running(proc, n=2, timeout=120) -> list[int]:
    """The pids of ``proc``'s worker processes once ``n`` of them exist and are past start-up."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            kids = [k for k in psutil.Process(proc.pid).children() if WORKER_MARK in " ".join(k.cmdline())]
        except psutil.Error:
            kids = []
        if len(kids) >= n:
            time.sleep(1)  # past its start-up checks; still seconds from its end (TensorFlow, Beam to import)
            return [k.pid for k in kids]
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{n} workers never ran: {proc.communicate()}")


def _gone(pids, timeout=15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _rows(root, components):
    db = sqlite3.connect(root / "executions.db")
    db.row_factory = sqlite3.Row
    rows = db.execute(f"SELECT * FROM executions WHERE component IN ({','.join('?' * len(components))}) "
                      "ORDER BY id DESC LIMIT ?", (*components, len(components))).fetchall()
    db.close()
    return {r["component"]: dict(r) for r in rows}


def test_ctrl_c_and_sigkill_leave_no_worker_and_true_records(project):
    import mlflow

    d, y, _ = project
    root = d / "pipeline_root"
    new = ["--only", "gen_a", "--only", "gen_b", "--set", "gen_a.source.options.seed=5",
           "--set", "gen_b.source.options.seed=6"]  # new keys: both execute
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")

    # Ctrl-C: one line, exit 130, the workers stopped, both executions and their MLflow runs killed
    proc = _start(d, y, *new)
    pids = _workers_running(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in out + err and len([ln for ln in err.splitlines() if "interrupted" in ln]) == 1, err
    assert _gone(pids, timeout=5)
    rows = _rows(root, ["gen_a", "gen_b"])
    assert {r["status"] for r in rows.values()} == {"killed"}, rows
    assert {client.get_run(r["mlflow_run_id"]).info.status for r in rows.values()} == {"KILLED"}

    # SIGKILL of `run`: the kernel kills its workers; the next `list` marks their executions killed
    proc = _start(d, y, *new)
    pids = _workers_running(proc)
    proc.kill()
    proc.wait()
    assert _gone(pids), "a worker outlived the killed runner"
    rows = _rows(root, ["gen_a", "gen_b"])
    assert {r["status"] for r in rows.values()} == {"running"}  # what the dead runner left
    r = cli("list", "--pipeline", str(y), cwd=d)
    assert "killed" in r.stdout
    rows = _rows(root, ["gen_a", "gen_b"])
    assert {r["status"] for r in rows.values()} == {"killed"}, rows
    assert {client.get_run(r["mlflow_run_id"]).info.status for r in rows.values()} == {"KILLED"}

    r = cli("run", str(y), "--quiet", "--jobs", "2", *new, cwd=d)
    ex = executions(root, last_run_id(r.stdout))
    assert {e["status"] for e in ex.values()} == {"done"}, ex
    assert not list(root.glob("*/.tmp-*"))
