"""YOLO models, target encoding, anchors, augmentation and the loss (fast checks)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.registry import build_model
from models.yolo import (YoloLoss, anchors_to_grid, augment, build_small_yolo, decode_targets, default_anchors,
                         encode_targets, kmeans_anchors, load_course_model, yolov2_darknet19)


def test_darknet19_matches_course_summary():
    model = yolov2_darknet19()
    assert model.count_params() == 50_983_561
    assert model.output_shape == (None, 19, 19, 425)
    assert model.get_layer("space_to_depth_x2").output.shape[1:] == (19, 19, 256)
    assert model.get_layer("concatenate_1").output.shape[-1] == 1280


def test_load_course_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        load_course_model(tmp_path / "yolo.h5")
    bad = tmp_path / "yolo.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"yolo\.h5.*weights_path"):
        load_course_model(bad)
    txt = tmp_path / "yolo.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match=r"\.h5.*weights_path"):
        load_course_model(txt)


def test_load_course_model_round_trip(tmp_path):
    # A legacy full-model .h5 (like the course's yolo.h5) loads by layer name; a Keras 3
    # .weights.h5 loads by order. Small input and 1 class keep it quick.
    src = yolov2_darknet19((64, 64, 3), num_anchors=2, num_classes=1)
    for name in ("full.h5", "w.weights.h5"):
        path = tmp_path / name
        src.save(path) if name == "full.h5" else src.save_weights(path)
        dst = load_course_model(path, (64, 64, 3), num_anchors=2, num_classes=1)
        for layer in ("conv2d_23", "batch_normalization_21"):
            for a, b in zip(src.get_layer(layer).get_weights(), dst.get_layer(layer).get_weights()):
                np.testing.assert_array_equal(a, b)
    path = tmp_path / "full.h5"
    with pytest.raises(ValueError, match="do not fit"):
        load_course_model(path, (64, 64, 3), num_anchors=5, num_classes=80)


def test_small_yolo_shapes_and_registry():
    m = build_small_yolo((128, 128, 3), num_classes=3, num_anchors=4, width=8)
    assert m.output_shape == (None, 4, 4, 4, 8)
    m16 = build_small_yolo((128, 96, 3), num_classes=2, anchors=np.ones((3, 2)), width=8, stride=16)
    assert m16.output_shape == (None, 8, 6, 3, 7)
    reg = build_model("yolo_small", input_shape=(64, 64, 3), num_classes=5, num_anchors=2, width=8, epochs=3)
    assert reg.output_shape == (None, 2, 2, 2, 10)
    # objectness starts at a low prior, so the empty slots do not dominate the first steps
    out = m(np.zeros((1, 128, 128, 3), np.float32)).numpy()
    assert np.all(out[..., 4] < -2)
    with pytest.raises(ValueError, match="multiple of stride"):
        build_small_yolo((100, 100, 3), num_classes=2)


def test_small_yolo_applications_backbone():
    m = build_small_yolo((96, 96, 3), num_classes=2, num_anchors=3, backbone="mobilenetv2", weights=None)
    assert m.output_shape == (None, 3, 3, 3, 7)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_small_yolo((96, 96, 3), num_classes=2, backbone="vgg99")


def test_encode_decode_round_trip():
    anchors = np.array([[0.5, 0.5], [2.0, 1.0], [1.0, 3.0]], np.float32)  # grid units
    boxes = np.array([[0.05, 0.05, 0.15, 0.12],   # small square-ish -> anchor 0
                      [0.40, 0.40, 0.90, 0.60],   # wide -> anchor 1
                      [0.60, 0.00, 0.75, 0.50],   # tall -> anchor 2
                      [0.00, 0.00, 0.00, 0.00]],  # padding
                     np.float32)
    labels = np.array([2, 0, 1, -1])
    y = encode_targets(boxes, labels, anchors, 4, 3)
    assert y.shape == (4, 4, 3, 8)
    assert float(tf.reduce_sum(y[..., 4])) == 3
    # centre (0.1, 0.085) -> row 0, col 0, anchor 0; centre (0.65, 0.5) -> row 2, col 2, anchor 1
    assert float(y[0, 0, 0, 4]) == 1 and int(tf.argmax(y[0, 0, 0, 5:])) == 2
    assert float(y[2, 2, 1, 4]) == 1 and float(y[1, 2, 2, 4]) == 1
    dec_boxes, dec_labels = decode_targets(y)
    order = np.argsort(dec_boxes.numpy()[:, 0])
    np.testing.assert_allclose(dec_boxes.numpy()[order], boxes[[0, 1, 2]], atol=1e-6)
    np.testing.assert_array_equal(dec_labels.numpy()[order], [2, 0, 1])
    # usable inside tf.data
    ds = tf.data.Dataset.from_tensors((boxes, labels)).map(lambda b, lab: encode_targets(b, lab, anchors, (4, 4), 3))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), y.numpy())


def test_kmeans_anchors_recovers_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.05, 0.05], [0.3, 0.1], [0.2, 0.5]])
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (100, 2)) for c in centres])
    anchors, mean_iou = kmeans_anchors(wh, 3, seed=1)
    np.testing.assert_allclose(anchors, centres, rtol=0.05)  # sorted by area: .0025, .03, .1
    assert 0.9 < mean_iou <= 1.0
    again, _ = kmeans_anchors(wh, 3, seed=1)
    np.testing.assert_array_equal(anchors, again)
    np.testing.assert_allclose(anchors_to_grid(anchors, 8), anchors * 8)
    with pytest.raises(ValueError):
        kmeans_anchors(wh[:2], 3)
    assert default_anchors(19).shape == (5, 2)


def test_augment_moves_boxes_with_the_pixels():
    # A white square on black: after augmentation the box still bounds the white pixels.
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:32, 8:24] = 255
    boxes = np.array([[8 / 64, 16 / 64, 24 / 64, 32 / 64], [0, 0, 0, 0]], np.float32)
    labels = np.array([1, -1])
    flipped = 0
    for seed in range(12):
        out, b, lab = augment(img, boxes, labels, seed=seed, brightness=0, contrast=0, saturation=0, hue=0)
        out = out.numpy()
        assert out.shape == (64, 64, 3) and b.shape == (2, 4) and lab.numpy()[1] == -1
        if lab.numpy()[0] < 0:
            continue
        ys, xs = np.nonzero(out[..., 0] > 0.75)
        x1, y1, x2, y2 = b.numpy()[0] * 64
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
        flipped += x1 > 32
    assert flipped >= 1  # some seeds flip the square to the right half
    a = augment(img, boxes, labels, seed=3)[0].numpy()
    np.testing.assert_array_equal(a, augment(img, boxes, labels, seed=3)[0].numpy())


def _targets(anchors, grid=4, num_classes=2):
    boxes = np.array([[0.1, 0.1, 0.4, 0.45], [0.5, 0.55, 0.9, 0.95]], np.float32)
    return encode_targets(boxes, np.array([0, 1]), anchors, grid, num_classes)[None]


def test_loss_is_zero_only_for_a_perfect_prediction_and_ignores_good_boxes():
    anchors = np.array([[1.0, 1.0], [2.0, 2.0]], np.float32)
    y_true = _targets(anchors)
    loss = YoloLoss(anchors, 2, ignore_thresh=0.5)
    # Build the ideal logits from the targets.
    yt = y_true.numpy()
    grid = 4
    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))
    cells = np.stack([cols, rows], -1)[None, :, :, None, :]
    off = np.clip(yt[..., 0:2] * grid - cells, 1e-4, 1 - 1e-4)
    ideal = np.zeros_like(yt)
    ideal[..., 0:2] = np.log(off / (1 - off))
    ideal[..., 2:4] = np.log(np.maximum(yt[..., 2:4] * grid / anchors[None, None, None], 1e-9))
    ideal[..., 4] = np.where(yt[..., 4] > 0, 20.0, -20.0)
    ideal[..., 5:] = np.where(yt[..., 5:] > 0, 20.0, -20.0)
    c = loss.components(y_true, ideal)
    for k, v in c.items():
        assert float(v[0]) < 1e-3, k
    assert float(loss(y_true, ideal)) < 1e-3
    # Turning on the objectness of a non-responsible slot whose box overlaps a true box well is ignored...
    resp = np.argwhere(yt[0, ..., 4] > 0)[0]
    other = ideal.copy()
    r, cidx, a = resp
    shift = np.log(anchors[a, 0] / anchors[1 - a, 0])  # same decoded box through the other anchor
    other[0, r, cidx, 1 - a, :4] = ideal[0, r, cidx, a, :4] + np.array([0, 0, shift, shift])
    other[0, r, cidx, 1 - a, 4] = 5.0
    assert float(loss.components(y_true, other)["noobj"][0]) < 1e-3
    # ... but the same slot predicting an empty region is penalised as background.
    other[0, r, cidx, 1 - a, 2:4] = -5.0
    assert float(loss.components(y_true, other)["noobj"][0]) > 4.0
    cfg = YoloLoss.from_config(loss.get_config())
    assert float(cfg(y_true, other)) == pytest.approx(float(loss(y_true, other)), rel=1e-6)


def test_sigmoid_class_loss_option():
    anchors = np.array([[1.0, 1.0]], np.float32)
    y_true = _targets(anchors)
    pred = tf.zeros_like(y_true)
    soft = YoloLoss(anchors, 2).components(y_true, pred)["class"]
    sig = YoloLoss(anchors, 2, class_loss="sigmoid").components(y_true, pred)["class"]
    assert float(soft[0]) == pytest.approx(2 * np.log(2), rel=1e-5)       # 2 boxes x CE(uniform over 2)
    assert float(sig[0]) == pytest.approx(2 * 2 * np.log(2), rel=1e-5)    # 2 boxes x 2 classes x BCE(0.5)
    with pytest.raises(ValueError):
        YoloLoss(anchors, 2, class_loss="focal")
