"""SIGKILL beyond the Trainer: during ExampleGen (a Beam pipeline writing shards) and during the
Pusher (MLflow model registration). Afterwards nothing says `running`/RUNNING, nothing half
written is taken for a result, and the rerun completes with whole outputs: every generated
example written once, and `@champion` on the rerun's registered version."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.test_faults import _mlflow_statuses
from tests.e2e.test_pipeline_e2e import _set, cli, executions, last_run_id, signs_only_yaml

pytestmark = pytest.mark.slow


def _run_and_kill_during(tmp_path, y, component: str, *args, after_s: float = 1.0):
    """Start `run`, SIGKILL it ``after_s`` after ``component``'s execution is recorded running."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(y), "--quiet", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db, deadline = tmp_path / "pipeline_root" / "executions.db", time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            con = sqlite3.connect(db)
            try:
                row = con.execute("SELECT status FROM executions WHERE component = ? ORDER BY id DESC LIMIT 1",
                                  (component,)).fetchone()
            except sqlite3.OperationalError:  # the table is being created
                row = None
            finally:
                con.close()
            if row and row[0] == "running":
                time.sleep(after_s)
                break
        time.sleep(0.1)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before {component} could be killed: {proc.communicate()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return tmp_path / "pipeline_root"


def _no_running_records(tmp_path, y, component: str) -> None:
    r = cli("list", "--pipeline", str(y), cwd=tmp_path)
    assert "running" not in r.stdout and "killed" in r.stdout, r.stdout
    statuses = _mlflow_statuses(tmp_path)
    assert "RUNNING" not in statuses.values() and statuses[component] == "KILLED", statuses


def test_sigkill_during_example_gen_leaves_no_result_and_rerun_writes_every_example(tmp_path):
    y = signs_only_yaml(tmp_path)  # 1,800 generated images: several seconds of Beam work
    root = _run_and_kill_during(tmp_path, y, "signs_gen", "--to", "signs_gen", after_s=2.0)
    assert not [p for p in (root / "signs_gen").iterdir() if not p.name.startswith(".")]  # no keyed folder
    _no_running_records(tmp_path, y, "signs_gen")

    r = cli("run", str(y), "--quiet", "--to", "signs_gen", cwd=tmp_path)
    ex = executions(root, last_run_id(r.stdout))["signs_gen"]
    assert ex["status"] == "done"
    assert not list(root.glob("*/.tmp-*"))  # the killed run's temporary folder is gone too
    out = root / "signs_gen" / ex["cache_key"] / "examples"
    schema = json.loads((out / "schema.json").read_text())
    import tensorflow as tf

    counts = {s: sum(1 for _ in tf.data.TFRecordDataset(sorted(str(p) for p in (out / s).glob("*.tfrecord"))))
              for s in schema["splits"]}
    assert sum(counts.values()) == 1800 and counts == schema["splits"], (counts, schema["splits"])
    keys = [tf.io.parse_single_example(r, {"image/key": tf.io.FixedLenFeature([], tf.string)})["image/key"].numpy()
            for s in counts for r in tf.data.TFRecordDataset(sorted(str(p) for p in (out / s).glob("*.tfrecord")))]
    assert len(set(keys)) == 1800  # each example once


def test_sigkill_during_pusher_then_rerun_registers_and_moves_champion(tmp_path):
    y = signs_only_yaml(tmp_path)
    root = _run_and_kill_during(tmp_path, y, "signs_push", *_set(), after_s=0.5)
    _no_running_records(tmp_path, y, "signs_push")

    r = cli("run", str(y), "--quiet", *_set(), cwd=tmp_path)
    rid = last_run_id(r.stdout)
    ex = executions(root, rid)
    assert ex["signs_push"]["status"] == "done"
    assert {c: e["status"] for c, e in ex.items() if c != "signs_push"} == {c: "cached" for c in ex if c != "signs_push"}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("signs-cnn", "champion")
    assert champion.tags["pipeline_run"] == rid and champion.tags["blessed"] == "true"
    assert champion.tags["cache_key"] == ex["signs_push"]["cache_key"]
    # the killed Pusher may have registered a version before it died, never more than one
    assert len(client.search_model_versions("name='signs-cnn'")) in (1, 2)
