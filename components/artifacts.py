"""Typed artifacts: every kind of folder a component writes, with its load and save.

Components, CLIs and benchmarks go through these classes instead of reading JSON files by name,
so a file's layout is written down once. Each class knows its folder (``path``); ``load(path)``
raises ``ComponentError`` naming the folder and the missing file.

    Examples        ExampleGen      examples/<split>/*.tfrecord + schema.json
    Statistics      StatisticsGen   statistics.json
    TransformGraph  Transform       transform.json (+ preprocessor.keras)
    Model           Trainer         model.keras, saved_model/, model_info.json, history.json
    Anchors         Anchors         anchors.json
    Evaluation      Evaluator       metrics.json (+ plots)
    Blessing        Evaluator       blessing.json
    InfraBlessing   InfraValidator  infra_blessing.json
    PushedModel     Pusher          push.json
    InferenceResult BulkInferrer    predictions.jsonl (+ task files)

Nothing here imports TensorFlow at module level.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.base import ComponentError


def _read_json(folder: Path, name: str, what: str) -> dict:
    path = Path(folder) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ComponentError(f"{folder}: not {what} ({name} missing)") from None
    except json.JSONDecodeError as e:
        raise ComponentError(f"{path}: invalid JSON ({e})") from None


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


@dataclasses.dataclass
class _JsonArtifact:
    """An artifact that is one JSON file (``FILE``) in its folder, held as ``data``."""

    path: Path
    data: dict

    FILE = ""
    WHAT = "an artifact"

    @classmethod
    def load(cls, path):
        return cls(Path(path), _read_json(Path(path), cls.FILE, cls.WHAT))

    def save(self) -> Path:
        return _write_json(self.path / self.FILE, self.data)


# ----------------------------------------------------------------------------- Examples
class Examples(_JsonArtifact):
    """ExampleGen's output: ``<split>/*.tfrecord`` and ``schema.json`` (``schema``): task
    (classification | detection | embedding), classes, image_size [h, w], splits {name: count},
    and format-specific extras (face_crop)."""

    FILE = "schema.json"
    WHAT = "an examples artifact"

    @property
    def schema(self) -> dict:
        return self.data

    @staticmethod
    def save_schema(path: Path, schema: dict) -> Path:
        return _write_json(Path(path) / Examples.FILE, schema)

    @property
    def task(self) -> str:
        return self.schema["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.schema["classes"])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.schema["image_size"])

    @property
    def face_crop(self):
        return self.schema.get("face_crop")

    def count(self, split: str | None) -> int:
        return int(self.schema["splits"].get(split, 0)) if split else 0

    def files(self, split: str) -> list[str]:
        return sorted(str(p) for p in (self.path / split).glob("*.tfrecord*"))

    def require(self, split: str, who: str) -> list[str]:
        files = self.files(split)
        if not files or not self.count(split):
            raise ComponentError(f"{who}: split {split!r} is empty or missing in {self.path} "
                                 f"(splits: {self.schema['splits']})")
        return files

    def pick_split(self, preferred: str, who: str, fallback: str = "eval") -> str:
        """``preferred`` when it has examples, else ``fallback``; an error when neither has any."""
        split = preferred if self.count(preferred) else fallback
        if not self.count(split):
            raise ComponentError(f"{who}: split {preferred!r} (and {fallback!r}) empty or missing in {self.path} "
                                 f"(splits: {self.schema['splits']})")
        return split


# ----------------------------------------------------------------------------- Statistics
class Statistics(_JsonArtifact):
    """``statistics.json``: per split counts, class counts, image sizes, mean/std (+ boxes, identities)."""

    FILE = "statistics.json"
    WHAT = "a statistics artifact"


# ----------------------------------------------------------------------------- Transform
class TransformGraph(_JsonArtifact):
    """The Transform's preprocessing (``config``): image_size, normalize, mean, std, augmentation,
    classes, task, and face_crop (the detection/crop ExampleGen applied before resizing, which
    serving repeats)."""

    FILE = "transform.json"
    WHAT = "a transform artifact"

    @property
    def config(self) -> dict:
        return self.data

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.config["image_size"])

    def preprocessing(self, *, augmentation: bool = True) -> dict:
        """The config ``models.preprocessing.build_preprocessor`` takes; ``augmentation=False``
        for tasks whose labels move with the pixels (detection augments in its input pipeline)."""
        return self.config if augmentation else {**self.config, "augmentation": None}


# ----------------------------------------------------------------------------- Model
class ModelInfo(BaseModel):
    """``model_info.json``: what every trained model records, plus the task's own fields.

    The task's fields (a detector's anchors, a face model's decision threshold) are declared by
    the task plug-in's ``Info`` model and validated there; on disk they sit beside the common ones
    in one flat JSON object, the layout registered versions have always had, so readers of older
    versions keep working."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str
    task: str
    classes: list[str]
    image_size: list[int]
    params: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_metric: str | None = None
    best_value: float | None = None
    train_seconds: float | None = None
    images_per_second: float | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    face_crop: Any = None

    FILE: str = Field("model_info.json", exclude=True, repr=False)

    @property
    def task_fields(self) -> dict:
        return dict(self.model_extra or {})

    def get(self, key: str, default=None):
        """A common or task field by name (for code that handles any task, e.g. the faces CLI)."""
        if key in type(self).model_fields and key != "FILE":
            return getattr(self, key)
        return (self.model_extra or {}).get(key, default)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude={"FILE"})

    @classmethod
    def read(cls, folder) -> "ModelInfo":
        data = _read_json(Path(folder), "model_info.json", "a model artifact")
        try:
            return cls.model_validate(data)
        except Exception as e:  # pydantic.ValidationError: name the file
            raise ComponentError(f"{Path(folder) / 'model_info.json'}: {e}") from None

    def write(self, folder) -> Path:
        return _write_json(Path(folder) / "model_info.json", self.to_json())


@dataclasses.dataclass
class Model:
    """The Trainer's output: ``model.keras`` (the served network: uint8 images in), a SavedModel
    with a serving signature, ``model_info.json``, ``history.json`` and ``training_curves.png``."""

    path: Path
    info: ModelInfo

    @classmethod
    def load(cls, path) -> "Model":
        path = Path(path)
        if not (path / "model.keras").exists():
            raise ComponentError(f"{path}: not a model artifact (model.keras missing)")
        return cls(path, ModelInfo.read(path))

    @property
    def keras_path(self) -> Path:
        return self.path / "model.keras"

    @property
    def saved_model_dir(self) -> Path:
        return self.path / "saved_model"

    @property
    def history(self) -> dict:
        p = self.path / "history.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def load_keras(self):
        from models.preprocessing import load_model

        return load_model(self.keras_path)

    @classmethod
    def save(cls, path, model, info: ModelInfo, history: dict) -> "Model":
        """Writes model.keras, the SavedModel, model_info.json and history.json."""
        import contextlib
        import io

        path = Path(path)
        model.save(path / "model.keras")
        with contextlib.redirect_stdout(io.StringIO()):  # export prints its endpoints
            model.export(str(path / "saved_model"), format="tf_saved_model", verbose=False)
        info.write(path)
        _write_json(path / "history.json", history)
        return cls(path, info)


# ----------------------------------------------------------------------------- Anchors
class Anchors(_JsonArtifact):
    """``anchors.json``: anchors [[w, h], ...] as image fractions sorted by area, k, seed, split,
    mean_iou, num_boxes, source, per_k."""

    FILE = "anchors.json"
    WHAT = "an anchors artifact"

    @classmethod
    def load(cls, path) -> "Anchors":
        path = Path(path)  # the folder, or the anchors.json file itself
        return super().load(path.parent if path.is_file() else path)

    @property
    def relative(self):
        import numpy as np

        return np.asarray(self.data["anchors"], np.float32)


# ----------------------------------------------------------------------------- Evaluation
class Evaluation(_JsonArtifact):
    """``metrics.json``: the task's report (its ``flat`` block holds the numbers blessing uses)."""

    FILE = "metrics.json"
    WHAT = "an evaluation artifact"

    @property
    def metrics(self) -> dict:
        return self.data


@dataclasses.dataclass
class Blessing:
    """``blessing.json``: blessed, reasons, metric, value, baseline (the compared version's numbers
    and URI, or null), thresholds."""

    path: Path
    blessed: bool
    reasons: list[str]
    metric: str | None = None
    value: float | None = None
    baseline: dict | None = None
    thresholds: dict = dataclasses.field(default_factory=dict)

    FILE = "blessing.json"

    @classmethod
    def load(cls, path) -> "Blessing":
        d = _read_json(Path(path), cls.FILE, "a blessing artifact")
        return cls(Path(path), bool(d["blessed"]), list(d.get("reasons", [])), d.get("metric"), d.get("value"),
                   d.get("baseline"), d.get("thresholds") or {})

    def save(self) -> Path:
        return _write_json(self.path / self.FILE, {"blessed": self.blessed, "reasons": self.reasons,
                                                   "metric": self.metric, "value": self.value,
                                                   "baseline": self.baseline, "thresholds": self.thresholds})


@dataclasses.dataclass
class InfraBlessing:
    """``infra_blessing.json`` (InfraValidator): blessed, reasons (why not: the server did not
    start, timed out, answered an error or differently from in-process inference), and what was
    measured: requests sent, max_abs_diff, latency p50/p99 (ms), requests/s, startup seconds."""

    path: Path
    blessed: bool
    reasons: list[str]
    measurements: dict = dataclasses.field(default_factory=dict)

    FILE = "infra_blessing.json"

    @classmethod
    def load(cls, path) -> "InfraBlessing":
        d = _read_json(Path(path), cls.FILE, "an infra blessing artifact")
        return cls(Path(path), bool(d["blessed"]), list(d.get("reasons", [])), d.get("measurements") or {})

    def save(self) -> Path:
        return _write_json(self.path / self.FILE, {"blessed": self.blessed, "reasons": self.reasons,
                                                   "measurements": self.measurements})


# ----------------------------------------------------------------------------- Pusher
class PushedModel(_JsonArtifact):
    """``push.json``: pushed, registered_model_name, version, uri, alias, run_id, baseline."""

    FILE = "push.json"
    WHAT = "a pushed-model artifact"


# ----------------------------------------------------------------------------- BulkInferrer
@dataclasses.dataclass
class InferenceResult:
    """``predictions.jsonl``: one JSON row per example, sorted by key."""

    path: Path

    FILE = "predictions.jsonl"

    @classmethod
    def load(cls, path) -> "InferenceResult":
        path = Path(path)
        if not (path / cls.FILE).exists():
            raise ComponentError(f"{path}: not an inference artifact ({cls.FILE} missing)")
        return cls(path)

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in (self.path / self.FILE).read_text().splitlines() if line.strip()]

    def write_rows(self, rows: list[dict]) -> Path:
        rows = sorted(rows, key=lambda r: r["key"])
        p = self.path / self.FILE
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return p
