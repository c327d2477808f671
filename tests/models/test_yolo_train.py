"""Training behaviour of the small YOLO on synthetic shapes: the loss falls, and it overfits 8 images."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from components.metrics.detection import coco_evaluate, gt_from_records, voc_evaluate
from data.synthetic_shapes import CLASSES, generate
from models.yolo import YoloLoss, anchors_to_grid, build_small_yolo, kmeans_anchors, predict_detections, yolo_dataset


def _setup(n, seed=1, size=128):
    keras.utils.set_random_seed(0)
    recs = generate(n, seed=seed, image_size=size)
    images = np.stack([r.image for r in recs])
    boxes = [r.boxes / size for r in recs]
    labels = [r.box_labels for r in recs]
    model = build_small_yolo((size, size, 3), num_classes=3, num_anchors=3, width=16, stride=16)
    grid = model.output_shape[1]
    rel, _ = kmeans_anchors(np.concatenate([b[:, 2:] - b[:, :2] for b in boxes]), 3, seed=0)
    anchors = anchors_to_grid(rel, grid)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=YoloLoss(anchors, 3))
    ds = yolo_dataset(images, boxes, labels, anchors, grid, 3, batch_size=8, shuffle=False)
    return recs, images, model, anchors, ds


def test_loss_decreases_on_tiny_synthetic_set():
    _, _, model, _, ds = _setup(8)
    hist = model.fit(ds.repeat(), steps_per_epoch=10, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist))
    assert hist[-1] < 0.5 * hist[0]


@pytest.mark.slow
def test_overfits_eight_images():
    recs, images, model, anchors, ds = _setup(8)
    model.fit(ds.repeat(), steps_per_epoch=50, epochs=4, verbose=0)
    dets = predict_detections(model, images, anchors, 3, image_ids=[r.key for r in recs])
    gt = gt_from_records(recs)
    coco = coco_evaluate(gt, dets, list(CLASSES))
    voc = voc_evaluate(gt, dets, class_names=list(CLASSES))
    assert coco["mAP_50"] > 0.9, coco
    assert voc["mAP_all"] > 0.9, voc["per_class"]
