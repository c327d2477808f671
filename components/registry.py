"""Component types by their TFX names. Lazy "module:SPEC" strings: a spec module imports no
TensorFlow, but there is no reason to import all of them to run one."""
from __future__ import annotations

import importlib

from components.base import ComponentSpec

COMPONENTS: dict[str, str] = {
    "ExampleGen": "components.example_gen:SPEC",
    "StatisticsGen": "components.statistics_gen:SPEC",
    "ExampleValidator": "components.example_validator:SPEC",
    "Transform": "components.transform:SPEC",
    "Trainer": "components.trainer:SPEC",
    "Evaluator": "components.evaluator:SPEC",
    "InfraValidator": "components.infra_validator:SPEC",
    "Pusher": "components.pusher:SPEC",
    "BulkInferrer": "components.bulk_inferrer:SPEC",
    "StyleTransfer": "components.style_transfer:SPEC",
    "Anchors": "components.anchors:SPEC",
}


def get_spec(type_name: str) -> ComponentSpec:
    if type_name not in COMPONENTS:
        raise KeyError(f"unknown component type {type_name!r}; known types: {', '.join(COMPONENTS)}")
    module, attr = COMPONENTS[type_name].split(":")
    return getattr(importlib.import_module(module), attr)


def spec_module(type_name: str) -> str:
    return COMPONENTS[type_name].split(":")[0]
