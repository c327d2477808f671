"""The course's YOLOv2 (Darknet-19 + passthrough) and its file formats.

Architecture (608x608x3 -> 19x19x425 for 5 anchors and the 80 COCO classes): 18 Darknet-19
convolutions (3x3 / 1x1 bottlenecks, each Conv(no bias) -> BatchNorm -> LeakyReLU(0.1)) with
5 max-pools, two more 3x3x1024 convolutions, a passthrough from the 38x38x512 layer (26x26 at
416 input) through a 1x1x64 convolution and space-to-depth (block 2), concatenated before the
last 3x3x1024 convolution, then a biased 1x1 convolution to ``A * (5 + C)`` channels.
50,983,561 parameters (trainable + BatchNorm statistics), the course's summary figure.

Layers are named as in the course's ``yolo.h5`` (``conv2d_1`` .. ``conv2d_23``,
``batch_normalization_1`` .. ``_22``), so ``load_course_model`` can match weights by name; the
passthrough is a registered ``SpaceToDepth`` layer instead of a ``Lambda`` so the model
saves and loads under Keras ``safe_mode``.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="yolo")
class SpaceToDepth(keras.layers.Layer):
    """``tf.nn.space_to_depth`` as a serialisable layer (the course's ``space_to_depth_x2``)."""

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, x):
        return tf.nn.space_to_depth(x, self.block_size)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.block_size
        return (b, None if h is None else h // s, None if w is None else w // s,
                None if c is None else c * s * s)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


class _Namer:
    """Course-style layer names: conv2d_1, batch_normalization_1, leaky_re_lu_1, ..."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}_{self.counts[kind]}"


def _conv_bn_leaky(x, filters, kernel, name):
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                            kernel_regularizer=keras.regularizers.L2(5e-4), name=name("conv2d"))(x)
    x = keras.layers.BatchNormalization(name=name("batch_normalization"))(x)
    return keras.layers.LeakyReLU(negative_slope=0.1, name=name("leaky_re_lu"))(x)


def yolov2_darknet19(input_shape=(608, 608, 3), num_anchors=5, num_classes=80):
    """Build the course's YOLOv2 model: output (S, S, num_anchors * (5 + num_classes)) raw logits.

    ``input_shape`` sides must be multiples of 32 (608 -> 19x19). Returns an uncompiled
    ``keras.Model`` named ``yolov2_darknet19``.
    """
    if input_shape[0] % 32 or input_shape[1] % 32:
        raise ValueError(f"yolov2_darknet19: input_shape {input_shape} sides must be multiples of 32")
    name = _Namer()
    inputs = keras.Input(shape=tuple(input_shape), name="input_1")

    def pool(x):
        return keras.layers.MaxPooling2D(2, padding="same", name=name("max_pooling2d"))(x)

    x = _conv_bn_leaky(inputs, 32, 3, name)
    x = pool(x)
    x = _conv_bn_leaky(x, 64, 3, name)
    x = pool(x)
    for outer, inner, reps in ((128, 64, 1), (256, 128, 1), (512, 256, 2)):
        x = _conv_bn_leaky(x, outer, 3, name)
        for _ in range(reps):
            x = _conv_bn_leaky(x, inner, 1, name)
            x = _conv_bn_leaky(x, outer, 3, name)
        if outer == 512:
            passthrough = x  # 38x38x512 at 608 input (the course's layer 43)
        x = pool(x)
    x = _conv_bn_leaky(x, 1024, 3, name)
    for _ in range(2):
        x = _conv_bn_leaky(x, 512, 1, name)
        x = _conv_bn_leaky(x, 1024, 3, name)
    x = _conv_bn_leaky(x, 1024, 3, name)
    x = _conv_bn_leaky(x, 1024, 3, name)
    p = _conv_bn_leaky(passthrough, 64, 1, name)
    p = SpaceToDepth(2, name="space_to_depth_x2")(p)
    x = keras.layers.Concatenate(name="concatenate_1")([p, x])
    x = _conv_bn_leaky(x, 1024, 3, name)
    outputs = keras.layers.Conv2D(num_anchors * (5 + num_classes), 1, name=name("conv2d"))(x)
    return keras.Model(inputs, outputs, name="yolov2_darknet19")


def load_course_model(weights_path, input_shape=(608, 608, 3), num_anchors=5, num_classes=80):
    """Build ``yolov2_darknet19`` and load a user-supplied Keras ``.h5`` (weights-only or a full
    model saved by Keras 2/3: only its weights are read, so no code from the file is run).

    Weights are matched by the course's layer names first, then by layer order.
    Raises ``FileNotFoundError`` (missing file) or ``ValueError`` (not HDF5, wrong architecture),
    both naming the file and the ``weights_path`` option.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"YOLOv2 weights file not found: {path} (weights_path; `python -m pipeline detect --model PATH`: "
            "the course's yolo.h5 with --classes and --anchors; pretrained weights cannot be downloaded here)")
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"YOLOv2 weights {path}: expected a Keras .h5/.hdf5 file (option weights_path)")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("layer_names", [])]
    except OSError as e:
        raise ValueError(f"YOLOv2 weights {path}: not a readable HDF5 file ({e}) (option weights_path)") from None
    model = yolov2_darknet19(input_shape, num_anchors, num_classes)
    ours = {layer.name for layer in model.layers if layer.weights}
    by_name = ours.issubset(set(names))
    try:
        model.load_weights(str(path), by_name=True) if by_name else model.load_weights(str(path))
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"YOLOv2 weights {path} do not fit yolov2_darknet19(input_shape={tuple(input_shape)}, "
            f"num_anchors={num_anchors}, num_classes={num_classes}) (option weights_path): {e}") from None
    return model


def read_classes(classes_path) -> list[str]:
    """Read the course's ``coco_classes.txt``: one class name per line (blank lines ignored)."""
    with open(classes_path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_anchors(anchors_path) -> np.ndarray:
    """Read the course's ``yolo_anchors.txt``: comma-separated floats ``w1, h1, w2, h2, ...`` in
    grid-cell units -> (N, 2) float32 array."""
    with open(anchors_path, encoding="utf-8") as f:
        text = f.read().replace("\n", ",")
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or len(values) % 2:
        raise ValueError(f"{anchors_path}: expected an even number of comma-separated floats, got {len(values)}")
    return np.asarray(values, dtype=np.float32).reshape(-1, 2)
