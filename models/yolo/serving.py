"""A detector as it is registered and served: uint8 images in, detections after per-class NMS out,
so a client never re-implements the YOLO decoding.

MLflow's Keras flavour serves one output tensor (it converts the model's answer with
``np.array``, which a dict of tensors does not survive), so the detections are packed:

    (B, K, 6) float32 rows [xmin, ymin, xmax, ymax, score, class]: boxes in pixels of the model's
    input, clipped to it, sorted by score; rows past an image's count are padding (score 0,
    class -1), so the count is the number of rows with class >= 0.

The decoding keeps every box scoring above 0 (``score_threshold=0``) up to K per image: a client
applies its own cut afterwards, and gets exactly what decoding with that cut gives (NMS is greedy
by score, so a box's fate depends only on higher-scoring boxes), and the first row's score is the
highest class score of any slot (``best_score``). The detection task's ``served_predictor``
(components/tasks/detection.py) reads it into the same rows as in-process ``predict``.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.yolo.postprocess import decode_predictions

COLUMNS = ("xmin", "ymin", "xmax", "ymax", "score", "class")


@keras.saving.register_keras_serializable(package="pipeline")
class DecodeDetections(keras.layers.Layer):
    """Raw (B, S_h, S_w, A, 5 + C) YOLO output -> (B, max_detections, 6) packed detections."""

    def __init__(self, anchors, num_classes: int, image_size, iou_threshold: float = 0.5,
                 max_detections: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.anchors = [[float(v) for v in a] for a in np.asarray(anchors, np.float32)]
        self.num_classes, self.image_size = int(num_classes), [int(v) for v in image_size]
        self.iou_threshold, self.max_detections = float(iou_threshold), int(max_detections)

    def call(self, raw):
        h, w = self.image_size
        out = decode_predictions(raw, np.asarray(self.anchors, np.float32), self.num_classes, score_threshold=0.0,
                                 iou_threshold=self.iou_threshold, max_detections=self.max_detections)
        boxes = tf.clip_by_value(out["boxes"] * tf.constant([w, h, w, h], tf.float32), 0.0,
                                 tf.constant([w, h, w, h], tf.float32))
        valid = tf.sequence_mask(out["num_detections"], self.max_detections)
        classes = tf.where(valid, tf.cast(out["classes"], tf.float32), -1.0)
        return tf.concat([boxes, out["scores"][..., None], classes[..., None]], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_detections, 6)

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors, "num_classes": self.num_classes,
                "image_size": self.image_size, "iou_threshold": self.iou_threshold,
                "max_detections": self.max_detections}


def decoding_model(model, anchors, num_classes: int, image_size, *, iou_threshold: float = 0.5,
                   max_detections: int = 100):
    """``model`` (uint8 images -> raw grid) followed by ``DecodeDetections``."""
    inp = keras.Input(tuple(model.input_shape[1:]), dtype="uint8", name="image")
    out = DecodeDetections(anchors, num_classes, image_size, iou_threshold=iou_threshold,
                           max_detections=max_detections, name="detections")(model(inp))
    return keras.Model(inp, out, name=f"{model.name}_detections")
