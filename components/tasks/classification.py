"""Classification (softmax over K classes: the SIGNS CNN, ResNet-50) and binary (one sigmoid
output: the Happy House model) tasks.

Trainer: TFRecords -> tf.data (parse, decode, cache, shuffle, batch, prefetch; the epoch size
declared from schema.json), sparse categorical (or binary) cross-entropy, accuracy.
Evaluator: accuracy, per-class precision/recall/F1 (scikit-learn), macro F1, confusion matrix;
with the Evaluator's ``test_time_crops`` / ``test_time_flip`` also the accuracy of predictions
averaged over crops and what that costs in inference time (a ratio, on the same batched path).
Never blessed: an evaluated split with fewer than two classes present.
Inference: the class, its probability and every class's probability; ``predict`` prints top-k.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from components.tasks.base import Score, Task, TrainData


def make_dataset(files, image_size, batch_size, *, shuffle_buffer=0, seed=0, cache=True, binary=False,
                 num_examples: int | None = None):
    """The classification input pipeline: parse -> decode -> cache -> shuffle -> batch -> prefetch.
    ``num_examples`` (from schema.json) declares the length, so Keras knows the epoch size."""
    import math

    import tensorflow as tf

    from data.tfrecord import classification_dataset, fixed_options

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
    return fixed_options(ds.prefetch(2))


def as_probabilities(probs):
    """(N, K) class probabilities; a binary model's (N,) or (N, 1) sigmoid becomes (N, 2)."""
    import numpy as np

    probs = np.asarray(probs)
    if probs.ndim == 1 or probs.shape[-1] == 1:
        p1 = probs.reshape(-1)
        return np.stack([1 - p1, p1], axis=-1)
    return probs


def classification_metrics(y_true, probs, classes) -> dict:
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = as_probabilities(probs).argmax(-1)
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    return {"accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"),
            "num_examples": int(len(y_true)),
            "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                          for i, c in enumerate(classes)},
            "macro_f1": float(np.mean(f)),
            "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist()}


def plot_confusion(cm, classes, path: Path, title: str) -> Path:
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
    return Path(path)


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    examples_task: ClassVar[str] = "classification"
    blessing_metric: ClassVar[str] = "accuracy"
    default_best_metric: ClassVar[str] = "val_loss"
    binary: ClassVar[bool] = False

    # --------------------------------------------------------------- Trainer
    def check_examples(self, examples, model: str) -> None:
        from components.base import ComponentError

        super().check_examples(examples, model)
        if self.binary and len(examples.classes) != 2:
            raise ComponentError(f"Trainer: {model!r} is a binary model but the examples have "
                                 f"{len(examples.classes)} classes")

    def train_data(self, tc, model) -> TrainData:
        p, ex = tc.params, tc.examples
        train = make_dataset(ex.files(p.train_split), ex.image_size, p.batch_size, shuffle_buffer=p.shuffle_buffer,
                             seed=p.seed, binary=self.binary, num_examples=ex.count(p.train_split))
        val = (make_dataset(ex.files(p.eval_split), ex.image_size, p.batch_size, binary=self.binary,
                            num_examples=ex.count(p.eval_split)) if tc.has_eval else None)
        return TrainData(train=train, validation=val, images_per_epoch=ex.count(p.train_split), has_eval=tc.has_eval)

    def compile_args(self, tc, data) -> dict:
        import keras

        if self.binary:
            return {"loss": keras.losses.BinaryCrossentropy(),
                    "metrics": [keras.metrics.BinaryAccuracy(name="accuracy")]}
        return {"loss": keras.losses.SparseCategoricalCrossentropy(),
                "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

    def reported_metrics(self, tc, data) -> set[str]:
        base = {"loss", "accuracy"}
        return base | {f"val_{k}" for k in base} if data.validation is not None else base

    # --------------------------------------------------------------- Evaluator
    def eval_data(self, examples, split, ep, tp):
        from data.tfrecord import read_split

        d = read_split(examples.files(split), examples.image_size, label=True)
        return {"images": d["images"], "labels": d["labels"], "split": split}

    def score(self, model, info, data, ep, tp, plot_dir, logger) -> Score:
        import numpy as np

        from models.tta import predict_with_crops

        images, labels, classes = data["images"], data["labels"], list(info.classes)

        # Single-view predictions go through the same batched path as the crops (one crop = the
        # whole image), after an untimed warm-up, so the inference-cost ratio compares like with like.
        def views(x, n_crops=1, flip=False, fraction=1.0):
            return predict_with_crops(model, x, n_crops=n_crops, flip=flip, crop_fraction=fraction,
                                      batch_size=ep.batch_size)

        views(images[: ep.batch_size])
        t0 = time.perf_counter()
        probs = np.asarray(views(images).probabilities)
        single_s = time.perf_counter() - t0
        report = classification_metrics(labels, probs, classes)
        report["split"] = data["split"]
        report["classes_present"] = int(len(np.unique(labels)))
        flat = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
        plots = []
        if ep.test_time_crops > 1 or ep.test_time_flip:
            views(images[: ep.batch_size], ep.test_time_crops, ep.test_time_flip, ep.crop_fraction)  # warm-up
            t0 = time.perf_counter()
            tta_probs, passes = views(images, ep.test_time_crops, ep.test_time_flip, ep.crop_fraction)
            tta_s = time.perf_counter() - t0
            tta = classification_metrics(labels, np.asarray(tta_probs), classes)
            report["test_time_augmentation"] = {
                "crops": ep.test_time_crops, "flip": ep.test_time_flip, "forward_passes": passes,
                "accuracy_single": report["accuracy"], "accuracy_tta": tta["accuracy"],
                "accuracy_gain": tta["accuracy"] - report["accuracy"],
                "inference_seconds_single": single_s, "inference_seconds_tta": tta_s,
                "inference_cost_ratio": tta_s / max(single_s, 1e-9)}
            flat.update({"accuracy_tta": tta["accuracy"], "tta_cost_ratio": tta_s / max(single_s, 1e-9)})
            logger.info("test-time crops: accuracy %.4f -> %.4f at %.1fx the inference time", report["accuracy"],
                        tta["accuracy"], tta_s / max(single_s, 1e-9))
        if plot_dir is not None:
            plots.append(plot_confusion(report["confusion_matrix"], classes, Path(plot_dir) / "confusion_matrix.png",
                                        f"{info.model} on {data['split']}: accuracy {report['accuracy']:.3f}"))
        return Score(report=report, flat=flat, plots=plots)

    def degenerate(self, score, data) -> list[str]:
        reasons = super().degenerate(score, data)
        n = score.report["num_examples"]
        present = score.report.get("classes_present", 0)
        if n == 0:
            reasons.append(f"no examples in the evaluated split {data['split']!r}")
        elif present < 2:
            reasons.append(f"only {present} class present in the evaluated split {data['split']!r}: accuracy "
                           "cannot tell a model from a constant answer")
        return reasons

    def headline(self, info, score) -> str:
        r = score.report
        return f"accuracy {r['accuracy']:.4f} on {r['num_examples']} {r['split']} examples"

    # --------------------------------------------------------------- inference
    def predictor(self, model, info, top: int = 1, **options):
        import numpy as np

        classes = list(info.classes)

        def predict(images, keys):
            probs = as_probabilities(model.predict_on_batch(np.asarray(images, np.uint8)))
            rows = []
            for k, p in zip(keys, probs):
                order = np.argsort(-p)[:max(1, top)]
                rows.append({"key": k, "class": classes[int(order[0])], "probability": float(p[order[0]]),
                             "top": [[classes[int(j)], float(p[j])] for j in order],
                             "probabilities": [round(float(x), 6) for x in p]})
            return rows
        return predict

    def format_row(self, row: dict) -> list[str]:
        return [", ".join(f"{c} ({p:.3f})" for c, p in row["top"])]


class BinaryTask(ClassificationTask):
    name: ClassVar[str] = "binary"
    binary: ClassVar[bool] = True
