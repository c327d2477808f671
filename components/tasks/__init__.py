"""Task plug-ins for the Trainer, Evaluator and BulkInferrer.

Classification lives in the components themselves (it is the reference branch). Other tasks
(detection, embedding) are one module each here, with this interface:

    TrainParams(Params)                      task-specific Trainer params (`task_params:` in YAML)
    EvalParams(Params)                       task-specific Evaluator params
    train(ctx, inputs, params, task_params) -> dict        writes ctx.outputs["model"]
    evaluate(ctx, inputs, params, task_params) -> dict     writes evaluation + blessing
    infer(ctx, inputs, params) -> dict                     (optional) BulkInferrer

so a new task is one new file plus one line in TASK_MODULES, and the cache key of a Trainer
covers exactly the task module it dispatches to.
"""
from __future__ import annotations

import importlib

TASK_MODULES: dict[str, str] = {
    "embedding": "components.tasks.embedding",
    "detection": "components.tasks.detection",
}


def task_module(task: str):
    if task not in TASK_MODULES:
        raise KeyError(f"no task module for {task!r}")
    return importlib.import_module(TASK_MODULES[task])


def validate_task_params(task: str, kind: str, raw: dict):
    """Validate `task_params` with the task module's TrainParams/EvalParams (kind = Train|Eval)."""
    if task not in TASK_MODULES:
        if raw:
            raise ValueError(f"task_params given but {task!r} models take none")
        return None
    cls = getattr(task_module(task), f"{kind}Params")
    return cls.model_validate(raw or {})
