"""The course's ResNet-50 (course notes 2.2) built with the Keras 3 functional API.

Two reusable building blocks, both taking and returning Keras tensors:

* ``identity_block``: the three-layer bottleneck whose shortcut is the input itself, so input
  and output shapes must match (channels == ``filters[2]``).
* ``convolutional_block``: the same bottleneck, but the first 1x1 conv has stride ``s`` and the
  shortcut is a 1x1 conv with stride ``s`` + BatchNorm, so it can change H, W and channels.

``ResNet50`` stacks them in the course's layout. For a 64x64x3 input and 6 classes it has
exactly 23,600,006 parameters, 53,120 of them non-trainable (BatchNorm moving statistics).

Input size and the final pooling
--------------------------------
The network divides H and W by 32 (with the ceil/floor of each stride) before the head:
64 -> 2x2, 100 -> 3x3, 128 -> 4x4, 224 -> 7x7 feature maps of 2048 channels.

* ``pooling="avg2x2"`` (default, the course's head): a 'valid' 2x2 average pool with stride
  2, then Flatten. At 64x64 this gives 1x1x2048; at 100x100 (3x3 -> 1x1) the last row and
  column are dropped; at 128x128 (4x4 -> 2x2) the flattened vector is 8192 long, so the Dense
  layer (and the parameter count) grows with the input size. Inputs under 37 px leave a
  1x1 map that a 2x2 pool cannot handle: a ValueError says to use ``pooling="global"``.
* ``pooling="global"``: GlobalAveragePooling2D, a 2048-d vector at any input size (also
  ``None`` spatial dims); same parameter count as the course at 64x64, since the course's
  pool also ends at 1x1x2048 there.

Layer names follow the original ResNet naming (``res3b_branch2a``, ``bn3b_branch2a``,
``res4a_branch1`` ...) so a Trainer ``freeze`` pattern like ``res2*`` or ``bn_conv1`` selects
whole stages.
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

_POOLINGS = ("avg2x2", "global")


def _init(initializer):
    """A fresh initializer object per layer.

    Keras 3 warns (and returns identical values) when one *unseeded* initializer instance is
    called for several layers; resolving a name or cloning the instance per layer avoids that.
    A seeded instance stays seeded (same-shaped kernels then start equal, as in the course's
    ``glorot_uniform(seed=0)``).
    """
    if isinstance(initializer, str):
        return keras.initializers.get(initializer)
    if isinstance(initializer, keras.initializers.Initializer):
        return initializer.__class__.from_config(initializer.get_config())
    return initializer


def _names(name: str | None, branch: str):
    if name is None:
        return None, None
    return f"res{name}_{branch}", f"bn{name}_{branch}"


def _bottleneck_main_path(X, f, filters, s, initializer, name):
    """The main path both blocks share: 1x1 conv (stride s), BN, ReLU; f x f conv 'same', BN,
    ReLU; 1x1 conv, BN (no ReLU: the shortcut is added first)."""
    F1, F2, F3 = filters
    for branch, n_filters, size, stride, padding, relu in (("branch2a", F1, 1, s, "valid", True),
                                                           ("branch2b", F2, f, 1, "same", True),
                                                           ("branch2c", F3, 1, 1, "valid", False)):
        conv, bn = _names(name, branch)
        X = layers.Conv2D(n_filters, size, strides=stride, padding=padding,
                          kernel_initializer=_init(initializer), name=conv)(X)
        X = layers.BatchNormalization(axis=3, name=bn)(X)
        if relu:
            X = layers.Activation("relu")(X)
    return X


def identity_block(X, f: int, filters: Sequence[int], initializer="glorot_uniform",
                   name: str | None = None):
    """Bottleneck block whose shortcut is the identity.

    Args:
        X: input Keras tensor (batch, H, W, C) with C == filters[2].
        f: kernel size of the middle conv.
        filters: (F1, F2, F3), the number of filters of the three convs.
        initializer: kernel initializer (name or ``keras.initializers.Initializer``).
        name: optional block id such as ``"2b"``; names the layers ``res2b_branch2a`` ...

    Returns:
        Keras tensor of the same shape as ``X``.
    """
    F1, F2, F3 = filters
    if X.shape[-1] is not None and X.shape[-1] != F3:
        # The addition would fail later with a less helpful broadcast error.
        raise ValueError(f"identity_block needs input channels == filters[2]; "
                         f"got {X.shape[-1]} and {F3} (use convolutional_block to change them)")
    X_shortcut = X

    X = _bottleneck_main_path(X, f, filters, 1, initializer, name)

    # The skip connection is added *before* the final ReLU (course notes 2.2).
    X = layers.Add()([X, X_shortcut])
    return layers.Activation("relu")(X)


def convolutional_block(X, f: int, filters: Sequence[int], s: int = 2,
                        initializer="glorot_uniform", name: str | None = None):
    """Bottleneck block with a projection shortcut (1x1 conv stride ``s`` + BatchNorm).

    The main path's first 1x1 conv carries the stride, as in the course, so the output has
    spatial size ceil(H / s) x ceil(W / s) and ``filters[2]`` channels.
    """
    F1, F2, F3 = filters
    X_shortcut = X

    X = _bottleneck_main_path(X, f, filters, s, initializer, name)

    conv, bn = _names(name, "branch1")
    X_shortcut = layers.Conv2D(F3, 1, strides=s, padding="valid",
                               kernel_initializer=_init(initializer), name=conv)(X_shortcut)
    X_shortcut = layers.BatchNormalization(axis=3, name=bn)(X_shortcut)

    X = layers.Add()([X, X_shortcut])
    return layers.Activation("relu")(X)


# (filters, stride of the convolutional block, number of identity blocks) per stage.
_STAGES = {
    2: ((64, 64, 256), 1, 2),
    3: ((128, 128, 512), 2, 3),
    4: ((256, 256, 1024), 2, 5),
    5: ((512, 512, 2048), 2, 2),
}


def ResNet50(input_shape=(64, 64, 3), classes: int = 6, *, dropout: float = 0.0,
             pooling: str = "avg2x2", initializer="glorot_uniform",
             name: str = "ResNet50") -> keras.Model:
    """The course's ResNet-50, uncompiled, ending in a softmax over ``classes``.

    Args:
        input_shape: (H, W, C) of the already-preprocessed float32 images.
        classes: number of output classes.
        dropout: rate of a Dropout layer before the classifier (0 = none, the course).
            Adds no parameters.
        pooling: ``"avg2x2"`` (the course's valid 2x2 average pool + Flatten) or
            ``"global"`` (global average pooling; any input size). See the module docstring.
        initializer: kernel initializer of every conv.
        name: model name.

    Unknown keyword arguments raise ``TypeError`` (plain Python), so a misspelt
    hyperparameter in ``pipeline.yaml`` fails loudly instead of being ignored.
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

    X_input = keras.Input(shape=tuple(input_shape))
    X = layers.ZeroPadding2D((3, 3))(X_input)

    # Stage 1
    X = layers.Conv2D(64, 7, strides=2, kernel_initializer=_init(initializer), name="conv1")(X)
    X = layers.BatchNormalization(axis=3, name="bn_conv1")(X)
    X = layers.Activation("relu")(X)
    X = layers.MaxPooling2D((3, 3), strides=(2, 2))(X)

    # Stages 2-5: one convolutional block then identity blocks ("a" = conv block, "b".. identity).
    for stage, (filters, s, n_identity) in _STAGES.items():
        X = convolutional_block(X, 3, filters, s=s, initializer=initializer, name=f"{stage}a")
        for i in range(n_identity):
            X = identity_block(X, 3, filters, initializer=initializer, name=f"{stage}{chr(ord('b') + i)}")

    if pooling == "avg2x2":
        h, w = X.shape[1], X.shape[2]
        if h is None or w is None or h < 2 or w < 2:
            raise ValueError(
                f"pooling='avg2x2' needs a stage-5 feature map of at least 2x2, got {h}x{w} "
                f"for input_shape={tuple(input_shape)}; use pooling='global'")
        X = layers.AveragePooling2D((2, 2), name="avg_pool")(X)
        X = layers.Flatten()(X)
    else:
        X = layers.GlobalAveragePooling2D(name="avg_pool")(X)

    if dropout:
        X = layers.Dropout(float(dropout))(X)
    X = layers.Dense(classes, activation="softmax", kernel_initializer=_init(initializer),
                     name=f"fc{classes}")(X)
    return keras.Model(inputs=X_input, outputs=X, name=name)
