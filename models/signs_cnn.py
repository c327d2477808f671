"""The course's SIGNS CNN (Convolution model Application, course notes 1.5).

CONV2D 8 4x4 'same' -> ReLU -> MAXPOOL 8x8 stride 8 'same' -> CONV2D 16 2x2 'same' -> ReLU
-> MAXPOOL 4x4 stride 4 'same' -> FLATTEN -> Dense softmax.

For 64x64x3 inputs the feature maps are 64x64x8 -> 8x8x8 -> 8x8x16 -> 2x2x16 -> 64, and the
parameter count is (4*4*3+1)*8 + (2*2*8+1)*16 + (2*2*16+1)*6 = 392 + 528 + 390 = 1310.
The course's TF1 version had bias-free convs and a linear output fed to a softmax loss;
here convs keep their biases (the count above) and the Dense layer applies the softmax, so
every classifier in the registry outputs probabilities.
"""
from __future__ import annotations

import keras
from keras import layers


def build_signs_cnn(input_shape=(64, 64, 3), num_classes: int = 6, dropout: float = 0.0,
                    *, name: str = "signs_cnn") -> keras.Model:
    """Build the SIGNS CNN (uncompiled).

    Args:
        input_shape: (H, W, C) of already-preprocessed float32 images.
        num_classes: size of the softmax output.
        dropout: rate of a Dropout before the classifier (0 = none, the course).
        name: model name.
    """
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Conv2D(8, (4, 4), strides=1, padding="same", name="conv1")(inputs)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D((8, 8), strides=8, padding="same", name="pool1")(x)
    x = layers.Conv2D(16, (2, 2), strides=1, padding="same", name="conv2")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D((4, 4), strides=4, padding="same", name="pool2")(x)
    x = layers.Flatten()(x)
    if dropout:
        x = layers.Dropout(float(dropout))(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name=name)
