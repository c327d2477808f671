"""The detection branch through the components (pipeline.runner.run_single): ExampleGen on a tiny
synthetic Pascal VOC folder (one bad box reported), detection statistics, Anchors, a 2-epoch
yolo_small Trainer, the Evaluator's COCO + VOC metrics and BulkInferrer's COCO result JSON.
The branch fixture takes ~1 min on 2 shared cores: those tests are marked slow."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.runner import run_single

SIZE = 64


@pytest.fixture(scope="module")
def branch(tmp_path_factory):
    from data.synthetic_shapes import write_voc

    d = tmp_path_factory.mktemp("det")
    voc = write_voc(d / "voc", 40, seed=3, image_size=SIZE, splits={"train": 0.7, "val": 0.15, "test": 0.15})
    # One box reaching outside the image: dropped and reported, never silently.
    xml = voc / "Annotations" / "shapes_000000.xml"
    xml.write_text(xml.read_text().replace("</annotation>", "<object><name>circle</name><bndbox><xmin>50</xmin>"
                                           "<ymin>50</ymin><xmax>90</xmax><ymax>60</ymax></bndbox></object></annotation>"))
    run_single("ExampleGen", {}, {"source": {"format": "voc", "path": str(voc)}, "image_size": [SIZE, SIZE],
                                  "split_map": {"train": "train", "val": "eval", "test": "test"}}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    st = d / "stats" / "statistics"
    run_single("Anchors", {"statistics": st}, {"k": 3}, d / "anchors")
    run_single("Transform", {"examples": ex, "statistics": st}, {}, d / "tf")
    meta = run_single("Trainer", {"examples": ex, "transform": d / "tf" / "transform"},
                      {"model": "yolo_small", "epochs": 2, "batch_size": 8, "hyperparameters": {"width": 8},
                       "task_params": {"num_anchors": 3, "stride": 16}}, d / "train")
    return d, ex, meta


@pytest.mark.slow
def test_examples_statistics_and_anchors(branch):
    d, ex, _ = branch
    schema = json.loads((ex / "schema.json").read_text())
    assert schema["task"] == "detection" and schema["classes"] == ["circle", "square", "triangle"]
    report = json.loads((ex / "error_report.json").read_text())
    assert [i["key"] for i in report["box_issues"]] == ["shapes_000000"]
    issue = report["box_issues"][0]  # a structured record: which box, what was wrong, what was done
    assert issue["issue"] == "outside_image" and issue["action"].startswith("drop")
    stats = json.loads((d / "stats" / "statistics" / "statistics.json").read_text())
    det = stats["splits"]["train"]["detection"]
    assert det["boxes"] == len(det["box_wh"]) > 0 and set(det["boxes_per_class"]) <= set(schema["classes"])
    a = json.loads((d / "anchors" / "anchors" / "anchors.json").read_text())
    assert len(a["anchors"]) == 3 and 0 < a["mean_iou"] <= 1 and a["num_boxes"] == det["boxes"]
    assert a["per_k"]["1"] <= a["per_k"]["3"] + 1e-9


@pytest.mark.slow
def test_trainer_writes_model_info_with_the_anchors_components_anchors(branch):
    d, ex, meta = branch
    out = d / "train" / "model"
    info = json.loads((out / "model_info.json").read_text())
    assert info["task"] == "detection" and info["grid"] == [SIZE // 16, SIZE // 16] and info["epochs_run"] == 2
    a = json.loads((d / "anchors" / "anchors" / "anchors.json").read_text())
    np.testing.assert_allclose(info["anchors_relative"], a["anchors"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(info["anchors"]), np.asarray(a["anchors"]) * 4, rtol=1e-5)
    for f in ("model.keras", "saved_model", "history.json", "training_curves.png"):
        assert (out / f).exists(), f
    # The SavedModel serves raw uint8 images and agrees with the Keras model.
    import tensorflow as tf

    from models.preprocessing import load_model

    x = np.random.default_rng(0).integers(0, 255, (2, SIZE, SIZE, 3), dtype=np.uint8)
    k = load_model(out / "model.keras").predict(x, verbose=0)
    sm = tf.saved_model.load(str(out / "saved_model"))
    s = sm.serve(tf.constant(x)).numpy()
    assert k.shape == (2, 4, 4, 3, 8)
    np.testing.assert_allclose(k, s, atol=1e-4)


@pytest.mark.slow
def test_evaluator_writes_coco_and_voc_metrics(branch, tmp_path):
    d, ex, _ = branch
    meta = run_single("Evaluator", {"model": d / "train" / "model", "examples": ex},
                      {"split": "test", "thresholds": {"map_50": 0.0},
                       "task_params": {"implementation": "pycocotools", "grid_images": 4}}, tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    assert m["coco"]["implementation"] == "pycocotools" and m["coco"]["version"]
    assert m["protocol"]["score_threshold"] == 0.001 and m["protocol"]["max_detections"] == 100
    for k in ("mAP", "mAP_50", "mAP_75", "AR_100"):
        assert 0.0 <= m["coco"][k] <= 1.0
    assert set(m["voc"]["per_class"]) == {"circle", "square", "triangle"}
    assert {"mAP_11", "mAP_all"} <= set(m["voc"])
    ev = tmp_path / "ev" / "evaluation"
    assert len(list((ev / "pr_curves").glob("*.png"))) == 3 and (ev / "detections_grid.png").stat().st_size > 1000
    b = json.loads((tmp_path / "ev" / "blessing" / "blessing.json").read_text())
    assert b["blessed"] and b["metric"] == "map_50"
    assert "map_50" in meta["metrics"] and "voc_map_50" in meta["metrics"]


@pytest.mark.slow
def test_bulk_inferrer_writes_coco_results(branch, tmp_path):
    d, ex, _ = branch
    run_single("BulkInferrer", {"model": d / "train" / "model", "examples": ex}, {"split": "test"}, tmp_path / "bi")
    out = tmp_path / "bi" / "inference"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    images = json.loads((out / "coco_images.json").read_text())
    res = json.loads((out / "coco_results.json").read_text())
    assert len(rows) == len(images["images"]) > 0
    assert [c["name"] for c in images["categories"]] == ["circle", "square", "triangle"]
    ids = {i["id"] for i in images["images"]}
    assert all(r["image_id"] in ids and len(r["bbox"]) == 4 and 1 <= r["category_id"] <= 3 for r in res)
    assert sum(len(r["detections"]) for r in rows) == len(res)


def test_bad_task_params_fail_before_running(tmp_path):
    with pytest.raises(ValidationError, match="num_anchorz"):
        run_single("Trainer", {"examples": tmp_path, "transform": tmp_path},
                   {"model": "yolo_small", "task_params": {"num_anchorz": 3}}, tmp_path / "x")
    with pytest.raises(ValidationError, match="augmentation"):
        run_single("Trainer", {"examples": tmp_path, "transform": tmp_path},
                   {"model": "yolo_small", "task_params": {"augmentation": {"rotate": 5}}}, tmp_path / "y")
