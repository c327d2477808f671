"""Training-time data augmentation as Keras preprocessing layers.

The Transform puts the returned ``keras.Sequential`` in front of the model, *before* its
rescale/normalise layers, so the layers see float images in the 0-255 range. The block is
the identity unless ``training`` is True, so it is saved inside the ``.keras`` model and the
exported SavedModel and costs nothing at serving time: training and serving share one graph
and cannot skew.

Why a ``keras.Sequential`` subclass and not a plain ``keras.Sequential``: Keras 3's random
image layers default to ``training=True`` when nobody passes ``training``. ``model.predict``
passes False, but ``model(x)``, ``model.export()`` (its ``serve`` endpoint calls
``model.__call__`` with no ``training``) and MLflow's ``save_exported_model=True`` (it exports
``model.call``) do not, so a plain Sequential *augments at serving time* (checked on Keras
3.15: the exported model's outputs changed from call to call). ``TrainingOnlySequential``
defaults ``training`` to False; ``fit`` still turns it on through Keras's call context.

Loading a ``.keras`` file that contains it needs this module imported first (Keras only
auto-imports its own packages), or ``custom_objects=CUSTOM_OBJECTS``. Exported SavedModels
need no Python class at all.

Config keys (all optional; a key set to 0 / False turns that layer off):

============================  ========  =====================================================
key                           default   meaning
============================  ========  =====================================================
``translate``                 0.1       max shift as a fraction of H and W (RandomTranslation)
``zoom``                      0.1       max zoom in/out as a fraction (RandomZoom); zooming in
                                        is a random crop resized back to the input size
``rotation_degrees``          10        max rotation, degrees either way (RandomRotation)
``brightness``                0.1       max brightness change, fraction of the 0-255 range
``contrast``                  0.1       max contrast change factor (RandomContrast)
``horizontal_flip``           False     RandomFlip("horizontal"). Off by default: mirroring a
                                        hand sign can turn it into a different sign
``fill_mode``                 nearest   how pixels shifted in are filled. Not Keras's
                                        "reflect", which mirrors border content (a partial
                                        finger) into the frame
``seed``                      0         base seed; layer i uses ``seed + i``. ``None``:
                                        non-deterministic
============================  ========  =====================================================

``build_augmentation(None, ...)`` returns None (no augmentation); ``{}`` gives the defaults
above. An unknown key raises ValueError naming it.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import layers

DEFAULTS: dict[str, Any] = {
    "translate": 0.1,
    "zoom": 0.1,
    "rotation_degrees": 10,
    "brightness": 0.1,
    "contrast": 0.1,
    "horizontal_flip": False,
    "fill_mode": "nearest",
    "seed": 0,
}

_FILL_MODES = ("reflect", "wrap", "constant", "nearest")


@keras.saving.register_keras_serializable(package="cnn_pipeline")
class TrainingOnlySequential(keras.Sequential):
    """A ``keras.Sequential`` of random layers that runs only when ``training`` is True.

    Same config as ``keras.Sequential`` (``get_config``/``from_config`` are inherited), so the
    inner layers are plain built-in Keras layers in the saved file.
    """

    def call(self, inputs, training=False, mask=None, **kwargs):
        if not training:
            return inputs
        return super().call(inputs, training=True, mask=mask, **kwargs)


CUSTOM_OBJECTS = {"cnn_pipeline>TrainingOnlySequential": TrainingOnlySequential}

# Pixel range of the Transform's input images (before rescaling).
VALUE_RANGE = (0.0, 255.0)


def resolve_config(config: dict | None) -> dict[str, Any] | None:
    """Defaults merged with ``config``, validated; None when augmentation is off."""
    if config is None or config is False:
        return None
    if not isinstance(config, dict):
        raise TypeError(f"augmentation config must be a mapping or None, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augmentation key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    for key in ("translate", "zoom", "brightness", "contrast"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"augmentation.{key} must be a number in [0, 1), got {v!r}")
    r = cfg["rotation_degrees"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 180.0:
        raise ValueError(f"augmentation.rotation_degrees must be in [0, 180], got {r!r}")
    if not isinstance(cfg["horizontal_flip"], bool):
        raise ValueError(f"augmentation.horizontal_flip must be true/false, got {cfg['horizontal_flip']!r}")
    if cfg["fill_mode"] not in _FILL_MODES:
        raise ValueError(f"augmentation.fill_mode must be one of {_FILL_MODES}, got {cfg['fill_mode']!r}")
    if cfg["seed"] is not None and (isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], int)):
        raise ValueError(f"augmentation.seed must be an integer or null, got {cfg['seed']!r}")
    return cfg


def build_augmentation(config: dict | None, input_shape, name: str = "augmentation") -> keras.Sequential | None:
    """Build the augmentation block for images of ``input_shape`` (H, W, C), values 0-255.

    Returns a ``TrainingOnlySequential`` (a ``keras.Sequential``), or None when ``config``
    is None or every augmentation is turned off.
    """
    cfg = resolve_config(config)
    if cfg is None:
        return None

    seed = cfg["seed"]
    n = 0

    def next_seed():
        # Distinct seeds per layer so the layers' random draws are not correlated.
        nonlocal n
        n += 1
        return None if seed is None else seed + n - 1

    geometric = {"fill_mode": cfg["fill_mode"], "interpolation": "bilinear"}
    aug: list[layers.Layer] = []
    if cfg["horizontal_flip"]:
        aug.append(layers.RandomFlip("horizontal", seed=next_seed(), name="random_flip"))
    if cfg["rotation_degrees"]:
        aug.append(layers.RandomRotation(cfg["rotation_degrees"] / 360.0, seed=next_seed(),
                                         name="random_rotation", **geometric))
    if cfg["zoom"]:
        z = float(cfg["zoom"])
        aug.append(layers.RandomZoom((-z, z), (-z, z), seed=next_seed(), name="random_zoom", **geometric))
    if cfg["translate"]:
        t = float(cfg["translate"])
        aug.append(layers.RandomTranslation(t, t, seed=next_seed(), name="random_translation", **geometric))
    if cfg["brightness"]:
        aug.append(layers.RandomBrightness(float(cfg["brightness"]), value_range=VALUE_RANGE,
                                           seed=next_seed(), name="random_brightness"))
    if cfg["contrast"]:
        aug.append(layers.RandomContrast(float(cfg["contrast"]), value_range=VALUE_RANGE,
                                         seed=next_seed(), name="random_contrast"))
    if not aug:
        return None
    return TrainingOnlySequential([keras.Input(shape=tuple(input_shape)), *aug], name=name)
