"""The course's YOLO post-processing functions and the pipeline's batched decoder."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.yolo import (decode_predictions, iou, read_anchors, read_classes, scale_boxes, yolo_boxes_to_corners,
                         yolo_eval, yolo_filter_boxes, yolo_head, yolo_non_max_suppression)
from tests.conftest import dataset_path

COURSE_ANCHORS = np.array([[0.57273, 0.677385], [1.87446, 2.06253], [3.33843, 5.47434],
                           [7.88282, 3.52778], [9.77052, 9.16828]], np.float32)


@pytest.mark.parametrize("box1, box2, expected", [
    ((0, 0, 1, 1), (2, 2, 3, 3), 0.0),            # disjoint
    ((1, 2, 3, 4), (3, 2, 5, 4), 0.0),            # touching edges
    ((0, 0, 1, 1), (1, 1, 2, 2), 0.0),            # touching corners
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),         # nested
    ((2, 1, 4, 3), (2, 1, 4, 3), 1.0),            # identical
    ((2, 1, 4, 3), (1, 2, 3, 4), 1 / 7),          # the course's example: inter 1, union 7
    ((0, 0, 2, 2), (1, 0, 3, 2), 2 / 6),          # half overlap
])
def test_iou_hand_cases(box1, box2, expected):
    assert isinstance(iou(box1, box2), float)
    assert iou(box1, box2) == pytest.approx(expected)
    assert iou(np.array(box2, np.float32), np.array(box1, np.float32)) == pytest.approx(expected)


def test_iou_degenerate_union_is_zero():
    assert iou((1, 1, 1, 1), (1, 1, 1, 1)) == 0.0


def test_boxes_to_corners_order():
    corners = yolo_boxes_to_corners(tf.constant([[0.5, 0.25]]), tf.constant([[0.2, 0.1]])).numpy()
    np.testing.assert_allclose(corners, [[0.2, 0.4, 0.3, 0.6]], atol=1e-6)  # y_min, x_min, y_max, x_max


def test_yolo_head_decodes_known_cell():
    feats = np.zeros((1, 4, 6, 2, 5 + 3), np.float32)  # 4 rows x 6 columns, 2 anchors
    feats[0, 1, 2, 1, :5] = [0.0, 0.0, np.log(2.0), 0.0, 10.0]
    feats[0, 1, 2, 1, 5:] = [0.0, 5.0, 0.0]
    anchors = np.array([[1.0, 1.0], [1.5, 2.0]], np.float32)
    conf, xy, wh, probs = yolo_head(tf.constant(feats.reshape(1, 4, 6, 16)), anchors, 3)
    assert conf.shape == (1, 4, 6, 2, 1) and xy.shape == (1, 4, 6, 2, 2) and probs.shape == (1, 4, 6, 2, 3)
    # centre = (column 2 + 0.5) / 6 across, (row 1 + 0.5) / 4 down; size = exp(t) * anchor / grid
    np.testing.assert_allclose(xy[0, 1, 2, 1], [2.5 / 6, 1.5 / 4], rtol=1e-6)
    np.testing.assert_allclose(wh[0, 1, 2, 1], [2 * 1.5 / 6, 2.0 / 4], rtol=1e-6)
    assert float(conf[0, 1, 2, 1, 0]) == pytest.approx(1 / (1 + np.exp(-10)))
    assert int(tf.argmax(probs[0, 1, 2, 1])) == 1
    np.testing.assert_allclose(tf.reduce_sum(probs, -1).numpy(), 1.0, rtol=1e-5)


def _random_head(seed=1, batch=1):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(1, 4, (batch, 19, 19, 5, 1)), tf.float32),
            tf.constant(rng.normal(1, 4, (batch, 19, 19, 5, 2)), tf.float32),
            tf.constant(rng.normal(1, 4, (batch, 19, 19, 5, 2)), tf.float32),
            tf.constant(rng.normal(1, 4, (batch, 19, 19, 5, 80)), tf.float32))


def test_filter_boxes_threshold_semantics():
    conf, xy, wh, probs = _random_head()
    boxes = yolo_boxes_to_corners(xy, wh)
    scores, fboxes, classes = yolo_filter_boxes(conf, boxes, probs, threshold=0.5)
    all_scores = (conf * probs).numpy()
    best = all_scores.max(-1)
    assert scores.shape[0] == int((best >= 0.5).sum()) and fboxes.shape == (scores.shape[0], 4)
    assert classes.dtype == tf.int64 and float(tf.reduce_min(scores)) >= 0.5
    # ">= threshold": a box scoring exactly the threshold is kept.
    c = tf.ones((1, 1, 1, 1, 1))
    p = tf.constant([[[[[0.25, 0.75]]]]])
    s, _, k = yolo_filter_boxes(c, tf.zeros((1, 1, 1, 1, 4)), p, threshold=0.75)
    assert s.numpy().tolist() == [0.75] and k.numpy().tolist() == [1]


def test_nms_matches_tensorflow_and_is_class_agnostic():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = tf.constant(np.concatenate([xy, xy + rng.uniform(10, 40, (60, 2))], 1), tf.float32)
    scores = tf.constant(rng.uniform(size=60), tf.float32)
    classes = tf.constant(rng.integers(0, 3, 60), tf.int64)
    s, b, c = yolo_non_max_suppression(scores, boxes, classes, max_boxes=10, iou_threshold=0.4)
    ref = tf.image.non_max_suppression(boxes, scores, 10, iou_threshold=0.4).numpy()
    np.testing.assert_array_equal(s.numpy(), scores.numpy()[ref])
    np.testing.assert_array_equal(b.numpy(), boxes.numpy()[ref])
    np.testing.assert_array_equal(c.numpy(), classes.numpy()[ref])
    assert len(s) <= 10
    kept = b.numpy()
    for i in range(len(kept)):  # no two kept boxes overlap above the threshold, whatever the class
        for j in range(i + 1, len(kept)):
            assert iou(kept[i], kept[j]) <= 0.4 + 1e-6


def test_scale_boxes():
    out = scale_boxes(tf.constant([[0.5, 0.25, 1.0, 1.0]]), (720., 1280.)).numpy()
    np.testing.assert_allclose(out, [[360, 320, 720, 1280]])


def test_yolo_eval_shapes_and_thresholds():
    outputs = _random_head()
    scores, boxes, classes = yolo_eval(outputs)
    assert scores.shape == (10,) and boxes.shape == (10, 4) and classes.shape == (10,)
    assert float(tf.reduce_min(scores)) >= 0.6
    # boxes are in pixels of the 720x1280 image: the random head has boxes far beyond [0, 1]
    assert float(tf.reduce_max(tf.abs(boxes))) > 2.0
    scores2, _, _ = yolo_eval(outputs, image_shape=(608., 608.), max_boxes=3, score_threshold=0.9)
    assert scores2.shape[0] <= 3 and float(tf.reduce_min(scores2)) >= 0.9
    # (like the course's test, the head is random normals, not probabilities) nothing above the max
    top = float(tf.reduce_max(outputs[0] * outputs[3]))
    assert yolo_eval(outputs, score_threshold=top + 1e-3)[0].shape == (0,)


def test_decode_predictions_is_per_class_nms():
    # Two anchors in the same cell predict the same box with different classes: per-class NMS keeps both,
    # class-agnostic NMS would keep one.
    raw = np.full((2, 3, 3, 2, 5 + 2), -10.0, np.float32)
    raw[0, 1, 1, :, 0:4] = 0.0
    raw[0, 1, 1, 0, 4], raw[0, 1, 1, 1, 4] = 5.0, 4.0
    raw[0, 1, 1, 0, 5:] = [10.0, -10.0]
    raw[0, 1, 1, 1, 5:] = [-10.0, 10.0]
    anchors = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    out = decode_predictions(raw, anchors, 2, score_threshold=0.5, iou_threshold=0.5, max_detections=5)
    assert out["boxes"].shape == (2, 5, 4)
    assert out["num_detections"].numpy().tolist() == [2, 0]
    assert sorted(out["classes"][0, :2].numpy().tolist()) == [0, 1]
    np.testing.assert_allclose(out["boxes"][0, 0].numpy(), [1 / 3, 1 / 3, 2 / 3, 2 / 3], atol=1e-5)  # xyxy
    px = decode_predictions(raw, anchors, 2, score_threshold=0.5, image_shape=(30, 60))
    np.testing.assert_allclose(px["boxes"][0, 0].numpy(), [20, 10, 40, 20], atol=1e-3)


def test_decode_predictions_agrees_with_per_class_tf_nms():
    rng = np.random.default_rng(5)
    raw = tf.constant(rng.normal(0, 2, (3, 7, 7, 5, 5 + 4)), tf.float32)
    anchors = COURSE_ANCHORS * 7 / 19
    out = decode_predictions(raw, anchors, 4, score_threshold=0.2, iou_threshold=0.45, max_detections=300)
    conf, xy, wh, probs = yolo_head(raw, anchors, 4)
    corners = tf.reshape(yolo_boxes_to_corners(xy, wh), [3, -1, 4])
    scores = tf.reshape(conf * probs, [3, -1, 4])
    for b in range(3):
        expected = 0
        for k in range(4):
            keep = tf.image.non_max_suppression(corners[b], scores[b, :, k], 300, 0.45, score_threshold=0.2)
            expected += int(keep.shape[0])
        assert int(out["num_detections"][b]) == expected


def test_course_files():
    root = dataset_path("coursera_car_detection", "model_data")
    classes = read_classes(root / "coco_classes.txt")
    anchors = read_anchors(root / "yolo_anchors.txt")
    assert len(classes) == 80 and classes[2] == "car"
    assert anchors.shape == (5, 2) and anchors.dtype == np.float32
    np.testing.assert_allclose(anchors, COURSE_ANCHORS, rtol=1e-5)


def test_read_anchors_rejects_odd_count(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("1.0, 2.0, 3.0\n")
    with pytest.raises(ValueError, match="even number"):
        read_anchors(p)
