"""The Trainer under tf.distribute (components/distribution.py), on a tiny SIGNS dataset, each
training in fresh `python -m pipeline component Trainer` processes (logical CPU devices can only
be configured before TensorFlow initialises its devices, and multi_worker is one process per
worker):

* mirrored on 2 logical CPUs and multi_worker with 2 local workers follow the loss curve of a
  single-device run with the same global batch and seed, and say what each replica received
  (half of each global batch);
* under multi_worker only the chief writes an artifact (the other worker exits 0 and leaves no
  folder behind);
* SIGKILL of both workers after some epochs, then the same commands again: training resumes
  from the chief's last checkpoint on both workers and completes.

Tolerance: per-epoch training and held-out losses within 1% (relative) of the single-device
run, the data unshuffled (so both see the same batches). The strategies compute the global
batch's gradient as per-replica parts summed by an all-reduce: float rounding, and in the last,
partial batch of an epoch (73 = 4 x 16 + 9, split 5 + 4) Keras' per-replica mean weights the
examples 1/10 and 1/8 instead of 1/9; momentum carries both through the epochs. Measured
(3 epochs, SGD 0.05): 1.7e-3 on the training loss, 6.4e-3 on the held-out loss, the same for
mirrored and multi_worker (whose runs agree with each other exactly). SGD (not Adam) makes the curve depend
on the gradient's scale: a loss not divided by the replicas doubles the step and moves the
curve by far more than 1%, and a replica that trained on the whole batch shows in the logged
per-replica batch and example counts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.base import ComponentError
from components.distribution import DistributionParams, parse_tf_config
from components.serving import free_ports

ROOT = Path(__file__).resolve().parents[2]
BATCH = 16
# shuffle_buffer=0: every run sees the same batches in the same order. A shuffled pipeline is
# shuffled differently once tf.distribute re-creates it per worker (same seed, other order from
# the second epoch on), which would compare two random orders instead of the strategies' arithmetic.
COMMON = {"model": "signs_cnn", "batch_size": BATCH, "optimizer": "sgd", "learning_rate": 0.05, "seed": 0,
          "shuffle_buffer": 0}
REL_TOL = 0.01


# ---------------------------------------------------------------- TF_CONFIG and params (fast)
def _cfg(task, cluster=None):
    return json.dumps({"cluster": cluster or {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": task})


def test_tf_config_chief_is_worker_0_or_the_chief_job():
    w0 = parse_tf_config(_cfg({"type": "worker", "index": 0}))
    w1 = parse_tf_config(_cfg({"type": "worker", "index": 1}))
    assert w0.is_chief and not w1.is_chief and w0.num_workers == 2 and w1.name == "worker-1"
    both = {"chief": ["h:1"], "worker": ["h:2"]}
    assert parse_tf_config(_cfg({"type": "chief", "index": 0}, both)).is_chief
    w = parse_tf_config(_cfg({"type": "worker", "index": 0}, both))
    assert not w.is_chief and w.num_workers == 2


@pytest.mark.parametrize("text, names", [
    (None, "TF_CONFIG environment variable is not set"),
    ("{not json", "TF_CONFIG: not valid JSON"),
    (_cfg({"type": "worker", "index": 2}), "TF_CONFIG.task.index: 2"),
    (_cfg({"type": "ps", "index": 0}), "TF_CONFIG.task.type"),
    (_cfg({"type": "worker", "index": 0}, {"worker": ["nohostport"]}), "TF_CONFIG.cluster.worker"),
    (json.dumps({"cluster": {"worker": ["h:1"]}}), "TF_CONFIG.task"),
])
def test_malformed_tf_config_names_the_key(text, names):
    with pytest.raises(ComponentError, match=names.replace(".", r"\.")):
        parse_tf_config(text)


def test_logical_cpus_only_with_mirrored():
    assert DistributionParams().strategy == "default"
    with pytest.raises(ValueError, match="logical_cpus applies to strategy 'mirrored'"):
        DistributionParams(strategy="multi_worker", logical_cpus=2)


# ---------------------------------------------------------------- trainings in subprocesses
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pipeline.runner import run_single

    d = tmp_path_factory.mktemp("dist")
    run_single("ExampleGen", {}, {"source": {"format": "synthetic_signs", "options": {"num_examples": 120}},
                                  "split_ratios": {"train": 0.6, "eval": 0.2, "test": 0.2}}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
    return ex, d / "tf" / "transform", json.loads((ex / "schema.json").read_text())


def _cmd(data, out: Path, **params) -> list[str]:
    ex, tf_dir, _ = data
    flat = []
    for k, v in {**COMMON, **params}.items():
        flat += ["--param", f"{k}={v}"]
    return [sys.executable, "-m", "pipeline", "component", "Trainer", "--input", f"examples={ex}",
            "--input", f"transform={tf_dir}", *flat, "--out", str(out)]


def _env(tf_config: str | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return env


def _text(p) -> str:
    return " ".join(p.split())  # the console's line wrapping undone


def _start_workers(data, out: Path, n: int = 2, **params) -> list[subprocess.Popen]:
    ports = free_ports(n)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [subprocess.Popen(_cmd(data, out, **{"distribution.strategy": "multi_worker", "distribution.timeout_s": 120,
                                                **params}),
                             cwd=out.parent, env=_env(json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                               "index": i}})),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for i in range(n)]


def _wait(procs, timeout=240) -> list[str]:
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return outs


def _losses(out: Path) -> dict:
    h = json.loads((out / "model" / "history.json").read_text())
    return {"loss": h["loss"], "val_loss": h["val_loss"]}


def _assert_close(got: dict, ref: dict):
    for k in ref:
        assert len(got[k]) == len(ref[k]), k
        for e, (a, b) in enumerate(zip(got[k], ref[k])):
            assert abs(a - b) <= REL_TOL * abs(b), f"{k} epoch {e + 1}: {a} vs single-device {b}"


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "trainer"
    r = subprocess.run(_cmd(data, out, epochs=3), cwd=out.parent, env=_env(), capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    return _losses(out)


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_follows_the_single_device_curve(data, single, tmp_path):
    out = tmp_path / "trainer"
    r = subprocess.run(_cmd(data, out, epochs=3, **{"distribution.strategy": "mirrored",
                                                    "distribution.logical_cpus": 2}),
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    log = _text(r.stdout + r.stderr)
    assert r.returncode == 0, log
    assert "mirrored: 2 replicas" in log
    # both replicas of this process got half of the first global batch, and the epoch the whole split once
    assert f"first step [{BATCH // 2}, {BATCH // 2}]" in log
    assert f"{sum(1 for _ in _records(data[0], 'train'))} examples on this process's 2 replica(s)" in log
    _assert_close(_losses(out), single)


@pytest.mark.slow
def test_multi_worker_two_local_workers_only_the_chief_writes(data, single, tmp_path):
    out = tmp_path / "trainer"
    procs = _start_workers(data, out, epochs=3)
    chief, other = (_text(o) for o in _wait(procs))
    assert [p.returncode for p in procs] == [0, 0], chief[-2500:] + "\n---\n" + other[-2500:]
    assert "Trainer done in" in chief and "not the chief, no artifact from this worker" in other
    # each worker's single replica received half of every global batch, and together the whole split
    per = []
    for log in (chief, other):
        assert f"first step [{BATCH // 2}]" in log
        per.append(int(log.split(" examples on this process's 1 replica(s)")[0].rsplit(" ", 1)[1]))
    info = json.loads((out / "model" / "model_info.json").read_text())
    assert info["epochs_run"] == 3
    n_train = sum(1 for _ in _records(data[0], "train"))
    assert sum(per) == n_train and abs(per[0] - per[1]) <= BATCH // 2
    # one artifact, the chief's: no second output, temporary folder or worker scratch remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer"]
    _assert_close(_losses(out), single)


def _records(examples: Path, split: str):
    import tensorflow as tf

    files = sorted(str(f) for f in (examples / split).glob("*.tfrecord*"))
    return tf.data.TFRecordDataset(files).as_numpy_iterator()


@pytest.mark.slow
def test_multi_worker_resumes_after_sigkill_of_every_worker(data, tmp_path):
    out, epochs = tmp_path / "trainer", 8
    history = tmp_path / ".work-trainer" / "history-train.json"
    procs = _start_workers(data, out, epochs=epochs)
    killed_after, t0 = 0, time.time()
    try:
        while time.time() - t0 < 180 and all(p.poll() is None for p in procs):
            try:
                killed_after = len(json.loads(history.read_text())["loss"])
            except (OSError, ValueError, KeyError):
                killed_after = 0
            if killed_after >= 2:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    outs = _wait(procs)
    assert 2 <= killed_after < epochs, "the training was not caught in the middle:\n" + _text(outs[0])
    assert not out.exists()  # a killed run leaves no artifact
    procs = _start_workers(data, out, epochs=epochs)
    chief, other = (_text(o) for o in _wait(procs))
    assert [p.returncode for p in procs] == [0, 0], chief[-2500:] + "\n---\n" + other[-2500:]
    resumed = []
    for log in (chief, other):  # the non-chief got the chief's epoch (and weights) by broadcast
        assert "resuming Trainer (train) from epoch" in log, log
        resumed.append(int(log.split("resuming Trainer (train) from epoch ")[1].split(":")[0]))
    assert resumed[0] == resumed[1] and resumed[0] >= killed_after + 1
    info = json.loads((out / "model" / "model_info.json").read_text())
    h = json.loads((out / "model" / "history.json").read_text())
    assert info["epochs_run"] == epochs and len(h["loss"]) == epochs
    assert all(v == v for v in h["loss"])  # no gap (NaN) left by the interruption


@pytest.mark.slow
def test_multi_worker_alone_ends_after_timeout_instead_of_hanging(data, tmp_path):
    """A worker whose peers never start: TensorFlow would wait for them for good (ignoring
    SIGTERM); the Trainer bounds the wait by distribution.timeout_s and says why."""
    out = tmp_path / "trainer"
    port, other = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{other}"]}
    p = subprocess.Popen(_cmd(data, out, epochs=1, **{"distribution.strategy": "multi_worker",
                                                      "distribution.timeout_s": 3}),
                         cwd=tmp_path, env=_env(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = _text(_wait([p], timeout=120)[0])
    assert p.returncode == -signal.SIGALRM, log
    assert "worker-0 waiting up to 3 s (distribution.timeout_s" in log and f"127.0.0.1:{other}" in log
    assert not out.exists()
