"""The task contract: every registered task implements every required hook, and a task that
forgets one fails when it is instantiated, naming the hook (not halfway through a training)."""
from __future__ import annotations

import pytest

from components.tasks import TASKS, get_task
from components.tasks.base import Task


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_implements_the_contract(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    assert not getattr(type(task), "__abstractmethods__", set())


def test_a_task_missing_a_required_hook_cannot_be_instantiated():
    class HalfWritten(Task):
        name = "half"
        examples_task = "classification"

        def train_data(self, tc, model):
            return None

    with pytest.raises(TypeError, match="abstract method.*compile_args"):
        HalfWritten()
    required = Task.__abstractmethods__
    assert required == {"train_data", "compile_args", "eval_data", "score", "headline", "predictor", "format_row"}
