"""The Trainer's ``distribution:`` params: which tf.distribute strategy trains, the cluster it
runs on (``TF_CONFIG``), which worker is the chief, and the few collectives the training loop
needs besides the strategy's own (a broadcast from the chief on resume).

    default       no strategy: model.fit on the default device (the numbers of a plain run)
    mirrored      MirroredStrategy over this machine's GPUs, or over ``logical_cpus`` logical CPU
                  devices on a machine without GPUs (how it is tested here)
    multi_worker  MultiWorkerMirroredStrategy; the cluster and this process's place in it come
                  from the ``TF_CONFIG`` environment variable, and every worker runs the same
                  ``python -m pipeline component Trainer ...`` command

Only the chief (task type "chief", else worker 0) writes the Trainer's artifact and its
checkpoints count; the other workers train in lock-step, write their checkpoints and model into
scratch that is removed, and end with ``NotChief`` (exit status 0, no artifact at ``--out``).

This module imports no TensorFlow at module level (the params are validated without it).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
from typing import Literal

from pydantic import Field, model_validator

from components.base import ComponentError, Params

TF_CONFIG = "TF_CONFIG"


class DistributionParams(Params):
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    # mirrored on a machine without GPUs: split the CPU into this many logical devices (one
    # replica each). TensorFlow allows it only before it initialises its devices, so it works in
    # a fresh process (`python -m pipeline component Trainer ...`), not after other TF work.
    logical_cpus: int | None = Field(None, ge=2)
    # multi_worker: how long a worker waits for the others, at start (every worker of TF_CONFIG
    # must join; past it the process ends, status 142) and in each collective (gradient
    # all-reduce, broadcast), instead of hanging on a worker that died or never started.
    timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _logical_cpus_for_mirrored(self):
        if self.logical_cpus is not None and self.strategy != "mirrored":
            raise ValueError(f"logical_cpus applies to strategy 'mirrored' only (strategy is {self.strategy!r})")
        return self


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a TF_CONFIG cluster."""

    task_type: str
    task_index: int
    num_workers: int  # chief + workers (the processes that train)
    has_chief: bool = False  # the cluster names a "chief" job (else worker 0 is the chief)

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief)

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def parse_tf_config(text: str | None) -> ClusterTask:
    """The cluster task described by a TF_CONFIG value; errors name TF_CONFIG and the key."""
    if not text:
        raise ComponentError(f"Trainer distribution.strategy multi_worker: the {TF_CONFIG} environment variable is "
                             'not set; set it on every worker, e.g. {"cluster": {"worker": ["host1:port", '
                             '"host2:port"]}, "task": {"type": "worker", "index": 0}}')
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ComponentError(f"{TF_CONFIG}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ComponentError(f"{TF_CONFIG}: expected a JSON object with keys 'cluster' and 'task'")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ComponentError(f"{TF_CONFIG}.cluster: expected a mapping of job name -> list of 'host:port'")
    for job, addrs in cluster.items():
        if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) and ":" in a for a in addrs):
            raise ComponentError(f"{TF_CONFIG}.cluster.{job}: expected a non-empty list of 'host:port' strings, "
                                 f"got {addrs!r}")
    unknown = sorted(set(cluster) - {"chief", "worker", "evaluator", "ps"})
    if unknown or "ps" in cluster:
        raise ComponentError(f"{TF_CONFIG}.cluster: job(s) {', '.join(unknown or ['ps'])} are not used by "
                             "MultiWorkerMirroredStrategy (chief and worker only)")
    if "chief" in cluster and len(cluster["chief"]) != 1:
        raise ComponentError(f"{TF_CONFIG}.cluster.chief: expected exactly one address")
    if not isinstance(task, dict):
        raise ComponentError(f"{TF_CONFIG}.task: expected {{'type': ..., 'index': ...}}")
    ttype, tindex = task.get("type"), task.get("index", 0)
    if ttype not in ("chief", "worker"):
        raise ComponentError(f"{TF_CONFIG}.task.type: expected 'chief' or 'worker', got {ttype!r}")
    if ttype not in cluster:
        raise ComponentError(f"{TF_CONFIG}.task.type: {ttype!r} is not a job of {TF_CONFIG}.cluster")
    if not isinstance(tindex, int) or isinstance(tindex, bool) or not 0 <= tindex < len(cluster[ttype]):
        raise ComponentError(f"{TF_CONFIG}.task.index: {tindex!r} is not an index of {TF_CONFIG}.cluster.{ttype} "
                             f"({len(cluster[ttype])} address(es))")
    n = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return ClusterTask(ttype, tindex, n, has_chief="chief" in cluster)


@dataclasses.dataclass
class Distributed:
    """A strategy and this process's role: what the training loop and the Trainer's tail need."""

    strategy: object  # tf.distribute.Strategy
    kind: str  # mirrored | multi_worker
    task: ClusterTask | None = None  # multi_worker only

    @property
    def is_chief(self) -> bool:
        return self.task is None or self.task.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi_worker"

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> str:
        where = (f"{self.task.num_workers} workers, this is {self.task.name}{' (chief)' if self.is_chief else ''}"
                 if self.task else f"devices {', '.join(self.strategy.extended.worker_devices)}")
        return f"{self.kind}: {self.replicas} replicas ({where}); each global batch is split across them"

    def broadcast(self, arrays: list) -> list:
        """Every worker gets the chief's ``arrays`` (numpy, same shapes and dtypes on every
        worker): an all-reduce SUM in which only replica 0 (on the chief) contributes. Exact,
        since x + 0 == x; one collective per dtype."""
        import numpy as np
        import tensorflow as tf

        if not self.multi_worker or not arrays:
            return arrays
        out: list = [None] * len(arrays)
        groups: dict = {}
        for i, a in enumerate(arrays):
            a = np.asarray(a)
            # float32 travels as is; anything else (int64 counters, float64) as float64, exact
            # for the integers a checkpoint holds (< 2**53)
            groups.setdefault(np.float32 if a.dtype == np.float32 else np.float64, []).append((i, a))
        for dtype, items in groups.items():
            flat = np.concatenate([a.astype(dtype).ravel() for _, a in items])
            mine = flat if self.is_chief else np.zeros_like(flat)
            per = self.strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(mine) if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(mine))
            got = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None).numpy()
            pos = 0
            for i, a in items:
                out[i] = got[pos:pos + a.size].reshape(a.shape).astype(a.dtype)
                pos += a.size
        return out

    def average_replicas(self, variables: list) -> None:
        """Set each variable to its mean over the replicas. For the non-trainable state that every
        replica updates from its own part of the batch and no strategy aggregates (Keras'
        BatchNormalization moving mean and variance: aggregation NONE), so that the workers end
        each epoch with one model, not one per worker. The moving mean is an exponential average,
        linear in the batch means, so averaging once per epoch gives exactly the single-device
        moving mean (equal parts); the moving variance misses the spread between the parts'
        means (a small underestimate)."""
        import tensorflow as tf

        variables = [v for v in variables if "float" in str(v.dtype)]
        if not variables or self.replicas == 1:
            return
        local = self.strategy.run(tf.function(lambda: [tf.identity(v.value) for v in variables]))
        means = self.strategy.extended.batch_reduce_to(
            tf.distribute.ReduceOp.MEAN, [(x, x) for x in local])
        for v, m in zip(variables, means):
            v.assign(self.strategy.experimental_local_results(m)[0])


class NotChief(SystemExit):
    """A non-chief worker finished its part: its outputs (scratch) are discarded and the process
    exits with status 0. A SystemExit so that the runner's clean-up for any interruption removes
    the temporary output folder and no artifact lands at ``--out`` (the chief writes it)."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


def make(dp: DistributionParams, logger) -> Distributed | None:
    """The strategy of ``dp`` (None for ``default``). Call before anything else touches
    TensorFlow's devices in this process (``logical_cpus`` must come first)."""
    if dp.strategy == "default":
        return None
    import tensorflow as tf

    if dp.strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if dp.logical_cpus:
            if gpus:
                raise ComponentError("Trainer distribution.logical_cpus: this machine has GPUs; mirrored uses them "
                                     "(leave logical_cpus unset)")
            cpu = tf.config.list_physical_devices("CPU")[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(dp.logical_cpus)])
            except RuntimeError as e:
                raise ComponentError("Trainer distribution.logical_cpus: TensorFlow's devices are already "
                                     f"initialised in this process ({e}); run the Trainer in a fresh process "
                                     "(python -m pipeline component Trainer ...)") from None
        devices = ([d.name for d in tf.config.list_logical_devices("GPU")] if gpus
                   else [d.name for d in tf.config.list_logical_devices("CPU")])
        return Distributed(tf.distribute.MirroredStrategy(devices=devices), "mirrored")

    task = parse_tf_config(os.environ.get(TF_CONFIG))
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=dp.timeout_s)
    # The strategy's constructor waits in TensorFlow's C++, holding the interpreter, until every
    # worker of TF_CONFIG has registered, with no timeout of its own (a worker never started, a
    # wrong address, a firewall: a hang that ignores SIGTERM). An alarm signal, whose default
    # action ends the process (status 142), bounds the wait; the line before it says why.
    alarm = _alarm_free()
    logger.info("multi_worker: %s waiting%s for the %d workers of %s.cluster %s", task.name,
                f" up to {dp.timeout_s:g} s (distribution.timeout_s; then this process ends, status 142)" if alarm else "",
                task.num_workers, TF_CONFIG, json.loads(os.environ[TF_CONFIG])["cluster"], extra={"console": True})
    if alarm:
        consoles = [getattr(getattr(h, "console", None), "file", None) for h in logger.handlers]  # rich
        for stream in (sys.stdout, sys.stderr, *(getattr(h, "stream", None) for h in logger.handlers), *consoles):
            if stream is not None:
                stream.flush()  # the line above must be out before a kill by the alarm
        signal.alarm(max(1, math.ceil(dp.timeout_s)))
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (RuntimeError, ValueError) as e:
        raise ComponentError(f"Trainer distribution.strategy multi_worker ({TF_CONFIG} task {task.name}): "
                             f"{type(e).__name__}: {e}") from None
    finally:
        if alarm:
            signal.alarm(0)
    logger.info("multi_worker: %s of %d workers (%s)", task.name, task.num_workers,
                "chief: writes the artifact" if task.is_chief else "not the chief: its outputs are discarded",
                extra={"console": True})
    return Distributed(strategy, "multi_worker", task)


def _alarm_free() -> bool:
    """SIGALRM has its default action (ends the process) and no alarm is pending: nothing else
    (e.g. pytest-timeout) relies on it."""
    if signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL:
        return False
    pending = signal.alarm(0)
    if pending:
        signal.alarm(pending)
    return not pending


def distribute_dataset(dist: Distributed, ds):
    """``ds`` (batches of the global batch size) split across the replicas. Sharding by DATA:
    every worker reads the same (seeded) pipeline and takes its slice of each global batch, so
    the global batches are those of a single-device run (file sharding would change them, and
    fails with fewer files than workers)."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dist.strategy.experimental_distribute_dataset(ds.with_options(opts))
