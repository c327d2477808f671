"""Trainer: examples + transform + hyperparameters -> `model`. One skeleton for every task.

Builds the registry's model by name and puts the Transform's preprocessing layers in front (the
exported model takes raw uint8 images); the model's task plug-in (components/tasks/) supplies the
datasets, loss, metrics, held-out metrics and its own model_info fields; the shared callbacks
(components/training.py) checkpoint every epoch in a folder that survives a kill, keep the best
epoch, schedule the learning rate, stop early and track; one tail exports the best epoch's
weights as `model.keras` and a SavedModel with a serving signature on uint8 images.

``distribution.strategy`` (components/distribution.py) trains the same way under
tf.distribute: ``mirrored`` (this machine's GPUs, or logical CPUs) or ``multi_worker`` (the
cluster of ``TF_CONFIG``, the same command on every worker). The model is built and compiled in
the strategy's scope, the global ``batch_size`` is split across the replicas, and
``training.fit_distributed`` replaces ``model.fit`` with the same callbacks. Only the chief
writes the artifact; another worker trains, writes into scratch, removes it and exits 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.base import ComponentError, ComponentSpec, NullTracker, Params
from components.distribution import DistributionParams


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
    # Params of the model's task plug-in (components/tasks/<task>.py TrainParams), e.g. the
    # P x K sampler and triplet margin of a face model, or a detector's anchors.
    task_params: dict[str, Any] = Field(default_factory=dict)
    # tf.distribute: default | mirrored | multi_worker (components/distribution.py)
    distribution: DistributionParams = Field(default_factory=DistributionParams)

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

    def local_paths(self) -> dict[str, str]:
        w = self.init_weights
        return {"init_weights": w} if w and w != "imagenet" and not w.startswith("models:/") else {}

    @property
    def task(self) -> str:
        from models.registry import get_entry

        return get_entry(self.model).task


def build_served_model(params: TrainerParams, task, tc):
    """(served model: uint8 images -> the network's output, core network), exactly as the Trainer
    builds it (also what ``explain TRAINER`` shows)."""
    import keras

    from models.preprocessing import build_preprocessor
    from models.registry import build_model

    h, w = tc.transform.image_size
    try:
        core = build_model(params.model, input_shape=(h, w, 3), **{**params.hyperparameters, **task.build_kwargs(tc)})
    except (TypeError, ValueError) as e:
        raise ComponentError(f"Trainer: model {params.model!r}: {e}") from None
    inp = keras.Input((h, w, 3), dtype="uint8", name="image")
    out = core(build_preprocessor(tc.transform.preprocessing(augmentation=task.augment_in_model))(inp))
    return keras.Model(inp, out, name=f"{params.model}_serving"), core


def train_context(ctx, inputs, params: TrainerParams):
    """(task plug-in, TrainContext) from the Trainer's input folders."""
    from components.artifacts import Examples, TransformGraph
    from components.tasks import get_task, validate_task_params
    from components.tasks.base import TrainContext

    task = get_task(params.task)
    examples = Examples.load(inputs["examples"])
    task.check_examples(examples, params.model)
    try:
        tp = validate_task_params(params.task, "Train", params.task_params)
    except ValueError as e:
        raise ComponentError(f"Trainer task_params: {e}") from None
    return task, TrainContext(ctx=ctx, params=params, tp=tp, examples=examples,
                              transform=TransformGraph.load(inputs["transform"]),
                              inputs={k: Path(v) for k, v in inputs.items()})


def run(ctx, inputs, params: TrainerParams):
    from components import distribution as D

    dist = D.make(params.distribution, ctx.logger)  # first: logical CPUs must precede any other TF work
    import keras

    from components import training as T
    from components.artifacts import Model, ModelInfo

    if dist is not None and not dist.is_chief:
        # a non-chief keeps its state (history, checkpoints, best epoch) in scratch beside the
        # work folder (not inside it: the chief's runner removes that when it finishes) and
        # tracks nothing; it starts empty, since nothing of it counts on a resume
        scratch = ctx.work_dir.parent / f"{ctx.work_dir.name}.{dist.task.name}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        ctx = dataclasses.replace(ctx, work_dir=scratch, tracker=NullTracker())
    scope = dist.strategy.scope if dist is not None else contextlib.nullcontext

    task, tc = train_context(ctx, inputs, params)
    tc.examples.require(params.train_split, "Trainer")
    keras.utils.set_random_seed(params.seed)
    with scope():  # variables (weights, optimizer, metrics) are created once per replica
        model, core = build_served_model(params, task, tc)
        data = task.train_data(tc, model)
        if "base_model" in inputs:  # transfer learning from another Trainer of the pipeline
            T.load_init_weights(core, str(Path(inputs["base_model"]) / "model.keras"), ctx.logger)
        elif params.init_weights:
            T.load_init_weights(core, params.init_weights, ctx.logger, ctx.tracking_uri)
    if dist is not None:
        ctx.logger.info("distribution %s", dist.describe(), extra={"console": True})
        if params.steps_per_execution > 1:
            ctx.logger.info("steps_per_execution is not used under a strategy (one step per call)")

    reported = task.reported_metrics(tc, data)
    monitor = T.resolve_monitor(params.best_metric, reported, data.has_eval, task.default_best_metric,
                                "best_metric", ctx.logger)
    es_monitor = (T.resolve_monitor(params.early_stopping.monitor, reported, data.has_eval, monitor,
                                    "early_stopping.monitor", ctx.logger) if params.early_stopping else None)
    keep_best = T.KeepBest(monitor, task.lower_is_better, state_dir=ctx.work_dir / "best")
    with scope():  # metrics create their variables when constructed: per replica, summed across workers
        compile_args = task.compile_args(tc, data)
    epoch_callbacks = task.epoch_callbacks(tc, data)

    def fit(epochs: int, lr: float, phase: str):
        with scope():
            model.compile(optimizer=T.make_optimizer(params, lr),
                          steps_per_execution=params.steps_per_execution if dist is None else 1,
                          **(compile_args if dist is None else T.distributed_compile_args(compile_args)))
        log = T.EpochLog(ctx, phase, ctx.work_dir / f"history-{phase}.json", epochs, monitor)
        cbs = [T.kill_safe_backup(str(ctx.work_dir / f"backup-{phase}"), dist), *epoch_callbacks, log, keep_best]
        sched = T.lr_callback(params, lr, epochs, monitor)
        if sched is not None:
            cbs.append(sched)
        if es_monitor:
            cbs.append(T.early_stopping(params.early_stopping, es_monitor, task.lower_is_better))
        if dist is not None:
            T.fit_distributed(model, dist, data, epochs, cbs, ctx.logger, f"{ctx.component_id} {phase}")
            return log.history
        model.fit(data.train, validation_data=data.validation, epochs=epochs, steps_per_epoch=data.steps_per_epoch,
                  callbacks=cbs, shuffle=False,  # the datasets shuffle themselves
                  verbose=0)  # EpochLog shows one bar (or a few lines) per training, not Keras' lines
        return log.history

    t0 = time.time()
    history: dict[str, list] = {}
    phases = []
    if params.freeze and params.freeze_epochs:
        phases.append(("frozen", params.freeze_epochs, params.learning_rate))
    remaining = params.epochs - (params.freeze_epochs if params.freeze else 0)
    if remaining > 0:
        phases.append(("train" if not params.freeze else "finetune", remaining,
                       params.fine_tune_learning_rate or params.learning_rate))
    for phase, epochs, lr in phases:
        if phase == "frozen":
            ctx.logger.info("phase 1: %d layers frozen for %d epochs", T.set_frozen(core, params.freeze, True), epochs)
        h = fit(epochs, lr, phase)
        if phase == "frozen":
            T.set_frozen(core, params.freeze, False)
        for k, v in h.items():
            history.setdefault(k, []).extend(v)
    train_seconds = time.time() - t0
    epochs_run = len(history.get("loss", []))
    if dist is not None:  # the saved model's compile config names the task's own loss, not the training wrapper
        with scope():
            model.compile(optimizer=model.optimizer, **compile_args)
    task_fields = task.finish(tc, data, model)
    try:
        task_fields = task.Info.model_validate(task_fields).model_dump(mode="json")
    except ValueError as e:
        raise ComponentError(f"Trainer: the {params.task} task's model info is invalid: {e}") from None

    info = ModelInfo(model=params.model, task=params.task, classes=task.model_classes(tc),
                     image_size=list(tc.examples.image_size), params=int(model.count_params()),
                     epochs_run=epochs_run, best_epoch=(keep_best.best_epoch + 1) if keep_best.best_epoch >= 0 else epochs_run,
                     best_metric=monitor, best_value=keep_best.best_value, train_seconds=train_seconds,
                     images_per_second=data.images_per_epoch * epochs_run / max(train_seconds, 1e-9),
                     hyperparameters=params.hyperparameters, face_crop=tc.transform.config.get("face_crop"),
                     task_params=tc.tp.model_dump(mode="json"), **task_fields)
    out = Model.save(ctx.outputs["model"], model, info, history)
    T.plot_history(history, out.path / "training_curves.png", f"{params.model} ({params.task})")
    ctx.tracker.log_artifact(out.path / "training_curves.png", "plots")
    ctx.tracker.log_artifact(out.path / "model_info.json")
    ctx.logger.info("trained %s: %d epochs in %.1fs (%.0f images/s), best epoch %d (%s=%s)", params.model, epochs_run,
                    train_seconds, info.images_per_second, info.best_epoch, monitor, info.best_value)
    if dist is not None and not dist.is_chief:
        # this worker's copy of the model was written to the runner's temporary folder (saving
        # took part in any collective); NotChief discards it and exits 0: the chief's is the artifact
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        ctx.logger.info("%s done: not the chief, no artifact from this worker (the chief writes it)", dist.task.name,
                        extra={"console": True})
        raise D.NotChief(f"{dist.task.name}: trained; the chief writes the artifact")
    final = {f"final_{k}": float(v[-1]) for k, v in history.items() if v}
    numbers = {k: float(v) for k, v in task_fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**final, **numbers, "best_epoch": info.best_epoch, "train_seconds": train_seconds,
            "images_per_second": info.images_per_second}


def _code_dependencies(params: TrainerParams) -> list[str]:
    from components.tasks import task_module
    from models.registry import get_entry

    return [get_entry(params.model).target.split(":")[0], "models.preprocessing", "models.augmentation",
            "components.training", "components.distribution", "components.tasks.base", task_module(params.task)]


def _inputs() -> dict[str, bool]:
    """The Trainer's inputs: examples and transform, the optional base_model, and every task's
    optional extra inputs (declared by the task plug-ins, e.g. a detector's anchors)."""
    from components.tasks import extra_train_inputs

    return {"examples": True, "transform": True, "base_model": False, **extra_train_inputs()}


SPEC = ComponentSpec(type="Trainer", description="examples + transform -> trained Keras model + SavedModel",
                     params=TrainerParams, run=run, inputs=_inputs(), outputs=("model",),
                     code_dependencies=_code_dependencies)
