"""The YOLOv2 loss as a Keras loss.

``y_pred``: raw logits (B, S_h, S_w, A, 5 + C) (or (B, S_h, S_w, A*(5+C))), last axis
``[t_x, t_y, t_w, t_h, t_o, class logits]``. ``y_true``: targets from ``encode_targets``,
(B, S_h, S_w, A, 5 + C) = ``[x, y, w, h, obj, one-hot]`` in image fractions.

Per image, summed over every anchor slot:

* coordinates (responsible slots only, weighted ``lambda_coord * (2 - w*h)`` so small boxes
  count more): squared error between ``sigmoid(t_xy)`` and the centre's offset in its cell,
  and between ``t_wh`` and ``log(box_wh / anchor_wh)`` (sigmoid offsets, exponential scaling);
* objectness: binary cross-entropy of ``t_o`` against 1 for responsible slots and against 0
  (times ``lambda_noobj``) for the others, except slots whose decoded box already overlaps some
  ground-truth box with IoU > ``ignore_thresh`` (YOLOv2's ignore rule: a good box that is not
  the responsible one is not pushed towards background);
* class: softmax cross-entropy (``class_loss="softmax"``, the default, matching the course's
  ``yolo_head`` which applies a softmax) or per-class sigmoid BCE (``"sigmoid"``, for
  multi-label data; then decode with sigmoid probabilities yourself), responsible slots only.

The result is the per-image sum, averaged over the batch by Keras's default reduction.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.yolo.postprocess import cell_offsets


def _pairwise_iou_xywh(a, b):
    """a: (B, N, 4), b: (B, K, 4) centre/size boxes -> (B, N, K) IoU."""
    a_min, a_max = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b_min, b_max = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter_wh = tf.maximum(tf.minimum(a_max[:, :, None], b_max[:, None]) - tf.maximum(a_min[:, :, None], b_min[:, None]), 0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area_a = a[..., 2] * a[..., 3]
    area_b = b[..., 2] * b[..., 3]
    return inter / tf.maximum(area_a[:, :, None] + area_b[:, None] - inter, 1e-9)


@keras.saving.register_keras_serializable(package="yolo")
class YoloLoss(keras.losses.Loss):
    """YOLOv2 loss (see module docstring). ``anchors``: (A, 2) in grid-cell units."""

    def __init__(self, anchors, num_classes, ignore_thresh=0.6, lambda_coord=1.0, lambda_noobj=1.0,
                 lambda_obj=1.0, lambda_class=1.0, class_loss="softmax", max_true_boxes=100,
                 name="yolo_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if class_loss not in ("softmax", "sigmoid"):
            raise ValueError(f"class_loss must be 'softmax' or 'sigmoid', got {class_loss!r}")
        self.anchors = np.asarray(anchors, np.float32).reshape(-1, 2)
        self.num_classes = int(num_classes)
        self.ignore_thresh = float(ignore_thresh)
        self.lambda_coord = float(lambda_coord)
        self.lambda_noobj = float(lambda_noobj)
        self.lambda_obj = float(lambda_obj)
        self.lambda_class = float(lambda_class)
        self.class_loss = class_loss
        self.max_true_boxes = int(max_true_boxes)

    def components(self, y_true, y_pred):
        """Per-image loss terms as a dict of (B,) tensors: xy, wh, obj, noobj, class."""
        num_anchors = self.anchors.shape[0]
        y_true = tf.cast(y_true, tf.float32)
        shape = tf.shape(y_true)
        batch, gh, gw = shape[0], shape[1], shape[2]
        y_pred = tf.reshape(tf.cast(y_pred, tf.float32), tf.stack([batch, gh, gw, num_anchors, 5 + self.num_classes]))
        anchors = tf.reshape(tf.constant(self.anchors), [1, 1, 1, num_anchors, 2])
        grid_wh = tf.cast(tf.reshape(tf.stack([gw, gh]), [1, 1, 1, 1, 2]), tf.float32)
        cells = cell_offsets(gh, gw)

        obj = y_true[..., 4]
        true_xy, true_wh = y_true[..., 0:2], y_true[..., 2:4]
        t_xy, t_wh, t_o = y_pred[..., 0:2], y_pred[..., 2:4], y_pred[..., 4]
        pred_xy_cell = tf.sigmoid(t_xy)
        t_wh_safe = tf.clip_by_value(t_wh, -10.0, 10.0)  # exp overflow guard early in training

        # Coordinates, responsible slots only.
        target_xy = true_xy * grid_wh - cells
        target_twh = tf.math.log(tf.maximum(true_wh * grid_wh / anchors, 1e-9))
        coord_w = obj * (2.0 - true_wh[..., 0] * true_wh[..., 1])
        xy = coord_w * tf.reduce_sum(tf.square(pred_xy_cell - target_xy), -1)
        wh = coord_w * tf.reduce_sum(tf.square(t_wh_safe - target_twh), -1)

        # Ignore mask: best IoU of each predicted box with the image's ground-truth boxes.
        pred_boxes = tf.concat([(pred_xy_cell + cells) / grid_wh, tf.exp(t_wh_safe) * anchors / grid_wh], -1)
        flat_true = tf.reshape(y_true[..., :5], tf.stack([batch, -1, 5]))
        k = tf.minimum(self.max_true_boxes, tf.shape(flat_true)[1])
        top_obj, top_idx = tf.math.top_k(flat_true[..., 4], k=k)
        true_boxes = tf.gather(flat_true[..., :4], top_idx, batch_dims=1)
        ious = _pairwise_iou_xywh(tf.reshape(pred_boxes, tf.stack([batch, -1, 4])), true_boxes)
        best_iou = tf.reduce_max(ious * top_obj[:, None, :], axis=-1)
        ignore = tf.stop_gradient(tf.cast(best_iou > self.ignore_thresh, tf.float32))
        ignore = tf.reshape(ignore, tf.shape(obj))

        bce_pos = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(t_o), logits=t_o)
        bce_neg = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.zeros_like(t_o), logits=t_o)
        obj_l = obj * bce_pos
        noobj_l = (1.0 - obj) * (1.0 - ignore) * bce_neg

        class_true = y_true[..., 5:]
        class_logits = y_pred[..., 5:]
        if self.class_loss == "softmax":
            cls = obj * tf.nn.softmax_cross_entropy_with_logits(labels=class_true, logits=class_logits)
        else:
            cls = obj * tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=class_true, logits=class_logits), -1)

        def per_image(t):
            return tf.reduce_sum(tf.reshape(t, tf.stack([batch, -1])), axis=1)

        return {"xy": per_image(xy), "wh": per_image(wh), "obj": per_image(obj_l),
                "noobj": per_image(noobj_l), "class": per_image(cls)}

    def call(self, y_true, y_pred):
        c = self.components(y_true, y_pred)
        return (self.lambda_coord * (c["xy"] + c["wh"]) + self.lambda_obj * c["obj"]
                + self.lambda_noobj * c["noobj"] + self.lambda_class * c["class"])

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors.tolist(), "num_classes": self.num_classes,
                "ignore_thresh": self.ignore_thresh, "lambda_coord": self.lambda_coord,
                "lambda_noobj": self.lambda_noobj, "lambda_obj": self.lambda_obj,
                "lambda_class": self.lambda_class, "class_loss": self.class_loss,
                "max_true_boxes": self.max_true_boxes}
