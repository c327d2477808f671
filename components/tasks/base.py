"""The task plug-in contract.

The Trainer, Evaluator, BulkInferrer and ``predict`` are one skeleton each and know nothing of
any task. What differs between tasks (classification, binary, detection, embedding) lives in a
``Task`` subclass, one module per task in this package, registered in
``components/tasks/__init__.py``:

    Trainer     build_kwargs ─> the network; train_data ─> datasets for it; compile_args ─> loss,
                metrics; epoch_callbacks ─> per-epoch validation metrics (val_*); fit with the
                shared callbacks (checkpoint/resume, best epoch, LR schedule, early stopping,
                tracking: components/training.py); finish ─> the task's model_info fields
                (``Info``: a detector's anchors, a face model's threshold); one export tail.
    Evaluator   eval_data ─> the split in memory; score(candidate) and score(baseline) on the same
                data ─> report + flat numbers; degenerate ─> reasons never to bless; one blessing
                tail (components/blessing.py).
    BulkInferrer / predict / serving
                predictor ─> uint8 image batch -> one JSON-able row per image; format_row ─> the
                lines ``predict`` prints; finalize_inference ─> extra files of a whole split;
                serving_model ─> what is registered and served (components/serving.py);
                served_predictor ─> the predictor's rows from a scoring server's answers.

To add a task: subclass ``Task`` in a new module here, set the class attributes, implement the
abstract methods, and add one line to ``TASKS`` in ``components/tasks/__init__.py``
(plus the models that use it in ``models/registry.py``). Everything else is inherited.

A task module imports no TensorFlow at module level (the config is validated without it).
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from components.artifacts import Examples, ModelInfo, TransformGraph
from components.base import ComponentError, Context, Params


class NoParams(Params):
    """A task without task_params."""


class NoInfo(BaseModel):
    """A task that records nothing beyond the common model_info fields."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclasses.dataclass
class TrainContext:
    """What the Trainer hands a task: its context, params, the task's own params and the inputs."""

    ctx: Context
    params: Any  # components.trainer.TrainerParams
    tp: Any  # the task's TrainParams instance
    examples: Examples
    transform: TransformGraph
    inputs: dict[str, Path]  # every input folder by name (optional task inputs included)

    @property
    def logger(self) -> logging.Logger:
        return self.ctx.logger

    @property
    def has_eval(self) -> bool:
        return bool(self.params.eval_split and self.examples.count(self.params.eval_split))


@dataclasses.dataclass
class TrainData:
    train: Any  # tf.data.Dataset of (uint8 images, targets)
    validation: Any = None  # tf.data.Dataset for Keras' val_loss, or None
    steps_per_epoch: int | None = None  # for a repeated (infinite) train dataset
    images_per_epoch: int = 0  # for the images/s figure
    has_eval: bool = False  # held-out data exists (val_* metrics can be monitored)
    state: dict = dataclasses.field(default_factory=dict)  # anything the task carries to later hooks


@dataclasses.dataclass
class Score:
    report: dict  # everything, written to metrics.json
    flat: dict  # metric name -> number: thresholds, blessing, MLflow
    plots: list[Path] = dataclasses.field(default_factory=list)  # written when a plot dir was given


Predictor = Callable[[Any, list], list]  # (uint8 images (B, H, W, 3), keys) -> rows


class Task(abc.ABC):
    """A task plug-in. The methods marked abstract are what a task must implement: a subclass
    missing one cannot be instantiated (TypeError naming it), so a half-written task fails when
    it is registered and first used, not in the middle of a training."""

    # --------------------------------------------------------------- declared by each task
    name: ClassVar[str]
    examples_task: ClassVar[str]  # the ExampleGen task it consumes (schema.json "task")
    TrainParams: ClassVar[type[Params]] = NoParams  # `task_params:` of a Trainer
    EvalParams: ClassVar[type[Params]] = NoParams  # `task_params:` of an Evaluator
    Info: ClassVar[type[BaseModel]] = NoInfo  # the task's model_info.json fields
    blessing_metric: ClassVar[str] = "accuracy"  # the Evaluator's default blessing metric
    default_best_metric: ClassVar[str] = "val_loss"  # when the Trainer's best_metric is not one this task reports
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss", "val_loss"})
    train_inputs: ClassVar[dict[str, bool]] = {}  # optional extra Trainer inputs (detection: anchors)
    augment_in_model: ClassVar[bool] = True  # the Transform's augmentation runs inside the model

    # --------------------------------------------------------------- Trainer
    def check_examples(self, examples: Examples, model: str) -> None:
        if examples.task != self.examples_task:
            raise ComponentError(f"Trainer: examples are for {examples.task}, model {model!r} needs {self.examples_task}")

    @abc.abstractmethod
    def train_data(self, tc: TrainContext, model) -> TrainData:
        """The training (and validation) datasets of uint8 images for ``model`` (the
        served network, already built: a detector's targets depend on its output grid)."""

    def build_kwargs(self, tc: TrainContext) -> dict:
        """Keyword arguments for ``models.registry.build_model`` besides input_shape and
        hyperparameters (default: the number of classes). Must not need the data loaded:
        ``explain`` builds the same network from the artifacts alone."""
        return {"num_classes": len(tc.examples.classes)}

    @abc.abstractmethod
    def compile_args(self, tc: TrainContext, data: TrainData) -> dict:
        """``loss`` and optionally ``metrics`` for ``model.compile``."""

    def reported_metrics(self, tc: TrainContext, data: TrainData) -> set[str]:
        """The names the fit's logs will hold (for best_metric / early stopping checks)."""
        return {"loss", "val_loss"} if data.validation is not None else {"loss"}

    def epoch_callbacks(self, tc: TrainContext, data: TrainData) -> list:
        """Keras callbacks that add held-out metrics (val_*) to the epoch logs; they run before
        the tracker and best-epoch callbacks read the logs."""
        return []

    def model_classes(self, tc: TrainContext) -> list[str]:
        """What model_info's ``classes`` lists (a face model: the training identities)."""
        return tc.examples.classes

    def finish(self, tc: TrainContext, data: TrainData, model) -> dict:
        """The task's model_info fields (validated by ``Info``), after the best weights are back."""
        return {}

    # --------------------------------------------------------------- Evaluator
    @abc.abstractmethod
    def eval_data(self, examples: Examples, split: str, ep, tp) -> Any:
        """The evaluated split in memory, loaded once for candidate and baseline."""

    def check_model(self, info: ModelInfo, examples: Examples) -> None:
        if list(examples.image_size) != list(info.image_size):
            raise ComponentError(f"Evaluator: examples are {list(examples.image_size)}, the model takes {info.image_size}")
        if examples.classes != list(info.classes) and self.examples_task != "embedding":
            raise ComponentError(f"Evaluator: the examples' classes {examples.classes} differ from the model's "
                                 f"{info.classes}")

    @abc.abstractmethod
    def score(self, model, info: ModelInfo, data, ep, tp, plot_dir: Path | None, logger) -> Score:
        """The metrics of ``model`` on ``data``; plots into ``plot_dir`` when given."""

    def comparable(self, baseline: ModelInfo, info: ModelInfo) -> str | None:
        """Why a baseline cannot be compared with the candidate on the same data, or None."""
        if baseline.task != info.task:
            return f"a {baseline.task} model"
        if list(baseline.image_size) != list(info.image_size):
            return f"takes {baseline.image_size} images, not {info.image_size}"
        if list(baseline.classes) != list(info.classes) and self.examples_task != "embedding":
            return "other classes"
        return None

    def degenerate(self, score: Score, data) -> list[str]:
        """Reasons the evaluation cannot support a blessing (no data, NaN metrics)."""
        import math

        bad = sorted(k for k, v in score.flat.items() if isinstance(v, float) and math.isnan(v))
        return [f"metric(s) {', '.join(bad)} are NaN"] if bad else []

    @abc.abstractmethod
    def headline(self, info: ModelInfo, score: Score) -> str:
        """One line of the main numbers, e.g. "accuracy 0.93 on 270 test examples"."""

    # --------------------------------------------------------------- inference
    @abc.abstractmethod
    def predictor(self, model, info: ModelInfo, **options) -> Predictor:
        """A callable (uint8 images (B, H, W, 3), keys) -> one JSON-able row per image
        (``key`` first). ``options`` come from ``predict``'s command line (top, score_threshold,
        face_db, ...); a task ignores those it does not know."""

    def served_predictor(self, served, info: ModelInfo, **options) -> Predictor:
        """The same rows as ``predictor`` gives in-process, the model answering from a scoring
        server: ``served`` is a stand-in for the Keras model whose ``predict_on_batch`` /
        ``predict`` / call send the uint8 batch to the server and return its answer
        (``components.serving.RemoteModel``). By default that answer is what the task's network
        gives, so the task's own predictor reads it. A task whose ``serving_model`` is not its
        network (a detector serves its decoded boxes) overrides this to read the served layout,
        building its rows with the same code as its ``predictor``."""
        return self.predictor(served, info, **options)

    def predict_options(self, info: ModelInfo, options: dict) -> dict:
        """``predict``'s options with the model's own defaults filled in (a detector's registered
        score threshold when none was given); the batch paths (BulkInferrer) don't use this."""
        return dict(options)

    def serving_model(self, model, info: ModelInfo):
        """The Keras model the Pusher registers and the scoring server serves (uint8 images in):
        the trained network itself by default; a task whose raw output needs decoding returns it
        wrapped, so a client of the server never re-implements that (detection: boxes after NMS)."""
        return model

    def finalize_inference(self, rows: list[dict], out_dir: Path, info: ModelInfo) -> dict:
        """Extra files for a whole split (detection: a COCO result file); returns summary numbers."""
        return {}

    @abc.abstractmethod
    def format_row(self, row: dict) -> list[str]:
        """The lines ``predict`` prints for one image's row."""

    def prepare_image(self, image, info: ModelInfo):
        """A decoded uint8 RGB image (any size) as the model's input (H, W, 3), resized the way
        ExampleGen does (a face model first repeats ExampleGen's face crop)."""
        import numpy as np
        from PIL import Image

        h, w = info.image_size
        if image.shape[:2] != (h, w):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        return image
