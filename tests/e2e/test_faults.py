"""True records after an interruption: SIGKILL or Ctrl-C (SIGINT) during the Trainer, with MLflow
tracking on. Afterwards nothing says `running`/RUNNING, Ctrl-C is one line and exit 130, and
the rerun resumes from the checkpoint (said in its log) with the whole history exported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.test_pipeline_e2e import _set, cli, executions, last_run_id, signs_only_yaml

pytestmark = pytest.mark.slow

EPOCHS = 12


def _start_and_wait_for_epoch(tmp_path, y):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [sys.executable, "-m", "pipeline", "run", str(y), "--quiet", "--to", "signs_train",
            *_set(f"signs_train.epochs={EPOCHS}")]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = tmp_path / "pipeline_root"
    deadline = time.time() + 300
    while time.time() < deadline:  # two finished epochs
        hist = list(root.glob("signs_train/.work/*/history-train.json"))
        if hist and proc.poll() is None and len(json.loads(hist[0].read_text()).get("loss", [])) >= 2:
            return proc, root
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"training never reached epoch 2: {proc.communicate()}")


def _mlflow_statuses(d):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["cnn-pipeline"])
    return dict(zip(runs["tags.mlflow.runName"], runs["status"]))


def test_sigkill_then_list_marks_killed_and_rerun_resumes_with_full_history(tmp_path):
    y = signs_only_yaml(tmp_path)
    proc, root = _start_and_wait_for_epoch(tmp_path, y)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = cli("list", "--pipeline", str(y), cwd=tmp_path)
    assert "running" not in r.stdout and "killed" in r.stdout
    statuses = _mlflow_statuses(tmp_path)
    assert "RUNNING" not in statuses.values() and statuses["signs_train"] == "KILLED", statuses

    r = cli("run", str(y), "--quiet", "--to", "signs_train", *_set(f"signs_train.epochs={EPOCHS}"), cwd=tmp_path)
    rid = last_run_id(r.stdout)
    assert executions(root, rid)["signs_train"]["status"] == "done"
    assert not list(root.glob("*/.tmp-*"))
    log = (root / "logs" / rid / "signs_train.log").read_text()
    assert "resuming signs_train (train) from epoch" in log
    model = next(p for p in (root / "signs_train").iterdir() if not p.name.startswith("."))
    hist = json.loads((model / "model" / "history.json").read_text())
    info = json.loads((model / "model" / "model_info.json").read_text())
    assert len(hist["loss"]) == EPOCHS and info["epochs_run"] == EPOCHS


def test_ctrl_c_is_one_line_exit_130_and_runs_killed(tmp_path):
    y = signs_only_yaml(tmp_path)
    proc, root = _start_and_wait_for_epoch(tmp_path, y)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, (out, err)
    line = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(line) == 1 and "during signs_train at epoch" in line[0], err
    statuses = _mlflow_statuses(tmp_path)
    assert "RUNNING" not in statuses.values(), statuses
    assert statuses["signs_train"] == "KILLED" and any(s == "KILLED" for n, s in statuses.items() if "cnn-pipeline" in n)
    r = cli("list", "--pipeline", str(y), cwd=tmp_path)
    assert "running" not in r.stdout


def test_three_concurrent_runs_on_one_root_keep_consistent_records(tmp_path):
    """Two runs with the same params and one with another Trainer setting, at once, through the
    Trainer and the Pusher: all complete, each execution is recorded once per run, every Pusher
    that ran registered one version, and @champion names a registered, blessed version."""
    import sqlite3

    y = signs_only_yaml(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    variants = [_set("signs_train.epochs=2"), _set("signs_train.epochs=2"), _set("signs_train.epochs=3")]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(y), "--quiet", *v], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in variants]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    ids = [last_run_id(o[0]) for o in outs]
    db = sqlite3.connect(tmp_path / "pipeline_root" / "executions.db")
    for rid in ids:
        rows = db.execute("SELECT component, status FROM executions WHERE pipeline_run = ?", (rid,)).fetchall()
        assert sorted(c for c, _ in rows) == sorted(set(c for c, _ in rows)) and len(rows) == 7, rows
        assert {s for _, s in rows} <= {"done", "cached"}
    # one process executes a (component, cache key) at a time: the other runs wait and take its
    # result from the cache, so nothing is executed twice (the two identical runs share all 7
    # keys, the third shares the 4 before the Trainer)
    twice = db.execute("SELECT component, count(*) FROM executions WHERE status = 'done' "
                       "GROUP BY component, cache_key HAVING count(*) > 1").fetchall()
    assert twice == [], twice
    pushes = db.execute("SELECT count(*) FROM executions WHERE component = 'signs_push' AND status = 'done'").fetchone()[0]
    db.close()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name='signs-cnn'")
    assert len(versions) == pushes == 2  # one version per Pusher that ran: one per setting
    champion = client.get_model_version_by_alias("signs-cnn", "champion")
    assert champion.version in {v.version for v in versions} and champion.tags["blessed"] == "true"
