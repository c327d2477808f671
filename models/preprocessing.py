"""The preprocessing layers the Transform decides and the Trainer puts inside the model, so a
served model takes raw uint8 images and training and serving cannot skew:

    uint8 (H, W, 3) -> float32 -> [augmentation, training only] -> x / 255 -> (x - mean) / std
"""
from __future__ import annotations

from typing import Any


def build_preprocessor(config: dict[str, Any], name: str = "preprocess"):
    """A `keras.Sequential` from the Transform's `transform.json`."""
    import keras

    h, w = config["image_size"]
    # Rescaling(1.0) is the cast to float32: a plain layer that saves and exports everywhere.
    layers: list = [keras.layers.Input((h, w, 3), dtype="uint8"), keras.layers.Rescaling(1.0, name="to_float")]
    aug = config.get("augmentation")
    if aug:
        from models.augmentation import build_augmentation

        a = build_augmentation(aug, (h, w, 3))
        if a is not None:
            layers.append(a)
    layers.append(keras.layers.Rescaling(1.0 / 255.0, name="rescale"))
    if config.get("normalize", True) and config.get("mean") is not None:
        mean = [m / 255.0 for m in config["mean"]]
        var = [max((s / 255.0) ** 2, 1e-8) for s in config["std"]]
        layers.append(keras.layers.Normalization(axis=-1, mean=mean, variance=var, name="normalize"))
    return keras.Sequential(layers, name=name)


def load_model(path):
    """Load a `.keras` model the pipeline saved, with Keras safe_mode (no arbitrary code).
    Importing models.augmentation first registers its TrainingOnlySequential class."""
    import keras

    import models.augmentation  # noqa: F401  (registers the serialisable augmentation wrapper)

    return keras.models.load_model(path, safe_mode=True, compile=False)
