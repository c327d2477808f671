"""What every Trainer run shares, whatever the task: optimizer, learning-rate schedule, the
kill-safe checkpoint, the best-epoch keeper, the epoch log (tracker, console, a history that
survives interruptions), early stopping, transfer-learning weights, freezing, and the
training-curves plot. The Trainer skeleton (components/trainer.py) wires them; task plug-ins
never build their own.

Imported only inside a run (it imports Keras at module level)."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from components.base import ComponentError


def _atomic_write(path: Path, text: str) -> None:
    # a temporary name of this process's own: two runs of one execution (same work folder) at once
    # must not rename each other's half-written file away
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_optimizer(params, lr: float):
    if params.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if params.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=params.weight_decay or 1e-4)
    if params.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def lr_callback(params, base_lr: float, epochs: int, monitor: str):
    """The Trainer's ``lr_schedule`` as a Keras callback (None for a constant rate)."""
    s = params.lr_schedule
    if s.kind == "plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=s.factor, patience=s.patience,
                                                 min_lr=s.min_lr)
    if s.kind == "constant" and not s.warmup_epochs:
        return None

    def schedule(epoch, lr):
        if epoch < s.warmup_epochs:
            return base_lr * (epoch + 1) / (s.warmup_epochs + 1)
        if s.kind == "cosine":
            t = (epoch - s.warmup_epochs) / max(1, epochs - s.warmup_epochs)
            return s.min_lr + 0.5 * (base_lr - s.min_lr) * (1 + math.cos(math.pi * t))
        if s.kind == "step":
            return base_lr * s.factor ** ((epoch - s.warmup_epochs) // s.step_epochs)
        return base_lr

    return keras.callbacks.LearningRateScheduler(schedule)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose checkpoint is written under a temporary name and renamed into
    place: Keras writes the .weights.h5 in place, and a SIGKILL in the middle leaves a truncated
    file that makes the rerun fail.

    Under multi_worker (``dist``, components/distribution.py) only the chief's files count, and
    no worker needs the others' disks: every worker takes part in saving (TensorFlow's rule for
    MultiWorkerMirroredStrategy, where a save may need collectives; Keras 3's .weights.h5,
    written outside the strategy's scope, reads the mirrored variables locally), a non-chief
    into its own ``backup_dir`` that it deletes at once; on resume the chief restores its
    checkpoint and broadcasts the epoch and every weight and optimizer variable to the others.
    Keras 3's own BackupAndRestore does none of this (each worker would read and write
    ``backup_dir`` as if it were alone)."""

    def __init__(self, backup_dir: str, dist=None):
        super().__init__(backup_dir)
        self.dist = dist if dist is not None and dist.multi_worker else None

    def on_train_begin(self, logs=None):
        if self.dist is None:
            return super().on_train_begin(logs)
        opt = self.model.optimizer
        if opt is not None and not opt.built:  # the same variables on every worker before the broadcast
            with self.dist.strategy.scope():
                opt.build(self.model.trainable_variables)
        epoch = 0
        if self.dist.is_chief and os.path.exists(self._weights_path) and os.path.exists(self._training_metadata_path):
            with open(self._training_metadata_path) as f:
                epoch = int(json.load(f)["epoch"])
        epoch = int(self.dist.broadcast([np.array([epoch], np.int64)])[0][0])
        if not epoch:
            return
        if self.dist.is_chief:  # outside the strategy's scope (see fit_distributed): no collective in there
            super().on_train_begin(logs)
        variables = list(self.model.weights) + (list(opt.variables) if opt is not None else [])
        for v, value in zip(variables, self.dist.broadcast([np.asarray(v.numpy()) for v in variables])):
            v.assign(value)
        self.model._initial_epoch = epoch

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp_weights = self._weights_path.replace(".weights.h5", f".{os.getpid()}.tmp.weights.h5")  # see _atomic_write
        self.model.save_weights(filepath=tmp_weights, overwrite=True)
        tmp_meta = f"{self._training_metadata_path}.{os.getpid()}.tmp"
        with open(tmp_meta, "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        # weights first, then the epoch counter: a kill between the two resumes one epoch
        # early with newer weights, never with a half file
        os.replace(tmp_weights, self._weights_path)
        os.replace(tmp_meta, self._training_metadata_path)
        if self.dist is not None and not self.dist.is_chief:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


def kill_safe_backup(backup_dir: str, dist=None) -> AtomicBackupAndRestore:
    return AtomicBackupAndRestore(backup_dir, dist)


def is_lower_better(metric: str, lower_is_better=frozenset()) -> bool:
    return "loss" in metric or metric in lower_is_better


class KeepBest(keras.callbacks.Callback):
    """Remembers the best epoch's weights and puts them back at the end. With ``state_dir`` the
    best epoch survives an interruption: its weights and value are saved there (atomically) and
    read back when a resumed fit starts, so a resumed run exports the best epoch of all of them."""

    def __init__(self, monitor: str, lower_is_better=frozenset(), state_dir: Path | None = None):
        super().__init__()
        self.monitor = monitor
        self.mode = 1.0 if is_lower_better(monitor, lower_is_better) else -1.0
        self.best, self.best_weights, self.best_epoch = np.inf, None, -1
        self.state_dir = Path(state_dir) if state_dir else None
        if self.state_dir and (self.state_dir / "best.json").exists():
            s = json.loads((self.state_dir / "best.json").read_text())
            if s.get("monitor") == monitor:
                self.best, self.best_epoch = float(s["best"]), int(s["epoch"])

    @property
    def best_value(self) -> float | None:
        return float(self.mode * self.best) if self.best_epoch >= 0 else None

    def on_epoch_end(self, epoch, logs=None):
        v = (logs or {}).get(self.monitor)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return
        # ties go to the later epoch: a small held-out set saturates (a held-out AUC of 1.0 from
        # the first epoch) and the first epoch is the least trained
        if self.mode * v <= self.best:
            self.best, self.best_epoch = self.mode * v, epoch
            self.best_weights = self.model.get_weights()
            if self.state_dir:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.state_dir / f"best.{os.getpid()}.tmp.weights.h5"  # see _atomic_write
                self.model.save_weights(tmp, overwrite=True)
                os.replace(tmp, self.state_dir / "best.weights.h5")
                _atomic_write(self.state_dir / "best.json", json.dumps(
                    {"monitor": self.monitor, "best": self.best, "epoch": epoch}))

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        elif self.best_epoch >= 0 and self.state_dir and (self.state_dir / "best.weights.h5").exists():
            self.model.load_weights(self.state_dir / "best.weights.h5")  # best epoch before a resume


class EpochLog(keras.callbacks.Callback):
    """Per-epoch metrics to the tracker (MLflow child run) and the component's log file, and a
    history kept in ``state_file`` (rewritten atomically each epoch), so the history,
    ``epochs_run`` and the tracked metrics cover every epoch across any number of
    interruptions. On the console: one progress bar per training on a terminal (epoch, loss, the
    monitored metric, ETA), otherwise a line every quarter of the epochs; and a line saying so
    when a fit resumes from a checkpoint."""

    def __init__(self, ctx, phase: str, state_file: Path, epochs: int, monitor: str):
        super().__init__()
        self.ctx, self.phase, self.state_file = ctx, phase, Path(state_file)
        self.epochs, self.monitor = epochs, monitor
        self.history: dict[str, list] = (json.loads(self.state_file.read_text())
                                         if self.state_file.exists() else {})
        self._bar = None

    def on_train_begin(self, logs=None):
        start = int(getattr(self.model, "_initial_epoch", 0) or 0)
        if start:
            self.ctx.logger.info("resuming %s (%s) from epoch %d: the checkpoint of the interrupted run",
                                 self.ctx.component_id, self.phase, start + 1, extra={"console": True})
        # a resumed fit replays nothing before `start`; a restart from scratch drops the old tail
        self.history = {k: v[:start] for k, v in self.history.items()}
        for epoch in range(start):  # this run's tracker gets the interrupted runs' epochs too
            self.ctx.tracker.log_metrics({k: v[epoch] for k, v in self.history.items()
                                          if epoch < len(v) and not math.isnan(v[epoch])}, step=epoch)
        self._bar = self.ctx.progress(f"{self.ctx.component_id} {self.phase}", self.epochs)
        self._advance = self._bar.__enter__()
        self._advance(start)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["epoch_seconds"] = time.time() - self.t0
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        for k, v in logs.items():
            seq = self.history.setdefault(k, [])
            del seq[epoch:]
            seq.extend([float("nan")] * (epoch - len(seq)) + [float(v)])
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.state_file, json.dumps(self.history))
        self.ctx.tracker.log_metrics(logs, step=epoch)
        from components.base import log_to_file_only

        log_to_file_only(self.ctx.logger, "%s epoch %d: %s", self.phase, epoch + 1,
                         ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
        note = f"loss {logs['loss']:.4g}" + (f", {self.monitor} {logs[self.monitor]:.4g}"
                                             if self.monitor != "loss" and self.monitor in logs else "")
        self._advance(1, note)
        import sys

        every = max(1, self.epochs // 4)
        if self.ctx.show_progress and not sys.stdout.isatty() and ((epoch + 1) % every == 0 or epoch + 1 == self.epochs):
            self.ctx.logger.info("%s epoch %d/%d: %s", self.phase, epoch + 1, self.epochs, note,
                                 extra={"console": True})


def resolve_monitor(requested: str, reported: set[str], has_eval: bool, default: str, what: str, logger) -> str:
    """The metric a callback watches: ``requested`` when the fit reports it; without held-out
    data its training counterpart (``val_loss`` -> ``loss``); otherwise the task's default (or
    the training loss), said in the log unless ``requested`` is the Trainer's own default."""
    if requested in reported:
        return requested
    if not has_eval and requested.removeprefix("val_") in reported:
        return requested.removeprefix("val_")
    chosen = default if default in reported else "loss"
    if requested != "val_loss":
        logger.warning("%s %r is not reported for this model (reported: %s): using %r", what, requested,
                       ", ".join(sorted(reported)), chosen)
    return chosen


def early_stopping(es, monitor: str, lower_is_better=frozenset()):
    return keras.callbacks.EarlyStopping(monitor=monitor, patience=es.patience, min_delta=es.min_delta,
                                         mode="min" if is_lower_better(monitor, lower_is_better) else "max")


# ----------------------------------------------------------------------------- tf.distribute
class ReplicaAveragedLoss(keras.losses.Loss):
    """A task's loss for training under a strategy. Keras divides a loss by the number of
    replicas only when the loss returns one value per example (its ``sum_over_batch_size``
    reduction); a loss that returns one number for the whole batch (the triplet losses: the
    mean over the batch's triplets) would have its gradients summed over the replicas, and its
    logged value multiplied by their number. Such a number is spread over the replica's
    examples, so Keras averages it over the replicas like any other loss."""

    def __init__(self, inner: keras.losses.Loss):
        super().__init__(name=inner.name, reduction=inner.reduction, dtype=inner.dtype)
        self.inner = inner
        self.batch_level = False  # seen when traced: fit_distributed says so in the log

    def call(self, y_true, y_pred):
        v = self.inner.call(y_true, y_pred)
        if len(v.shape) == 0:
            self.batch_level = True
            v = keras.ops.broadcast_to(v, keras.ops.shape(y_pred)[:1])
        return v


def distributed_compile_args(compile_args: dict) -> dict:
    loss = compile_args.get("loss")
    return {**compile_args, "loss": ReplicaAveragedLoss(loss)} if isinstance(loss, keras.losses.Loss) else compile_args


def _metric_logs(model) -> dict:
    return {k: float(v) for k, v in model.get_metrics_result().items()}


def fit_distributed(model, dist, data, epochs: int, callbacks: list, logger, label: str) -> None:
    """``model.fit`` for a tf.distribute strategy (components/distribution.py): the model and
    its metrics were built and compiled in ``dist.strategy.scope()``; call this outside it.

    Keras 3's own ``fit`` fails under MultiWorkerMirroredStrategy ("Attempt to convert a value
    (PerReplica...) to a Tensor", keras-team/keras#20585); this loop runs Keras' own
    ``train_step`` / ``test_step`` per replica (``strategy.run``: same loss, metrics and
    optimizer as ``fit``) over the distributed datasets, and drives the same callbacks the same
    way (``_initial_epoch`` from the checkpoint, ``stop_training``, epoch logs with ``val_*``),
    so checkpoint/resume, the best epoch, the LR schedule, early stopping, the tasks' held-out
    metrics and the tracker work unchanged. Used for mirrored too: one loop, tested under both.

    Logs once per run what this process's replicas actually received (steps, examples, batch
    size per replica): the proof that a global batch is split, not repeated."""
    import tensorflow as tf

    from components.distribution import distribute_dataset

    strategy = dist.strategy
    train = distribute_dataset(dist, data.train)
    val = distribute_dataset(dist, data.validation) if data.validation is not None else None

    def counted(step):  # a replica's step, returning how many examples that replica got
        def run(batch):
            step(batch)
            return tf.shape(tf.nest.flatten(batch)[0])[0]
        return run

    # The step takes the iterator and draws the batch inside the tf.function (as Keras' fit does):
    # drawing it in Python and passing the per-replica batch in halved the images/s.
    train_next = tf.function(lambda it: strategy.run(counted(model.train_step), args=(next(it),)))
    test_fn = tf.function(lambda b: strategy.run(model.test_step, args=(b,)), reduce_retracing=True)
    n_batches = int(data.train.cardinality())  # finite and known (-1 infinite, -2 unknown)
    if not data.steps_per_epoch and n_batches < 0:
        raise ComponentError("Trainer: under a strategy the training dataset needs a known length or the task's "
                             "steps_per_epoch (its tf.data cardinality is unknown)")
    cbs = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=data.steps_per_epoch, verbose=0)
    # metrics, loss and optimizer variables must exist before the first step: created inside a
    # replica (lazily, as train_step would) they fail under MirroredStrategy. Keras' fit does the
    # same through this private hook; the dataset's element spec gives the shapes, no data read.
    with strategy.scope():
        model._symbolic_build(data_batch=data.train.element_spec)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    # The callbacks run outside the scope: Keras' save_weights / load_weights create a
    # throw-away optimizer, and in the scope of MultiWorkerMirroredStrategy creating a variable
    # is a collective (its initial value is broadcast), which would then need every worker to
    # save or load in step. Outside it they read and assign the mirrored variables locally, so
    # the chief alone restores its checkpoint (then broadcast by the backup callback).
    persistent = iter(train) if data.steps_per_epoch else None  # a repeated dataset: one iterator for all epochs
    model.stop_training = False
    model._initial_epoch = None  # set by the backup callback when it restores a checkpoint
    cbs.on_train_begin()
    start = model._initial_epoch or 0
    logs: dict = {}
    for epoch in range(start, epochs):
        model.reset_metrics()
        cbs.on_epoch_begin(epoch)
        it = persistent if persistent is not None else iter(train)
        steps = data.steps_per_epoch or n_batches
        sizes = []
        for _ in range(steps):
            got = train_next(it)
            if epoch == start:  # read back (a sync per step) only for the log line below
                sizes.append([int(n) for n in strategy.experimental_local_results(got)])
        dist.average_replicas(model.non_trainable_weights)
        logs = _metric_logs(model)
        if val is not None:
            model.reset_metrics()
            for batch in val:
                test_fn(batch)
            logs.update({f"val_{k}": v for k, v in _metric_logs(model).items()})
        if epoch == start:
            per_replica = sorted({n for s in sizes for n in s}, reverse=True)
            logger.info("%s: epoch %d: %d steps, %d examples on this process's %d replica(s), per-replica batch %s "
                        "(first step %s)", label, epoch + 1, steps, sum(map(sum, sizes)), len(sizes[0]) if sizes else 0,
                        "/".join(map(str, per_replica)), sizes[0] if sizes else [], extra={"console": True})
            if getattr(model.loss, "batch_level", False):
                logger.info("%s: the loss is one number per batch (e.g. triplets mined in the batch): each replica "
                            "computes it on its own part of the global batch, and the replicas' values are averaged",
                            label, extra={"console": True})
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    cbs.on_train_end(logs)


# ----------------------------------------------------------------------------- transfer learning
def all_layers(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(all_layers(layer))
    return out


def load_init_weights(model, source: str, logger, tracking_uri: str | None = None) -> None:
    """Load weights into `model` from a file or a registered model, matching layers by name and
    shape (a model trained with another number of classes keeps its own head)."""
    if source == "imagenet":
        raise ComponentError("init_weights: imagenet applies to keras.applications backbones only; "
                             "for the project's own models give a .keras file or a models:/ URI")
    if source.startswith("models:/"):
        try:
            from components.model_uri import fetch_keras

            source = str(fetch_keras(source, tracking_uri)[0] / "model.keras")
        except Exception as e:
            raise ComponentError(f"init_weights: cannot load {source}: {type(e).__name__}: {e}") from None
    p = Path(source)
    if not p.exists():
        raise ComponentError(f"init_weights: file not found: {source}")
    if p.suffix == ".keras":
        from models.preprocessing import load_model
        donor = load_model(p)
    elif p.name.endswith(".weights.h5"):
        model.load_weights(p)
        logger.info("loaded weights from %s", p)
        return
    else:
        raise ComponentError(f"init_weights: {source}: expected a .keras or .weights.h5 file or a models:/ URI")
    donor_layers = {layer.name: layer for layer in all_layers(donor)}
    copied = skipped = 0
    for layer in all_layers(model):
        d = donor_layers.get(layer.name)
        if d is None or not layer.weights:
            continue
        dw = d.get_weights()
        if [w.shape for w in dw] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(dw)
            copied += 1
        else:
            skipped += 1
    if copied == 0:
        raise ComponentError(f"init_weights: no layer of {source} matches the model by name and shape")
    logger.info("transfer learning: copied %d layers from %s (%d kept fresh: shape differs)", copied, source, skipped)


def set_frozen(core, freeze, frozen: bool) -> int:
    """Freeze (or unfreeze) the layers named by ``freeze``: "backbone" (all but the last layer)
    or layer-name prefixes. Returns how many layers matched."""
    n = 0
    prefixes = None if freeze == "backbone" else ([freeze] if isinstance(freeze, str) else list(freeze))
    layers = all_layers(core)
    for i, layer in enumerate(layers):
        match = (i < len(layers) - 1) if prefixes is None else any(layer.name.startswith(p) for p in prefixes)
        if match:
            layer.trainable = not frozen
            n += 1
    return n


# ----------------------------------------------------------------------------- plot
def plot_history(history: dict, path: Path, title: str = "") -> Path:
    """One panel per metric (training and held-out together): loss, accuracy, mAP, AUC, ..."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = {"epoch_seconds", "learning_rate"}
    names = []
    for k in history:
        base = k.removeprefix("val_")
        if k not in skip and base not in names and history.get(k):
            names.append(base)
    names = names or ["loss"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for k, label in ((name, "train"), (f"val_{name}", "held-out")):
            v = history.get(k)
            if v:
                ax.plot(range(1, len(v) + 1), v, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
