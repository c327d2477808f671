"""The detection branch through the components (pipeline.runner.run_single): ExampleGen on a tiny
synthetic Pascal VOC folder (one bad box reported), detection statistics, Anchors, a 2-epoch
yolo_small Trainer, the Evaluator's COCO + VOC metrics and BulkInferrer's COCO result JSON.
The branch fixture takes ~1 min on 2 shared cores: those tests are marked slow."""
from __future__ import annotations

import json
from pathlib import Path

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
                       "best_metric": "val_map_50", "task_params": {"num_anchors": 3, "stride": 16, "map_every": 1}},
                      d / "train")
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
    assert info["best_metric"] == "val_map_50" and info["anchor_source"].startswith("k-means")
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_map_50"]) == 2 and all(0.0 <= v <= 1.0 for v in history["val_map_50"])
    assert "val_loss" in history and meta["metrics"]["anchor_mean_iou"] == info["anchor_mean_iou"]
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


# ---------------------------------------------------------------- the task's evaluation path, known answers
H, W = 48, 64  # not square: a swapped width and height shows
CLASSES = ["circle", "square"]
STRIDE = 16  # a 3 x 4 grid


class RawGrid:
    """A stand-in detector: image i (its pixel (0, 0, 0) holds i) -> the raw grid ``table[i]``."""

    def __init__(self, table):
        import tensorflow as tf

        self.table = tf.constant(table, tf.float32)

    def __call__(self, x, training=False):
        import tensorflow as tf

        return tf.gather(self.table, tf.cast(x[:, 0, 0, 0], tf.int32))


def raw_for(boxes_px, labels, anchor=(1.0, 1.0)):
    """The raw (S_h, S_w, 1, 5 + C) logits that decode to exactly these pixel boxes (one anchor of
    ``anchor`` grid cells, objectness and class logits of 12: score ~0.99999)."""
    gh, gw = H // STRIDE, W // STRIDE
    raw = np.zeros((gh, gw, 1, 5 + len(CLASSES)), np.float32)
    raw[..., 4] = -20.0  # no object anywhere else
    logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))  # noqa: E731
    for (x1, y1, x2, y2), lab in zip(boxes_px, labels):
        cx, cy = (x1 + x2) / 2 / W * gw, (y1 + y2) / 2 / H * gh
        col, row = int(cx), int(cy)
        raw[row, col, 0, :5] = [logit(cx - col), logit(cy - row), np.log((x2 - x1) / W * gw / anchor[0]),
                                np.log((y2 - y1) / H * gh / anchor[1]), 12.0]
        raw[row, col, 0, 5 + lab] = 12.0
    return raw


def write_examples(path, boxes_px, labels):
    """A detection examples artifact with one test image per entry (boxes normalised on disk)."""
    import tensorflow as tf

    from components.artifacts import Examples
    from data.tfrecord import encode_example

    (path / "test").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path / "test" / "data.tfrecord")) as w:
        for i, (b, lab) in enumerate(zip(boxes_px, labels)):
            img = np.zeros((H, W, 3), np.uint8)
            img[0, 0, 0] = i
            norm = np.asarray(b, np.float32).reshape(-1, 4) / [W, H, W, H]
            w.write(encode_example(img, f"img{i}", "x", boxes_norm=norm, box_labels=lab,
                                   box_names=[CLASSES[k] for k in lab]))
    Examples.save_schema(path, {"task": "detection", "classes": CLASSES, "image_size": [H, W],
                                "splits": {"test": len(boxes_px)}})
    return Examples.load(path)


def evaluate_known(tmp_path, gt_boxes, gt_labels, pred_boxes, plot_dir=None):
    from components.artifacts import ModelInfo
    from components.evaluator import EvaluatorParams
    from components.tasks import get_task

    task = get_task("detection")
    ex = write_examples(tmp_path / "ex", gt_boxes, gt_labels)
    info = ModelInfo(model="fake", task="detection", classes=CLASSES, image_size=[H, W], anchors=[[1.0, 1.0]])
    model = RawGrid(np.stack([raw_for(p, lab) for p, lab in zip(pred_boxes, gt_labels)]))
    tp, ep = task.EvalParams(), EvaluatorParams()
    data = task.eval_data(ex, "test", ep, tp)
    return task, data, task.score(model, info, data, ep, tp, plot_dir, None)


GT = [[[10, 8, 42, 40]], [[20, 4, 52, 44]]]  # pixels: image 0 a circle, image 1 a square
LABELS = [[0], [1]]


def test_predictions_equal_to_the_ground_truth_score_one(tmp_path):
    task, data, s = evaluate_known(tmp_path, GT, LABELS, GT, plot_dir=tmp_path / "plots")
    np.testing.assert_allclose(data["gt"][0]["boxes"], [[10, 8, 42, 40]], atol=1e-4)  # normalised -> pixels
    for k in ("map", "map_50", "map_75", "voc_map_50", "voc_map_50_11pt", "ap50_circle", "ap50_square"):
        assert s.flat[k] == pytest.approx(1.0, abs=1e-6), k
    assert s.report["num_gt_boxes"] == 2 and s.report["num_detections"] == 2 and s.report["split"] == "test"
    assert sorted(p.name for p in s.plots) == ["detections_grid.png", "pr_circle.png", "pr_square.png"]
    assert all(p.is_file() for p in s.plots) and not task.degenerate(s, data)
    assert "mAP@.5 1.0000" in task.headline(None, s)


def test_a_shifted_box_gives_the_hand_computed_map(tmp_path):
    """The 32 x 40 square predicted 5 px to the right: intersection 27 x 40 = 1080, union
    2 * 1280 - 1080 = 1480, IoU 0.7297: a match at the COCO IoU
    thresholds .50 .55 .60 .65 .70 (5 of 10), none at .75 .. .95. The circle is exact (AP 1 at
    every threshold), so mAP@[.5:.95] = (1 + 5/10) / 2 = 0.75, mAP@.5 = 1, mAP@.75 = (1 + 0) / 2."""
    shifted = [GT[0], [[25, 4, 57, 44]]]
    task, data, s = evaluate_known(tmp_path, GT, LABELS, shifted)
    assert s.flat["map"] == pytest.approx(0.75, abs=1e-6)
    assert s.flat["map_50"] == pytest.approx(1.0, abs=1e-6) and s.flat["voc_map_50"] == pytest.approx(1.0, abs=1e-6)
    assert s.flat["map_75"] == pytest.approx(0.5, abs=1e-6)
    assert s.report["coco"]["per_class_AP"]["square"] == pytest.approx(0.5, abs=1e-6)
    assert s.plots == []  # no plot dir (the baseline's scoring): no plots


def test_no_ground_truth_boxes_is_degenerate(tmp_path):
    """Nothing to find and nothing found scores a COCO 0.0, which must not count as a result."""
    task, data, s = evaluate_known(tmp_path, [np.zeros((0, 4))], [[]], [[]])
    assert s.report["num_gt_boxes"] == 0
    assert any("no ground-truth boxes" in r for r in task.degenerate(s, data))


def test_baseline_must_be_a_detector_for_the_same_images_and_classes():
    from components.artifacts import ModelInfo
    from components.tasks import get_task

    task = get_task("detection")
    info = ModelInfo(model="a", task="detection", classes=CLASSES, image_size=[H, W], anchors=[[1.0, 1.0]])
    assert task.comparable(info, info) is None
    assert "not a detector" in task.comparable(ModelInfo(model="c", task="classification", classes=CLASSES,
                                                         image_size=[H, W]), info)
    other = info.model_copy(update={"image_size": [W, W]})
    assert "same image size" in task.comparable(other, info)


def test_stride_needs_a_builder_that_takes_one():
    from types import SimpleNamespace

    from components.base import ComponentError
    from components.tasks import get_task

    task = get_task("detection")
    examples = SimpleNamespace(classes=CLASSES)
    tp = task.TrainParams(stride=16, num_anchors=4)
    tc = SimpleNamespace(tp=tp, params=SimpleNamespace(model="yolo_small"), examples=examples, inputs={})
    assert task.build_kwargs(tc) == {"num_classes": 2, "num_anchors": 4, "stride": 16}
    tc.params.model = "yolov2_darknet19"
    with pytest.raises(ComponentError, match="takes no stride"):
        task.build_kwargs(tc)
    tc.tp = task.TrainParams(anchors=[[0.1, 0.2], [0.3, 0.3]])
    assert task.build_kwargs(tc) == {"num_classes": 2, "num_anchors": 2}


# ---------------------------------------------------------------- the Anchors input, predict
HAND_ANCHORS = [[0.11, 0.19], [0.29, 0.23], [0.47, 0.52]]  # not what k-means would find


@pytest.fixture(scope="module")
def hand_anchored(branch, tmp_path_factory):
    """A 1-epoch Trainer with an Anchors artifact written by hand wired in."""
    from components.artifacts import Anchors

    d, ex, _ = branch
    a = tmp_path_factory.mktemp("hand_anchors")
    Anchors(a, {"anchors": HAND_ANCHORS, "k": 3, "seed": 7, "split": "train", "num_boxes": 0, "mean_iou": 0.0,
                "source": "hand"}).save()
    meta = run_single("Trainer", {"examples": ex, "transform": d / "tf" / "transform", "anchors": a},
                      {"model": "yolo_small", "epochs": 1, "batch_size": 8, "eval_split": None,
                       "hyperparameters": {"width": 8}, "task_params": {"stride": 16}}, a.parent / "hand_train")
    return a.parent / "hand_train" / "model", meta


@pytest.mark.slow
def test_the_anchors_input_is_used_as_it_is(hand_anchored):
    from components.artifacts import Model

    model_dir, _ = hand_anchored
    info = Model.load(model_dir).info
    np.testing.assert_allclose(info.get("anchors_relative"), HAND_ANCHORS, rtol=1e-6)
    np.testing.assert_allclose(info.get("anchors"), np.asarray(HAND_ANCHORS) * (SIZE // 16), rtol=1e-6)
    assert info.get("num_anchors") == 3 and "Anchors artifact" in info.get("anchor_source")
    assert info.task_params["num_anchors"] == 5  # the param's k-means size was not what counted


def test_best_metric_val_map_50_needs_map_every(branch, tmp_path):
    from components.base import ComponentError

    d, ex, _ = branch
    with pytest.raises(ComponentError, match="map_every"):
        run_single("Trainer", {"examples": ex, "transform": d / "tf" / "transform"},
                   {"model": "yolo_small", "epochs": 1, "hyperparameters": {"width": 8}, "best_metric": "val_map_50",
                    "task_params": {"num_anchors": 3, "stride": 16}}, tmp_path / "t")


@pytest.mark.slow
def test_predict_rows_for_a_detector(hand_anchored, tmp_path):
    from PIL import Image

    from components.predict import predict_images
    from data.synthetic_shapes import generate

    model_dir, _ = hand_anchored
    paths = []
    for i, rec in enumerate(generate(2, seed=5, image_size=96)):  # another size: resized to the model's
        paths.append(tmp_path / f"scene_{i}.png")
        Image.fromarray(rec.image).save(paths[-1])
    task, rows = predict_images(str(model_dir), [str(p) for p in paths] + [str(tmp_path / "nope.png")],
                                score_threshold=0.0, max_boxes=3, out_dir=tmp_path / "drawn")
    assert task.name == "detection" and len(rows) == 3 and "error" in rows[2]
    for r, p in zip(rows, paths):
        assert r["image"] == str(p) and (r["width"], r["height"]) == (SIZE, SIZE) and len(r["detections"]) == 3
        for det in r["detections"]:
            assert det["class"] in ("circle", "square", "triangle") and 0 <= det["score"] <= 1
            assert all(0 <= v <= SIZE for v in det["box"])
        assert Path(r["output"]).is_file() and Image.open(r["output"]).size == (SIZE, SIZE)
        lines = task.format_row(r)
        assert lines[0] == "Found 3 boxes" and len(lines) == 6  # + the threshold line and the drawing
        assert lines[4] == "  score threshold 0.000 (given)"
    _, rows = predict_images(str(model_dir), [str(paths[0])], score_threshold=1.0)
    assert rows[0]["detections"] == [] and 0 <= rows[0]["best_score"] < 1
    assert "--score-threshold" in task.format_row(rows[0])[1]


def test_registered_score_threshold_is_what_predict_uses_and_the_evaluator_checks(tmp_path):
    """A model registered with score threshold 0.5: predict applies it and says so; a given
    --score-threshold wins; without one registered, 0.3. The Evaluator reports precision, recall and
    F1 of the boxes at or above that cut: both predicted boxes are exact (score ~1) -> 1, 1, 1."""
    from components.artifacts import ModelInfo
    from components.evaluator import EvaluatorParams
    from components.tasks import get_task

    task = get_task("detection")
    info = ModelInfo(model="fake", task="detection", classes=CLASSES, image_size=[H, W], anchors=[[1.0, 1.0]],
                     score_threshold=0.5, score_threshold_f1=0.8)
    opts = task.predict_options(info, {})
    assert opts["score_threshold"] == 0.5 and "registered" in opts["threshold_source"] and "0.80" in opts["threshold_source"]
    assert task.predict_options(info, {"score_threshold": 0.9})["threshold_source"] == "given"
    bare = ModelInfo(model="fake", task="detection", classes=CLASSES, image_size=[H, W], anchors=[[1.0, 1.0]])
    assert task.predict_options(bare, {})["score_threshold"] == 0.3
    model = RawGrid(np.stack([raw_for(p, lab) for p, lab in zip(GT, LABELS)]))
    images = np.zeros((2, H, W, 3), np.uint8)
    images[1, 0, 0, 0] = 1
    rows = task.predictor(model, info, **opts)(images, ["a", "b"])
    assert [len(r["detections"]) for r in rows] == [1, 1] and rows[0]["score_threshold"] == 0.5
    assert any("score threshold 0.500 (registered" in line for line in task.format_row(rows[0]))
    ex = write_examples(tmp_path / "ex", GT, LABELS)
    tp, ep = task.EvalParams(), EvaluatorParams()
    data = task.eval_data(ex, "test", ep, tp)
    s = task.score(model, info, data, ep, tp, None, None)
    at = s.report["at_score_threshold"]
    assert at["score_threshold"] == 0.5 and at["boxes"] == 2 and at["true_positives"] == 2
    assert s.flat["f1_at_threshold"] == pytest.approx(1.0) and s.flat["precision_at_threshold"] == pytest.approx(1.0)
    # the shifted square (IoU 0.73 > 0.5) still counts; one moved off entirely is a FP and a miss
    far = [GT[0], [[0, 0, 8, 8]]]
    model = RawGrid(np.stack([raw_for(p, lab) for p, lab in zip(far, LABELS)]))
    s = task.score(model, info, data, ep, tp, None, None)
    assert s.flat["precision_at_threshold"] == pytest.approx(0.5) and s.flat["recall_at_threshold"] == pytest.approx(0.5)


def test_trainer_chooses_the_threshold_with_the_best_f1_on_eval():
    """The Trainer's choice on an eval split where the model finds both boxes (score ~0.99999)
    plus, on image 1, a wrong-class box of score ~0.73 (logits 1 and 12): the best F1 keeps the
    two right boxes and cuts the wrong one, so the threshold lies above 0.73 and F1 is 1."""
    from types import SimpleNamespace

    from components.base import NullTracker
    from components.tasks import get_task

    task = get_task("detection")
    raws = [raw_for(p, lab) for p, lab in zip(GT, LABELS)]
    extra = raw_for([[0, 24, 16, 40]], [0])  # a circle where there is nothing
    extra[..., 4] = np.where(extra[..., 4] > 0, 1.0, extra[..., 4])  # objectness logit 1: score ~0.73
    raws[1] = np.where(extra[..., 4:5] > 0, extra, raws[1])
    model = RawGrid(np.stack(raws))
    images = np.zeros((2, H, W, 3), np.uint8)
    images[1, 0, 0, 0] = 1
    norm = [np.asarray(b, np.float32) / [W, H, W, H] for b in GT]
    ev = {"images": images, "boxes": norm, "labels": [np.asarray(x) for x in LABELS]}
    logs = []
    tc = SimpleNamespace(tp=task.TrainParams(), examples=SimpleNamespace(classes=CLASSES),
                         ctx=SimpleNamespace(tracker=NullTracker()),
                         logger=SimpleNamespace(info=lambda *a: logs.append(a[0] % a[1:]), warning=print))
    data = SimpleNamespace(state={"eval": ev, "anchors_grid": np.array([[1.0, 1.0]], np.float32)})
    from models.yolo.inference import predict

    scores = sorted(round(d["score"], 2) for d in predict(model, images, data.state["anchors_grid"], 2))
    assert scores == [0.73, 1.0, 1.0]  # the wrong box is there to be cut
    got = task._score_threshold(tc, data, model)
    assert got["score_threshold_f1"] == pytest.approx(1.0) and got["score_threshold_precision"] == pytest.approx(1.0)
    assert 0.73 < got["score_threshold"] <= 1.0 and "best F1 1.000" in logs[-1]
    data.state["eval"] = None
    assert task._score_threshold(tc, data, model) == {}
