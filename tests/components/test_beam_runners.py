"""The Beam components on every engine we can run here (components/beam_engine.py): the SIGNS
ExampleGen, StatisticsGen and BulkInferrer give the same content on `local` (FnApiRunner in this
process), `multiprocess` (FnApiRunner with 2 SDK worker processes) and `dask` (Beam's DaskRunner
on 2 Dask worker processes); a LocalCluster started for a run is closed afterwards; engine
settings that cannot work are errors naming the setting. Flink, Spark and Dataflow cannot run
here (no job server, no cloud account): only their up-front checks are tested."""
from __future__ import annotations

import json
import os
import resource
import time

import pytest

from components.base import ComponentError
from components.beam_engine import (open_pipeline, pipeline_args, read_tfrecord_chunk, tfrecord_chunks,
                                    write_atomic, write_tfrecord)
from pipeline.runner import run_single

SIGNS = {"source": {"format": "synthetic_signs", "options": {"num_examples": 300, "seed": 0}},
         "image_size": [64, 64], "split_ratios": {"train": 0.7, "eval": 0.15, "test": 0.15},
         "duplicates": "drop_leaks"}


def beam(runner, **kw):
    return {"runner": runner, "workers": 2, "address": None, "args": [], **kw}


def closed_port() -> int:
    from components.serving import free_port

    return free_port()  # nothing listens once the socket is closed


def children() -> dict[int, str]:
    """This process's descendants but Python's multiprocessing resource tracker (started at the
    first spawned process, it lives as long as this process, whoever spawned it)."""
    import psutil

    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if "multiprocessing.resource_tracker" not in cmd:
            out[p.pid] = cmd
    return out


def decoded(examples_dir) -> dict:
    """split -> {image/key: every decoded feature}, read with TensorFlow (not the writer's code)."""
    import tensorflow as tf

    from data.tfrecord import decode_example_py

    out = {}
    for split_dir in sorted(p for p in examples_dir.iterdir() if p.is_dir()):
        files = sorted(str(f) for f in split_dir.glob("*.tfrecord"))
        recs = [decode_example_py(r.numpy()) for r in tf.data.TFRecordDataset(files)]
        out[split_dir.name] = {r["image/key"][0].decode(): r for r in recs}
    return out


def reports(examples_dir) -> dict:
    return {name: json.loads((examples_dir / name).read_text())
            for name in ("schema.json", "error_report.json", "duplicates.json")}


# ----------------------------------------------------------------------------- fast checks
def test_each_runner_maps_to_its_beam_options():
    assert pipeline_args(beam("local", args=["--x=1"])) == ["--runner=FnApiRunner", "--x=1"]
    mp = pipeline_args(beam("multiprocess", workers=3))
    assert mp[:3] == ["--runner=FnApiRunner", "--direct_num_workers=3", "--direct_running_mode=multi_processing"]
    dk = pipeline_args(beam("dask", address="tcp://h:8786", args=["--dask_npartitions=5"]))
    assert dk == ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_client_address=tcp://h:8786",
                  "--dask_npartitions=5"]
    assert pipeline_args(beam("flink", args=["--flink_master=h:8081"])) == ["--runner=FlinkRunner",
                                                                            "--flink_master=h:8081"]
    assert pipeline_args(beam("spark"))[0] == "--runner=SparkRunner"
    assert pipeline_args(beam("dataflow"))[0] == "--runner=DataflowRunner"


def test_runner_in_args_and_unknown_runner_are_errors():
    with pytest.raises(ComponentError, match=r"beam.args: 'DirectRunner' given as --runner"):
        pipeline_args(beam("local", args=["--runner=DirectRunner"]))
    with pytest.raises(ComponentError, match="unknown runner 'ray'"):
        pipeline_args(beam("ray"))


@pytest.mark.parametrize("runner, args, message", [
    ("flink", [], "needs a running Flink cluster: add --flink_master=HOST:PORT"),
    ("flink", ["--flink_master=[auto]"], "needs a running Flink cluster"),
    ("spark", ["--spark_master_url=local[4]"], "needs a running Spark cluster: add --spark_master_url"),
    ("flink", ["--flink_master=127.0.0.1:{port}"], "nothing answers at 127.0.0.1:{port}"),
    ("spark", ["--job_endpoint=127.0.0.1:{port}"], "nothing answers at 127.0.0.1:{port}"),
    ("dataflow", ["--project=p"], "needs --region=..., --temp_location=..."),
])
def test_untestable_runners_fail_up_front_naming_what_is_missing(runner, args, message):
    port = closed_port()
    args = [a.format(port=port) for a in args]
    t0 = time.monotonic()
    with pytest.raises(ComponentError, match=message.format(port=port).replace("[", r"\[").replace(".", r"\.")):
        with open_pipeline(beam(runner, args=args), who="ExampleGen"):
            pytest.fail("the pipeline must not open")
    assert time.monotonic() - t0 < 15


def test_unreachable_dask_scheduler_is_a_clear_error_within_its_timeout():
    address = f"tcp://127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ComponentError) as e:
        with open_pipeline(beam("dask", address=address, args=["--dask_connection_timeout=3"]), who="ExampleGen"):
            pytest.fail("the pipeline must not open")
    assert time.monotonic() - t0 < 20
    assert f"cannot reach the Dask scheduler at beam.address {address} within 3 s" in str(e.value)
    assert str(e.value).startswith("ExampleGen: ")


def test_tfrecord_shards_written_without_tensorflow_read_back_by_tensorflow_in_chunks(tmp_path):
    import tensorflow as tf

    records = [os.urandom(n) for n in (0, 1, 100, 5000)] * 10
    assert write_tfrecord(tmp_path / "a.tfrecord", records[:25], tmp_path / "tmp") == 25
    assert write_tfrecord(tmp_path / "b.tfrecord", records[25:], tmp_path / "tmp") == 15
    files = [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]
    assert [r.numpy() for r in tf.data.TFRecordDataset(files)] == records
    assert not list((tmp_path / "tmp").iterdir())  # the temp file was renamed, not left behind
    for kw, sizes in (({"chunk_size": 10}, [10, 10, 5, 10, 5]), ({"min_chunk": 16}, [16, 9, 15])):
        chunks = tfrecord_chunks(files, **kw)
        assert [c[2] for c in chunks] == sizes
        assert [c[3] for c in chunks] == [sum(sizes[:i]) for i in range(len(sizes))]
        assert [r for c in chunks for r in read_tfrecord_chunk(*c[:3])] == records


def test_write_atomic_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, fail, tmp_path / "tmp")
    assert target.read_text() == "old" and not list((tmp_path / "tmp").iterdir())


# ----------------------------------------------------------------------------- on the engines
def _pids_of_a_cpu_bound_map(settings, n=24) -> set[int]:
    import apache_beam as beam_sdk

    def work(x):
        sum(i * i for i in range(200_000))  # long enough that every worker gets a share
        return os.getpid()

    class Record(beam_sdk.DoFn):
        def __init__(self, folder):
            self.folder = folder

        def process(self, x):
            write_atomic(__import__("pathlib").Path(self.folder) / f"{x[0]}.pid",
                         lambda f: f.write(str(x[1]).encode()), __import__("pathlib").Path(self.folder) / "tmp")
            yield x[0]

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with open_pipeline(settings, who="test") as p:
            (p | beam_sdk.Create(list(range(n))) | beam_sdk.Map(lambda i: (i, work(i))) | beam_sdk.ParDo(Record(d)))
        files = [f for f in os.listdir(d) if f.endswith(".pid")]
        assert len(files) == n
        return {int(open(os.path.join(d, f)).read()) for f in files}


@pytest.mark.slow
def test_multiprocess_spreads_the_work_over_its_worker_processes():
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids = _pids_of_a_cpu_bound_map(beam("multiprocess", workers=2))
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert len(pids) == 2 and os.getpid() not in pids
    assert cpu1.ru_utime > cpu0.ru_utime


@pytest.fixture(scope="module")
def dask_address():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.mark.slow
def test_dask_spreads_the_work_over_its_worker_processes(dask_address):
    pids = _pids_of_a_cpu_bound_map(beam("dask", address=dask_address))
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dask_address):
    """ExampleGen and StatisticsGen on each engine; a model trained (1 epoch) on the local
    examples; BulkInferrer of that model on the local examples' test split on each engine."""
    d = tmp_path_factory.mktemp("engines")
    engines = {"local": beam("local"), "multiprocess": beam("multiprocess", workers=2),
               "dask": beam("dask", address=dask_address)}
    out = {}
    for name, settings in engines.items():
        run_single("ExampleGen", {}, SIGNS, d / name / "gen", beam=settings)
        ex = d / name / "gen" / "examples"
        run_single("StatisticsGen", {"examples": ex}, {}, d / name / "stats", beam=settings)
        out[name] = {"examples": ex, "statistics": d / name / "stats" / "statistics" / "statistics.json"}
    ex = out["local"]["examples"]
    run_single("Transform", {"examples": ex, "statistics": out["local"]["statistics"].parent}, {}, d / "tf")
    run_single("Trainer", {"examples": ex, "transform": d / "tf" / "transform"},
               {"model": "signs_cnn", "epochs": 1, "batch_size": 32}, d / "train")
    for name, settings in engines.items():
        run_single("BulkInferrer", {"model": d / "train" / "model", "examples": ex}, {"split": "test", "batch_size": 16},
                   d / name / "infer", beam=settings)
        out[name]["predictions"] = d / name / "infer" / "inference" / "predictions.jsonl"
    return out


@pytest.mark.slow
def test_example_gen_writes_the_same_records_and_reports_on_every_engine(runs):
    local = decoded(runs["local"]["examples"])
    assert {s: len(v) for s, v in local.items()} == reports(runs["local"]["examples"])["schema.json"]["splits"]
    assert sum(len(v) for v in local.values()) == 300
    for name in ("multiprocess", "dask"):
        assert decoded(runs[name]["examples"]) == local, name
        assert reports(runs[name]["examples"]) == reports(runs["local"]["examples"]), name
        names = sorted(p.name for p in (runs[name]["examples"] / "train").iterdir())
        assert names == ["data-00000-of-00001.tfrecord"], name  # no temp files or sink leftovers


@pytest.mark.slow
def test_statistics_gen_gives_the_same_statistics_on_every_engine(runs):
    local = json.loads(runs["local"]["statistics"].read_text())
    assert sum(s["num_examples"] for s in local["splits"].values()) == 300
    for name in ("multiprocess", "dask"):
        assert json.loads(runs[name]["statistics"].read_text()) == local, name


@pytest.mark.slow
def test_bulk_inferrer_gives_the_same_predictions_on_every_engine(runs):
    local = runs["local"]["predictions"].read_text()
    n_test = reports(runs["local"]["examples"])["schema.json"]["splits"]["test"]
    assert len(local.splitlines()) == n_test
    for name in ("multiprocess", "dask"):
        assert runs[name]["predictions"].read_text() == local, name


@pytest.mark.slow
def test_dask_local_cluster_runs_example_gen_and_is_closed_afterwards(runs, tmp_path, monkeypatch):
    # Dask's nannies set their workers' pre-spawn environment in this process: it must not stay
    import dask

    leaked = sorted(dask.config.get("distributed.nanny.pre-spawn-environ"))
    assert "MALLOC_TRIM_THRESHOLD_" in leaked
    for key in leaked:
        monkeypatch.setenv(key, "kept")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    before = children()
    run_single("ExampleGen", {}, {**SIGNS, "num_shards": 2}, tmp_path / "dask", beam=beam("dask", workers=2))
    left = {pid: cmd for pid, cmd in children().items() if pid not in before}
    assert not left, f"processes left behind by the LocalCluster: {left}"
    assert decoded(tmp_path / "dask" / "examples") == decoded(runs["local"]["examples"])  # shards do not matter
    assert sorted(p.name for p in (tmp_path / "dask" / "examples" / "train").iterdir()) == [
        "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    log = (tmp_path / "dask" / "log.txt").read_text()
    assert "Beam: dask, LocalCluster of 2 workers" in log
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert {k: os.environ[k] for k in leaked if k in os.environ} == {k: "kept" for k in leaked
                                                                       if k != "MALLOC_TRIM_THRESHOLD_"}


# ----------------------------------------------------------------------------- worker tuning
def _tuning_seen(settings) -> dict[int, int]:
    """pid -> gc.get_freeze_count() after tune_worker_process, from a DoFn on each worker."""
    import pathlib
    import tempfile

    import apache_beam as beam_sdk

    class Report(beam_sdk.DoFn):
        def __init__(self, folder):
            self.folder = folder

        def setup(self):
            from components.beam_engine import tune_worker_process

            tune_worker_process()

        def process(self, i):
            import gc

            sum(j * j for j in range(100_000))  # long enough that every worker gets a share
            folder = pathlib.Path(self.folder)
            write_atomic(folder / f"{i}.txt", lambda f: f.write(f"{os.getpid()} {gc.get_freeze_count()}".encode()),
                         folder / "tmp")
            yield i

    with tempfile.TemporaryDirectory() as d:
        with open_pipeline(settings, who="test") as p:
            p | beam_sdk.Create(list(range(16))) | beam_sdk.ParDo(Report(d))
        seen = [open(os.path.join(d, f)).read().split() for f in os.listdir(d) if f.endswith(".txt")]
        assert len(seen) == 16
        return {int(pid): int(frozen) for pid, frozen in seen}


@pytest.mark.slow
def test_run_scoped_workers_are_tuned_and_long_lived_processes_are_not(dask_address):
    """Beam's SDK workers (multiprocess) and the workers of a LocalCluster started for the run
    freeze what they loaded; the SDK workers' quick exit leaves the run successful (Beam raises
    when a worker exits non-zero). This process (local) and a cluster given by address, which
    outlive the run, are left alone."""
    import gc

    frozen_here = gc.get_freeze_count()
    sdk = _tuning_seen(beam("multiprocess", workers=2))
    assert len(sdk) == 2 and os.getpid() not in sdk and all(n > 0 for n in sdk.values()), sdk
    own = _tuning_seen(beam("dask", workers=2))
    assert os.getpid() not in own and all(n > 0 for n in own.values()), own
    assert _tuning_seen(beam("local")) == {os.getpid(): frozen_here}
    shared = _tuning_seen(beam("dask", address=dask_address))
    assert all(n == 0 for n in shared.values()), shared


def test_an_sdk_worker_that_failed_exits_as_python_does(monkeypatch):
    """After an unhandled exception (Python has set sys.last_value) the quick exit steps aside,
    so the worker's status stays 1; otherwise it ends the process with status 0."""
    import sys

    from components import beam_engine

    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.setattr(sys, "last_value", RuntimeError("boom"), raising=False)
    beam_engine._exit_now_if_clean()
    assert exits == []
    monkeypatch.delattr(sys, "last_value")
    monkeypatch.setattr(beam_engine.logging, "shutdown", lambda: None)  # keep pytest's handlers
    beam_engine._exit_now_if_clean()
    assert exits == [0]
