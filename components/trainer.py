"""Trainer: examples + transform + hyperparameters -> `model`.

Builds the registry's model by name, puts the Transform's preprocessing layers in front (the
exported model takes raw uint8 images), trains from TFRecords with `tf.data` (parse, decode,
cache, shuffle, batch, prefetch; autotune off, see DESIGN.md), checkpoints every epoch with
`keras.callbacks.BackupAndRestore` in a folder that survives a kill, and exports the best
epoch's weights as `model.keras` and a SavedModel with a serving signature on uint8 images.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.base import ComponentError, ComponentSpec, Params


class EarlyStopping(Params):
    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0


class LRSchedule(Params):
    kind: Literal["constant", "cosine", "step", "plateau"] = "constant"
    warmup_epochs: int = 0
    step_epochs: int = 10  # step: multiply by `factor` every step_epochs
    factor: float = 0.5  # step and plateau
    patience: int = 3  # plateau
    min_lr: float = 1e-6


class TrainerParams(Params):
    model: str = "signs_cnn"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd", "adamw", "rmsprop"] = "adam"
    weight_decay: float = 0.0
    lr_schedule: LRSchedule = Field(default_factory=LRSchedule)
    early_stopping: EarlyStopping | None = None
    best_metric: str = "val_loss"  # the epoch whose weights are exported (falls back to loss without eval)
    seed: int = 0
    train_split: str = "train"
    eval_split: str | None = "eval"
    shuffle_buffer: int = 10_000
    steps_per_execution: int = 1
    # Transfer learning: a local .keras / .weights.h5 file, a registered model URI
    # (models:/name@alias), or "imagenet" (keras.applications backbones, needs internet).
    # Inside a pipeline, the optional input `base_model` (another Trainer's model) does the same.
    init_weights: str | None = None
    freeze: list[str] | str | None = None  # layer-name prefixes, or "backbone", frozen in a first phase
    freeze_epochs: int = 0  # epochs of the first (frozen) phase; the rest fine-tune everything
    fine_tune_learning_rate: float | None = None
    # Params of the task plug-in (components/tasks/<task>.py TrainParams) for detection and
    # embedding models, e.g. the P x K sampler and triplet margin of a face model.
    task_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known(cls, v):
        from models.registry import get_entry

        get_entry(v)
        return v

    @model_validator(mode="after")
    def _task_params(self):
        from components.tasks import validate_task_params
        from models.registry import get_entry

        validate_task_params(get_entry(self.model).task, "Train", self.task_params)
        return self


def _optimizer(params: TrainerParams, lr):
    import keras

    if params.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if params.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=params.weight_decay or 1e-4)
    if params.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def _lr_callback(params: TrainerParams, base_lr: float, epochs: int):
    import math

    import keras

    s = params.lr_schedule
    if s.kind == "plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor=params.best_metric, factor=s.factor, patience=s.patience,
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


def make_dataset(files, image_size, batch_size, *, shuffle_buffer=0, seed=0, cache=True, binary=False,
                 num_examples: int | None = None):
    """The Trainer's input pipeline: parse -> decode -> cache -> shuffle -> batch -> prefetch.
    `num_examples` (from schema.json) declares the length, so Keras knows the epoch size."""
    import math

    import tensorflow as tf

    from data.tfrecord import classification_dataset

    ds = classification_dataset(files, image_size)
    if binary:
        ds = ds.map(lambda x, y: (x, tf.cast(y, tf.float32)))
    if cache:
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if num_examples:
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(num_examples / batch_size)))
    ds = ds.prefetch(2)
    opts = tf.data.Options()
    opts.autotune.enabled = False  # the autotune thread stalls fit at epoch ends on this CPU
    opts.deterministic = True
    return ds.with_options(opts)


class _TrackerCallback:
    """Per-epoch metrics to the tracker (MLflow child run) and the log."""

    @staticmethod
    def make(ctx, phase: str, epoch_offset: int = 0):
        import keras

        class CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.time()

            def on_epoch_end(self, epoch, logs=None):
                logs = dict(logs or {})
                logs["epoch_seconds"] = time.time() - self.t0
                lr = self.model.optimizer.learning_rate
                logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
                ctx.tracker.log_metrics(logs, step=epoch + epoch_offset)
                ctx.logger.info("%s epoch %d: %s", phase, epoch + 1 + epoch_offset,
                                ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
        return CB()


def kill_safe_backup(backup_dir: str):
    """`keras.callbacks.BackupAndRestore` whose checkpoint is written to a temporary file and
    renamed into place: a SIGKILL in the middle of a save leaves the previous checkpoint intact
    (Keras writes the .weights.h5 in place; a kill mid-write leaves a truncated file that makes
    the rerun fail)."""
    import json
    import os

    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        def _save_model(self):
            os.makedirs(self.backup_dir, exist_ok=True)
            tmp_weights = self._weights_path.replace(".weights.h5", ".tmp.weights.h5")
            self.model.save_weights(filepath=tmp_weights, overwrite=True)
            tmp_meta = self._training_metadata_path + ".tmp"
            with open(tmp_meta, "w") as f:
                f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            # weights first, then the epoch counter: a kill between the two resumes one epoch
            # early with newer weights, never with a half file
            os.replace(tmp_weights, self._weights_path)
            os.replace(tmp_meta, self._training_metadata_path)

    return AtomicBackupAndRestore(backup_dir)


class _KeepBest:
    @staticmethod
    def make(monitor: str):
        import keras
        import numpy as np

        class CB(keras.callbacks.Callback):
            """Remembers the weights of the best epoch and restores them at the end."""

            def __init__(self):
                super().__init__()
                self.best, self.best_weights, self.best_epoch = np.inf, None, -1
                self.mode = 1.0 if "loss" in monitor else -1.0

            def on_epoch_end(self, epoch, logs=None):
                v = (logs or {}).get(monitor)
                if v is None:
                    return
                # ties go to the later epoch: a small held-out set saturates (val AUC 1.0 from
                # epoch 1 with 3 held-out people on AT&T) and the first epoch is the least trained
                if self.mode * v <= self.best:
                    self.best, self.best_epoch = self.mode * v, epoch
                    self.best_weights = self.model.get_weights()

            def on_train_end(self, logs=None):
                if self.best_weights is not None:
                    self.model.set_weights(self.best_weights)
        return CB()


def load_init_weights(model, source: str, logger) -> None:
    """Load weights into `model` from a file or a registered model, matching layers by name and
    shape (a model trained with another number of classes keeps its own head)."""

    if source == "imagenet":
        raise ComponentError("init_weights: imagenet applies to keras.applications backbones only; "
                             "for the project's own models give a .keras file or a models:/ URI")
    if source.startswith("models:/"):
        try:
            from components.model_uri import fetch_keras

            source = str(fetch_keras(source)[0] / "model.keras")
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
    donor_layers = {}
    for layer in _all_layers(donor):
        donor_layers[layer.name] = layer
    copied = skipped = 0
    for layer in _all_layers(model):
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


def _all_layers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def _set_frozen(core, freeze, frozen: bool) -> int:
    n = 0
    prefixes = None if freeze == "backbone" else ([freeze] if isinstance(freeze, str) else list(freeze))
    layers = _all_layers(core)
    for i, layer in enumerate(layers):
        match = (i < len(layers) - 1) if prefixes is None else any(layer.name.startswith(p) for p in prefixes)
        if match:
            layer.trainable = not frozen
            n += 1
    return n


def build_full_model(params: TrainerParams, transform_cfg: dict, num_classes: int):
    import keras

    from models.preprocessing import build_preprocessor
    from models.registry import build_model, get_entry

    h, w = transform_cfg["image_size"]
    entry = get_entry(params.model)
    try:
        core = build_model(params.model, input_shape=(h, w, 3),
                           num_classes=num_classes if entry.task == "classification" else None,
                           **params.hyperparameters)
    except TypeError as e:
        raise ComponentError(f"Trainer: model {params.model!r}: {e}") from None
    inp = keras.Input((h, w, 3), dtype="uint8", name="image")
    out = core(build_preprocessor(transform_cfg)(inp))
    return keras.Model(inp, out, name=f"{params.model}_serving"), core


def run(ctx, inputs, params: TrainerParams):
    import keras

    from data.tfrecord import split_files
    from models.registry import get_entry

    examples = Path(inputs["examples"])
    schema = json.loads((examples / "schema.json").read_text())
    transform_cfg = json.loads((Path(inputs["transform"]) / "transform.json").read_text())
    task = get_entry(params.model).task
    if task not in ("classification", "binary"):
        from components.tasks import task_module, validate_task_params

        if schema["task"] != task:
            raise ComponentError(f"Trainer: examples are for {schema['task']}, model {params.model!r} needs {task}")
        return task_module(task).train(ctx, inputs, params, validate_task_params(task, "Train", params.task_params))
    if schema["task"] != "classification":
        raise ComponentError(f"Trainer: examples are for {schema['task']}, model {params.model!r} needs classification")
    num_classes = len(schema["classes"])
    if task == "binary" and num_classes != 2:
        raise ComponentError(f"Trainer: {params.model!r} is a binary model but the examples have {num_classes} classes")
    keras.utils.set_random_seed(params.seed)
    image_size = tuple(schema["image_size"])
    train_files = split_files(examples, params.train_split)
    if not train_files:
        raise ComponentError(f"Trainer: no TFRecords for split {params.train_split!r} in {examples}")
    eval_files = split_files(examples, params.eval_split) if params.eval_split else []
    eval_files = eval_files if eval_files and schema["splits"].get(params.eval_split, 0) else []
    binary = task == "binary"
    train_ds = make_dataset(train_files, image_size, params.batch_size, shuffle_buffer=params.shuffle_buffer,
                            seed=params.seed, binary=binary, num_examples=schema["splits"].get(params.train_split))
    val_ds = make_dataset(eval_files, image_size, params.batch_size, binary=binary,
                          num_examples=schema["splits"].get(params.eval_split)) if eval_files else None

    model, core = build_full_model(params, transform_cfg, num_classes)
    if "base_model" in inputs:  # transfer learning from another Trainer of the pipeline
        load_init_weights(core, str(Path(inputs["base_model"]) / "model.keras"), ctx.logger)
    elif params.init_weights:
        load_init_weights(core, params.init_weights, ctx.logger)
    loss = keras.losses.BinaryCrossentropy() if binary else keras.losses.SparseCategoricalCrossentropy()
    metrics = [keras.metrics.BinaryAccuracy(name="accuracy")] if binary else [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    monitor = params.best_metric if val_ds is not None else params.best_metric.removeprefix("val_")

    def fit(epochs, lr, initial_epoch, phase):
        model.compile(optimizer=_optimizer(params, lr), loss=loss, metrics=metrics,
                      steps_per_execution=params.steps_per_execution)
        cbs = [kill_safe_backup(str(ctx.work_dir / f"backup-{phase}")),
               _TrackerCallback.make(ctx, phase), keep_best]
        sched = _lr_callback(params, lr, epochs)
        if sched is not None:
            cbs.append(sched)
        if params.early_stopping:
            es = params.early_stopping
            cbs.append(keras.callbacks.EarlyStopping(monitor=es.monitor if val_ds is not None else es.monitor.removeprefix("val_"),
                                                     patience=es.patience, min_delta=es.min_delta))
        return model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                         callbacks=cbs, shuffle=False,  # the dataset shuffles itself
                         verbose=2 if ctx.show_progress else 0)

    keep_best = _KeepBest.make(monitor)
    t0 = time.time()
    history: dict[str, list] = {}
    if params.freeze and params.freeze_epochs:
        n = _set_frozen(core, params.freeze, True)
        ctx.logger.info("phase 1: %d layers frozen for %d epochs", n, params.freeze_epochs)
        h1 = fit(params.freeze_epochs, params.learning_rate, 0, "frozen")
        history = {k: list(v) for k, v in h1.history.items()}
        _set_frozen(core, params.freeze, False)
    remaining = params.epochs - (params.freeze_epochs if params.freeze else 0)
    if remaining > 0:
        lr2 = params.fine_tune_learning_rate or params.learning_rate
        h2 = fit(remaining, lr2, 0, "train" if not params.freeze else "finetune")
        for k, v in h2.history.items():
            history.setdefault(k, []).extend(v)
    train_seconds = time.time() - t0
    n_train = schema["splits"].get(params.train_split, 0)
    epochs_run = len(history.get("loss", []))

    out = ctx.outputs["model"]
    model.save(out / "model.keras")
    with contextlib.redirect_stdout(io.StringIO()):  # export prints its endpoints
        model.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
    info = {"model": params.model, "task": task, "classes": schema["classes"], "image_size": list(image_size),
            "best_epoch": int(keep_best.best_epoch) + 1, "best_metric": monitor,
            "best_value": float(keep_best.mode * keep_best.best) if keep_best.best_epoch >= 0 else None,
            "epochs_run": epochs_run, "train_seconds": train_seconds,
            "images_per_second": n_train * epochs_run / max(train_seconds, 1e-9),
            "params": int(model.count_params())}
    (out / "model_info.json").write_text(json.dumps(info, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2, default=float))
    _plot_history(history, out / "training_curves.png")
    ctx.tracker.log_artifact(out / "training_curves.png", "plots")
    ctx.tracker.log_artifact(out / "model_info.json")
    ctx.logger.info("trained %s: %d epochs in %.1fs, best epoch %d (%s=%s)", params.model, epochs_run,
                    train_seconds, info["best_epoch"], monitor, info["best_value"])
    final = {f"final_{k}": float(v[-1]) for k, v in history.items() if v}
    return {**final, "best_epoch": info["best_epoch"], "train_seconds": train_seconds,
            "images_per_second": info["images_per_second"]}


def _plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "accuracy") if k in history]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.5))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, k in zip(axes, keys):
        ax.plot(range(1, len(history[k]) + 1), history[k], label=f"train {k}")
        if f"val_{k}" in history:
            ax.plot(range(1, len(history[f"val_{k}"]) + 1), history[f"val_{k}"], label=f"eval {k}")
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _model_module(params: TrainerParams) -> list[str]:
    from components.tasks import TASK_MODULES
    from models.registry import get_entry

    entry = get_entry(params.model)
    extra = [TASK_MODULES[entry.task]] if entry.task in TASK_MODULES else []
    return [entry.target.split(":")[0], "models.preprocessing", "models.augmentation", *extra]


SPEC = ComponentSpec(type="Trainer", description="examples + transform -> trained Keras model + SavedModel",
                     params=TrainerParams, run=run, inputs={"examples": True, "transform": True, "base_model": False, "anchors": False},
                     outputs=("model",), code_dependencies=_model_module)
