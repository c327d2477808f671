"""A small YOLOv2-style detector sized for CPU training (registry name ``yolo_small``).

Backbone: five Darknet-like stages (Conv(no bias) -> BatchNorm -> LeakyReLU(0.1); stages 3-5
add a 1x1 bottleneck and a second 3x3 as in Darknet-19), 2x2 max-pools after stages 1-4
(stride 16) and, for the default ``stride=32``, after stage 5 too (``stride=16`` keeps small
objects apart on small inputs). Alternatively a ``keras.applications`` backbone
(``backbone="mobilenetv2" | "resnet50" | "efficientnetb0"``, ``weights=None`` offline, or a
local weights path / ``"imagenet"`` where a user has internet), stride 32.

Head: 3x3 conv-BN-leaky, then a 1x1 conv to ``A * (5 + C)`` reshaped to
``(S_h, S_w, A, 5 + C)`` raw logits ``[t_x, t_y, t_w, t_h, t_o, class logits]``; decode with
``decode_predictions`` and train with ``YoloLoss`` on ``encode_targets`` targets.
BatchNorm momentum defaults to 0.9 instead of Keras's 0.99: with the few hundred steps a CPU
run makes, 0.99 leaves the moving statistics far from the data (0.99^200 = 13% of the
initial mean 0 / variance 1 remains) and inference-mode predictions collapse while the
training loss looks fine.
The objectness bias starts at -4 (prior of ~2% objects per slot), so the many empty slots do
not swamp the first steps of training.
"""
from __future__ import annotations

import keras
import numpy as np

# The course's five YOLOv2 anchors (grid units of a 19x19 grid) as fractions of the image.
COURSE_ANCHORS_REL = np.array([[0.57273, 0.677385], [1.87446, 2.06253], [3.33843, 5.47434],
                               [7.88282, 3.52778], [9.77052, 9.16828]], np.float32) / 19.0

_APPLICATIONS = {
    "mobilenetv2": "MobileNetV2",
    "resnet50": "ResNet50",
    "efficientnetb0": "EfficientNetB0",
}


def default_anchors(grid_size, num_anchors: int = 5) -> np.ndarray:
    """Grid-unit anchors for a grid: the course's anchors (first ``num_anchors`` evenly spread)
    rescaled from 19x19 to ``grid_size``. Prefer ``kmeans_anchors`` on your training boxes."""
    idx = np.round(np.linspace(0, len(COURSE_ANCHORS_REL) - 1, num_anchors)).astype(int)
    gh, gw = (grid_size, grid_size) if np.isscalar(grid_size) else grid_size
    return (COURSE_ANCHORS_REL[idx] * np.array([gw, gh], np.float32)).astype(np.float32)


def _cbl(x, filters, kernel, name, momentum=0.9):
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_leaky")(x)


def _darknet_small(inputs, width, stride, momentum):
    x = inputs
    for stage in range(5):
        ch = width * 2 ** stage
        x = _cbl(x, ch, 3, f"s{stage + 1}a", momentum)
        if stage >= 2:
            x = _cbl(x, ch // 2, 1, f"s{stage + 1}b", momentum)
            x = _cbl(x, ch, 3, f"s{stage + 1}c", momentum)
        if stage < 4:  # four pools: stride 16 after stage 4
            x = keras.layers.MaxPooling2D(2, name=f"s{stage + 1}_pool")(x)
    if stride == 32:
        x = keras.layers.MaxPooling2D(2, name="s5_pool")(x)
    return x


def build_small_yolo(input_shape=(256, 256, 3), num_classes=3, anchors=None, num_anchors=5, width=16,
                     stride=32, backbone="darknet", weights=None, bn_momentum=0.9, name="yolo_small", **_ignored):
    """Build the small YOLO. Returns an uncompiled ``keras.Model``: (H, W, 3) float images
    (already preprocessed, e.g. scaled to [0, 1]) -> (H/stride, W/stride, A, 5 + C) logits.

    Args:
        anchors: (A, 2) grid-unit anchors; only their count matters to the model (the loss and
            decoder take the anchors themselves). Overrides ``num_anchors``.
        width: channels of the first stage (doubles per stage: 16 -> 256 at stage 5).
        stride: 32 or 16 (darknet backbone only).
        backbone: "darknet" (default) or a ``keras.applications`` name (see module docstring).
        weights: for an applications backbone: None, "imagenet" or a local weights file.
        bn_momentum: BatchNorm moving-average momentum (see module docstring).
        Other keyword arguments (training hyperparameters the Trainer passes along) are ignored.
    """
    if anchors is not None:
        num_anchors = len(np.asarray(anchors).reshape(-1, 2))
    if stride not in (16, 32):
        raise ValueError(f"build_small_yolo: stride must be 16 or 32, got {stride}")
    h, w = int(input_shape[0]), int(input_shape[1])
    if h % stride or w % stride:
        raise ValueError(f"build_small_yolo: input_shape {tuple(input_shape)} must be a multiple of stride {stride}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    if backbone == "darknet":
        features = _darknet_small(inputs, int(width), stride, bn_momentum)
        head_ch = width * 16
    else:
        key = backbone.lower().replace("_", "").replace("-", "")
        if key not in _APPLICATIONS:
            raise ValueError(f"unknown backbone {backbone!r}; use 'darknet' or one of {sorted(_APPLICATIONS)}")
        if stride != 32:
            raise ValueError("keras.applications backbones have stride 32 here")
        app = getattr(keras.applications, _APPLICATIONS[key])
        base = app(include_top=False, weights=weights, input_tensor=inputs)
        features = base.output
        head_ch = 256
    x = _cbl(features, head_ch, 3, "head", bn_momentum)
    out = keras.layers.Conv2D(num_anchors * (5 + num_classes), 1, name="head_out")(x)
    out = keras.layers.Reshape((h // stride, w // stride, num_anchors, 5 + num_classes), name="yolo_output")(out)
    model = keras.Model(inputs, out, name=name)

    head = model.get_layer("head_out")
    kernel, bias = head.get_weights()
    bias = bias.reshape(num_anchors, 5 + num_classes)
    bias[:, 4] = -4.0
    head.set_weights([kernel, bias.reshape(-1)])
    return model
