"""Open a Beam pipeline on the engine the pipeline's `beam:` section names, and the file I/O
that behaves the same on every engine.

    with open_pipeline(ctx.beam, ctx.logger, who="ExampleGen") as p:
        p | beam.Create(items) | ...          # runs when the block ends; started engines are closed

| runner       | Beam options                                                                  | started for the run |
|--------------|-------------------------------------------------------------------------------|---------------------|
| local        | ``--runner=FnApiRunner``                                                       | nothing: this process |
| multiprocess | ``--runner=FnApiRunner --direct_num_workers=N`` (+ ``--direct_running_mode=multi_processing`` where workers start cold) | N SDK worker processes, forked from a warm zygote on Linux (components/beam_worker_pool.py); elsewhere, or with ``--direct_running_mode`` in ``beam.args``, Beam's own cold workers |
| dask         | ``--runner=apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address=A`` | a ``distributed.LocalCluster`` of N worker processes unless ``address`` names a scheduler |
| flink, spark, dataflow | ``--runner=FlinkRunner`` / ``SparkRunner`` / ``DataflowRunner``      | nothing (the cluster or service is yours) |

``beam.args`` are always appended. Flink, Spark and Dataflow are NOT tested here (they need a
job server or a cloud account); their prerequisites are checked up front so that a missing one
is an error naming the option, not a traceback or a hang. Every engine except ``local`` runs
the DoFns in other processes, which import this project: a remote Dask or Flink worker needs it
installed, and the artifact folders (which DoFns write into) on a filesystem it shares.

What the components may use (Beam 2.77, checked on the DaskRunner with 2 worker processes, see
tests/components/test_beam_runners.py):

* ``Create``, single-output ``ParDo``/``Map``/``FlatMap``, ``GroupByKey``, ``CombinePerKey``
  give the same results on every engine.
* Not on Dask: ``with_outputs`` (tagged outputs) and ``Partition`` hand EVERY element to each
  output; ``ReadFromTFRecord`` (``beam.io.Read``) becomes a no-op; only the transforms upstream
  of the last one applied are computed, so a second branch (e.g. a ``WriteToText`` sink) never
  runs; a DoFn's ``finish_bundle`` outputs are dropped (so ``BatchElements`` loses its last
  batch). So the components tag elements themselves, keep one chain ending in one transform,
  read TFRecords in a DoFn from (file, offset, count) chunks, and write their outputs from
  DoFns with ``write_atomic`` (temp file, renamed into place): a retried bundle rewrites the
  same file, and the component's driver checks afterwards that every record arrived.
* On FnApiRunner a ``Reshuffle`` (``Create``'s default) is what spreads the next stage over
  ``direct_num_workers`` processes: without it the first fused stage is one bundle in one worker.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import uuid
from pathlib import Path
from typing import Callable, Iterator

from components.base import ComponentError

RUNNERS = ("local", "multiprocess", "dask", "flink", "spark", "dataflow")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_PORTABLE = {"flink": "FlinkRunner", "spark": "SparkRunner", "dataflow": "DataflowRunner"}
DASK_CONNECT_TIMEOUT_S = 10  # unless beam.args has --dask_connection_timeout
# the project's root: DoFns pickled by reference import components/, data/, models/ from it
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


def _arg(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` (or ``--name value``) in args, the last one winning."""
    value = None
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def _settings(beam: dict) -> tuple[str, int, str | None, list[str]]:
    runner = beam.get("runner", "local")
    if runner not in RUNNERS:
        raise ComponentError(f"beam.runner: unknown runner {runner!r} (known: {', '.join(RUNNERS)})")
    args = [str(a) for a in beam.get("args") or []]
    if _arg(args, "runner") is not None:
        raise ComponentError(f"beam.args: {_arg(args, 'runner')!r} given as --runner; choose the engine with "
                             f"beam.runner ({', '.join(RUNNERS)}) instead")
    return runner, int(beam.get("workers") or 1), beam.get("address"), args


def pipeline_args(beam: dict, *, dask_address: str | None = None, dask_workers: int | None = None) -> list[str]:
    """The Beam options for these settings (``ctx.beam``). For dask, the scheduler address
    (``dask_address``, else ``beam['address']``) and its worker count set the defaults of
    ``--dask_client_address`` and ``--dask_npartitions``."""
    runner, workers, address, args = _settings(beam)
    if runner == "local":
        return ["--runner=FnApiRunner", *args]
    if runner == "multiprocess":
        # (the SDK workers log at INFO on stderr whatever the options: FnApiRunner hands them none;
        # the CLI's quiet mode sends that stream to /dev/null)
        return ["--runner=FnApiRunner", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing",
                *args]
    if runner == "dask":
        out = [f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_address or address}"]
        if _arg(args, "dask_npartitions") is None and _arg(args, "dask_partition_size") is None:
            # Beam's default (128 elements a partition) leaves a 300-image ExampleGen in 3 partitions;
            # a few per worker keeps them all busy
            out.append(f"--dask_npartitions={4 * (dask_workers or workers)}")
        return [*out, *args]
    return [f"--runner={_PORTABLE[runner]}", *args]


def describe(beam: dict) -> str:
    """One line naming the engine, for logs."""
    runner, workers, address, args = _settings(beam)
    return {"local": "local (FnApiRunner, in this process)",
            "multiprocess": f"multiprocess, {workers} worker processes (FnApiRunner)",
            "dask": f"dask, scheduler {address}" if address else f"dask, LocalCluster of {workers} workers",
            }.get(runner, f"{runner} ({_PORTABLE.get(runner)}, untested here) {' '.join(args)}".rstrip())


SDK_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"  # what multiprocess's cold workers run
RUN_WORKER_ENV = "CNN_PIPELINE_RUN_WORKER"  # set in the workers of a LocalCluster started for one run
_worker_tuned = False


def tune_worker_process() -> None:
    """Called from the components' ``DoFn.setup``. In a worker process that lives for one
    pipeline run only (one of Beam's cold SDK workers under ``multiprocess``, or a worker of the
    Dask LocalCluster started for the run) it does, once (a forked SDK worker needs neither: its
    zygote froze what it imported, and it leaves by ``os._exit``, components/beam_worker_pool.py):

    * ``gc.freeze()``: what is loaded by then (Beam, pandas, numpy, this project: hundreds of
      thousands of objects) stays for the life of the process anyway; without it every full
      collection the DoFns' allocations trigger walks all of it (a tenth of ExampleGen's
      per-image time in its workers, in a development measurement).
    * in an SDK worker, a quick exit: Beam's runner waits for its workers to exit one after the
      other, and Python's teardown of a worker holding all that takes a large part of a second
      each. When the harness returns normally the process ends there (streams and logging
      flushed first); after an unhandled exception it exits as usual, traceback and status
      kept.

    Anywhere else (this process under ``local``; a Dask worker of a cluster given by address,
    which outlives the run and whose later garbage a freeze would pin) it does nothing.
    """
    global _worker_tuned
    import sys

    if _worker_tuned:
        return
    main = sys.modules.get("__main__")
    sdk_worker = getattr(getattr(main, "__spec__", None), "name", None) == SDK_WORKER_MAIN
    if not sdk_worker and os.environ.get(RUN_WORKER_ENV) != "1":
        return
    import gc

    _worker_tuned = True
    gc.collect()
    gc.freeze()
    if sdk_worker:
        import atexit

        atexit.register(_exit_now_if_clean)


def _exit_now_if_clean() -> None:
    import sys

    if getattr(sys, "last_value", None) is not None:  # an unhandled exception: keep Python's exit (status 1)
        return
    logging.shutdown()  # registered with atexit before this, so it would run after it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


@contextlib.contextmanager
def open_pipeline(beam: dict, logger: logging.Logger | None = None, *, who: str = "Beam") -> Iterator:
    """A ``beam.Pipeline`` on the configured engine. The pipeline runs when the ``with`` block
    ends without an error; whatever was started for it (Dask's LocalCluster and client, Beam's
    worker processes) is closed in every case, Ctrl-C included. An engine that cannot be reached
    or is not installed is a ``ComponentError`` naming the setting (``who`` prefixes it)."""
    import apache_beam as beam_sdk
    from apache_beam.options.pipeline_options import PipelineOptions

    log = logger or logging.getLogger(__name__)
    runner, workers, address, args = _settings(beam)
    _project_on_pythonpath()
    with contextlib.ExitStack() as stack:
        line = describe(beam)
        dask_address, dask_workers = None, None
        if runner == "dask":
            dask_address, dask_workers, line = _dask_scheduler(stack, workers, address, args, who)
        elif runner in _PORTABLE:
            _check_portable(runner, args, who)
        opt_args = pipeline_args(beam, dask_address=dask_address, dask_workers=dask_workers)
        fn_runner = None
        if runner == "multiprocess" and _arg(args, "direct_running_mode") is None:
            fn_runner, opt_args, line = _forked_workers_runner(opt_args, line)
        log.info("Beam: %s", line)
        p = beam_sdk.Pipeline(runner=fn_runner, options=PipelineOptions(opt_args))
        yield p
        result = p.run()
        client = getattr(result, "client", None)  # the DaskRunner's own Client: Beam never closes it
        if client is not None:
            stack.callback(client.close)
        result.wait_until_finish()


class _NoWorkerModeWarning(logging.Filter):
    """FnApiRunner warns that N workers want ``direct_running_mode`` multi_processing; with
    forked workers the environment, not that mode, makes them processes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_running_mode" not in record.getMessage()


_FN_RUNNER_LOG = "apache_beam.runners.portability.fn_api_runner.fn_runner"


def _forked_workers_runner(opt_args: list[str], line: str):
    """(FnApiRunner whose SDK workers are forked from a warm process, the options without
    Beam's running mode, the log line); unchanged where forked workers are unavailable
    (components/beam_worker_pool.py says where and why)."""
    from components import beam_worker_pool

    command = beam_worker_pool.worker_command()
    if command is None:
        return None, opt_args, line
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    fn_log = logging.getLogger(_FN_RUNNER_LOG)
    if not any(isinstance(f, _NoWorkerModeWarning) for f in fn_log.filters):
        fn_log.addFilter(_NoWorkerModeWarning())
    runner = FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))
    return (runner, [a for a in opt_args if a != "--direct_running_mode=multi_processing" and not
                     a.startswith("--runner=")], f"{line}, workers forked from a warm process")


def _project_on_pythonpath() -> None:
    """Worker processes (Beam's SDK workers, Dask's) import the DoFns' modules: make sure they
    find this project whatever the working directory. Set once for the process and left (a
    restore could undo another component's setting when components run in parallel threads)."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _PROJECT_ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT, *parts])


def _quiet() -> bool:
    """Engines log every worker start and stop at INFO: shown only to a caller who asked for INFO
    on the root logger (e.g. ``logging.basicConfig(level=logging.INFO)``)."""
    return logging.getLogger().getEffectiveLevel() > logging.INFO


def _quiet_dask() -> None:
    """Dask's INFO lines off in this process unless ``_quiet`` says otherwise (a LocalCluster's
    workers get the same level through ``silence_logs``)."""
    if not _quiet():
        return
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _dask_scheduler(stack: contextlib.ExitStack, workers: int, address: str | None, args: list[str],
                    who: str) -> tuple[str, int, str]:
    """(scheduler address, worker count, log line): ``address``'s scheduler, checked reachable
    and with workers, or a LocalCluster started for this run and closed by ``stack``."""
    try:
        import distributed
    except ImportError:
        raise ComponentError(f"{who}: beam.runner dask needs Dask: pip install 'dask[distributed]'") from None
    _quiet_dask()
    if address:
        timeout = _arg(args, "dask_connection_timeout") or DASK_CONNECT_TIMEOUT_S
        try:
            with distributed.Client(address, timeout=int(timeout), set_as_default=False) as client:
                n = len(client.scheduler_info().get("workers", {}))
        except (OSError, TimeoutError) as e:
            raise ComponentError(f"{who}: cannot reach the Dask scheduler at beam.address {address} within "
                                 f"{timeout} s ({type(e).__name__}: {e}). Start one (dask scheduler; dask worker "
                                 f"{address}) or set beam.address to a running scheduler") from None
        if not n:
            raise ComponentError(f"{who}: the Dask scheduler at beam.address {address} has no workers "
                                 f"(start some: dask worker {address})")
        return address, n, f"dask, scheduler {address} ({n} workers)"
    # Workers that imported TensorFlow and gRPC take ~3.5 s to exit; past 4 s the nanny kills them
    # and says so at WARNING. The run's outputs are complete and renamed by then: not worth a line.
    nanny = logging.getLogger("distributed.nanny")
    stack.callback(nanny.setLevel, nanny.level)
    # processes, one thread each: Beam's DoFns (PIL, numpy, TensorFlow) are Python-bound. Without
    # a dashboard nobody sees the workers' statistical profiler (a thread sampling every task
    # thread's stack every 10 ms) or GIL monitor: off, they cost ~4% of a CPU-bound DoFn's time
    # (ExampleGen, measured). Nannies hand their worker processes the config they were made under.
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": False,
                          "distributed.admin.system-monitor.gil.enabled": False}), _environ_kept(stack):
        cluster = stack.enter_context(distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.getLogger("distributed").getEffectiveLevel(),
            env={RUN_WORKER_ENV: "1"}))  # these workers end with the run: tune_worker_process
    if _quiet():
        stack.callback(nanny.setLevel, logging.ERROR)  # runs before the cluster's close (LIFO)
    return cluster.scheduler_address, workers, f"dask, LocalCluster of {workers} workers"


@contextlib.contextmanager
def _environ_kept(stack: contextlib.ExitStack):
    """Dask's nannies run in this process and ``os.environ.update`` it with their workers'
    ``distributed.nanny.pre-spawn-environ`` (``MALLOC_TRIM_THRESHOLD_=65536``,
    ``OMP_NUM_THREADS=1``, ...) before each worker start, and never undo it: every process this
    one started afterwards inherited them (Beam's SDK workers under ``multiprocess``, with
    ``MALLOC_TRIM_THRESHOLD_=65536``, spent ~7% more CPU per image in a paired development
    measurement). The workers keep them; in this
    process those keys are put back as they were once the cluster is up, and again when it is
    closed (a nanny restarting a worker sets them anew). Other keys are left alone: components
    running in other threads may set their own."""
    import dask

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    before = {k: os.environ.get(k) for k in keys}

    def restore():
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    stack.callback(restore)
    try:
        yield
    finally:
        restore()


def _reachable(hostport: str, timeout: float = 5.0) -> bool:
    host, _, port = hostport.rpartition(":")
    host = host.split("//")[-1] or "localhost"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _check_portable(runner: str, args: list[str], who: str) -> None:
    """Flink and Spark: a job server (or the cluster's master) must be named and answer; Beam would
    otherwise try to download and start one (a jar, needing Java and the network). Dataflow: a
    project, a region, a gs:// temp location and Beam's GCP extras."""
    if runner in ("flink", "spark"):
        key = "flink_master" if runner == "flink" else "spark_master_url"
        target = _arg(args, "job_endpoint") or _arg(args, key)
        if not target or target.startswith("[") or target.startswith("local"):
            raise ComponentError(f"{who}: beam.runner {runner} needs a running {runner.title()} cluster: add "
                                 f"--{key}=HOST:PORT (or --job_endpoint=HOST:PORT of a Beam job server) to beam.args, "
                                 "with --environment_type=LOOPBACK or PROCESS so workers see the artifact folders "
                                 "(untested here)")
        if not _reachable(target):
            raise ComponentError(f"{who}: beam.runner {runner}: nothing answers at {target} (beam.args)")
        return
    missing = [k for k in ("project", "region", "temp_location") if not _arg(args, k)]
    if missing:
        raise ComponentError(f"{who}: beam.runner dataflow needs " + ", ".join(f"--{k}=..." for k in missing)
                             + " in beam.args (a GCP project, a region and a gs:// temp location; untested here)")
    try:
        import google.cloud.storage  # noqa: F401
        from apache_beam.runners.dataflow import dataflow_runner  # noqa: F401
    except ImportError:
        raise ComponentError(f"{who}: beam.runner dataflow needs Beam's GCP extras: pip install "
                             "'apache-beam[gcp]==2.77.*'") from None


# ----------------------------------------------------------------------------- portable file I/O
def write_atomic(path: Path, write: Callable[[object], None], tmp_dir: Path) -> Path:
    """``write(file)`` into a fresh temp file in ``tmp_dir`` (on the same filesystem), then
    rename it to ``path``: a reader never sees half a file, and a retried bundle that writes the
    same name again replaces it whole."""
    path, tmp_dir = Path(path), Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_tfrecord(path: Path, records, tmp_dir: Path) -> int:
    """The records (bytes) as one TFRecord file, atomically (the framing WriteToTFRecord writes);
    returns how many."""
    from apache_beam.io.tfrecordio import _TFRecordUtil  # framing + masked crc32c, no TensorFlow

    n = 0

    def write(f):
        nonlocal n
        for r in records:
            _TFRecordUtil.write_record(f, r)
            n += 1

    write_atomic(path, write, tmp_dir)
    return n


def tfrecord_chunks(files: list[str], *, chunk_size: int | None = None, max_chunks: int = 64,
                    min_chunk: int = 16) -> list[tuple[str, int, int, int]]:
    """(file, byte offset, record count, index of the first record) chunks covering the files,
    found by reading the record headers only. ``chunk_size`` fixes the records a chunk (the
    BulkInferrer's batch, so every engine predicts the same batches); otherwise up to
    ``max_chunks`` chunks of at least ``min_chunk`` records, the units of work Beam spreads."""
    offsets: list[tuple[str, int]] = []
    for name in files:
        with open(name, "rb") as f:
            pos = 0
            while True:
                head = f.read(12)  # uint64 length + uint32 masked crc of the length
                if not head:
                    break
                if len(head) < 12:
                    raise ComponentError(f"{name}: truncated TFRecord file (at byte {pos})")
                (length,) = struct.unpack("<Q", head[:8])
                offsets.append((name, pos))
                pos += 12 + length + 4
                f.seek(pos)
    if chunk_size is None:
        chunk_size = max(min_chunk, -(-len(offsets) // max_chunks))
    chunks = []
    i = 0
    while i < len(offsets):
        name, pos = offsets[i]
        j = i
        while j < len(offsets) and j - i < chunk_size and offsets[j][0] == name:
            j += 1
        chunks.append((name, pos, j - i, i))
        i = j
    return chunks


def read_tfrecord_chunk(name: str, offset: int, count: int) -> Iterator[bytes]:
    """The ``count`` records from ``offset`` of a TFRecord file (CRCs checked)."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    with open(name, "rb") as f:
        f.seek(offset)
        for _ in range(count):
            rec = _TFRecordUtil.read_record(f)
            if rec is None:
                raise ComponentError(f"{name}: fewer records than indexed (truncated while reading)")
            yield rec
