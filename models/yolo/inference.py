"""Batched inference with a served detector (uint8 images in, the raw (S_h, S_w, A, 5 + C) grid
out): one traced decode step per (model, decoding settings) kept on the model, detections per
image as image fractions, the evaluator's flat detection format in pixels, and ground truth in
that format. Shared by the detection task (Trainer's held-out mAP, Evaluator, BulkInferrer,
``predict``) and ``python -m pipeline detect``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.yolo.postprocess import decode_predictions, yolo_head


def decode_step(model, anchors_grid, num_classes: int, *, score_threshold: float = 0.001,
                iou_threshold: float = 0.5, max_detections: int = 100):
    """A ``tf.function`` uint8 images -> ``decode_predictions``' dict plus ``best_score`` (B,): the
    highest class score ``p_c * c_i`` of any slot, kept or not. Cached on the model per settings:
    a BulkInferrer worker calls it per batch and must not retrace every time."""
    anchors_grid = np.asarray(anchors_grid, np.float32)
    cache = model.__dict__.setdefault("_detection_steps", {})
    key = (anchors_grid.tobytes(), int(num_classes), float(score_threshold), float(iou_threshold), int(max_detections))
    step = cache.get(key)
    if step is None:
        @tf.function(reduce_retracing=True)
        def step(x):
            raw = model(x, training=False)
            out = decode_predictions(raw, anchors_grid, num_classes, score_threshold=score_threshold,
                                     iou_threshold=iou_threshold, max_detections=max_detections)
            conf, _, _, probs = yolo_head(raw, anchors_grid, num_classes)
            scores = tf.reshape(conf * probs, tf.stack([tf.shape(raw)[0], -1]))
            return {**out, "best_score": tf.reduce_max(scores, axis=1)}
        cache[key] = step
    return step


def detect(model, images, anchors_grid, num_classes: int, *, score_threshold: float = 0.001,
           iou_threshold: float = 0.5, max_detections: int = 100, batch_size: int = 32) -> list[dict]:
    """Per image: ``{"boxes": (K, 4) [xmin, ymin, xmax, ymax] fractions of the image, "scores" (K,),
    "labels" (K,) int, "best_score"}``, the detections sorted by score."""
    step = decode_step(model, anchors_grid, num_classes, score_threshold=score_threshold,
                       iou_threshold=iou_threshold, max_detections=max_detections)
    images = np.asarray(images, np.uint8)
    out = []
    for s in range(0, len(images), batch_size):
        dec = {k: v.numpy() for k, v in step(tf.constant(images[s:s + batch_size])).items()}
        for i, n in enumerate(dec["num_detections"]):
            n = int(n)
            out.append({"boxes": dec["boxes"][i, :n], "scores": dec["scores"][i, :n],
                        "labels": dec["classes"][i, :n].astype(np.int64), "best_score": float(dec["best_score"][i])})
    return out


def to_pixels(boxes, height: int, width: int) -> np.ndarray:
    """Relative xyxy boxes -> pixels of a (height, width) image, clipped to it."""
    scale = np.array([width, height, width, height], np.float32)
    return np.clip(np.asarray(boxes, np.float32).reshape(-1, 4) * scale, 0, scale)


def predict(model, images, anchors_grid, num_classes: int, *, score_threshold: float = 0.001,
            iou_threshold: float = 0.5, max_detections: int = 100, batch_size: int = 32, image_ids=None) -> list[dict]:
    """The evaluator's flat detection format, ``[{"image_id", "box": [xmin, ymin, xmax, ymax] pixels
    at the images' size, "score", "label"}]``."""
    ids = list(image_ids) if image_ids is not None else list(range(len(images)))
    h, w = np.asarray(images).shape[1:3]
    out = []
    for image_id, det in zip(ids, detect(model, images, anchors_grid, num_classes, score_threshold=score_threshold,
                                         iou_threshold=iou_threshold, max_detections=max_detections,
                                         batch_size=batch_size)):
        for box, score, label in zip(to_pixels(det["boxes"], h, w), det["scores"], det["labels"]):
            out.append({"image_id": image_id, "box": box.tolist(), "score": float(score), "label": int(label)})
    return out


def ground_truth(images, boxes, labels, keys) -> list[dict]:
    """The evaluator's ground-truth format (pixel boxes at the images' size) from normalised boxes."""
    h, w = np.asarray(images).shape[1:3]
    scale = np.array([w, h, w, h], np.float32)
    return [{"image_id": k, "width": int(w), "height": int(h),
             "boxes": np.asarray(b, np.float32).reshape(-1, 4) * scale, "labels": np.asarray(lab, np.int64).reshape(-1)}
            for b, lab, k in zip(boxes, labels, keys)]


def detection_dicts(px_boxes, scores, labels, class_names, *, box_digits: int = 2, score_digits: int = 5) -> list[dict]:
    """JSON-able detections ``{"box", "score", "label", "class"}`` sorted by score (highest first)."""
    dets = [{"box": [round(float(v), box_digits) for v in b], "score": round(float(s), score_digits),
             "label": int(c), "class": class_names[int(c)]} for b, s, c in zip(px_boxes, scores, labels)]
    return sorted(dets, key=lambda d: -d["score"])
