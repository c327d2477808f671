"""The detection task (YOLO): the Task plug-in of models whose registry task is ``detection``
(``yolo_small``, ``yolov2_darknet19``).

Trainer
    The train split (and the eval split when there is one) in memory, in key order: uint8
    images, normalised ``[xmin, ymin, xmax, ymax]`` boxes and labels, at most ``max_boxes`` per
    image. Anchors: the Trainer's optional input ``anchors`` (an Anchors component's artifact)
    is used as it is; otherwise ``anchors: auto`` runs k-means (1 - IoU) on the training boxes
    exactly as the Anchors component does (same ``num_anchors`` / ``anchor_seed``: same anchors),
    and a list of ``[w, h]`` image fractions or an ``anchors.json`` path fixes them. The network
    is built with ``num_classes`` and ``num_anchors`` (and ``stride`` when its builder takes one);
    the Transform's *augmentation* is not used (it would move pixels without moving the boxes):
    detection augmentation (random scale / translate / flip with the boxes transformed, colour
    jitter) runs in the input pipeline (``models.yolo.augment``). Trained with ``YoloLoss``; with
    an eval split ``val_loss``, and ``val_map_50`` (VOC all-point) every ``map_every`` epochs.

Evaluator
    Decodes with batched per-class NMS at the standard protocol (score >= 0.001, at most 100
    detections per image); COCO metrics through ``coco_evaluate`` (faster-coco-eval or
    pycocotools, the implementation and version recorded) and Pascal VOC AP@0.5 per class,
    11-point and all-point; PR-curve PNGs and a grid of images with predicted and ground-truth
    boxes. Boxes are evaluated at the examples' resolution (``image_size``), so COCO's
    small/medium/large areas refer to those pixels, not to the original images.

BulkInferrer / predict
    Detections per image (pixels of the model's input) in ``predictions.jsonl`` and the whole
    split as a COCO result file ``coco_results.json`` (+ ``coco_images.json`` naming the image ids).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.base import ComponentError, Params
from components.tasks.base import Score, Task, TrainData

OUTPUT = ("raw (S_h, S_w, A, 5 + C) logits [t_x, t_y, t_w, t_h, t_o, classes]; decode with "
          "models.yolo.decode_predictions(raw, anchors, num_classes)")
BULK_PROTOCOL = {"score_threshold": 0.001, "max_detections": 100}  # BulkInferrer's (and the Evaluator's) defaults
# `predict`/`detect` on a model registered without its own threshold (no eval split, or older)
FALLBACK_SCORE_THRESHOLD = 0.3


class TrainParams(Params):
    # "auto": k-means on the training boxes; or [[w, h], ...] image fractions; or a path to an
    # Anchors component's anchors.json. The Trainer's input `anchors`, when wired, wins.
    anchors: Literal["auto"] | list[list[float]] | str = "auto"
    num_anchors: int = Field(5, ge=1, le=20)
    anchor_seed: int = 0
    # Grid stride of models whose builder takes one (yolo_small: 16 keeps small objects apart on
    # small inputs); None: the model's default (or `hyperparameters.stride`).
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
    blessing_metric: str | None = None  # kept so existing configs validate; the Evaluator's own wins
    grid_images: int = Field(16, ge=0)
    grid_score_threshold: float = Field(0.3, ge=0, le=1)
    batch_size: int = Field(32, ge=1)


class Info(BaseModel):
    """A detector's model_info.json fields (besides the common ones)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    anchors: list[list[float]]  # grid-cell units: what the decoder takes
    anchors_units: Literal["grid cells"] = "grid cells"
    anchors_relative: list[list[float]]  # image fractions
    anchor_source: str
    anchor_mean_iou: float | None  # mean best IoU of the anchors on the training boxes
    grid: list[int]
    num_anchors: int
    output: str = OUTPUT
    class_loss: Literal["softmax", "sigmoid"]
    nms_iou_threshold: float
    # The score cut with the best F1 on the eval split (IoU > 0.5, right class), chosen by the
    # Trainer as the face branch chooses its distance threshold: `predict`/`detect` use it.
    # None: no eval split (or a model from before), and they fall back to 0.3.
    score_threshold: float | None = None
    score_threshold_f1: float | None = None  # precision/recall at it, on that split
    score_threshold_precision: float | None = None
    score_threshold_recall: float | None = None


# ---------------------------------------------------------------- data and anchors

def read_boxes_split(examples, split: str, max_boxes: int | None = None) -> dict:
    """One split in memory, sorted by key: ``images``, ``boxes`` / ``labels`` (per image, at most
    ``max_boxes``), ``keys``."""
    import numpy as np

    from data.tfrecord import read_split

    d = read_split(examples.require(split, "detection task"), examples.image_size, boxes=True)
    order = np.argsort(d["keys"], kind="stable")
    return {"images": d["images"][order], "keys": [d["keys"][i] for i in order],
            "boxes": [d["boxes"][i][:max_boxes] for i in order],
            "labels": [d["box_labels"][i][:max_boxes] for i in order]}


def _given_anchors(tc):
    """(anchors (A, 2) image fractions, source) fixed before any data is read, or (None, source) for
    k-means on the training boxes."""
    import numpy as np

    from components.artifacts import Anchors

    tp = tc.tp
    if "anchors" in tc.inputs:  # an Anchors component's artifact wired into the Trainer: used as it is
        a = Anchors.load(tc.inputs["anchors"])
        d = a.data
        rel, source = a.relative, (f"Anchors artifact {a.path} (k={d.get('k')}, seed={d.get('seed')}, "
                                   f"{d.get('num_boxes')} {d.get('split')} boxes from {d.get('source')})")
    elif tp.anchors == "auto":
        return None, "k-means"
    elif isinstance(tp.anchors, str):
        p = Path(tp.anchors)
        p = p / Anchors.FILE if p.is_dir() else p
        if not p.is_file():
            raise ComponentError(f"Trainer task_params.anchors: {tp.anchors}: not 'auto', a list of [w, h] or an "
                                 "anchors.json file")
        rel, source = Anchors.load(p).relative, f"file {p}"
    else:
        rel, source = np.asarray(tp.anchors, np.float32), "explicit"
    if rel.ndim != 2 or rel.shape[1] != 2 or len(rel) == 0 or (rel <= 0).any() or (rel > 4).any():
        raise ComponentError(f"Trainer anchors: expected [[w, h], ...] positive image fractions, got {rel.tolist()}")
    return rel.astype(np.float32), source


def resolve_anchors(tc, train_boxes):
    """(anchors (A, 2) image fractions, mean best IoU on the training boxes, source)."""
    import numpy as np

    from components.anchors import compute_anchors
    from models.yolo.targets import _wh_iou

    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in train_boxes if len(b)] or [np.zeros((0, 2))])
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    rel, source = _given_anchors(tc)
    if rel is None:
        k = tc.tp.num_anchors
        if len(wh) < k:
            raise ComponentError(f"Trainer: {len(wh)} training boxes, fewer than num_anchors={k}")
        rel, miou = compute_anchors(wh, k, tc.tp.anchor_seed)
        return rel, miou, f"k-means (1 - IoU) on {len(wh)} training boxes, k={k}, seed={tc.tp.anchor_seed}"
    miou = float(_wh_iou(wh, rel.astype(np.float64)).max(axis=1).mean()) if len(wh) else float("nan")
    return rel, miou, source


def map_callback(data: dict, anchors_grid, num_classes: int, every: int, iou_threshold: float):
    """Held-out VOC mAP@.5 (all-point) every ``every`` epochs, added to the logs as ``val_map_50``."""
    import keras

    from components.metrics.detection import voc_evaluate
    from models.yolo.inference import ground_truth, predict

    gt = ground_truth(data["images"], data["boxes"], data["labels"], data["keys"])

    class HeldOutMap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None or (epoch + 1) % every:
                return
            dets = predict(self.model, data["images"], anchors_grid, num_classes, iou_threshold=iou_threshold,
                           image_ids=data["keys"])
            voc = voc_evaluate(gt, dets, class_names=[str(i) for i in range(num_classes)])
            logs["val_map_50"] = voc["mAP_all"] or 0.0
    return HeldOutMap()


# ---------------------------------------------------------------- evaluation helpers

def flat_metrics(coco: dict, voc: dict) -> dict:
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


def threshold_of(info) -> tuple[float, str]:
    """(score threshold, where it comes from) for `predict`/`detect` when none is given."""
    cut = info.get("score_threshold")
    if cut is None:
        return FALLBACK_SCORE_THRESHOLD, "default: the model has no registered threshold"
    f1 = info.get("score_threshold_f1")
    return float(cut), "registered with the model: best F1" + (f" {f1:.2f}" if f1 is not None else "") + " on its eval split"


def describe(detections: list[dict], best_score: float | None = None, where: str = "") -> list[str]:
    """What ``predict`` and ``detect`` print for one image: "Found N boxes" and one line per box;
    when none, the highest score seen (with a hint to lower the cut)."""
    lines = [f"Found {len(detections)} boxes{where}"]
    if not detections and best_score is not None:
        lines.append(f"  (highest score seen {best_score:.3f}; --score-threshold lowers the cut)")
    for d in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
        lines.append(f"  {d['class']} {d['score']:.2f} ({x1}, {y1}) ({x2}, {y2})")
    return lines


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# ---------------------------------------------------------------- predict rows (in-process and served)

def _check_images(images, info):
    import numpy as np

    images = np.asarray(images, np.uint8)
    h, w = info.image_size
    if images.shape[1:3] != (h, w):
        raise ComponentError(f"detection: images are {images.shape[1:3]}, the model takes {(h, w)}")
    return images


def _row_maker(info, score_threshold: float, threshold_source: str | None, out_dir):
    """(key, image, boxes in pixels, scores, labels, best score) -> the ``predict`` row of one
    image: what the in-process predictor and the served one both give (and ``output``, the drawn
    image, under ``out_dir``)."""
    from models.yolo.draw import draw_boxes
    from models.yolo.inference import detection_dicts

    classes = list(info.classes)
    h, w = info.image_size
    used: set[str] = set()
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)

    def row(key, image, px_boxes, scores, labels, best_score) -> dict:
        dets = detection_dicts(px_boxes, scores, labels, classes)
        r = {"key": key, "width": int(w), "height": int(h), "detections": dets}
        if threshold_source:  # interactive predict: say which cut was applied
            r["score_threshold"], r["threshold_source"] = score_threshold, threshold_source
        if not dets:
            r["best_score"] = round(float(best_score), 5)
        if out_dir is not None:
            stem = Path(str(key)).stem or "image"
            name = stem if stem not in used else f"{stem}_{len(used)}"
            used.add(name)
            r["output"] = str(Path(out_dir) / f"{name}.png")
            draw_boxes(image, dets, classes, r["output"])
        return r
    return row


# ---------------------------------------------------------------- the plug-in

class DetectionTask(Task):
    name: ClassVar[str] = "detection"
    examples_task: ClassVar[str] = "detection"
    TrainParams: ClassVar[type[Params]] = TrainParams
    EvalParams: ClassVar[type[Params]] = EvalParams
    Info: ClassVar[type[BaseModel]] = Info
    blessing_metric: ClassVar[str] = "map_50"
    default_best_metric: ClassVar[str] = "val_loss"
    train_inputs: ClassVar[dict[str, bool]] = {"anchors": False}
    augment_in_model: ClassVar[bool] = False  # boxes move with the pixels: augmented in tf.data instead

    # --------------------------------------------------------------- Trainer
    def check_examples(self, examples, model: str) -> None:
        super().check_examples(examples, model)
        if not examples.classes:
            raise ComponentError(f"Trainer: {examples.path}/{examples.FILE} lists no classes")

    def build_kwargs(self, tc) -> dict:
        import inspect

        from models.registry import get_builder

        rel, _ = _given_anchors(tc)
        kwargs = {"num_classes": len(tc.examples.classes),
                  "num_anchors": tc.tp.num_anchors if rel is None else len(rel)}
        if tc.tp.stride is not None:
            if "stride" not in inspect.signature(get_builder(tc.params.model)).parameters:
                raise ComponentError(f"Trainer task_params.stride: the builder of {tc.params.model!r} takes no stride")
            kwargs["stride"] = tc.tp.stride
        return kwargs

    def train_data(self, tc, model) -> TrainData:
        from models.yolo import anchors_to_grid, yolo_dataset

        p, tp, log = tc.params, tc.tp, tc.logger
        if tc.transform.config.get("augmentation"):
            log.warning("the Transform's augmentation is not used for detection (it would move pixels but not "
                        "boxes); set task_params.augmentation instead")
        tr = read_boxes_split(tc.examples, p.train_split, tp.max_boxes)
        ev = read_boxes_split(tc.examples, p.eval_split, tp.max_boxes) if tc.has_eval else None
        rel, miou, source = resolve_anchors(tc, tr["boxes"])
        grid = (int(model.output_shape[1]), int(model.output_shape[2]))
        if int(model.output_shape[3]) != len(rel):
            raise ComponentError(f"Trainer: the model has {model.output_shape[3]} anchor slots for {len(rel)} anchors")
        anchors_grid = anchors_to_grid(rel, grid)
        c = len(tc.examples.classes)
        log.info("detection training: %d images (%d boxes), %d classes, input %s, grid %s, %d anchors (%s; mean IoU "
                 "%.3f)%s", len(tr["images"]), sum(len(b) for b in tr["boxes"]), c, tc.examples.image_size, grid,
                 len(rel), source, miou, f", eval {len(ev['images'])} images" if ev else "")
        train = yolo_dataset(tr["images"], tr["boxes"], tr["labels"], anchors_grid, grid, c, batch_size=p.batch_size,
                             augment=tp.augmentation is not None, augment_options=tp.augmentation or {}, shuffle=True,
                             seed=p.seed, uint8_images=True)
        val = (yolo_dataset(ev["images"], ev["boxes"], ev["labels"], anchors_grid, grid, c, batch_size=p.batch_size,
                            shuffle=False, uint8_images=True) if ev else None)
        return TrainData(train=train, validation=val, images_per_epoch=len(tr["images"]), has_eval=ev is not None,
                         state={"eval": ev, "anchors_relative": rel, "anchors_grid": anchors_grid, "grid": grid,
                                "anchor_mean_iou": miou, "anchor_source": source})

    def reported_metrics(self, tc, data) -> set[str]:
        with_map = data.has_eval and tc.tp.map_every > 0
        asked = [tc.params.best_metric] + ([tc.params.early_stopping.monitor] if tc.params.early_stopping else [])
        if "val_map_50" in asked and not with_map:
            raise ComponentError("Trainer: val_map_50 (best_metric / early_stopping.monitor) needs an eval split and "
                                 "task_params.map_every >= 1")
        return super().reported_metrics(tc, data) | ({"val_map_50"} if with_map else set())

    def epoch_callbacks(self, tc, data) -> list:
        if not (data.has_eval and tc.tp.map_every):
            return []
        s = data.state
        return [map_callback(s["eval"], s["anchors_grid"], len(tc.examples.classes), tc.tp.map_every,
                             tc.tp.iou_threshold)]

    def compile_args(self, tc, data) -> dict:
        from models.yolo import YoloLoss

        tp = tc.tp
        return {"loss": YoloLoss(data.state["anchors_grid"], len(tc.examples.classes), ignore_thresh=tp.ignore_thresh,
                                 lambda_coord=tp.lambda_coord, lambda_noobj=tp.lambda_noobj, lambda_obj=tp.lambda_obj,
                                 lambda_class=tp.lambda_class, class_loss=tp.class_loss, max_true_boxes=tp.max_boxes)}

    def finish(self, tc, data, model) -> dict:
        import math

        s = data.state
        miou = s["anchor_mean_iou"]
        tc.ctx.tracker.log_metrics({"anchor_mean_iou": miou})
        return {"anchors": s["anchors_grid"].tolist(), "anchors_relative": s["anchors_relative"].tolist(),
                "anchor_source": s["anchor_source"], "anchor_mean_iou": None if math.isnan(miou) else miou,
                "grid": list(s["grid"]), "num_anchors": len(s["anchors_relative"]), "class_loss": tc.tp.class_loss,
                "nms_iou_threshold": tc.tp.iou_threshold, **self._score_threshold(tc, data, model)}

    def _score_threshold(self, tc, data, model) -> dict:
        """The score cut with the best F1 on the eval split (the model as it will be served)."""
        from components.metrics.detection import f1_at_thresholds
        from models.yolo.inference import ground_truth, predict

        ev = data.state["eval"]
        if not ev or not len(ev["images"]):
            tc.logger.info("no eval split: predict/detect will use the score threshold %.2f", FALLBACK_SCORE_THRESHOLD)
            return {}
        dets = predict(model, ev["images"], data.state["anchors_grid"], len(tc.examples.classes),
                       iou_threshold=tc.tp.iou_threshold, image_ids=list(range(len(ev["images"]))))
        gt = ground_truth(ev["images"], ev["boxes"], ev["labels"], list(range(len(ev["images"]))))
        best = f1_at_thresholds(gt, dets, class_names=list(tc.examples.classes))
        if best["threshold"] is None:
            tc.logger.warning("no detection on the eval split matches a box: predict/detect will use the score "
                              "threshold %.2f", FALLBACK_SCORE_THRESHOLD)
            return {}
        tc.logger.info("score threshold %.3f: best F1 %.3f on the eval split (precision %.3f, recall %.3f)",
                       best["threshold"], best["f1"], best["precision"], best["recall"])
        tc.ctx.tracker.log_metrics({"score_threshold": best["threshold"], "score_threshold_f1": best["f1"]})
        return {"score_threshold": best["threshold"], "score_threshold_f1": best["f1"],
                "score_threshold_precision": best["precision"], "score_threshold_recall": best["recall"]}

    # --------------------------------------------------------------- Evaluator
    def eval_data(self, examples, split, ep, tp) -> dict:
        from models.yolo.inference import ground_truth

        d = read_boxes_split(examples, split)
        return {**d, "split": split, "gt": ground_truth(d["images"], d["boxes"], d["labels"], d["keys"])}

    def score(self, model, info, data, ep, tp, plot_dir, logger) -> Score:
        import numpy as np

        from components.metrics.detection import coco_evaluate, draw_detection_grid, plot_pr_curves, voc_evaluate
        from models.yolo.inference import predict

        classes, images, gt = list(info.classes), data["images"], data["gt"]
        t0 = time.perf_counter()
        dets = predict(model, images, np.asarray(info.get("anchors"), np.float32), len(classes),
                       score_threshold=tp.score_threshold, iou_threshold=tp.iou_threshold,
                       max_detections=tp.max_detections, batch_size=tp.batch_size, image_ids=data["keys"])
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
        flat = flat_metrics(coco, voc)
        at_cut = self._at_registered_threshold(info, gt, dets, classes, tp)
        flat.update({f"{k}_at_threshold": at_cut[k] for k in ("f1", "precision", "recall") if at_cut})
        report = {"split": data["split"], "num_images": len(images), "num_gt_boxes": coco["num_gt"],
                  "num_detections": len(dets), "image_size": list(info.image_size),
                  "protocol": {"score_threshold": tp.score_threshold, "max_detections": tp.max_detections,
                               "nms_iou_threshold": tp.iou_threshold,
                               "nms": "per class (combined_non_max_suppression)"},
                  "coco": {k: v for k, v in coco.items() if k != "summary"}, "coco_summary": coco.get("summary", ""),
                  "at_score_threshold": at_cut,
                  "voc": {k: v for k, v in voc.items() if k != "curves"},
                  "timings": {"predict_seconds": predict_s, "images_per_second": len(images) / max(predict_s, 1e-9),
                              "coco_eval_seconds": coco_s, "voc_eval_seconds": voc_s},
                  "flat": flat}
        plots = []
        if plot_dir is not None:
            plots += plot_pr_curves(voc, Path(plot_dir) / "pr_curves")
            if tp.grid_images:
                plots.append(draw_detection_grid(images[:tp.grid_images], gt[:tp.grid_images], dets,
                                                 Path(plot_dir) / "detections_grid.png", class_names=classes,
                                                 score_threshold=tp.grid_score_threshold, max_images=tp.grid_images))
        return Score(report=report, flat=flat, plots=plots)

    @staticmethod
    def _at_registered_threshold(info, gt, dets, classes, tp) -> dict:
        """Precision/recall/F1 of the boxes `predict` would show: those at or above the model's
        registered score threshold (an unseen split's check of the cut chosen on eval)."""
        from components.metrics.detection import f1_at_thresholds

        cut = info.get("score_threshold")
        if cut is None or cut < tp.score_threshold:
            return {}
        r = f1_at_thresholds(gt, dets, iou_threshold=tp.voc_iou_threshold, class_names=classes)
        c, n = r["curve"], r["num_gt"]
        kept = [i for i, t in enumerate(c["threshold"]) if t >= cut]  # cuts run from the highest score down
        tp_n, fp_n = (c["tp"][kept[-1]], c["fp"][kept[-1]]) if kept else (0, 0)
        prec = tp_n / (tp_n + fp_n) if tp_n + fp_n else 0.0
        rec = tp_n / n if n else 0.0
        return {"score_threshold": cut, "precision": prec, "recall": rec,
                "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "boxes": tp_n + fp_n, "true_positives": tp_n}

    def comparable(self, baseline, info) -> str | None:
        if baseline.task != "detection" or baseline.get("anchors") is None:
            return f"not a detector (a {baseline.task} model)"
        if list(baseline.image_size) != list(info.image_size) or list(baseline.classes) != list(info.classes):
            return "not a detector for the same image size and classes"
        return None

    def degenerate(self, score, data) -> list[str]:
        reasons = super().degenerate(score, data)
        if not score.report["num_images"]:
            reasons.append(f"no images in the evaluated split {data['split']!r}")
        elif not score.report["num_gt_boxes"]:
            reasons.append(f"no ground-truth boxes in the evaluated split {data['split']!r}: mAP is undefined")
        return reasons

    def headline(self, info, score) -> str:
        r = score.report
        c, v = r["coco"], r["voc"]
        return (f"on {r['num_images']} {r['split']} images: mAP@[.5:.95] {_fmt(c.get('mAP'))}, mAP@.5 "
                f"{_fmt(c.get('mAP_50'))}, VOC AP@.5 {_fmt(v.get('mAP_all'))} (all-point) / {_fmt(v.get('mAP_11'))} "
                f"(11-pt) [{c['implementation']} {c['version']}]")

    # --------------------------------------------------------------- inference
    def predictor(self, model, info, score_threshold: float = BULK_PROTOCOL["score_threshold"],
                  iou_threshold: float | None = None, max_boxes: int | None = None,
                  max_detections: int = BULK_PROTOCOL["max_detections"], out_dir=None,
                  threshold_source: str | None = None, **_):
        """Rows ``{"key", "width", "height", "detections": [{"box" (pixels of the model's input),
        "score", "label", "class"}]}`` (+ ``best_score`` when nothing was kept; + ``output``, the
        drawn image, with ``out_dir``)."""
        import numpy as np

        from models.yolo.inference import detect, to_pixels

        classes = list(info.classes)
        anchors = np.asarray(info.get("anchors"), np.float32)
        h, w = info.image_size
        iou = info.get("nms_iou_threshold", 0.5) if iou_threshold is None else iou_threshold
        row = _row_maker(info, score_threshold, threshold_source, out_dir)

        def run(images, keys):
            images = _check_images(images, info)
            return [row(k, img, to_pixels(det["boxes"], h, w), det["scores"], det["labels"], det["best_score"])
                    for k, img, det in zip(keys, images, detect(model, images, anchors, len(classes),
                                                                score_threshold=score_threshold, iou_threshold=iou,
                                                                max_detections=max_boxes or max_detections))]
        return run

    def served_predictor(self, served, info, score_threshold: float = BULK_PROTOCOL["score_threshold"],
                         max_boxes: int | None = None, max_detections: int = BULK_PROTOCOL["max_detections"],
                         out_dir=None, threshold_source: str | None = None, **_):
        """The served detector answers its boxes after NMS, packed as (B, 100, 6) rows (pixels,
        score, class; class -1 pads: ``models/yolo/serving.py``), decoded with every score above 0:
        keeping those at or above ``score_threshold`` (at most ``max_boxes``) gives what decoding
        with that cut gives in-process (NMS is greedy by score), and the same rows through the same
        ``_row_maker``. The NMS IoU is the registered one (``iou_threshold`` cannot change it)."""
        import numpy as np

        row = _row_maker(info, score_threshold, threshold_source, out_dir)
        limit = max_boxes or max_detections

        def run(images, keys):
            images = _check_images(images, info)
            packed = np.asarray(served.predict_on_batch(images), np.float32).reshape(len(images), -1, 6)
            rows = []
            for k, img, dets in zip(keys, images, packed):
                dets = dets[dets[:, 5] >= 0]  # sorted by score: the first is the best of the image
                best = float(dets[0, 4]) if len(dets) else 0.0
                kept = dets[dets[:, 4] >= score_threshold][:limit]
                rows.append(row(k, img, kept[:, :4], kept[:, 4], kept[:, 5].astype(np.int64), best))
            return rows
        return run

    def finalize_inference(self, rows, out_dir, info) -> dict:
        """``coco_results.json`` (``image_id`` numbers the rows in key order, as ``coco_images.json``
        lists them; ``category_id`` = label + 1, as in its ``categories``)."""
        from components.metrics.detection import detections_to_coco_json

        out_dir = Path(out_dir)
        rows = sorted(rows, key=lambda r: r["key"])
        id_map = {r["key"]: i for i, r in enumerate(rows, start=1)}
        dets = [{"image_id": r["key"], "box": d["box"], "score": d["score"], "label": d["label"]}
                for r in rows for d in r["detections"]]
        detections_to_coco_json(dets, out_dir / "coco_results.json", image_id_map=id_map)
        images = [{"id": id_map[r["key"]], "file_name": r["key"], "width": r["width"], "height": r["height"]}
                  for r in rows]
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(info.classes)]
        (out_dir / "coco_images.json").write_text(json.dumps({"images": images, "categories": cats}, indent=2))
        return {"detections": float(len(dets)), "images": float(len(rows))}

    def predict_options(self, info, options: dict) -> dict:
        if options.get("score_threshold") is not None:
            return {**options, "threshold_source": "given"}
        cut, source = threshold_of(info)
        return {**options, "score_threshold": cut, "threshold_source": source}

    def serving_model(self, model, info):
        """Registered and served with its decoding: (B, 100, 6) boxes after NMS (models/yolo/serving.py)."""
        from models.yolo.serving import decoding_model

        return decoding_model(model, info.get("anchors"), len(info.classes), info.image_size,
                              iou_threshold=info.get("nms_iou_threshold", 0.5),
                              max_detections=BULK_PROTOCOL["max_detections"])

    def format_row(self, row: dict) -> list[str]:
        lines = describe(row["detections"], row.get("best_score"))
        if row.get("threshold_source"):
            lines.append(f"  score threshold {row['score_threshold']:.3f} ({row['threshold_source']})")
        return lines + ([f"  drawn: {row['output']}"] if row.get("output") else [])
