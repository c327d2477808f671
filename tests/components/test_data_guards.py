"""Degenerate data is refused before training, and never blessed after it: real tiny image
folders through ExampleGen -> StatisticsGen -> ExampleValidator, and the Evaluator on a split
with one class."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.base import ComponentError
from pipeline.runner import run_single

pytestmark = pytest.mark.slow


def _folder(root, layout: dict[str, dict[str, int]]):
    """root/<split>/<class>/<n>.png with distinct random pixels (no duplicates)."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for c, n in classes.items():
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{c}_{i}.png")
    return root


def _stats(tmp_path, layout, split_map):
    src = _folder(tmp_path / "data", layout)
    run_single("ExampleGen", {}, {"source": {"format": "image_folder", "path": str(src),
                                             "options": {"splits": list(layout)}},
                                  "split_map": split_map, "image_size": [16, 16]}, tmp_path / "gen")
    run_single("StatisticsGen", {"examples": tmp_path / "gen" / "examples"}, {}, tmp_path / "stats")
    return tmp_path / "stats" / "statistics"


def test_one_class_dataset_is_refused_by_the_validator(tmp_path):
    stats = _stats(tmp_path, {"tr": {"cat": 6}, "te": {"cat": 3}}, {"tr": "train", "te": "test"})
    with pytest.raises(ComponentError, match=r"too_few_classes: 1 class\(es\) \['cat'\]"):
        run_single("ExampleValidator", {"statistics": stats}, {"required_splits": ["train", "test"]}, tmp_path / "v")
    assert not (tmp_path / "v").exists()  # nothing half-written


def test_class_absent_from_training_is_refused_even_when_not_required_everywhere(tmp_path):
    stats = _stats(tmp_path, {"tr": {"cat": 6}, "te": {"cat": 3, "dog": 3}}, {"tr": "train", "te": "test"})
    with pytest.raises(ComponentError, match=r"split 'train' has no examples of class\(es\) \['dog'\]"):
        run_single("ExampleValidator", {"statistics": stats}, {"classes_in_every_split": False}, tmp_path / "v")


def test_empty_required_split_is_refused_and_anomalies_are_written(tmp_path):
    stats = _stats(tmp_path, {"tr": {"cat": 4, "dog": 4}}, {"tr": "train"})
    with pytest.raises(ComponentError, match="empty_split: split 'test' is missing or empty"):
        run_single("ExampleValidator", {"statistics": stats}, {"required_splits": ["train", "test"]}, tmp_path / "v")
    meta = run_single("ExampleValidator", {"statistics": stats}, {"required_splits": ["train"]}, tmp_path / "ok")
    anomalies = json.loads((tmp_path / "ok" / "anomalies" / "anomalies.json").read_text())["anomalies"]
    assert anomalies == [] and meta["metrics"]["anomalies"] == 0


def test_evaluator_never_blesses_a_split_with_one_class(tmp_path):
    """Trained on two classes, evaluated on a test split holding only one: not blessed, even with
    no thresholds, and the reason says why."""
    stats = _stats(tmp_path, {"tr": {"cat": 8, "dog": 8}, "te": {"cat": 4}}, {"tr": "train", "te": "test"})
    ex = tmp_path / "gen" / "examples"
    run_single("Transform", {"examples": ex, "statistics": stats}, {}, tmp_path / "tf")
    run_single("Trainer", {"examples": ex, "transform": tmp_path / "tf" / "transform"},
               {"model": "signs_cnn", "epochs": 1, "batch_size": 8, "eval_split": None}, tmp_path / "train")
    meta = run_single("Evaluator", {"model": tmp_path / "train" / "model", "examples": ex}, {"split": "test"},
                      tmp_path / "ev")
    b = json.loads((tmp_path / "ev" / "blessing" / "blessing.json").read_text())
    assert b["blessed"] is False and "only 1 class present" in b["reasons"][0]
    assert meta["metrics"]["blessed"] == 0.0
