"""``python -m pipeline detect``: a pipeline detector (registered or local) or the course's
YOLOv2 weights on image files; boxes printed, drawn and written to ``detections.json``."""
from __future__ import annotations

import json
from pathlib import Path

from components.base import DEFAULT_TRACKING_URI, ComponentError


def _load_any_detector(model: str, tracking_uri: str, classes_file, anchors_file, input_size: int):
    """(kind "course"|"pipeline", keras model, class names, anchors (grid units), input (h, w))."""
    import numpy as np

    p = Path(model)
    if p.suffix.lower() in (".h5", ".hdf5") or classes_file or anchors_file:
        from models.yolo import load_course_model, read_anchors, read_classes

        if not (classes_file and anchors_file):
            raise ComponentError("the course's YOLOv2 needs --classes coco_classes.txt and --anchors yolo_anchors.txt "
                                 "beside the weights file")
        for f, opt in ((classes_file, "--classes"), (anchors_file, "--anchors")):
            if not Path(f).is_file():
                raise ComponentError(f"{opt} {f}: file not found")
        names, anchors = read_classes(classes_file), read_anchors(anchors_file)
        try:
            net = load_course_model(p, input_shape=(input_size, input_size, 3), num_anchors=len(anchors),
                                    num_classes=len(names))
        except (FileNotFoundError, ValueError) as e:
            raise ComponentError(str(e)) from None
        return "course", net, names, anchors, (input_size, input_size), None
    from components.model_uri import ModelNotFound, load_model_and_info

    try:
        net, info = load_model_and_info(model, tracking_uri)
    except ModelNotFound as e:
        raise ComponentError(str(e)) from None
    if info.task != "detection":
        raise ComponentError(f"{model}: a {info.task} model, not a detector (use `python -m pipeline predict`)")
    return "pipeline", net, list(info.classes), np.asarray(info.get("anchors"), np.float32), tuple(info.image_size), info


def detect_images(model: str, images: list[str], out_dir, *, score_threshold: float | None = None,
                  iou_threshold: float = 0.5, max_boxes: int = 10, classes_file=None, anchors_file=None,
                  input_size: int = 608, resize: str = "plain", tracking_uri: str = DEFAULT_TRACKING_URI,
                  echo=print) -> list[dict]:
    """Detect objects in image files, draw them into ``out_dir/<stem>.png`` and write
    ``out_dir/detections.json``; returns the rows. The course's YOLOv2 (a weights file +
    classes + anchors) is decoded with the course's ``yolo_head`` + ``yolo_eval`` (class-agnostic
    NMS, ``max_boxes``); a pipeline detector with the batched per-class decoder.
    ``score_threshold`` None: the pipeline detector's registered threshold (best F1 on its eval
    split), or 0.3 (the course's value) for the course model and models without one."""
    import numpy as np

    from components.tasks.detection import FALLBACK_SCORE_THRESHOLD, describe, threshold_of
    from data.records import BadRecord, read_image_file
    from models.yolo import yolo_eval, yolo_head
    from models.yolo.draw import draw_boxes, fit_image
    from models.yolo.inference import detect, detection_dicts

    kind, net, names, anchors, (h, w), info = _load_any_detector(model, tracking_uri, classes_file, anchors_file,
                                                                 input_size)
    if score_threshold is not None:
        source = "given"
    elif info is None:
        score_threshold, source = FALLBACK_SCORE_THRESHOLD, "default, as in the course"
    else:
        score_threshold, source = threshold_of(info)
    echo(f"score threshold {score_threshold:.3f} ({source})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for path in images:
        try:
            img = read_image_file(path)
        except BadRecord as e:
            rows.append({"image": path, "error": e.reason})
            echo(f"{path}: {e.reason}")
            continue
        fitted, unmap = fit_image(img, (h, w), resize)
        best = None
        if kind == "course":
            raw = net(fitted[None].astype(np.float32) / 255.0, training=False)
            scores, boxes, classes = yolo_eval(yolo_head(raw, anchors, len(names)), image_shape=(1.0, 1.0),
                                               max_boxes=max_boxes, score_threshold=score_threshold,
                                               iou_threshold=iou_threshold)
            rel = np.asarray(boxes).reshape(-1, 4)[:, [1, 0, 3, 2]]  # the course's yxyx -> xyxy
            scores, classes = np.asarray(scores).reshape(-1), np.asarray(classes).reshape(-1)
        else:  # the detection task's decoder (per-class NMS), as predict and the BulkInferrer use it
            det = detect(net, fitted[None], anchors, len(names), score_threshold=score_threshold,
                         iou_threshold=iou_threshold, max_detections=max_boxes)[0]
            rel, scores, classes, best = det["boxes"], det["scores"], det["labels"], det["best_score"]
        dets = detection_dicts(unmap(rel), scores, classes, names, box_digits=1, score_digits=4)
        stem = Path(path).stem
        name = stem if stem not in used else f"{stem}_{len(rows)}"
        used.add(name)
        drawn = out_dir / f"{name}.png"
        draw_boxes(img, dets, names, drawn)
        rows.append({"image": path, "width": int(img.shape[1]), "height": int(img.shape[0]), "output": str(drawn),
                     "detections": dets})
        for line in describe(dets, best, f" for {path}"):
            echo(line)
    meta = {"model": model, "kind": kind, "classes": names, "input_size": [h, w], "resize": resize,
            "score_threshold": score_threshold, "score_threshold_source": source, "iou_threshold": iou_threshold,
            "max_boxes": max_boxes,
            "nms": "class-agnostic (the course's yolo_eval)" if kind == "course" else "per class",
            "images": rows}
    (out_dir / "detections.json").write_text(json.dumps(meta, indent=2))
    return rows
