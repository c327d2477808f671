"""Task plug-ins: what the Trainer, Evaluator, BulkInferrer and ``predict`` do differently per
task. The contract is ``components/tasks/base.py`` (``Task``); a new task is one module here and
one line in ``TASKS``. Entries are "module:Class" strings imported on first use."""
from __future__ import annotations

import importlib

TASKS: dict[str, str] = {
    "classification": "components.tasks.classification:ClassificationTask",
    "binary": "components.tasks.classification:BinaryTask",
    "detection": "components.tasks.detection:DetectionTask",
    "embedding": "components.tasks.embedding:EmbeddingTask",
}


def get_task(name: str):
    """The task plug-in instance for a registry task name."""
    if name not in TASKS:
        raise KeyError(f"no task plug-in for {name!r}; known: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def extra_train_inputs() -> dict[str, bool]:
    """Every task's optional extra Trainer inputs (``Task.train_inputs``), read from the classes
    without instantiating them (the Trainer's spec declares them when the config is validated)."""
    out: dict[str, bool] = {}
    for entry in TASKS.values():
        module, cls = entry.split(":")
        out.update(getattr(getattr(importlib.import_module(module), cls, None), "train_inputs", {}))
    return out


def task_module(name: str) -> str:
    """The module implementing a task (for the cache key's code fingerprint)."""
    return TASKS[name].split(":")[0]


def all_task_modules() -> list[str]:
    return sorted({v.split(":")[0] for v in TASKS.values()} | {"components.tasks.base"})


def validate_task_params(task: str, kind: str, raw: dict):
    """Validate ``task_params`` with the task's TrainParams / EvalParams (kind = Train | Eval)."""
    cls = getattr(get_task(task), f"{kind}Params")
    return cls.model_validate(raw or {})
