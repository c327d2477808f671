"""`python -m pipeline detect` end to end: a detection Trainer's model folder on synthetic scenes
(drawn PNGs + detections.json), a missing image, and the course's YOLOv2 path (weights file +
classes + anchors). The trained-model fixture takes ~1 min on 2 shared cores: those tests are slow."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.runner import run_single

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    from data.synthetic_shapes import generate

    d = tmp_path_factory.mktemp("detect")
    run_single("ExampleGen", {}, {"source": {"format": "synthetic_shapes", "options": {"num_images": 24, "image_size": 64}},
                                  "image_size": [64, 64], "split_ratios": {"train": 1.0}}, d / "gen")
    (d / "tf").mkdir()
    (d / "tf" / "transform.json").write_text(json.dumps({"image_size": [64, 64], "normalize": False}))
    run_single("Trainer", {"examples": d / "gen" / "examples", "transform": d / "tf"},
               {"model": "yolo_small", "epochs": 1, "batch_size": 8, "eval_split": None,
                "hyperparameters": {"width": 8}, "task_params": {"num_anchors": 3, "stride": 16}}, d / "train")
    images = []
    for i, rec in enumerate(generate(2, seed=9, image_size=96)):  # another size: boxes map back to it
        p = d / f"scene_{i}.png"
        Image.fromarray(rec.image).save(p)
        images.append(p)
    return d / "train" / "model", images, d


@pytest.mark.slow
def test_detect_with_a_trained_model_folder(model_and_images, tmp_path):
    model_dir, images, _ = model_and_images
    r = _cli("detect", "--model", str(model_dir), *map(str, images), "--out", str(tmp_path / "out"),
             "--score-threshold", "0.0", "--max-boxes", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Found 5 boxes for" in r.stdout
    res = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert res["kind"] == "pipeline" and res["classes"] == ["circle", "square", "triangle"]
    assert len(res["images"]) == 2
    for row in res["images"]:
        assert Path(row["output"]).is_file() and Image.open(row["output"]).size == (96, 96)
        assert len(row["detections"]) == 5
        for d in row["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 96 and d["class"] in res["classes"]
    # The same decoding as the BulkInferrer and `predict`: the boxes are the detection task's, mapped
    # back from the model's 64 x 64 input to the 96 x 96 image.
    from components.model_uri import load_model_and_info
    from components.tasks.detection import DetectionTask

    net, info = load_model_and_info(str(model_dir))
    fitted = np.asarray(Image.open(images[0]).convert("RGB").resize((64, 64), Image.BICUBIC))
    predict = DetectionTask().predictor(net, info, score_threshold=0.0, iou_threshold=0.5, max_boxes=5)
    rows = predict(fitted[None], ["a"])
    np.testing.assert_allclose([d["box"] for d in res["images"][0]["detections"]],
                               [np.asarray(d["box"]) * 1.5 for d in rows[0]["detections"]], atol=0.2)
    # No --score-threshold: the model's registered one (best F1 on its eval split), or 0.3 without one; said.
    cut = info.get("score_threshold")
    r = _cli("detect", "--model", str(model_dir), str(images[0]), "--out", str(tmp_path / "default"))
    assert r.returncode == 0, r.stderr[-2000:]
    said = "registered with the model" if cut is not None else "default: the model has no registered threshold"
    assert f"score threshold {cut if cut is not None else 0.3:.3f} ({said}" in r.stdout, r.stdout
    used = json.loads((tmp_path / "default" / "detections.json").read_text())
    assert used["score_threshold"] == (cut if cut is not None else 0.3) and used["score_threshold_source"]
    # Nothing above the cut: say how high the scores went and how to lower it.
    r = _cli("detect", "--model", str(model_dir), str(images[0]), "--out", str(tmp_path / "none"),
             "--score-threshold", "1.0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Found 0 boxes for" in r.stdout and "highest score seen" in r.stdout and "--score-threshold" in r.stdout


def test_missing_image_is_an_error(tmp_path):
    """Checked before any model is loaded (fast, no TensorFlow)."""
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    r = _cli("detect", "--model", str(tmp_path / "model"), str(img), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "image not found" in r.stderr and "nope.jpg" in r.stderr
    assert not (tmp_path / "o" / "detections.json").exists()


@pytest.mark.slow
def test_course_yolov2_weights_with_classes_and_anchors(model_and_images, tmp_path):
    """The course path at a small input: weights file + coco_classes.txt + yolo_anchors.txt,
    yolo_head + yolo_eval decoding, boxes scaled back to the image."""
    import keras

    from models.yolo import yolov2_darknet19

    _, images, d = model_and_images
    keras.utils.set_random_seed(0)
    net = yolov2_darknet19(input_shape=(64, 64, 3), num_anchors=2, num_classes=3)
    weights = tmp_path / "yolo.weights.h5"
    net.save_weights(weights)
    (tmp_path / "classes.txt").write_text("car\nbus\ntruck\n")
    (tmp_path / "anchors.txt").write_text("0.57273, 0.677385, 1.87446, 2.06253\n")
    r = _cli("detect", "--model", str(weights), "--classes", str(tmp_path / "classes.txt"),
             "--anchors", str(tmp_path / "anchors.txt"), "--input-size", "64", "--score-threshold", "0.0",
             "--max-boxes", "3", "--resize", "letterbox", str(images[0]), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert res["kind"] == "course" and res["nms"].startswith("class-agnostic")
    dets = res["images"][0]["detections"]
    assert len(dets) == 3 and all(d["class"] in ("car", "bus", "truck") for d in dets)
    assert all(0 <= v <= 96 for d in dets for v in d["box"])
    r = _cli("detect", "--model", str(weights), str(images[0]), "--out", str(tmp_path / "o2"),
             "--classes", str(tmp_path / "classes.txt"))
    assert r.returncode == 1 and "--anchors" in r.stderr
    assert np.isfinite([d["score"] for d in dets]).all()
