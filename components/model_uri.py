"""Registered-model URIs: `models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the version and the
Keras files the Pusher logged beside its SavedModel (`keras/model.keras`, `keras/model_info.json`
in the version's run). One place for what `predict`, `detect`, `faces`, transfer learning and
the Evaluator's baseline all need."""
from __future__ import annotations

import json
from pathlib import Path


class ModelNotFound(Exception):
    pass


def registered_version(uri: str, tracking_uri: str | None = None):
    """The `mlflow.entities.model_registry.ModelVersion` a models:/ URI names."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, version = ref.rsplit("/", 1)
        return client.get_model_version(name, version)
    except Exception as e:
        raise ModelNotFound(f"{uri}: not found in {tracking_uri or mlflow.get_tracking_uri()} "
                            f"({type(e).__name__}: {e})") from None


def fetch_keras(uri: str, tracking_uri: str | None = None) -> tuple[Path, dict, object]:
    """(local folder holding model.keras and model_info.json, model_info, ModelVersion)."""
    import mlflow

    mv = registered_version(uri, tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="keras"))
    except Exception as e:
        raise ModelNotFound(f"{uri}: the version's run has no keras/ artifacts ({type(e).__name__}: {e})") from None
    info_path = local / "model_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return local, info, mv


def load_model_and_info(uri_or_path: str, tracking_uri: str | None = None):
    """(keras model, model_info) from a models:/ URI, a Trainer model folder or a .keras file."""
    from models.preprocessing import load_model

    if uri_or_path.startswith("models:/"):
        folder, info, _ = fetch_keras(uri_or_path, tracking_uri)
        path = folder / "model.keras"
    else:
        path = Path(uri_or_path).expanduser()
        if path.is_dir():
            path = path / "model.keras"
        info_path = path.parent / "model_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if not path.exists():
        raise ModelNotFound(f"{uri_or_path}: no model.keras there (give a models:/ URI, a Trainer model "
                            f"folder or a .keras file)")
    if not info:
        raise ModelNotFound(f"{path}: model_info.json missing beside the model")
    return load_model(path), info


def load_baseline(name: str, alias: str, tracking_uri: str, logger):
    """The registered baseline `name@alias` as (keras model, model_info, version), or None when
    there is none yet (first run) or it cannot be used."""
    uri = f"models:/{name}@{alias}"
    try:
        folder, info, mv = fetch_keras(uri, tracking_uri)
        from models.preprocessing import load_model

        return load_model(folder / "model.keras"), info, mv.version
    except ModelNotFound as e:
        logger.info("no baseline: %s", e)
    except Exception as e:  # a model without its keras artifacts, an unreadable file
        logger.info("no baseline (%s: %s)", type(e).__name__, e)
    return None
