"""Helpers that connect records to the model: a ``tf.data`` pipeline of (image, target) pairs
and batched prediction into the evaluator's detection format.

Images are fed as float32 in [0, 1]. The dataset disables tf.data autotuning (the autotune
thread stalls ``fit`` for 10-20 s at epoch boundaries on these CPUs).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from data.tfrecord import fixed_options
from models.yolo.augment import augment as _augment
from models.yolo.postprocess import decode_predictions, predictions_to_lists
from models.yolo.targets import encode_targets


def pad_boxes(boxes_list, labels_list, max_boxes=None):
    """Stack per-image boxes (normalised xyxy) and labels into (N, M, 4) / (N, M) arrays padded
    with zeros / -1 (the padding ``encode_targets`` skips)."""
    m = max_boxes or max([len(b) for b in boxes_list] + [1])
    boxes = np.zeros((len(boxes_list), m, 4), np.float32)
    labels = -np.ones((len(boxes_list), m), np.int64)
    for i, (b, lab) in enumerate(zip(boxes_list, labels_list)):
        b = np.asarray(b, np.float32).reshape(-1, 4)[:m]
        boxes[i, :len(b)] = b
        labels[i, :len(b)] = np.asarray(lab, np.int64).reshape(-1)[:m]
    return boxes, labels


def yolo_dataset(images, boxes_list, labels_list, anchors, grid_size, num_classes, batch_size=8,
                 augment=False, shuffle=True, seed=0, repeat=False, augment_options=None, uint8_images=False):
    """``tf.data.Dataset`` of ``(image float32 [0,1] (B,H,W,3), target (B,S,S,A,5+C))``.

    Args:
        images: (N, H, W, 3) uint8 array (all the same size).
        boxes_list / labels_list: per image, normalised xyxy boxes and int labels.
        augment: apply ``augment`` with per-example seeds derived from ``seed`` (different
            every epoch, reproducible run to run); ``augment_options``: its keyword arguments.
        uint8_images: yield uint8 images (0-255) instead of float32 in [0, 1], for a model whose
            preprocessing is inside it (the pipeline's served models take raw uint8 images).
    """
    boxes, labels = pad_boxes(boxes_list, labels_list)
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(images, np.uint8), boxes, labels))
    if shuffle:
        ds = ds.shuffle(len(boxes), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
        opts = dict(augment_options or {})
        ds = ds.map(lambda ex, s: _augment(ex[0], ex[1], ex[2], seed=s, **opts))
    else:
        ds = ds.map(lambda im, b, lab: (tf.cast(im, tf.float32) / 255.0, b, lab))
    anchors = np.asarray(anchors, np.float32)
    if uint8_images:
        ds = ds.map(lambda im, b, lab: (tf.cast(tf.round(tf.clip_by_value(im, 0.0, 1.0) * 255.0), tf.uint8), b, lab))
    ds = ds.map(lambda im, b, lab: (im, encode_targets(b, lab, anchors, grid_size, num_classes)))
    return fixed_options(ds.batch(batch_size).prefetch(2))


def predict_detections(model, images, anchors, num_classes, image_ids=None, batch_size=16,
                       score_threshold=0.001, iou_threshold=0.5, max_detections=100, image_sizes=None):
    """Run ``model`` on uint8 images (N, H, W, 3) and decode (per-class NMS) into the evaluator's
    detection format: ``[{"image_id", "box": [xmin, ymin, xmax, ymax] pixels, "score", "label"}]``.

    ``image_sizes``: per image ``(height, width)`` of the original image to scale the boxes to
    (defaults to the model input size).
    """
    images = np.asarray(images)
    ids = list(image_ids) if image_ids is not None else list(range(len(images)))
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype(np.float32) / 255.0
        raw = model(batch, training=False)
        decoded = decode_predictions(raw, anchors, num_classes, score_threshold=score_threshold,
                                     iou_threshold=iou_threshold, max_detections=max_detections)
        for i, det in enumerate(predictions_to_lists(decoded, ids[start:start + len(batch)])):
            h, w = image_sizes[start + i] if image_sizes is not None else images.shape[1:3]
            scale = np.array([w, h, w, h], np.float32)
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
                out.append({"image_id": det["image_id"], "box": (box * scale).tolist(),
                            "score": float(score), "label": int(label)})
    return out
