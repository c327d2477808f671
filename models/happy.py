"""The course's Happy House model (Keras tutorial, course notes 2.5): a binary smile detector.

ZeroPadding2D(3) -> Conv2D 32 7x7 stride 1 -> BatchNorm(channel axis) -> ReLU -> MaxPool 2x2
-> Flatten -> Dense 1 sigmoid. 37,633 parameters for a 64x64x3 input (4,736 conv + 128 BN +
32,769 dense). Returned uncompiled; the Trainer compiles it with binary cross-entropy (the
registry marks it ``task="binary"``).
"""
from __future__ import annotations

import keras
from keras import layers


def HappyModel(input_shape=(64, 64, 3), *, dropout: float = 0.0, name: str = "HappyModel") -> keras.Model:
    """Build the Happy House model.

    Args:
        input_shape: (H, W, C) of already-preprocessed float32 images.
        dropout: rate of a Dropout before the output unit (0 = none, the course). Adds no
            parameters.
        name: model name.

    Output: (batch, 1) probability of the positive ("happy") class.
    """
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    X_input = keras.Input(shape=tuple(input_shape))
    X = layers.ZeroPadding2D((3, 3))(X_input)
    X = layers.Conv2D(32, (7, 7), strides=(1, 1), name="conv0")(X)
    X = layers.BatchNormalization(axis=3, name="bn0")(X)
    X = layers.Activation("relu")(X)
    X = layers.MaxPooling2D((2, 2), name="max_pool")(X)
    X = layers.Flatten()(X)
    if dropout:
        X = layers.Dropout(float(dropout))(X)
    X = layers.Dense(1, activation="sigmoid", name="fc")(X)
    return keras.Model(inputs=X_input, outputs=X, name=name)
