"""``explain TRAINER --pipeline FILE``: the network a Trainer component of a pipeline builds,
exactly as it builds it: the image size, classes and preprocessing from its upstream artifacts
(ExampleGen's schema, the Transform), its hyperparameters and task params (a detector's anchors
and stride), the same builder call. Its parameter count is the trained model's."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipeline.config import Pipeline


class NotATrainer(Exception):
    pass


def trainer_network(pipeline: Pipeline, component_id: str):
    """(served model: uint8 images in, core network) of a Trainer component."""
    from components.base import Context
    from components.trainer import build_served_model, train_context
    from pipeline.runner import Runner

    comp = pipeline.components.get(component_id)
    if comp is None or comp.type != "Trainer":
        raise NotATrainer(f"{component_id!r} is not a Trainer of {pipeline.path}")
    inputs = Runner(pipeline, tracking=False).cached_outputs(component_id)
    with tempfile.TemporaryDirectory() as scratch:
        ctx = Context(outputs={}, work_dir=Path(scratch), logger=logging.getLogger("explain"),
                      component_id=component_id, show_progress=False)
        task, tc = train_context(ctx, inputs, comp.params)
        return build_served_model(comp.params, task, tc)
