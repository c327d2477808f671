"""The course's YOLO post-processing, plus the pipeline's batched decoding.

Output layout (shared by the course's YOLOv2 and the project's small YOLO): the last axis of
each anchor slot is ``[t_x, t_y, t_w, t_h, t_o, c_1 .. c_C]`` (raw logits; Darknet's order).
The notes write the same vector as ``(p_c, b_x, b_y, b_h, b_w, c_1..c_C)``: ``p_c`` is
``sigmoid(t_o)``, ``b_x, b_y`` are ``sigmoid(t_xy)`` offsets inside the cell and ``b_w, b_h`` are
``exp(t_wh) * anchor``. The physical order is Darknet's so the course's weight file loads.

Anchors are in *grid-cell units* (the course's ``yolo_anchors.txt`` convention): an anchor of
(1, 1) is one cell wide and high.

Course functions (TensorFlow tensors in and out, the course's names and signatures):
``yolo_head``, ``yolo_boxes_to_corners``, ``yolo_filter_boxes``, ``iou``,
``yolo_non_max_suppression``, ``scale_boxes``, ``yolo_eval``.

Pipeline decoding: ``decode_predictions`` (batched, per-class NMS with
``tf.image.combined_non_max_suppression``) returns corner boxes ``[xmin, ymin, xmax, ymax]``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def _grid_dims(feats):
    shape = tf.shape(feats)
    return shape[1], shape[2]


def _reshape_feats(feats, num_anchors: int, num_classes: int):
    """Accept (B, S, S, A*(5+C)) (the course's 19x19x425) or (B, S, S, A, 5+C)."""
    feats = tf.convert_to_tensor(feats)
    gh, gw = _grid_dims(feats)
    return tf.reshape(feats, tf.stack([tf.shape(feats)[0], gh, gw, num_anchors, num_classes + 5]))


def cell_offsets(grid_h, grid_w, dtype=tf.float32):
    """(1, H, W, 1, 2) tensor of (column, row) indices, i.e. the x then y cell origin."""
    cols, rows = tf.meshgrid(tf.range(grid_w), tf.range(grid_h))  # each (H, W)
    grid = tf.stack([cols, rows], axis=-1)
    return tf.cast(tf.reshape(grid, tf.stack([1, grid_h, grid_w, 1, 2])), dtype)


def yolo_head(feats, anchors, num_classes):
    """Convert raw YOLO output to box parameters (the course's ``yolo_head``).

    Args:
        feats: (B, S_h, S_w, A*(5+C)) or (B, S_h, S_w, A, 5+C) raw logits.
        anchors: (A, 2) anchor widths/heights in grid-cell units.
        num_classes: C.

    Returns:
        ``(box_confidence, box_xy, box_wh, box_class_probs)`` with shapes (B, S, S, A, 1),
        (B, S, S, A, 2), (B, S, S, A, 2), (B, S, S, A, C). ``box_xy`` (centre x, y) and
        ``box_wh`` are fractions of the image: ``(sigmoid(t_xy) + cell) / grid`` and
        ``exp(t_wh) * anchors / grid``.
    """
    anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
    num_anchors = int(anchors.shape[0])
    feats = tf.cast(_reshape_feats(feats, num_anchors, num_classes), tf.float32)
    gh, gw = _grid_dims(feats)
    grid_wh = tf.cast(tf.reshape(tf.stack([gw, gh]), [1, 1, 1, 1, 2]), tf.float32)
    anchors = tf.reshape(anchors, [1, 1, 1, num_anchors, 2])

    box_xy = (tf.sigmoid(feats[..., 0:2]) + cell_offsets(gh, gw)) / grid_wh
    box_wh = tf.exp(feats[..., 2:4]) * anchors / grid_wh
    box_confidence = tf.sigmoid(feats[..., 4:5])
    box_class_probs = tf.nn.softmax(feats[..., 5:])
    return box_confidence, box_xy, box_wh, box_class_probs


def yolo_boxes_to_corners(box_xy, box_wh):
    """Centre/size boxes to corners, concatenated as ``[y_min, x_min, y_max, x_max]`` (course order,
    which is what ``tf.image.non_max_suppression`` expects)."""
    box_mins = box_xy - box_wh / 2.0
    box_maxes = box_xy + box_wh / 2.0
    return tf.concat([box_mins[..., 1:2], box_mins[..., 0:1],
                      box_maxes[..., 1:2], box_maxes[..., 0:1]], axis=-1)


def yolo_filter_boxes(box_confidence, boxes, box_class_probs, threshold=.6):
    """Keep boxes whose best class score ``p_c * c_i`` is >= ``threshold`` (course semantics).

    Args: box_confidence (..., 1), boxes (..., 4), box_class_probs (..., C).
    Returns: ``(scores (N,), boxes (N, 4), classes (N,) int64)``.
    """
    box_scores = box_confidence * box_class_probs
    box_classes = tf.argmax(box_scores, axis=-1)
    box_class_scores = tf.reduce_max(box_scores, axis=-1)
    mask = box_class_scores >= threshold
    return (tf.boolean_mask(box_class_scores, mask), tf.boolean_mask(boxes, mask),
            tf.boolean_mask(box_classes, mask))


def iou(box1, box2):
    """Intersection over union of two corner boxes ``(x1, y1, x2, y2)``; plain numbers in, float out.

    Disjoint and edge-touching boxes give 0.0; a zero-area union gives 0.0 rather than NaN.
    """
    bx1, by1, bx2, by2 = (float(v) for v in box1)
    cx1, cy1, cx2, cy2 = (float(v) for v in box2)
    inter_w = max(min(bx2, cx2) - max(bx1, cx1), 0.0)
    inter_h = max(min(by2, cy2) - max(by1, cy1), 0.0)
    inter = inter_w * inter_h
    union = (bx2 - bx1) * (by2 - by1) + (cx2 - cx1) * (cy2 - cy1) - inter
    return float(inter / union) if union > 0 else 0.0


def yolo_non_max_suppression(scores, boxes, classes, max_boxes=10, iou_threshold=0.5):
    """Class-agnostic NMS with ``tf.image.non_max_suppression`` (as in the course).

    ``boxes`` are corners in the course's ``[y1, x1, y2, x2]`` order (IoU is symmetric in the
    axes, so any consistent corner order works). Returns ``(scores, boxes, classes)``.
    """
    nms_indices = tf.image.non_max_suppression(boxes, scores, max_boxes, iou_threshold=iou_threshold)
    return tf.gather(scores, nms_indices), tf.gather(boxes, nms_indices), tf.gather(classes, nms_indices)


def scale_boxes(boxes, image_shape):
    """Scale relative ``[y1, x1, y2, x2]`` boxes to pixels: multiply by ``[h, w, h, w]``."""
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    image_dims = tf.reshape(tf.stack([height, width, height, width]), [1, 4])
    return tf.cast(boxes, tf.float32) * image_dims


def yolo_eval(yolo_outputs, image_shape=(720., 1280.), max_boxes=10, score_threshold=.6, iou_threshold=.5):
    """The course's ``yolo_eval``: filter by score, scale to the image, class-agnostic NMS.

    ``yolo_outputs`` is the ``(box_confidence, box_xy, box_wh, box_class_probs)`` tuple from
    ``yolo_head`` for ONE image (a leading batch axis of 1 is fine). Returns
    ``(scores (K,), boxes (K, 4) [y1, x1, y2, x2] pixels, classes (K,))`` with K <= max_boxes.
    """
    box_confidence, box_xy, box_wh, box_class_probs = yolo_outputs
    boxes = yolo_boxes_to_corners(box_xy, box_wh)
    scores, boxes, classes = yolo_filter_boxes(box_confidence, boxes, box_class_probs, threshold=score_threshold)
    boxes = scale_boxes(boxes, image_shape)
    return yolo_non_max_suppression(scores, boxes, classes, max_boxes=max_boxes, iou_threshold=iou_threshold)


def decode_predictions(raw, anchors, num_classes, score_threshold=0.001, iou_threshold=0.5,
                       max_detections=100, max_per_class=None, image_shape=None):
    """Batched decoding with per-class NMS (the pipeline's decoder; evaluation uses 0.001 / 100).

    Args:
        raw: (B, S_h, S_w, A, 5+C) or (B, S_h, S_w, A*(5+C)) raw model output.
        anchors: (A, 2) in grid-cell units.
        score_threshold: minimum ``p_c * c_i`` (per class) to keep a box.
        iou_threshold: NMS IoU, applied within each class.
        max_detections: cap per image over all classes.
        max_per_class: cap per class before the global cap (default ``max_detections``).
        image_shape: ``(h, w)`` to return pixel boxes; None returns fractions of the image.

    Returns:
        dict of tensors: ``boxes`` (B, K, 4) as ``[xmin, ymin, xmax, ymax]``, ``scores`` (B, K),
        ``classes`` (B, K) int32, ``num_detections`` (B,) int32; rows past
        ``num_detections[b]`` are padding (zeros).
    """
    box_confidence, box_xy, box_wh, box_class_probs = yolo_head(raw, anchors, num_classes)
    batch = tf.shape(box_xy)[0]
    corners = yolo_boxes_to_corners(box_xy, box_wh)  # [y1, x1, y2, x2]
    boxes = tf.reshape(corners, tf.stack([batch, -1, 1, 4]))
    scores = tf.reshape(box_confidence * box_class_probs, tf.stack([batch, -1, num_classes]))
    nms = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=max_per_class or max_detections,
        max_total_size=max_detections, iou_threshold=iou_threshold, score_threshold=score_threshold,
        pad_per_class=False, clip_boxes=False)
    yxyx = nms.nmsed_boxes
    xyxy = tf.stack([yxyx[..., 1], yxyx[..., 0], yxyx[..., 3], yxyx[..., 2]], axis=-1)
    if image_shape is not None:
        h = tf.cast(image_shape[0], tf.float32)
        w = tf.cast(image_shape[1], tf.float32)
        xyxy = xyxy * tf.reshape(tf.stack([w, h, w, h]), [1, 1, 4])
    return {"boxes": xyxy, "scores": nms.nmsed_scores,
            "classes": tf.cast(nms.nmsed_classes, tf.int32), "num_detections": nms.valid_detections}


def predictions_to_lists(decoded, image_ids=None):
    """Turn ``decode_predictions`` output into per-image numpy lists of valid detections:
    ``[{"image_id", "boxes" (K,4), "scores" (K,), "labels" (K,)}]``."""
    boxes = np.asarray(decoded["boxes"])
    scores = np.asarray(decoded["scores"])
    classes = np.asarray(decoded["classes"])
    n = np.asarray(decoded["num_detections"])
    out = []
    for b in range(boxes.shape[0]):
        k = int(n[b])
        out.append({"image_id": image_ids[b] if image_ids is not None else b,
                    "boxes": boxes[b, :k], "scores": scores[b, :k], "labels": classes[b, :k].astype(np.int64)})
    return out
