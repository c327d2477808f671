"""MLflow tracking: one parent run per pipeline invocation, one nested child run per component
that executes. Cache hits get no child run: the parent run's tags list them (``cache_hits``;
``replay`` = true when nothing executed) and the execution index points at the run that made
each reused artifact.

The child run is the *active* run while a component executes (in parallel mode, in the
component's worker process: `open_child` / `attach_run`), so components may also use MLflow's
fluent API (the Pusher's `log_model`)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
from pathlib import Path
from typing import Any, Iterator

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MlflowTracker:
    """The `components.base.Tracker` for one MLflow run."""

    def __init__(self, run_id: str):
        import mlflow

        self.run_id = run_id
        self._client = mlflow.MlflowClient()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k[:250], json.dumps(v, default=str)[:6000] if not isinstance(v, str) else v[:6000])
                 for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = []
        for k, v in _flatten(metrics).items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                items.append(Metric(k[:250], f, ts, step or 0))
        for i in range(0, len(items), 500):
            self._client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))


class TrackingSession:
    def __init__(self, uri: str, experiment: str, lock_dir: Path):
        import mlflow

        self.mlflow = mlflow
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        lock_dir.mkdir(parents=True, exist_ok=True)
        # Creating the sqlite schema (migrations) or the experiment from two processes at once
        # races; a file lock serialises only that first step.
        with open(lock_dir / ".mlflow-init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = mlflow.create_experiment(experiment)
            else:
                exp_id = exp.experiment_id
            # MLflow 3.17's UI opens in its GenAI view unless told this is model development.
            mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "custom_model_development")
            fcntl.flock(lock, fcntl.LOCK_UN)
        self.experiment_id = exp_id
        self.parent = None

    def start_parent(self, run_name: str, tags: dict[str, str]) -> str:
        self.parent = self.mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags)
        return self.parent.info.run_id

    def tag_parent(self, tags: dict[str, str]) -> None:
        if self.parent is not None:
            MlflowTracker(self.parent.info.run_id).set_tags(tags)

    def end_parent(self, status: str) -> None:
        if self.parent is not None:
            self.mlflow.end_run(status=status)
            self.parent = None

    @contextlib.contextmanager
    def child(self, run_name: str, tags: dict[str, str]) -> Iterator[MlflowTracker]:
        run = self.mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, nested=True, tags=tags)
        status = "FAILED"
        try:
            yield MlflowTracker(run.info.run_id)
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        finally:
            self.mlflow.end_run(status=status)

    def open_child(self, run_name: str, tags: dict[str, str]) -> MlflowTracker:
        """A child run of the parent that is not made the active run: in parallel mode several are
        open at once (the fluent API has one stack of active runs), each logged to by its worker
        process (`attach_run`) and ended here by `close_child`. Same tags as `child`'s runs."""
        from mlflow.tracking.context.registry import resolve_tags

        run = self.mlflow.MlflowClient().create_run(
            self.experiment_id, run_name=run_name,
            tags=resolve_tags({**tags, "mlflow.parentRunId": self.parent.info.run_id}))
        return MlflowTracker(run.info.run_id)

    def close_child(self, run_id: str, status: str) -> None:
        self.mlflow.MlflowClient().set_terminated(run_id, status=status)


def attach_run(uri: str, run_id: str) -> MlflowTracker:
    """In a parallel worker process: the child run its parent process opened (`open_child`) made
    this process's active run, so components may use MLflow's fluent API here too, and its
    tracker. The worker never ends the run (it leaves without atexit hooks): the parent ends it
    with the status it saw (FINISHED, FAILED or KILLED)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_id=run_id)
    return MlflowTracker(run_id)


def detach_run() -> None:
    """A parallel worker is done with the run `attach_run` made active: it stops being this
    process's active run, still RUNNING (MLflow has no detach: ``end_run`` with the status
    RUNNING), so the next job starts clean; the parent then ends it with its real status."""
    import mlflow

    mlflow.end_run(status="RUNNING")


def end_dead_runs(uri: str, run_ids: list[str]) -> int:
    """End as KILLED the MLflow runs (children and parents of executions whose process died)
    that are still RUNNING. Returns how many it ended."""
    if not run_ids or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()):
        return 0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    n = 0
    for rid in dict.fromkeys(run_ids):
        try:
            if client.get_run(rid).info.status == "RUNNING":
                client.set_terminated(rid, status="KILLED")
                n += 1
        except Exception:  # a run deleted by hand, another tracking store: nothing to end
            continue
    return n
