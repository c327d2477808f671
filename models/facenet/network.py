"""FaceNet embedding networks.

* :func:`faceRecoModel` -- the course's "NN4 small" Inception network
  (``inception_blocks_v2``), rewritten channels-last with the same layers, names and
  paddings, so it has exactly the course's 3,743,280 parameters and could load the course's
  weights layer by layer (transposing nothing: Conv2D kernels are layout-independent).
* :func:`small_face_model` -- a much smaller Inception-style network of the same shape
  (stem, inception blocks, average pool, dense, L2 normalisation) that trains on two CPU
  cores in minutes.

Both take float32 images that are already preprocessed (the registry contract: the
Transform's layers go in front), and both end in ``UnitNormalization`` rather than the
course's ``Lambda(l2_normalize)``: a Lambda cannot be loaded with Keras ``safe_mode``.
"""
from __future__ import annotations

import keras
from keras import layers

_BN_EPS = 1e-5  # the course's epsilon for every BN except bn1 (Keras' default 1e-3)


def _conv_bn(x, name: str, cv1_out: int, cv1_filter=(1, 1), cv1_strides=(1, 1),
             cv2_out: int | None = None, cv2_filter=(3, 3), cv2_strides=(1, 1), padding=None):
    """The course's ``fr_utils.conv2d_bn``: conv-BN-relu, optional zero padding, optional
    second conv-BN-relu. Layer names follow the course (``<name>_conv1``, ``<name>_bn2``)."""
    num = "" if cv2_out is None else "1"
    x = layers.Conv2D(cv1_out, cv1_filter, strides=cv1_strides, name=f"{name}_conv{num}")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn{num}")(x)
    x = layers.Activation("relu")(x)
    if padding is None:
        return x
    x = layers.ZeroPadding2D(padding)(x)
    if cv2_out is None:
        return x
    x = layers.Conv2D(cv2_out, cv2_filter, strides=cv2_strides, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name=f"{name}_bn2")(x)
    return layers.Activation("relu")(x)


def _inception_3a(x):
    b3 = _conv_bn(x, "inception_3a_3x3", 96, cv2_out=128, padding=(1, 1))
    b5 = _conv_bn(x, "inception_3a_5x5", 16, cv2_out=32, cv2_filter=(5, 5), padding=(2, 2))
    bp = layers.MaxPooling2D(pool_size=3, strides=2)(x)
    bp = _conv_bn(bp, "inception_3a_pool", 32, padding=((3, 4), (3, 4)))
    b1 = _conv_bn(x, "inception_3a_1x1", 64)
    return layers.Concatenate(axis=-1)([b3, b5, bp, b1])


def _inception_3b(x):
    b3 = _conv_bn(x, "inception_3b_3x3", 96, cv2_out=128, padding=(1, 1))
    b5 = _conv_bn(x, "inception_3b_5x5", 32, cv2_out=64, cv2_filter=(5, 5), padding=(2, 2))
    bp = layers.AveragePooling2D(pool_size=3, strides=3)(x)
    bp = _conv_bn(bp, "inception_3b_pool", 64, padding=(4, 4))
    b1 = _conv_bn(x, "inception_3b_1x1", 64)
    return layers.Concatenate(axis=-1)([b3, b5, bp, b1])


def _inception_3c(x):
    b3 = _conv_bn(x, "inception_3c_3x3", 128, cv2_out=256, cv2_strides=(2, 2), padding=(1, 1))
    b5 = _conv_bn(x, "inception_3c_5x5", 32, cv2_out=64, cv2_filter=(5, 5), cv2_strides=(2, 2),
                  padding=(2, 2))
    bp = layers.MaxPooling2D(pool_size=3, strides=2)(x)
    bp = layers.ZeroPadding2D(((0, 1), (0, 1)))(bp)
    return layers.Concatenate(axis=-1)([b3, b5, bp])


def _inception_4a(x):
    b3 = _conv_bn(x, "inception_4a_3x3", 96, cv2_out=192, padding=(1, 1))
    b5 = _conv_bn(x, "inception_4a_5x5", 32, cv2_out=64, cv2_filter=(5, 5), padding=(2, 2))
    bp = layers.AveragePooling2D(pool_size=3, strides=3)(x)
    bp = _conv_bn(bp, "inception_4a_pool", 128, padding=(2, 2))
    b1 = _conv_bn(x, "inception_4a_1x1", 256)
    return layers.Concatenate(axis=-1)([b3, b5, bp, b1])


def _inception_4e(x):
    b3 = _conv_bn(x, "inception_4e_3x3", 160, cv2_out=256, cv2_strides=(2, 2), padding=(1, 1))
    b5 = _conv_bn(x, "inception_4e_5x5", 64, cv2_out=128, cv2_filter=(5, 5), cv2_strides=(2, 2),
                  padding=(2, 2))
    bp = layers.MaxPooling2D(pool_size=3, strides=2)(x)
    bp = layers.ZeroPadding2D(((0, 1), (0, 1)))(bp)
    return layers.Concatenate(axis=-1)([b3, b5, bp])


def _inception_5a(x):
    b3 = _conv_bn(x, "inception_5a_3x3", 96, cv2_out=384, padding=(1, 1))
    bp = layers.AveragePooling2D(pool_size=3, strides=3)(x)
    bp = _conv_bn(bp, "inception_5a_pool", 96, padding=(1, 1))
    b1 = _conv_bn(x, "inception_5a_1x1", 256)
    return layers.Concatenate(axis=-1)([b3, bp, b1])


def _inception_5b(x):
    b3 = _conv_bn(x, "inception_5b_3x3", 96, cv2_out=384, padding=(1, 1))
    bp = layers.MaxPooling2D(pool_size=3, strides=2)(x)
    bp = _conv_bn(bp, "inception_5b_pool", 96)
    bp = layers.ZeroPadding2D((1, 1))(bp)
    b1 = _conv_bn(x, "inception_5b_1x1", 256)
    return layers.Concatenate(axis=-1)([b3, bp, b1])


def faceRecoModel(input_shape=(96, 96, 3)) -> keras.Model:  # noqa: N802 (the course's name)
    """The course's FaceNet NN4-small: 96x96x3 image -> 128-d L2-normalised encoding.

    The branch paddings are hard-coded for 96x96 inputs (as in the course), so other sizes
    cannot be concatenated; that is checked up front with a clear error.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) == 4:  # accept a batch shape (None, 96, 96, 3)
        input_shape = input_shape[1:]
    if input_shape[:2] != (96, 96):
        raise ValueError(f"faceRecoModel (NN4 small) needs 96x96 inputs, got {input_shape}; "
                         "its inception branch paddings are fixed. Use small_face_model for "
                         "other sizes.")
    x_in = keras.Input(input_shape)
    x = layers.ZeroPadding2D((3, 3))(x_in)
    x = layers.Conv2D(64, (7, 7), strides=(2, 2), name="conv1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu")(x)
    x = layers.ZeroPadding2D((1, 1))(x)
    x = layers.MaxPooling2D((3, 3), strides=2)(x)
    x = layers.Conv2D(64, (1, 1), name="conv2")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="bn2")(x)
    x = layers.Activation("relu")(x)
    x = layers.ZeroPadding2D((1, 1))(x)
    x = layers.Conv2D(192, (3, 3), name="conv3")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPS, name="bn3")(x)
    x = layers.Activation("relu")(x)
    x = layers.ZeroPadding2D((1, 1))(x)
    x = layers.MaxPooling2D(pool_size=3, strides=2)(x)
    for block in (_inception_3a, _inception_3b, _inception_3c, _inception_4a, _inception_4e,
                  _inception_5a, _inception_5b):
        x = block(x)
    x = layers.AveragePooling2D(pool_size=(3, 3), strides=(1, 1))(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, name="dense_layer")(x)
    x = layers.UnitNormalization(axis=-1, name="l2_normalize")(x)
    return keras.Model(inputs=x_in, outputs=x, name="FaceRecoModel")


def _small_inception(x, name: str, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
    """A GoogLeNet block: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 (a cheaper 5x5) | maxpool->1x1."""

    def cbr(t, filters, k, suffix):
        t = layers.Conv2D(filters, k, padding="same", use_bias=False, name=f"{name}_{suffix}")(t)
        t = layers.BatchNormalization(name=f"{name}_{suffix}_bn")(t)
        return layers.Activation("relu")(t)

    b1 = cbr(x, c1, 1, "1x1")
    b3 = cbr(cbr(x, c3r, 1, "3x3_reduce"), c3, 3, "3x3")
    b5 = cbr(cbr(cbr(x, c5r, 1, "5x5_reduce"), c5, 3, "5x5a"), c5, 3, "5x5b")
    bp = layers.MaxPooling2D(3, strides=1, padding="same")(x)
    bp = cbr(bp, cp, 1, "pool_proj")
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([b1, b3, b5, bp])


def small_face_model(input_shape=(64, 64, 3), embedding_dim: int = 64, width: int = 32,
                     dropout: float = 0.2) -> keras.Model:
    """A small Inception-style embedding network for CPU training (~0.3 M parameters at the
    defaults). Any input size >= 32x32 works (global average pooling at the end).

    ``width`` scales every block's channels; ``dropout`` is applied before the embedding.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) == 4:
        input_shape = input_shape[1:]
    w = int(width)
    x_in = keras.Input(input_shape)
    x = layers.Conv2D(w, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x_in)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = _small_inception(x, "inc_a", w, w, 2 * w, w // 2, w, w)  # -> 5w channels
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = _small_inception(x, "inc_b", 2 * w, 2 * w, 3 * w, w // 2, w, w)  # -> 7w
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = _small_inception(x, "inc_c", 3 * w, 2 * w, 4 * w, w, 2 * w, 2 * w)  # -> 11w
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(embedding_dim, name="embedding")(x)
    x = layers.UnitNormalization(axis=-1, name="l2_normalize")(x)
    return keras.Model(inputs=x_in, outputs=x, name="SmallFaceModel")
