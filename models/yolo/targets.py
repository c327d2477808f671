"""Box encoding for YOLO training targets, its inverse, and k-means anchors.

Target tensor (what ``encode_targets`` builds and ``YoloLoss`` reads), shape
``(S_h, S_w, A, 5 + C)``; per anchor slot: ``[x, y, w, h, obj, one-hot class (C)]`` where
``x, y`` is the box centre and ``w, h`` its size, all as fractions of the image, and ``obj`` is 1
for the slot responsible for a box (the cell holding its centre, the anchor of best shape-IoU)
and 0 elsewhere. Storing the box itself (not the ``t_*`` regression targets) lets the loss
also recover every ground-truth box for the ignore threshold.

Two boxes that land on the same cell and anchor collide: the later one wins (YOLOv2 has the
same limit); ``encode_targets`` is pure TensorFlow, so it runs inside ``tf.data.map``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def _grid_hw(grid_size):
    if isinstance(grid_size, (tuple, list)):
        return int(grid_size[0]), int(grid_size[1])
    return int(grid_size), int(grid_size)


def encode_targets(boxes, labels, anchors, grid_size, num_classes):
    """Encode one image's boxes as a YOLO target tensor.

    Args:
        boxes: (N, 4) ``[xmin, ymin, xmax, ymax]`` normalised to [0, 1].
        labels: (N,) int class ids; rows with label < 0 or zero width/height are padding and skipped.
        anchors: (A, 2) anchor (w, h) in grid-cell units.
        grid_size: S or (S_h, S_w).
        num_classes: C.

    Returns:
        float32 tensor (S_h, S_w, A, 5 + C) as described in the module docstring.
    """
    gh, gw = _grid_hw(grid_size)
    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    num_anchors = int(anchors.shape[0])
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    keep = (labels >= 0) & (labels < num_classes) & (w > 0) & (h > 0)
    boxes, labels, w, h = (tf.boolean_mask(t, keep) for t in (boxes, labels, w, h))
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    col = tf.clip_by_value(tf.cast(tf.floor(cx * gw), tf.int32), 0, gw - 1)
    row = tf.clip_by_value(tf.cast(tf.floor(cy * gh), tf.int32), 0, gh - 1)

    # Best anchor by shape IoU (both centred at the origin), as in YOLOv2.
    anchor_w = anchors[:, 0] / gw
    anchor_h = anchors[:, 1] / gh
    inter = tf.minimum(w[:, None], anchor_w[None]) * tf.minimum(h[:, None], anchor_h[None])
    shape_iou = inter / (w[:, None] * h[:, None] + (anchor_w * anchor_h)[None] - inter)
    best = tf.cast(tf.argmax(shape_iou, axis=1), tf.int32)

    indices = tf.stack([row, col, best], axis=1)
    updates = tf.concat([tf.stack([cx, cy, w, h, tf.ones_like(cx)], axis=1),
                         tf.one_hot(labels, num_classes, dtype=tf.float32)], axis=1)
    target = tf.zeros([gh, gw, num_anchors, 5 + num_classes], tf.float32)
    return tf.tensor_scatter_nd_update(target, indices, updates)


def decode_targets(y_true):
    """Inverse of ``encode_targets`` for one image: ``(boxes (N, 4) [xmin, ymin, xmax, ymax]
    normalised, labels (N,) int32)`` in row/column/anchor order."""
    y_true = tf.convert_to_tensor(y_true)
    mask = y_true[..., 4] > 0.5
    slots = tf.boolean_mask(y_true, mask)
    xy, wh = slots[:, 0:2], slots[:, 2:4]
    boxes = tf.concat([xy - wh / 2.0, xy + wh / 2.0], axis=1)
    return boxes, tf.cast(tf.argmax(slots[:, 5:], axis=1), tf.int32)


def _wh_iou(wh, centroids):
    """(N, K) IoU of boxes and centroids sharing a corner (shape-only IoU)."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centroids[:, 0] * centroids[:, 1])[None] - inter
    return inter / np.maximum(union, 1e-12)


def kmeans_anchors(wh, k, seed=0, max_iter=300):
    """k-means on box (w, h) with distance ``1 - IoU`` (YOLOv2's anchor method).

    Args:
        wh: (N, 2) box widths and heights, in any unit (the anchors come back in the same unit;
            multiply image-fraction anchors by the grid size to get the grid-cell units the
            models use, see ``anchors_to_grid``).
        k: number of anchors. seed: makes the result deterministic.

    Returns:
        ``(anchors (k, 2) float32 sorted by area, mean_iou)`` where ``mean_iou`` is the mean over
        boxes of the best IoU with any anchor.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) < k:
        raise ValueError(f"kmeans_anchors: need at least k={k} boxes with positive size, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centroids = wh[rng.choice(len(wh), k, replace=False)]
    assign = None
    for _ in range(max_iter):
        new_assign = np.argmax(_wh_iou(wh, centroids), axis=1)  # nearest = highest IoU
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(k):
            members = wh[assign == j]
            # An empty cluster is re-seeded on a random box rather than left to die.
            centroids[j] = members.mean(axis=0) if len(members) else wh[rng.integers(len(wh))]
    centroids = centroids[np.argsort(centroids[:, 0] * centroids[:, 1])]
    mean_iou = float(_wh_iou(wh, centroids).max(axis=1).mean())
    return centroids.astype(np.float32), mean_iou


def anchors_to_grid(anchors, grid_size):
    """Image-fraction anchors (w, h) -> grid-cell units for a grid of ``grid_size`` (S or (S_h, S_w))."""
    gh, gw = _grid_hw(grid_size)
    return (np.asarray(anchors, np.float32) * np.array([gw, gh], np.float32)).astype(np.float32)
