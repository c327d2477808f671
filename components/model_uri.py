"""Registered-model URIs: `models:/NAME@ALIAS` or `models:/NAME/VERSION` -> the version and the
Keras files the Pusher logged beside its SavedModel (`keras/model.keras`, `keras/model_info.json`
in the version's run). One place for what `predict`, `detect`, `faces`, transfer learning and
the Evaluator's baseline all need."""
from __future__ import annotations

from pathlib import Path


class ModelNotFound(Exception):
    pass


def _client(tracking_uri: str | None):
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient()


def registered_version(uri: str, tracking_uri: str | None = None):
    """The `mlflow.entities.model_registry.ModelVersion` a models:/ URI names."""
    import mlflow

    client = _client(tracking_uri)
    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, version = ref.rsplit("/", 1)
        return client.get_model_version(name, version)
    except Exception as e:
        why = ""
        if "@" in ref:
            why = (f" (no version of {ref.split('@')[0]!r} carries the alias yet: the Pusher moves it only to a "
                   "blessed model; `python -m pipeline list` shows whether the Evaluator blessed one)")
        raise ModelNotFound(f"{uri}: not found in {tracking_uri or mlflow.get_tracking_uri()}{why} "
                            f"({type(e).__name__}: {e})") from None


def fetch_keras(uri: str, tracking_uri: str | None = None):
    """(local folder holding model.keras and model_info.json, ModelInfo, ModelVersion)."""
    import mlflow

    from components.artifacts import ModelInfo

    mv = registered_version(uri, tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="keras"))
    except Exception as e:
        raise ModelNotFound(f"{uri}: the version's run has no keras/ artifacts ({type(e).__name__}: {e})") from None
    try:
        info = ModelInfo.read(local)
    except Exception as e:
        raise ModelNotFound(f"{uri}: {e}") from None
    return local, info, mv


def local_model_path(uri_or_path: str) -> Path:
    """The model.keras a local path names (a Trainer model folder or the file itself)."""
    path = Path(uri_or_path).expanduser()
    return path / "model.keras" if path.is_dir() else path


def load_model_and_info(uri_or_path: str, tracking_uri: str | None = None):
    """(keras model, ModelInfo) from a models:/ URI, a Trainer model folder or a .keras file."""
    from components.artifacts import ModelInfo
    from components.base import ComponentError
    from models.preprocessing import load_model

    if uri_or_path.startswith("models:/"):
        folder, info, _ = fetch_keras(uri_or_path, tracking_uri)
        path = folder / "model.keras"
    else:
        path = local_model_path(uri_or_path)
        if not path.exists():
            raise ModelNotFound(f"{uri_or_path}: no model.keras there (give a models:/ URI, a Trainer model "
                                f"folder or a .keras file)")
        try:
            info = ModelInfo.read(path.parent)
        except ComponentError as e:
            raise ModelNotFound(f"{path}: model_info.json missing or invalid beside the model ({e})") from None
    return load_model(path), info


def champion_baseline(name: str, alias: str, tracking_uri: str, candidate_fingerprint: str | None) -> str | None:
    """``models:/NAME/VERSION`` of the version ``NAME@ALIAS`` points at now, or None (no registry,
    no such model or alias yet). When that version is the candidate itself (its
    ``model_fingerprint`` tag equals ``candidate_fingerprint``), the version it was compared with
    when it was pushed (its ``baseline`` tag) instead."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return None  # no registry yet: do not create one just to look
    try:
        mv = _client(tracking_uri).get_model_version_by_alias(name, alias)
    except Exception:  # no such model or alias: the first run
        return None
    tags = mv.tags or {}
    if candidate_fingerprint and tags.get("model_fingerprint") == candidate_fingerprint:
        return tags.get("baseline") or None
    return f"models:/{name}/{mv.version}"
