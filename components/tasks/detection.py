"""The detection task (YOLO): the Trainer's, Evaluator's and BulkInferrer's plug-in for models
whose registry task is ``detection`` (``yolo_small``, ``yolov2_darknet19``).

Trainer (:func:`train`)
    Reads the examples' train split (and the eval split when there is one) into memory:
    decoded uint8 images, boxes (normalised ``[xmin, ymin, xmax, ymax]``) and labels, padded to
    the largest box count. Anchors: ``anchors: auto`` runs k-means (1 - IoU) on the training
    boxes, exactly as the ``Anchors`` component does (same ``num_anchors`` / ``anchor_seed`` give
    the same anchors); a list of ``[w, h]`` image fractions or the path of an ``anchors.json``
    (the Anchors component's output) fixes them. The registered network is built with
    ``num_classes`` from ``schema.json`` and the Transform's rescale/normalise layers in front
    (the served model takes raw uint8 images, like every Trainer model; the Transform's
    *augmentation* is not used: it would move pixels without moving the boxes, so detection
    augmentation (random scale / translate / flip with the boxes transformed, colour jitter)
    runs in the input pipeline, see ``models.yolo.augment``). Trained with ``YoloLoss``;
    per-epoch metrics to the tracker (with an eval split: ``val_loss``, and ``val_map_50`` every
    ``map_every`` epochs); ``BackupAndRestore`` in the work folder resumes a killed run; the best
    epoch (``best_metric``) is exported.

Evaluator (:func:`evaluate`)
    Decodes with batched per-class NMS at the standard protocol (score >= 0.001, at most 100
    detections per image), computes COCO metrics through ``coco_evaluate`` (faster-coco-eval or
    pycocotools, the implementation and version recorded) and Pascal VOC AP@0.5 per class,
    11-point and all-point; PR-curve PNGs; a grid of test images with predicted and
    ground-truth boxes; compares with the registered baseline's ``map_50`` on the same images.
    Boxes are evaluated at the examples' resolution (``image_size``), so COCO's small/medium/large
    areas refer to those pixels, not to the original images.

BulkInferrer (:func:`load_predictor`, :func:`finalize`)
    Detections per image (pixels of the examples' resolution) in ``predictions.jsonl`` and the
    whole split as a COCO result file ``coco_results.json`` (+ ``coco_images.json`` naming the
    image ids).
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from components.base import ComponentError, Params


class TrainParams(Params):
    # "auto": k-means on the training boxes; or [[w, h], ...] image fractions; or a path to an
    # Anchors component's anchors.json.
    anchors: Literal["auto"] | list[list[float]] | str = "auto"
    num_anchors: int = Field(5, ge=1, le=20)
    anchor_seed: int = 0
    # Grid stride of yolo_small (16 keeps small objects apart on small inputs); None: the
    # model's default (or `hyperparameters.stride`).
    stride: Literal[16, 32] | None = None
    # Keyword arguments of models.yolo.augment (scale_range, max_translate, flip, brightness,
    # contrast, saturation, hue, min_visible); null: no augmentation.
    augmentation: dict[str, Any] | None = Field(default_factory=dict)
    ignore_thresh: float = Field(0.6, ge=0.0, le=1.0)
    lambda_coord: float = Field(1.0, ge=0)
    lambda_obj: float = Field(1.0, ge=0)
    lambda_noobj: float = Field(1.0, ge=0)
    lambda_class: float = Field(1.0, ge=0)
    class_loss: Literal["softmax", "sigmoid"] = "softmax"
    max_boxes: int = Field(100, ge=1)  # boxes per image kept (padding size)
    map_every: int = Field(0, ge=0)  # epochs between held-out mAP@.5 checks (0: never; needs an eval split)
    iou_threshold: float = Field(0.5, gt=0, le=1)  # NMS IoU used at inference (recorded in model_info)

    @field_validator("augmentation")
    @classmethod
    def _aug_keys(cls, v):
        if v:
            allowed = {"scale_range", "max_translate", "flip", "brightness", "contrast", "saturation", "hue",
                       "min_visible"}
            unknown = sorted(set(v) - allowed)
            if unknown:
                raise ValueError(f"unknown augmentation key(s) {unknown}; allowed: {sorted(allowed)}")
        return v


class EvalParams(Params):
    score_threshold: float = Field(0.001, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1)
    iou_threshold: float = Field(0.5, gt=0, le=1)  # NMS
    implementation: Literal["auto", "pycocotools", "faster_coco_eval"] = "auto"
    voc_iou_threshold: float = Field(0.5, gt=0, lt=1)
    blessing_metric: str = "map_50"  # used when the Evaluator's blessing_metric is its default ("accuracy")
    grid_images: int = Field(16, ge=0)
    grid_score_threshold: float = Field(0.3, ge=0, le=1)
    batch_size: int = Field(32, ge=1)


# ---------------------------------------------------------------- data

def load_split(examples: Path, split: str, image_size, max_boxes: int = 100):
    """(uint8 images (N, H, W, 3), boxes list of (n_i, 4) normalised xyxy, labels list of (n_i,),
    keys) of one split."""
    import numpy as np
    import tensorflow as tf

    from data.tfrecord import split_files

    files = split_files(examples, split)
    if not files:
        raise ComponentError(f"no TFRecords for split {split!r} in {examples}")
    h, w = image_size
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/key": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "image/object/class/label": tf.io.VarLenFeature(tf.int64),
            **{f"image/object/bbox/{n}": tf.io.VarLenFeature(tf.float32) for n in ("xmin", "ymin", "xmax", "ymax")}}

    def parse(x):
        f = tf.io.parse_single_example(x, spec)
        img = tf.ensure_shape(tf.io.decode_png(f["image/encoded"], channels=3), [h, w, 3])
        boxes = tf.stack([tf.sparse.to_dense(f[f"image/object/bbox/{n}"]) for n in ("xmin", "ymin", "xmax", "ymax")], 1)
        return img, boxes, tf.sparse.to_dense(f["image/object/class/label"]), f["image/key"]

    images, boxes, labels, keys = [], [], [], []
    for img, b, lab, key in tf.data.TFRecordDataset(files).map(parse):
        images.append(img.numpy())
        b, lab = b.numpy().reshape(-1, 4), lab.numpy().reshape(-1)
        boxes.append(b[:max_boxes])
        labels.append(lab[:max_boxes])
        keys.append(key.numpy().decode())
    order = np.argsort(keys, kind="stable")
    return (np.stack(images)[order], [boxes[i] for i in order], [labels[i] for i in order], [keys[i] for i in order])


def _resolve_anchors(tp: TrainParams, train_boxes, logger):
    """(anchors (A, 2) image fractions, mean best IoU on the training boxes, source)."""
    import numpy as np

    from components.anchors import compute_anchors

    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in train_boxes if len(b)] or [np.zeros((0, 2))])
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if tp.anchors == "auto":
        if len(wh) < tp.num_anchors:
            raise ComponentError(f"Trainer: {len(wh)} training boxes, fewer than num_anchors={tp.num_anchors}")
        rel, miou = compute_anchors(wh, tp.num_anchors, tp.anchor_seed)
        return rel, miou, f"k-means (1 - IoU) on {len(wh)} training boxes, k={tp.num_anchors}, seed={tp.anchor_seed}"
    if isinstance(tp.anchors, str):
        p = Path(tp.anchors)
        if p.is_dir():
            p = p / "anchors.json"
        if not p.is_file():
            raise ComponentError(f"Trainer task_params.anchors: {tp.anchors}: not 'auto', a list of [w, h] or an "
                                 "anchors.json file")
        rel = np.asarray(json.loads(p.read_text())["anchors"], np.float32)
        source = f"file {p}"
    else:
        rel = np.asarray(tp.anchors, np.float32)
        source = "explicit"
    if rel.ndim != 2 or rel.shape[1] != 2 or (rel <= 0).any() or (rel > 4).any():
        raise ComponentError(f"Trainer task_params.anchors: expected [[w, h], ...] positive image fractions, got "
                             f"{rel.tolist()}")
    from models.yolo.targets import _wh_iou

    miou = float(_wh_iou(wh, rel.astype(np.float64)).max(axis=1).mean()) if len(wh) else float("nan")
    return rel.astype(np.float32), miou, source


def _build(params, tp: TrainParams, transform_cfg: dict, num_classes: int, num_anchors: int):
    """(served model: uint8 images -> raw grid, core network)."""
    import keras

    from models.preprocessing import build_preprocessor
    from models.registry import build_model

    h, w = transform_cfg["image_size"]
    hp = dict(params.hyperparameters)
    if params.model == "yolo_small":
        if tp.stride is not None:
            hp["stride"] = tp.stride
    elif tp.stride is not None:
        raise ComponentError(f"Trainer task_params.stride applies to yolo_small only, not {params.model!r}")
    try:
        core = build_model(params.model, input_shape=(h, w, 3), num_classes=num_classes, num_anchors=num_anchors, **hp)
    except (TypeError, ValueError) as e:
        raise ComponentError(f"Trainer: model {params.model!r}: {e}") from None
    pre_cfg = {**transform_cfg, "augmentation": None}  # detection augmentation moves boxes: done in tf.data
    inp = keras.Input((h, w, 3), dtype="uint8", name="image")
    out = core(build_preprocessor(pre_cfg)(inp))
    return keras.Model(inp, out, name=f"{params.model}_serving"), core


def grid_of(model) -> tuple[int, int]:
    shape = model.output_shape
    return int(shape[1]), int(shape[2])


def predict(model, images, anchors_grid, num_classes, *, score_threshold=0.001, iou_threshold=0.5,
            max_detections=100, batch_size=32, image_ids=None):
    """Run the served model (uint8 images) and decode with per-class NMS -> the metrics module's
    detection format (pixel boxes at the images' size)."""
    import numpy as np
    import tensorflow as tf

    from models.yolo import decode_predictions, predictions_to_lists

    ids = list(image_ids) if image_ids is not None else list(range(len(images)))
    h, w = images.shape[1:3]
    scale = np.array([w, h, w, h], np.float32)
    anchors_grid = np.asarray(anchors_grid, np.float32)
    # One traced function per (model, decoding settings), kept on the model: a BulkInferrer worker
    # calls this per batch and must not retrace every time.
    cache = model.__dict__.setdefault("_detection_steps", {})
    key = (anchors_grid.tobytes(), int(num_classes), float(score_threshold), float(iou_threshold), int(max_detections))
    step = cache.get(key)
    if step is None:
        @tf.function(reduce_retracing=True)
        def step(x):
            raw = model(x, training=False)
            return decode_predictions(raw, anchors_grid, num_classes, score_threshold=score_threshold,
                                      iou_threshold=iou_threshold, max_detections=max_detections)
        cache[key] = step

    out = []
    for s in range(0, len(images), batch_size):
        dec = step(tf.constant(images[s:s + batch_size]))
        for det in predictions_to_lists({k: v.numpy() for k, v in dec.items()}, ids[s:s + batch_size]):
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
                out.append({"image_id": det["image_id"], "box": np.clip(box * scale, 0, scale).tolist(),
                            "score": float(score), "label": int(label)})
    return out


def ground_truth(images, boxes, labels, keys) -> list[dict]:
    import numpy as np

    h, w = images.shape[1:3]
    scale = np.array([w, h, w, h], np.float32)
    return [{"image_id": k, "width": int(w), "height": int(h), "boxes": np.asarray(b, np.float32).reshape(-1, 4) * scale,
             "labels": np.asarray(lab, np.int64)} for b, lab, k in zip(boxes, labels, keys)]


def _map_callback(x_ev, b_ev, l_ev, k_ev, anchors_grid, num_classes, every: int, iou_threshold: float):
    import keras

    from components.metrics.detection import voc_evaluate

    gt = ground_truth(x_ev, b_ev, l_ev, k_ev)

    class CB(keras.callbacks.Callback):
        """Held-out VOC mAP@.5 (all-point) every `every` epochs, added to the logs before the
        tracker and best-epoch callbacks read them."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None or (epoch + 1) % every:
                return
            dets = predict(self.model, x_ev, anchors_grid, num_classes, iou_threshold=iou_threshold)
            logs["val_map_50"] = voc_evaluate(gt, dets, class_names=[str(i) for i in range(num_classes)])["mAP_all"] or 0.0
    return CB()


# ---------------------------------------------------------------- training

def train(ctx, inputs, params, tp: TrainParams) -> dict:
    import keras
    import numpy as np

    from components.trainer import (_KeepBest, _lr_callback, _optimizer, _TrackerCallback, kill_safe_backup,
                                    load_init_weights)
    from models.yolo import YoloLoss, anchors_to_grid, yolo_dataset

    examples = Path(inputs["examples"])
    schema = json.loads((examples / "schema.json").read_text())
    transform_cfg = json.loads((Path(inputs["transform"]) / "transform.json").read_text())
    if transform_cfg.get("augmentation"):
        ctx.logger.warning("the Transform's augmentation is not used for detection (it would move pixels but not "
                           "boxes); set task_params.augmentation instead")
    image_size = tuple(schema["image_size"])
    classes = list(schema["classes"])
    num_classes = len(classes)
    if not num_classes:
        raise ComponentError(f"Trainer: {examples}/schema.json lists no classes")
    keras.utils.set_random_seed(params.seed)
    if not schema["splits"].get(params.train_split):
        raise ComponentError(f"Trainer: split {params.train_split!r} is empty or missing in {examples}")
    x_tr, b_tr, l_tr, _ = load_split(examples, params.train_split, image_size, tp.max_boxes)
    has_eval = bool(params.eval_split and schema["splits"].get(params.eval_split))
    if has_eval:
        x_ev, b_ev, l_ev, k_ev = load_split(examples, params.eval_split, image_size, tp.max_boxes)
    if "anchors" in inputs:  # an Anchors component's artifact wired into the Trainer
        tp = tp.model_copy(update={"anchors": str(Path(inputs["anchors"]) / "anchors.json")})
    rel, anchor_iou, anchor_source = _resolve_anchors(tp, b_tr, ctx.logger)
    model, core = _build(params, tp, transform_cfg, num_classes, len(rel))
    grid = grid_of(model)
    anchors_grid = anchors_to_grid(rel, grid)
    ctx.logger.info("detection training: %d images (%d boxes), %d classes, input %s, grid %s, %d anchors (%s; mean "
                    "IoU %.3f)%s", len(x_tr), sum(len(b) for b in b_tr), num_classes, image_size, grid, len(rel),
                    anchor_source, anchor_iou, f", eval {len(x_ev)} images" if has_eval else "")
    if "base_model" in inputs:
        load_init_weights(core, str(Path(inputs["base_model"]) / "model.keras"), ctx.logger)
    elif params.init_weights:
        load_init_weights(core, params.init_weights, ctx.logger)

    aug = tp.augmentation is not None
    train_ds = yolo_dataset(x_tr, b_tr, l_tr, anchors_grid, grid, num_classes, batch_size=params.batch_size,
                            augment=aug, augment_options=tp.augmentation or {}, shuffle=True, seed=params.seed,
                            uint8_images=True)
    val_ds = (yolo_dataset(x_ev, b_ev, l_ev, anchors_grid, grid, num_classes, batch_size=params.batch_size,
                           shuffle=False, uint8_images=True) if has_eval else None)
    loss = YoloLoss(anchors_grid, num_classes, ignore_thresh=tp.ignore_thresh, lambda_coord=tp.lambda_coord,
                    lambda_noobj=tp.lambda_noobj, lambda_obj=tp.lambda_obj, lambda_class=tp.lambda_class,
                    class_loss=tp.class_loss, max_true_boxes=tp.max_boxes)
    model.compile(optimizer=_optimizer(params, params.learning_rate), loss=loss,
                  steps_per_execution=params.steps_per_execution)

    monitor = params.best_metric
    if monitor == "val_map_50" and not (has_eval and tp.map_every):
        raise ComponentError("Trainer: best_metric val_map_50 needs an eval split and task_params.map_every >= 1")
    if monitor.startswith("val_") and not has_eval:
        monitor = monitor.removeprefix("val_")
    if monitor not in ("loss", "val_loss", "val_map_50"):
        raise ComponentError(f"Trainer: best_metric {params.best_metric!r}: detection reports loss, val_loss and "
                             "val_map_50 (with task_params.map_every)")
    callbacks = [kill_safe_backup(str(ctx.work_dir / "backup-detection"))]
    if has_eval and tp.map_every:
        callbacks.append(_map_callback(x_ev, b_ev, l_ev, k_ev, anchors_grid, num_classes, tp.map_every,
                                       tp.iou_threshold))
    keep_best = _KeepBest.make(monitor)
    callbacks += [_TrackerCallback.make(ctx, "train"), keep_best]
    sched = _lr_callback(params, params.learning_rate, params.epochs)
    if sched is not None:
        callbacks.append(sched)
    if params.early_stopping:
        es = params.early_stopping
        es_monitor = es.monitor if has_eval else es.monitor.removeprefix("val_")
        callbacks.append(keras.callbacks.EarlyStopping(monitor=es_monitor, patience=es.patience, min_delta=es.min_delta,
                                                       mode="max" if "map" in es_monitor else "min"))
    t0 = time.time()
    hist = model.fit(train_ds, validation_data=val_ds, epochs=params.epochs, callbacks=callbacks,
                     verbose=2 if ctx.show_progress else 0)
    train_seconds = time.time() - t0
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    epochs_run = len(history.get("loss", []))

    out = ctx.outputs["model"]
    model.save(out / "model.keras")
    with contextlib.redirect_stdout(io.StringIO()):  # export prints its endpoints
        model.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
    best_epoch = int(keep_best.best_epoch) + 1 if keep_best.best_epoch >= 0 else epochs_run
    info = {"model": params.model, "task": "detection", "classes": classes, "image_size": list(image_size),
            "anchors": anchors_grid.tolist(), "anchors_units": "grid cells",
            "anchors_relative": np.asarray(rel).tolist(), "anchor_source": anchor_source,
            "anchor_mean_iou": anchor_iou, "grid": list(grid), "num_anchors": int(len(rel)),
            "output": "raw (S_h, S_w, A, 5 + C) logits [t_x, t_y, t_w, t_h, t_o, classes]; decode with "
                      "models.yolo.decode_predictions(raw, anchors, num_classes)",
            "class_loss": tp.class_loss, "nms_iou_threshold": tp.iou_threshold,
            "task_params": tp.model_dump(mode="json"), "hyperparameters": params.hyperparameters,
            "params": int(model.count_params()), "epochs_run": epochs_run, "best_epoch": best_epoch,
            "best_metric": monitor,
            "best_value": float(keep_best.mode * keep_best.best) if keep_best.best_epoch >= 0 else None,
            "train_seconds": train_seconds,
            "images_per_second": len(x_tr) * epochs_run / max(train_seconds, 1e-9)}
    (out / "model_info.json").write_text(json.dumps(info, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    _plot_history(history, out / "training_curves.png")
    ctx.tracker.log_artifact(out / "training_curves.png", "plots")
    ctx.tracker.log_artifact(out / "model_info.json")
    ctx.tracker.log_metrics({"anchor_mean_iou": anchor_iou})
    ctx.logger.info("trained %s: %d epochs in %.1fs (%.1f images/s), best epoch %d (%s=%s)", params.model, epochs_run,
                    train_seconds, info["images_per_second"], best_epoch, monitor, info["best_value"])
    final = {f"final_{k}": v[-1] for k, v in history.items() if v}
    return {**final, "best_epoch": best_epoch, "train_seconds": train_seconds,
            "images_per_second": info["images_per_second"], "anchor_mean_iou": anchor_iou}


def _plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_map = bool(history.get("val_map_50"))
    fig, axes = plt.subplots(1, 2 if has_map else 1, figsize=(10 if has_map else 5, 3.5))
    axes = list(axes) if has_map else [axes]
    for k in ("loss", "val_loss"):
        if history.get(k):
            axes[0].plot(range(1, len(history[k]) + 1), history[k], label=k)
    axes[0].set_title("YOLO loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    if has_map:
        v = history["val_map_50"]
        axes[1].plot(range(1, len(v) + 1), v)
        axes[1].set_title("held-out mAP@.5 (VOC all-point)")
        axes[1].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- evaluation

def load_detector(model_dir: Path):
    """(served Keras model, model_info, anchors in grid units) of a detection Trainer's output."""
    import numpy as np

    from models.preprocessing import load_model

    info = json.loads((Path(model_dir) / "model_info.json").read_text())
    if info.get("task") != "detection":
        raise ComponentError(f"{model_dir}: not a detection model (task {info.get('task')!r})")
    return load_model(Path(model_dir) / "model.keras"), info, np.asarray(info["anchors"], np.float32)


def _baseline_map(params, tp: EvalParams, images, gt, keys, info, ctx):
    """The registered baseline's COCO/VOC numbers on the same images, or None."""
    import numpy as np

    from components.metrics.detection import coco_evaluate, voc_evaluate
    from components.predict import PredictError, load_classifier

    uri = f"models:/{params.baseline_model}@{params.baseline_alias}"
    try:
        model, binfo = load_classifier(uri, ctx.tracking_uri)
    except PredictError as e:
        ctx.logger.info("no baseline: %s", e)
        return None
    except Exception as e:  # an empty registry, a model without its keras artifacts
        ctx.logger.info("no baseline (%s: %s)", type(e).__name__, e)
        return None
    if binfo.get("task") != "detection" or list(binfo.get("image_size", [])) != list(info["image_size"]) \
            or binfo.get("classes") != info["classes"]:
        ctx.logger.info("baseline %s is not a detector for the same image size and classes: not compared", uri)
        return None
    dets = predict(model, images, np.asarray(binfo["anchors"], np.float32), len(binfo["classes"]),
                   score_threshold=tp.score_threshold, iou_threshold=tp.iou_threshold,
                   max_detections=tp.max_detections, batch_size=tp.batch_size, image_ids=keys)
    c = coco_evaluate(gt, dets, info["classes"], implementation=tp.implementation, max_dets=tp.max_detections)
    v = voc_evaluate(gt, dets, iou_threshold=tp.voc_iou_threshold, class_names=info["classes"])
    return {"model": params.baseline_model, "alias": params.baseline_alias, **_flat(c, v)}


def _flat(coco: dict, voc: dict) -> dict:
    flat = {}
    for k in ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "AR_1", "AR_10", "AR_100",
              "AR_small", "AR_medium", "AR_large"):
        if coco.get(k) is not None:
            flat[k.lower()] = float(coco[k])
    if voc.get("mAP_11") is not None:
        flat["voc_map_50_11pt"] = float(voc["mAP_11"])
    if voc.get("mAP_all") is not None:
        flat["voc_map_50"] = float(voc["mAP_all"])
    for name, ap in (coco.get("per_class_AP50") or {}).items():
        if ap is not None:
            flat[f"ap50_{name}"] = float(ap)
    return flat


def evaluate(ctx, inputs, params, tp: EvalParams) -> dict:

    from components.metrics.detection import (coco_evaluate, draw_detection_grid, plot_pr_curves,
                                              voc_evaluate)

    model_dir, examples = Path(inputs["model"]), Path(inputs["examples"])
    schema = json.loads((examples / "schema.json").read_text())
    model, info, anchors = load_detector(model_dir)
    split = params.split if schema["splits"].get(params.split) else "eval"
    if not schema["splits"].get(split):
        raise ComponentError(f"Evaluator: split {params.split!r} (and 'eval') empty or missing in {examples}")
    if list(schema["image_size"]) != list(info["image_size"]):
        raise ComponentError(f"Evaluator: examples are {schema['image_size']}, the model takes {info['image_size']}")
    if list(schema["classes"]) != list(info["classes"]):
        raise ComponentError(f"Evaluator: the examples' classes {schema['classes']} differ from the model's "
                             f"{info['classes']}")
    classes = info["classes"]
    images, boxes, labels, keys = load_split(examples, split, tuple(schema["image_size"]), 10_000)
    gt = ground_truth(images, boxes, labels, keys)

    t0 = time.perf_counter()
    dets = predict(model, images, anchors, len(classes), score_threshold=tp.score_threshold,
                   iou_threshold=tp.iou_threshold, max_detections=tp.max_detections, batch_size=tp.batch_size,
                   image_ids=keys)
    predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        coco = coco_evaluate(gt, dets, classes, implementation=tp.implementation, max_dets=tp.max_detections)
    except ImportError as e:
        raise ComponentError(f"Evaluator task_params.implementation {tp.implementation!r}: {e}") from None
    coco_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    voc = voc_evaluate(gt, dets, iou_threshold=tp.voc_iou_threshold, class_names=classes)
    voc_s = time.perf_counter() - t0

    out_eval, out_bless = ctx.outputs["evaluation"], ctx.outputs["blessing"]
    pr_paths = plot_pr_curves(voc, out_eval / "pr_curves")
    grid_path = None
    if tp.grid_images:
        grid_path = draw_detection_grid(images[:tp.grid_images], gt[:tp.grid_images], dets,
                                        out_eval / "detections_grid.png", class_names=classes,
                                        score_threshold=tp.grid_score_threshold, max_images=tp.grid_images)
    flat = _flat(coco, voc)
    metrics = {"split": split, "num_images": len(images), "num_gt_boxes": coco["num_gt"],
               "num_detections": len(dets), "image_size": info["image_size"],
               "protocol": {"score_threshold": tp.score_threshold, "max_detections": tp.max_detections,
                            "nms_iou_threshold": tp.iou_threshold, "nms": "per class (combined_non_max_suppression)"},
               "coco": {k: v for k, v in coco.items() if k != "summary"}, "coco_summary": coco.get("summary", ""),
               "voc": {k: v for k, v in voc.items() if k != "curves"},
               "timings": {"predict_seconds": predict_s, "images_per_second": len(images) / max(predict_s, 1e-9),
                           "coco_eval_seconds": coco_s, "voc_eval_seconds": voc_s},
               "flat": flat}

    baseline = None
    if params.baseline_model:
        baseline = _baseline_map(params, tp, images, gt, keys, info, ctx)
        if baseline is not None:
            metrics["baseline"] = baseline
    thresholds = dict(params.thresholds)
    if thresholds == {"accuracy": 0.0}:  # the Evaluator's classification default: no threshold for detection
        thresholds = {}
    metric = tp.blessing_metric if params.blessing_metric == "accuracy" else params.blessing_metric
    from components.blessing import bless, write_blessing

    blessed, reasons = bless(flat, thresholds, metric, baseline, max_regression=params.max_regression,
                             baseline_name=f"baseline {params.baseline_model}@{params.baseline_alias}")
    (out_eval / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    write_blessing(out_bless, blessed, reasons, metric, flat.get(metric), baseline, thresholds=thresholds)
    ctx.tracker.log_artifact(out_eval / "metrics.json")
    ctx.tracker.log_artifact(out_bless / "blessing.json")
    for p in pr_paths:
        ctx.tracker.log_artifact(p, "plots/pr_curves")
    if grid_path is not None:
        ctx.tracker.log_artifact(grid_path, "plots")
    ctx.tracker.log_params({"coco_implementation": coco["implementation"], "coco_version": coco["version"]})
    ctx.tracker.set_tags({"blessed": str(blessed).lower(), "coco_implementation":
                          f"{coco['implementation']} {coco['version']}"})
    ctx.logger.info("%s on %d %s images: mAP@[.5:.95] %.4f, mAP@.5 %.4f, VOC AP@.5 %.4f (all-point) / %.4f (11-pt) "
                    "[%s %s] -> %s%s", info["model"], len(images), split, coco["mAP"], coco["mAP_50"],
                    voc["mAP_all"] or 0.0, voc["mAP_11"] or 0.0, coco["implementation"], coco["version"],
                    "BLESSED" if blessed else "NOT blessed", (": " + "; ".join(reasons)) if reasons else "")
    return {**flat, "blessed": float(blessed), "coco_eval_seconds": coco_s}


# ---------------------------------------------------------------- bulk inference

class _Predictor:
    """BulkInferrer's callable: uint8 images (B, H, W, 3) + keys -> one JSON-able row per image."""

    def __init__(self, model_dir: str, score_threshold: float = 0.001, max_detections: int = 100):
        self.model, self.info, self.anchors = load_detector(Path(model_dir))
        self.score_threshold, self.max_detections = score_threshold, max_detections

    def __call__(self, images, keys):
        import numpy as np

        images = np.asarray(images, np.uint8)
        h, w = self.info["image_size"]
        if images.shape[1:3] != (h, w):
            raise ComponentError(f"BulkInferrer: images are {images.shape[1:3]}, the model takes {(h, w)}")
        dets = predict(self.model, images, self.anchors, len(self.info["classes"]),
                       score_threshold=self.score_threshold, iou_threshold=self.info.get("nms_iou_threshold", 0.5),
                       max_detections=self.max_detections, image_ids=list(keys))
        by_key: dict = {k: [] for k in keys}
        for d in dets:
            by_key[d["image_id"]].append({"box": [round(v, 2) for v in d["box"]], "score": round(d["score"], 5),
                                          "label": d["label"], "class": self.info["classes"][d["label"]]})
        return [{"key": k, "width": int(w), "height": int(h), "detections": by_key[k]} for k in keys]


def load_predictor(model_dir):
    return _Predictor(str(model_dir))


def finalize(rows, out_dir, info) -> dict:
    """The whole split as a COCO result file: ``coco_results.json`` (``image_id`` numbers the rows in
    key order, as ``coco_images.json`` lists them; ``category_id`` = label + 1, as in
    ``coco_categories``)."""
    from components.metrics.detection import detections_to_coco_json

    out_dir = Path(out_dir)
    rows = sorted(rows, key=lambda r: r["key"])
    id_map = {r["key"]: i for i, r in enumerate(rows, start=1)}
    dets = [{"image_id": r["key"], "box": d["box"], "score": d["score"], "label": d["label"]}
            for r in rows for d in r["detections"]]
    detections_to_coco_json(dets, out_dir / "coco_results.json", image_id_map=id_map)
    images = [{"id": id_map[r["key"]], "file_name": r["key"], "width": r["width"], "height": r["height"]} for r in rows]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(info["classes"])]
    (out_dir / "coco_images.json").write_text(json.dumps({"images": images, "categories": cats}, indent=2))
    return {"detections": float(len(dets)), "images": float(len(rows))}
