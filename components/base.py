"""The component contract.

A component is a pure function of (inputs, params) -> outputs:

    def run(ctx: Context, inputs: dict[str, Path], params: Params) -> dict | None

* ``inputs`` maps each declared input name to an artifact folder produced by another
  component (or given by hand with ``python -m pipeline component``).
* ``params`` is the component's pydantic model, validated before anything runs.
* The function writes each declared output into ``ctx.outputs[name]`` (folders that exist and
  are empty). It must not write anywhere else: the runner writes those folders under a
  temporary name and renames them into place only when ``run`` returns, so a failure or a
  kill never leaves a half artifact.
* What it returns (a flat dict of numbers) is logged as the execution's summary metrics.

A component module must import no TensorFlow, Beam or MLflow at module level: the runner imports
every spec to validate `pipeline.yaml` and `python -m pipeline --help` must stay fast.
Heavy imports go inside ``run``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from pydantic import BaseModel, ConfigDict


# The MLflow tracking store used when none is given (the default pipeline's, relative to the
# working directory).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class Params(BaseModel):
    """Base for component params: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def local_paths(self) -> dict[str, str]:
        """The local files and folders these params name, by dotted key (``source.path``,
        ``init_weights``), as the component will open them: ``validate`` checks they exist."""
        return {}


class ComponentError(Exception):
    """A failure the user can act on (bad data, failed validation): shown without a traceback."""


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    type: str
    description: str
    params: type[Params]
    run: Callable[..., Any]
    inputs: dict[str, bool] = dataclasses.field(default_factory=dict)  # name -> required
    outputs: tuple[str, ...] = ()
    # Extra project modules the code fingerprint must include for these params (modules chosen
    # by name at run time, e.g. the model builder the Trainer imports through the registry).
    code_dependencies: Callable[[Any], list[str]] | None = None
    # Files outside the artifact store that the result depends on (raw data for ExampleGen).
    external_files: Callable[[Any], list[str]] | None = None
    # State outside the DAG the component depends on, resolved once when a pipeline run starts:
    # (params, tracking_uri, input fingerprints) -> JSON-able dict. It is part of the cache key,
    # recorded in the execution's metadata and handed to ``run`` as ``ctx.resolved`` (TFX's
    # Resolver node: the Evaluator's baseline, the registry's champion at that moment).
    resolve: Callable[[Any, str, dict], dict] | None = None


class Tracker(Protocol):
    """What a component may log. The runner passes an MLflow-backed tracker; standalone runs
    and tests get ``NullTracker``."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullTracker:
    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def set_tags(self, tags):
        pass


@dataclasses.dataclass
class Context:
    outputs: dict[str, Path]
    work_dir: Path  # scratch space that survives a kill (checkpoints), keyed by the cache key
    logger: logging.Logger = dataclasses.field(default_factory=lambda: logging.getLogger("component"))
    tracker: Tracker = dataclasses.field(default_factory=NullTracker)
    # the pipeline's `beam:` section (runner, workers, address, args); components open their Beam
    # pipeline through components.beam_engine, which turns it into options for that engine
    beam: dict = dataclasses.field(default_factory=lambda: {"runner": "local", "workers": 2, "address": None,
                                                            "args": []})
    tracking_uri: str = DEFAULT_TRACKING_URI
    pipeline_run_id: str | None = None
    cache_key: str | None = None
    component_id: str = "component"
    show_progress: bool = True
    resolved: dict = dataclasses.field(default_factory=dict)  # the spec's `resolve` result
    input_fingerprints: dict = dataclasses.field(default_factory=dict)  # input name -> artifact fingerprint

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A progress bar for long loops that Keras does not already show: yields
        ``advance(n=1, note="")`` (``note``: a short status shown after the bar, e.g. the loss).
        Drawn only on a terminal; nothing is printed otherwise."""
        import sys

        if not self.show_progress or not sys.stdout.isatty():
            yield lambda n=1, note="": None
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                      transient=True) as bar:
            task = bar.add_task(description, total=total, note="")
            yield lambda n=1, note="": bar.update(task, advance=n, note=note)


def log_to_file_only(logger: logging.Logger, msg: str, *args, level: int = logging.INFO) -> None:
    """A line for the component's log file but not for the console (per-epoch detail, tracebacks)."""
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(logger.makeRecord(logger.name, level, __file__, 0, msg, args, None))
