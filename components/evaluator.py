"""Evaluator: model + examples (+ the registry's current `champion`) -> `evaluation` (metrics
JSON, confusion matrix and per-class plots) and `blessing` (thresholds met and not worse than
the baseline on the same data).

Classification metrics: accuracy, per-class precision/recall/F1 (scikit-learn), confusion
matrix. With `test_time_crops` > 1 it also reports the accuracy of predictions averaged over
crops (and flips) and what that costs in inference time, as a ratio.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from components.base import ComponentError, ComponentSpec, Params


class EvaluatorParams(Params):
    split: str = "test"  # falls back to "eval" when the examples have no such split
    thresholds: dict[str, float] = Field(default_factory=lambda: {"accuracy": 0.0})
    baseline_model: str | None = None  # registered model name whose @champion is the baseline
    baseline_alias: str = "champion"
    max_regression: float = 0.0  # how much worse than the baseline (absolute) still blesses
    blessing_metric: str = "accuracy"
    batch_size: int = 128
    test_time_crops: int = Field(1, ge=1)
    test_time_flip: bool = False
    crop_fraction: float = Field(0.875, gt=0, le=1)
    # Params of the task plug-in (components/tasks/<task>.py EvalParams) for detection and
    # embedding models; validated when the model's task is known.
    task_params: dict[str, Any] = Field(default_factory=dict)


def load_split(examples: Path, split: str, image_size):
    import numpy as np

    from data.tfrecord import classification_dataset, split_files

    files = split_files(examples, split)
    if not files:
        raise ComponentError(f"Evaluator: no TFRecords for split {split!r} in {examples}")
    xs, ys = [], []
    for x, y in classification_dataset(files, image_size).batch(512):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def classification_metrics(y_true, probs, classes) -> dict:
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if probs.ndim == 1 or probs.shape[-1] == 1:  # binary sigmoid
        pred = (probs.reshape(-1) >= 0.5).astype(int)
    else:
        pred = probs.argmax(-1)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    return {"accuracy": float((pred == y_true).mean()), "num_examples": int(len(y_true)),
            "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                          for i, c in enumerate(classes)},
            "macro_f1": float(np.mean(f)),
            "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist()}


def plot_confusion(cm, classes, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(cm)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, n * 0.6 + 1.5), max(3.5, n * 0.6 + 1)))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if n > 8 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _baseline_probs(name: str, alias: str, images, tracking_uri: str, logger, info: dict):
    """Predictions of the registered model's current alias on the same images, or (None, None)."""
    from components.model_uri import load_baseline

    baseline = load_baseline(name, alias, tracking_uri, logger)
    if baseline is None:
        return None, None
    model, binfo, version = baseline
    if binfo.get("classes") != info["classes"] or list(binfo.get("image_size", [])) != list(info["image_size"]):
        logger.info("baseline %s@%s has other classes or image size: not compared", name, alias)
        return None, None
    return model.predict(images, verbose=0), version


def run(ctx, inputs, params: EvaluatorParams):
    import numpy as np

    model_dir, examples = Path(inputs["model"]), Path(inputs["examples"])
    info = json.loads((model_dir / "model_info.json").read_text())
    schema = json.loads((examples / "schema.json").read_text())
    if info["task"] not in ("classification", "binary"):
        from components.tasks import task_module, validate_task_params

        try:
            tp = validate_task_params(info["task"], "Eval", params.task_params)
        except ValueError as e:
            raise ComponentError(f"Evaluator task_params: {e}") from None
        return task_module(info["task"]).evaluate(ctx, inputs, params, tp)
    split = params.split if schema["splits"].get(params.split) else "eval"
    if not schema["splits"].get(split):
        raise ComponentError(f"Evaluator: split {params.split!r} (and 'eval') empty or missing in {examples}")
    images, labels = load_split(examples, split, tuple(schema["image_size"]))
    from models.preprocessing import load_model
    model = load_model(model_dir / "model.keras")
    classes = info["classes"]

    from models.tta import predict_with_crops

    # Single-view predictions go through the same batched path as the crops (one crop = the whole
    # image), after an untimed warm-up, so the inference-cost ratio compares like with like.
    def single_view(x):
        return predict_with_crops(model, x, n_crops=1, flip=False, crop_fraction=1.0,
                                  batch_size=params.batch_size).probabilities

    single_view(images[: params.batch_size])
    t0 = time.perf_counter()
    probs = np.asarray(single_view(images))
    single_s = time.perf_counter() - t0
    metrics = classification_metrics(labels, probs, classes)
    metrics["split"] = split
    out_eval, out_bless = ctx.outputs["evaluation"], ctx.outputs["blessing"]
    plot_confusion(metrics["confusion_matrix"], classes, out_eval / "confusion_matrix.png",
                   f"{info['model']} on {split}: accuracy {metrics['accuracy']:.3f}")

    if params.test_time_crops > 1 or params.test_time_flip:
        predict_with_crops(model, images[: params.batch_size], n_crops=params.test_time_crops,
                           flip=params.test_time_flip, crop_fraction=params.crop_fraction,
                           batch_size=params.batch_size)  # untimed warm-up
        t0 = time.perf_counter()
        tta_probs, passes = predict_with_crops(model, images, n_crops=params.test_time_crops, flip=params.test_time_flip,
                                               crop_fraction=params.crop_fraction, batch_size=params.batch_size)
        tta_s = time.perf_counter() - t0
        tta = classification_metrics(labels, np.asarray(tta_probs), classes)
        metrics["test_time_augmentation"] = {
            "crops": params.test_time_crops, "flip": params.test_time_flip, "forward_passes": passes,
            "accuracy_single": metrics["accuracy"], "accuracy_tta": tta["accuracy"],
            "accuracy_gain": tta["accuracy"] - metrics["accuracy"],
            "inference_seconds_single": single_s, "inference_seconds_tta": tta_s,
            "inference_cost_ratio": tta_s / max(single_s, 1e-9)}
        ctx.logger.info("test-time crops: accuracy %.4f -> %.4f at %.1fx the inference time", metrics["accuracy"],
                        tta["accuracy"], tta_s / max(single_s, 1e-9))

    baseline = None
    if params.baseline_model:
        b_probs, b_version = _baseline_probs(params.baseline_model, params.baseline_alias, images, ctx.tracking_uri,
                                             ctx.logger, info)
        if b_probs is not None:
            b = classification_metrics(labels, b_probs, classes)
            baseline = {"model": params.baseline_model, "version": b_version, "accuracy": b["accuracy"],
                        "macro_f1": b["macro_f1"]}
            metrics["baseline"] = baseline

    from components.blessing import bless, write_blessing

    blessed, reasons = bless(metrics, params.thresholds, params.blessing_metric, baseline,
                             max_regression=params.max_regression,
                             baseline_name=f"baseline {params.baseline_model} v{baseline['version']}" if baseline else "")
    (out_eval / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_blessing(out_bless, blessed, reasons, params.blessing_metric, metrics.get(params.blessing_metric), baseline)
    ctx.tracker.log_artifact(out_eval / "metrics.json")
    ctx.tracker.log_artifact(out_eval / "confusion_matrix.png", "plots")
    ctx.tracker.log_artifact(out_bless / "blessing.json")
    ctx.tracker.set_tags({"blessed": str(blessed).lower()})
    ctx.logger.info("%s accuracy %.4f on %d %s examples -> %s%s", info["model"], metrics["accuracy"], len(labels), split,
                    "BLESSED" if blessed else "NOT blessed", (": " + "; ".join(reasons)) if reasons else "")
    flat = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "blessed": float(blessed)}
    if "test_time_augmentation" in metrics:
        t = metrics["test_time_augmentation"]
        flat.update({"accuracy_tta": t["accuracy_tta"], "tta_cost_ratio": t["inference_cost_ratio"]})
    if baseline:
        flat["baseline_accuracy"] = baseline["accuracy"]
    return flat


SPEC = ComponentSpec(type="Evaluator", description="model + examples -> metrics, plots and a blessing",
                     params=EvaluatorParams, run=run, inputs={"model": True, "examples": True},
                     outputs=("evaluation", "blessing"),
                     # the task modules are few and small: an Evaluator's key covers all of them
                     code_dependencies=lambda p: [*__import__("components.tasks", fromlist=["x"]).TASK_MODULES.values()])
