"""YOLO detection (issue 5): the course's YOLOv2 and post-processing, a small trainable YOLOv2-style
detector, its loss, target encoding, augmentation and anchors.

Conventions used throughout the package:

* raw output per anchor slot: ``[t_x, t_y, t_w, t_h, t_o, class logits]`` (Darknet order);
* anchors: (A, 2) widths/heights in grid-cell units (the course's ``yolo_anchors.txt``);
  ``anchors_to_grid`` converts image-fraction anchors (e.g. from ``kmeans_anchors``);
* pipeline boxes: ``[xmin, ymin, xmax, ymax]``, normalised unless said otherwise; the course
  functions keep the course's ``[y_min, x_min, y_max, x_max]``.

Typical training/evaluation flow::

    anchors_rel, mean_iou = kmeans_anchors(train_wh_normalised, k=5, seed=0)
    model = build_small_yolo((256, 256, 3), num_classes=C, num_anchors=5)
    grid = model.output_shape[1]
    anchors = anchors_to_grid(anchors_rel, grid)
    model.compile(optimizer="adam", loss=YoloLoss(anchors, C))
    model.fit(yolo_dataset(images, boxes, labels, anchors, grid, C, augment=True), epochs=...)
    dets = predict_detections(model, test_images, anchors, C)   # -> components.metrics.detection
"""
from models.yolo.augment import augment
from models.yolo.darknet19 import SpaceToDepth, load_course_model, read_anchors, read_classes, yolov2_darknet19
from models.yolo.loss import YoloLoss
from models.yolo.postprocess import (cell_offsets, decode_predictions, iou, predictions_to_lists, scale_boxes,
                                     yolo_boxes_to_corners, yolo_eval, yolo_filter_boxes, yolo_head,
                                     yolo_non_max_suppression)
from models.yolo.small import COURSE_ANCHORS_REL, build_small_yolo, default_anchors
from models.yolo.targets import anchors_to_grid, decode_targets, encode_targets, kmeans_anchors
from models.yolo.training import pad_boxes, predict_detections, yolo_dataset

__all__ = [
    "COURSE_ANCHORS_REL", "SpaceToDepth", "YoloLoss", "anchors_to_grid", "augment", "build_small_yolo",
    "cell_offsets", "decode_predictions", "decode_targets", "default_anchors", "encode_targets", "iou",
    "kmeans_anchors", "load_course_model", "pad_boxes", "predict_detections", "predictions_to_lists",
    "read_anchors", "read_classes", "scale_boxes", "yolo_boxes_to_corners", "yolo_dataset", "yolo_eval",
    "yolo_filter_boxes", "yolo_head", "yolo_non_max_suppression", "yolov2_darknet19",
]
