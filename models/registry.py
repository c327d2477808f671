"""The model registry: `pipeline.yaml` names a model (``model: signs_cnn``); this maps the name
to its builder. Entries are "module:function" strings imported on first use, so listing the
registry (``python -m pipeline --help``, config validation) imports no TensorFlow.

Adding a model is one new file in `models/` plus one line here.

Builder contract: ``builder(input_shape=(H, W, C), num_classes=K, **hyperparameters)``
returns an uncompiled ``keras.Model`` taking float32 images that are already preprocessed
(the Transform's layers are put in front of it by the Trainer). ``task`` tells the Trainer and
the Evaluator which loss, metrics and decoding apply.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    target: str  # "package.module:callable"
    task: str  # classification | binary | detection | embedding
    description: str
    default_input_shape: tuple[int, int, int]
    classes_kwarg: str | None = "num_classes"  # how the builder spells "number of classes"


MODELS: dict[str, ModelEntry] = {
    "signs_cnn": ModelEntry("models.signs_cnn:build_signs_cnn", "classification",
                            "the course's SIGNS CNN (conv8-pool8-conv16-pool4-dense)", (64, 64, 3)),
    "resnet50": ModelEntry("models.resnet:ResNet50", "classification",
                           "the course's ResNet-50 (bottleneck identity/convolutional blocks)",
                           (64, 64, 3), classes_kwarg="classes"),
    "happy": ModelEntry("models.happy:HappyModel", "binary",
                        "the course's Happy House model (conv32 7x7, BN, pool, dense sigmoid)",
                        (64, 64, 3), classes_kwarg=None),
    "yolo_small": ModelEntry("models.yolo:build_small_yolo", "detection",
                             "YOLOv2-style detector with a small Darknet-like backbone for CPU training",
                             (256, 256, 3)),
    "yolov2_darknet19": ModelEntry("models.yolo:yolov2_darknet19", "detection",
                                   "the course's YOLOv2 (Darknet-19 + passthrough), 608x608 -> 19x19x425",
                                   (608, 608, 3)),
    "facenet_nn4_small": ModelEntry("models.facenet:faceRecoModel", "embedding",
                                    "FaceNet NN4-small (Inception blocks, 128-d L2-normalised)",
                                    (96, 96, 3), classes_kwarg=None),
    "facenet_small": ModelEntry("models.facenet:small_face_model", "embedding",
                                "a small Inception-style embedding network sized for CPU training",
                                (64, 64, 3), classes_kwarg=None),
}


class UnknownModel(ValueError):
    pass


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def get_builder(name: str) -> Callable[..., Any]:
    module_name, func_name = get_entry(name).target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def build_model(name: str, input_shape=None, num_classes: int | None = None, **hparams):
    """Build a registered model by name with the registry's conventions applied."""
    entry = get_entry(name)
    kwargs = dict(hparams)
    kwargs["input_shape"] = tuple(input_shape or entry.default_input_shape)
    if entry.classes_kwarg and num_classes is not None:
        kwargs[entry.classes_kwarg] = num_classes
    return get_builder(name)(**kwargs)
