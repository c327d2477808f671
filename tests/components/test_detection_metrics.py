"""Detection metrics on hand-made cases whose answers are worked out by hand in the comments."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.metrics.detection import (coco_evaluate, detections_to_coco_json, draw_detection_grid,
                                          plot_pr_curves, voc_ap, voc_evaluate)

GT = [
    {"image_id": "a", "width": 100, "height": 80,
     "boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32), "labels": np.array([0, 1])},
    {"image_id": "b", "width": 100, "height": 80,
     "boxes": np.array([[5, 5, 25, 25]], np.float32), "labels": np.array([0])},
]
NAMES = ["cat", "dog"]
PERFECT = [
    {"image_id": "a", "box": [0, 0, 10, 10], "score": 0.8, "label": 0},
    {"image_id": "a", "box": [20, 20, 40, 40], "score": 0.9, "label": 1},
    {"image_id": "b", "box": [5, 5, 25, 25], "score": 0.7, "label": 0},
]
# A false positive ranked above the two true "cat" boxes: cat P/R = (0, 0), (1/2, 1/2), (2/3, 1)
# -> the precision envelope is 2/3 everywhere -> AP = 2/3 (all-point, 11-point and COCO's 101-point).
WITH_FP = PERFECT + [{"image_id": "a", "box": [50, 50, 60, 60], "score": 0.95, "label": 0}]
# The "b" cat is missed: cat recall stops at 1/2 with precision 1.
# all-point 0.5; 11-point: recall points 0..0.5 -> 6/11; COCO 101-point: 0, .01, ..., .50 -> 51/101.
MISSED = [d for d in PERFECT if d["image_id"] != "b"]

IMPLS = ["pycocotools", "faster_coco_eval"]


@pytest.mark.parametrize("impl", IMPLS)
def test_coco_perfect(impl):
    r = coco_evaluate(GT, PERFECT, NAMES, implementation=impl)
    assert r["implementation"] == impl and r["version"]
    for k in ("mAP", "mAP_50", "mAP_75", "mAP_small", "AR_1", "AR_10", "AR_100"):
        assert r[k] == pytest.approx(1.0), k
    assert r["mAP_medium"] is None and r["mAP_large"] is None  # every box is "small" (< 32^2)
    assert r["per_class_AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    json.dumps(r)


@pytest.mark.parametrize("impl", IMPLS)
def test_coco_false_positive(impl):
    r = coco_evaluate(GT, WITH_FP, NAMES, implementation=impl)
    assert r["per_class_AP"]["cat"] == pytest.approx(2 / 3, abs=1e-6)
    assert r["per_class_AP"]["dog"] == pytest.approx(1.0)
    assert r["mAP"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-6)
    assert r["AR_100"] == pytest.approx(1.0)  # the false positive does not hurt recall


@pytest.mark.parametrize("impl", IMPLS)
def test_coco_missed_box(impl):
    r = coco_evaluate(GT, MISSED, NAMES, implementation=impl)
    assert r["per_class_AP"]["cat"] == pytest.approx(51 / 101, abs=1e-6)
    assert r["mAP_50"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-6)
    assert r["AR_100"] == pytest.approx((0.5 + 1) / 2)


def test_coco_implementations_agree_on_noisy_detections():
    rng = np.random.default_rng(0)
    gt, dets = [], []
    for i in range(20):
        boxes = rng.uniform(0, 200, (5, 2))
        boxes = np.concatenate([boxes, boxes + rng.uniform(5, 120, (5, 2))], 1).astype(np.float32)
        labels = rng.integers(0, 3, 5)
        gt.append({"image_id": i, "width": 320, "height": 320, "boxes": boxes, "labels": labels})
        for b, lab in zip(boxes, labels):
            dets.append({"image_id": i, "box": (b + rng.normal(0, 6, 4)).tolist(),
                         "score": float(rng.uniform()), "label": int(lab if rng.uniform() > 0.2 else (lab + 1) % 3)})
    a = coco_evaluate(gt, dets, implementation="pycocotools")
    b = coco_evaluate(gt, dets, implementation="faster_coco_eval")
    for k in ("mAP", "mAP_50", "mAP_75", "AR_100"):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
    assert 0.1 < a["mAP"] < 0.95


def test_coco_no_detections_and_unknown_image():
    r = coco_evaluate(GT, [], NAMES)
    assert r["mAP"] == 0.0 and r["per_class_AP"] == {"cat": 0.0, "dog": 0.0}
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(GT, [{"image_id": "zzz", "box": [0, 0, 1, 1], "score": 1.0, "label": 0}], NAMES)


def test_voc_ap_hand_worked():
    # recall/precision after each ranked detection: (.5, 1), (.5, .5), (1, 2/3)
    rec, prec = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    # all-point: envelope 1 on (0, .5], 2/3 on (.5, 1] -> .5 * 1 + .5 * 2/3 = 5/6
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(5 / 6)
    # 11-point: r = 0..0.5 (6 points) -> 1; r = 0.6..1.0 (5 points) -> 2/3 -> (6 + 10/3) / 11
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 + 10 / 3) / 11)
    # recall stops at 0.3 exactly with precision 1: 11-point counts r = 0, .1, .2, .3 -> 4/11
    assert voc_ap([0.1, 0.2, 0.3], [1, 1, 1], True) == pytest.approx(4 / 11)
    assert voc_ap([0.1, 0.2, 0.3], [1, 1, 1], False) == pytest.approx(0.3)
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0


def test_voc_evaluate_cases():
    r = voc_evaluate(GT, PERFECT, class_names=NAMES)
    assert r["mAP_all"] == pytest.approx(1.0) and r["mAP_11"] == pytest.approx(1.0)
    r = voc_evaluate(GT, WITH_FP, class_names=NAMES)
    assert r["per_class"]["cat"]["ap_all"] == pytest.approx(2 / 3)
    assert r["per_class"]["cat"]["ap_11"] == pytest.approx(2 / 3)
    assert r["per_class"]["cat"]["fp"] == 1 and r["per_class"]["cat"]["tp"] == 2
    r = voc_evaluate(GT, MISSED, class_names=NAMES)
    assert r["per_class"]["cat"]["ap_all"] == pytest.approx(0.5)
    assert r["per_class"]["cat"]["ap_11"] == pytest.approx(6 / 11)
    assert r["mAP_all"] == pytest.approx(0.75)
    # A duplicate of a matched box is a false positive; IoU 0.5 exactly does not match (strict >).
    dup = PERFECT + [{"image_id": "a", "box": [0, 0, 10, 10], "score": 0.1, "label": 0}]
    assert voc_evaluate(GT, dup, class_names=NAMES)["per_class"]["cat"]["fp"] == 1
    half = [{"image_id": "a", "box": [20, 20, 40, 30], "score": 0.9, "label": 1}]  # IoU = 200/400
    assert voc_evaluate(GT, half, class_names=NAMES)["per_class"]["dog"]["tp"] == 0


def test_voc_difficult_boxes_are_ignored():
    gt = [dict(GT[0], difficult=np.array([False, True])), GT[1]]
    # No dog detection, and the only dog is difficult: the class has no ground truth -> AP None.
    r = voc_evaluate(gt, [d for d in PERFECT if d["label"] == 0], class_names=NAMES)
    assert r["per_class"]["dog"]["ap_all"] is None and r["mAP_all"] == pytest.approx(1.0)
    # Detecting the difficult dog is neither a true nor a false positive.
    r = voc_evaluate(gt, PERFECT, class_names=NAMES)
    assert r["per_class"]["dog"]["tp"] == 0 and r["per_class"]["dog"]["fp"] == 0


def test_coco_json_and_plots(tmp_path):
    res = detections_to_coco_json(PERFECT, tmp_path / "res.json", image_id_map={"a": 1, "b": 2})
    assert res[0] == {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.8}
    assert json.loads((tmp_path / "res.json").read_text()) == res
    voc = voc_evaluate(GT, WITH_FP, class_names=NAMES)
    paths = plot_pr_curves(voc, tmp_path / "pr")
    assert [p.name for p in paths] == ["pr_cat.png", "pr_dog.png"]
    images = [np.full((80, 100, 3), 128, np.uint8)] * 2
    grid = draw_detection_grid(images, GT, WITH_FP, tmp_path / "grid.png", NAMES, ncols=2)
    from PIL import Image

    with Image.open(grid) as im:
        assert im.size[0] > 300 and im.size[1] > 200
    for p in paths:
        assert p.stat().st_size > 5000


def test_f1_threshold_on_a_hand_worked_case():
    """WITH_FP pooled over classes, highest score first: 0.95 FP, 0.9 TP (dog), 0.8 TP, 0.7 TP;
    3 boxes to find. F1 = 2TP / (kept + 3): cut .95 -> 0, .9 -> 2/5, .8 -> 4/6, .7 -> 6/7. Best: 0.7."""
    from components.metrics.detection import f1_at_thresholds

    r = f1_at_thresholds(GT, WITH_FP, class_names=NAMES)
    assert r["threshold"] == pytest.approx(0.7) and r["f1"] == pytest.approx(6 / 7)
    assert r["precision"] == pytest.approx(3 / 4) and r["recall"] == pytest.approx(1.0)
    np.testing.assert_allclose(r["curve"]["f1"], [0, 2 / 5, 4 / 6, 6 / 7])
    # A low-scoring false positive is left out by the cut: best F1 stops above it.
    low_fp = PERFECT + [{"image_id": "b", "box": [60, 60, 70, 70], "score": 0.1, "label": 1}]
    r = f1_at_thresholds(GT, low_fp, class_names=NAMES)
    assert r["threshold"] == pytest.approx(0.7) and r["f1"] == pytest.approx(1.0)
    assert r["curve"]["tp"] == [1, 2, 3, 3] and r["curve"]["fp"] == [0, 0, 0, 1]
    # Equal scores are one cut (a threshold keeps both or neither); nothing right -> no threshold.
    tied = [{**d, "score": 0.5} for d in PERFECT]
    assert f1_at_thresholds(GT, tied, class_names=NAMES)["curve"]["threshold"] == [0.5]
    wrong = [{**d, "label": 1 - d["label"]} for d in PERFECT]
    assert f1_at_thresholds(GT, wrong, class_names=NAMES)["threshold"] is None
