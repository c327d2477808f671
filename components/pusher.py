"""Pusher: model + blessing (+ infra_blessing) -> a new version of a registered model in MLflow,
tagged with the pipeline run and cache key; the alias (`champion`) moves to it only when the model
is blessed, and, when an InfraValidator is wired (`infra_blessing` input), only when the scoring
server answered it correctly too.

What is logged is the task's served model (``Task.serving_model``: a detector decodes its boxes)
with `mlflow.keras.log_model(..., save_exported_model=True, signature=...)`, a real SavedModel,
with explicit pip requirements (that makes logging ~100x faster than letting MLflow infer them)
and model_info.json in the MLmodel metadata: ``components.serving.log_kwargs``, the same MLflow
model the InfraValidator served."""
from __future__ import annotations

import contextlib
import io
import json

from components.base import ComponentSpec, Params, log_to_file_only


class PusherParams(Params):
    registered_model_name: str
    alias: str = "champion"
    register_unblessed: bool = True  # register a version either way; only the alias needs a blessing


def _trainer_record(model_dir) -> dict[str, str]:
    """What made the model: the Trainer execution's cache key, pipeline run and MLflow run, and
    the fingerprints of its data (the examples) and code, from the execution's metadata.json
    beside the model folder (absent for a model folder made by hand)."""
    meta_path = model_dir.parent / "metadata.json"
    if not meta_path.exists():
        return {}
    meta = json.loads(meta_path.read_text())
    return {"trainer_cache_key": meta.get("cache_key") or "", "trainer_pipeline_run": meta.get("pipeline_run") or "",
            "trainer_mlflow_run": meta.get("mlflow_run_id") or "",
            "data_fingerprint": (meta.get("input_fingerprints") or {}).get("examples", ""),
            "code_fingerprint": meta.get("code_fingerprint") or ""}


def run(ctx, inputs, params: PusherParams):
    import mlflow

    from components.artifacts import Blessing, InfraBlessing, Model, PushedModel
    from components.serving import log_kwargs, served_keras_model

    model_art, blessing = Model.load(inputs["model"]), Blessing.load(inputs["blessing"])
    info = model_art.info
    # Both blessings gate the alias (and, with register_unblessed: false, the registration).
    infra = InfraBlessing.load(inputs["infra_blessing"]) if "infra_blessing" in inputs else None
    reasons = list(blessing.reasons) + ([f"infra: {r}" for r in infra.reasons] if infra else [])
    blessed = blessing.blessed and (infra is None or infra.blessed)
    out = PushedModel(ctx.outputs["pushed_model"], {})
    if not blessed and not params.register_unblessed:
        out.data = {"pushed": False, "reason": reasons}
        out.save()
        ctx.logger.info("not blessed: nothing registered (%s)", "; ".join(reasons))
        return {"pushed": 0.0}
    mlflow.set_tracking_uri(ctx.tracking_uri)
    served = served_keras_model(model_art)
    active = mlflow.active_run()
    ctx_run = active if active is not None else mlflow.start_run(run_name=f"push {params.registered_model_name}")
    try:
        # SavedModel export prints its endpoints to stdout, MLflow "Successfully registered model"
        # to stderr: both go to the component's log file, not the user's terminal.
        with contextlib.redirect_stdout(io.StringIO()) as said, contextlib.redirect_stderr(said):
            logged = mlflow.keras.log_model(served, name="model", registered_model_name=params.registered_model_name,
                                            **log_kwargs(served, info))
        for line in said.getvalue().splitlines():
            if line.strip():
                log_to_file_only(ctx.logger, "%s", line)
        # The .keras file too, so fine-tuning (Trainer init_weights=models:/...) gets real layers back.
        mlflow.log_artifact(str(model_art.keras_path), "keras")
        mlflow.log_artifact(str(model_art.path / info.FILE), "keras")
    finally:
        if active is None:
            mlflow.end_run()
    client = mlflow.MlflowClient()
    version = str(logged.registered_model_version)
    baseline_uri = (blessing.baseline or {}).get("uri") or ""
    tags = {"pipeline_run": ctx.pipeline_run_id or "", "cache_key": ctx.cache_key or "",
            "blessed": str(blessed).lower(), "model": info.model, "classes": json.dumps(info.classes),
            "image_size": json.dumps(info.image_size), "task": info.task,
            # what the Evaluator's resolver reads: is the champion this candidate, and what was it compared with
            "model_fingerprint": ctx.input_fingerprints.get("model", ""), "baseline": baseline_uri}
    tags.update(_trainer_record(model_art.path))
    # the task's scalar fields (a face model's decision threshold, a detector's NMS IoU): searchable in the UI
    for k, v in info.task_fields.items():
        if isinstance(v, (str, int, float, bool)) and k not in tags:
            tags[k] = str(v)
    if infra is not None:
        tags["infra_blessed"] = str(infra.blessed).lower()
    for k, v in tags.items():
        client.set_model_version_tag(params.registered_model_name, version, k, v)
    if blessed:
        _set_alias(client, params.registered_model_name, params.alias, version)
    uri = f"models:/{params.registered_model_name}/{version}"
    out.data = {"pushed": True, "registered_model_name": params.registered_model_name, "version": version, "uri": uri,
                "alias": params.alias if blessed else None, "run_id": ctx_run.info.run_id,
                "baseline": baseline_uri or None, **({"reason": reasons} if not blessed else {})}
    out.save()
    ctx.logger.info("registered %s version %s%s", params.registered_model_name, version,
                    f" and moved @{params.alias} to it" if blessed else f" (not blessed: alias unchanged; {'; '.join(reasons)})")
    return {"pushed": 1.0, "registered_version": float(version), "alias_moved": float(blessed)}


def _code_dependencies(params) -> list[str]:
    # what is registered is the task's served model (a detector's decoding wrapper)
    from components.tasks import all_task_modules

    return ["components.serving", "models.yolo.serving", *all_task_modules()]


SPEC = ComponentSpec(type="Pusher",
                     description="model + blessing (+ infra_blessing) -> registered MLflow model version (+ alias if blessed)",
                     params=PusherParams, run=run, inputs={"model": True, "blessing": True, "infra_blessing": False},
                     outputs=("pushed_model",), code_dependencies=_code_dependencies)


def _set_alias(client, name: str, alias: str, version, attempts: int = 5) -> None:
    """Move ``alias`` to ``version``. MLflow's SQL store replaces an alias by a delete and an insert
    that are not one transaction: two Pushers setting it at the same moment make one of them fail
    with a UNIQUE-constraint error. Setting an alias is idempotent (the last writer wins, as
    without the race), so that error is retried after a short pause."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as e:
            if "UNIQUE constraint failed" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))

