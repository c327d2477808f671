"""YOLO benchmark: post-processing speed, mAP evaluation speed, and (``--train``) accuracy.

    python -m benchmarks yolo                    # quick: decoding + evaluation timings (~1 min)
    python -m benchmarks yolo --train            # + train yolo_small on synthetic shapes (time-boxed)
    python -m benchmarks yolo --train --train-minutes 12 --train-images 800

Measures
* ``yolo_eval`` on one 19x19x5x(5+80) head (course defaults: 720x1280, 10 boxes, score .6):
  median latency per image (eager, and wrapped in ``tf.function``);
* batched decoding (``decode_predictions``, per-class NMS) of 32 raw 19x19x425 outputs:
  images/s at the evaluation protocol (score .001, 100 detections) and at score .6;
* mAP evaluation on BCCD-test-like data (the 72 BCCD test images' ground truth, detections =
  every box jittered by a few pixels with random scores, plus 2 random false positives per
  image): ``coco_evaluate`` with faster-coco-eval versus plain pycocotools in the same
  process (ratio), and ``voc_evaluate``;
* ``--train``: ``build_small_yolo`` (128 px, stride 16) trained on synthetic shapes with
  augmentation for a fixed time budget, held-out mAP@.5 (COCO and VOC) reported.
* ``--evaluation DIR`` (repeatable): the numbers of detection Evaluator outputs of pipeline
  runs (e.g. ``configs/shapes.yaml``, ``configs/bccd.yaml``): COCO/VOC mAP, per-class AP@.5,
  the COCO implementation, the evaluation's own timings, and the Trainer's training time read
  from the evaluated model's ``model_info.json`` (found through the execution's metadata).
Results go to ``benchmarks/results/yolo.json``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import DATASETS, median_time, write_result


def _bench_decoding(repeats: int) -> dict:
    import tensorflow as tf

    from models.yolo import decode_predictions, yolo_eval, yolo_head
    from models.yolo.small import COURSE_ANCHORS_REL

    anchors = COURSE_ANCHORS_REL * 19
    rng = np.random.default_rng(0)
    one = tf.constant(rng.normal(0, 2, (1, 19, 19, 425)), tf.float32)
    batch = tf.constant(rng.normal(0, 2, (32, 19, 19, 425)), tf.float32)

    def eager():
        return [t.numpy() for t in yolo_eval(yolo_head(one, anchors, 80))]

    graph_fn = tf.function(lambda x: yolo_eval(yolo_head(x, anchors, 80)))
    med_eager, _ = median_time(eager, repeats=repeats, warmup=2)
    med_graph, _ = median_time(lambda: [t.numpy() for t in graph_fn(one)], repeats=repeats, warmup=2)
    out = {"yolo_eval_latency_ms_eager": med_eager * 1e3, "yolo_eval_latency_ms_tf_function": med_graph * 1e3}
    for label, thr in (("eval_protocol_score0.001_max100", 0.001), ("score0.6_max100", 0.6)):
        fn = tf.function(lambda x, thr=thr: decode_predictions(x, anchors, 80, score_threshold=thr, max_detections=100))
        med, _ = median_time(lambda: {k: v.numpy() for k, v in fn(batch).items()}, repeats=max(3, repeats // 4), warmup=1)
        out[f"batched_decode_32_images_per_s_{label}"] = 32 / med
    return out


def _bench_map(repeats: int) -> dict:
    from components.metrics.detection import coco_evaluate, gt_from_records, voc_evaluate
    from data import voc

    root = DATASETS / "bccd"
    if not root.exists():
        return {"map_eval": f"skipped: {root} not found"}
    recs = [voc.load(r) for r in voc.list_refs(root, split="test")]
    names = list(dict(voc.list_refs(root, split="test")[0].extra)["class_names"])
    gt = gt_from_records(recs)
    rng = np.random.default_rng(0)
    dets = []
    for g in gt:
        for b, lab in zip(g["boxes"], g["labels"]):
            dets.append({"image_id": g["image_id"], "box": (b + rng.normal(0, 4, 4)).tolist(),
                         "score": float(rng.uniform(0.3, 1)), "label": int(lab)})
        for _ in range(2):
            xy = rng.uniform(0, 500, 2)
            dets.append({"image_id": g["image_id"], "box": [*xy, *(xy + rng.uniform(20, 100, 2))],
                         "score": float(rng.uniform(0, 0.5)), "label": int(rng.integers(len(names)))})
    ours, _ = median_time(lambda: coco_evaluate(gt, dets, names, implementation="faster_coco_eval"), repeats=repeats)
    plain, _ = median_time(lambda: coco_evaluate(gt, dets, names, implementation="pycocotools"), repeats=repeats)
    voc_t, _ = median_time(lambda: voc_evaluate(gt, dets, class_names=names), repeats=repeats)
    a = coco_evaluate(gt, dets, names, implementation="faster_coco_eval")
    b = coco_evaluate(gt, dets, names, implementation="pycocotools")
    return {"map_eval_images": len(gt), "map_eval_gt_boxes": a["num_gt"], "map_eval_detections": len(dets),
            "coco_eval_s_faster_coco_eval": ours, "coco_eval_s_pycocotools": plain,
            "coco_eval_speedup_vs_pycocotools": plain / ours, "voc_eval_s": voc_t,
            "coco_mAP_faster": a["mAP"], "coco_mAP_pycocotools": b["mAP"],
            "implementations": {a["implementation"]: a["version"], b["implementation"]: b["version"]}}


def _bench_train(minutes: float, n_train: int, n_test: int, size: int = 128) -> dict:
    import keras

    from components.metrics.detection import coco_evaluate, gt_from_records, voc_evaluate
    from data.synthetic_shapes import CLASSES, generate
    from models.yolo import YoloLoss, anchors_to_grid, build_small_yolo, kmeans_anchors, predict_detections, yolo_dataset

    keras.utils.set_random_seed(0)
    train = generate(n_train, seed=0, image_size=size)
    test = generate(n_test, seed=0, start=n_train, image_size=size)  # held out: other scene indices
    images = np.stack([r.image for r in train])
    boxes = [r.boxes / size for r in train]
    labels = [r.box_labels for r in train]
    model = build_small_yolo((size, size, 3), num_classes=len(CLASSES), num_anchors=5, width=16, stride=16)
    grid = model.output_shape[1]
    rel, mean_iou = kmeans_anchors(np.concatenate([b[:, 2:] - b[:, :2] for b in boxes]), 5, seed=0)
    anchors = anchors_to_grid(rel, grid)
    steps_per_epoch = max(1, n_train // 16)
    sched = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=10_000, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(sched), loss=YoloLoss(anchors, len(CLASSES)))
    ds = yolo_dataset(images, boxes, labels, anchors, grid, len(CLASSES), batch_size=16, augment=True, repeat=True)
    t0 = time.perf_counter()
    epochs, history = 0, []
    while time.perf_counter() - t0 < minutes * 60:
        h = model.fit(ds, steps_per_epoch=steps_per_epoch, initial_epoch=epochs, epochs=epochs + 1, verbose=0)
        epochs += 1
        history.append(float(h.history["loss"][-1]))
        print(f"epoch {epochs}: loss {history[-1]:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0
    dets = predict_detections(model, np.stack([r.image for r in test]), anchors, len(CLASSES),
                              image_ids=[r.key for r in test])
    gt = gt_from_records(test)
    coco = coco_evaluate(gt, dets, list(CLASSES))
    vocr = voc_evaluate(gt, dets, class_names=list(CLASSES))
    return {"train_images": n_train, "test_images": n_test, "input_size": size, "epochs": epochs,
            "train_seconds": train_s, "loss_history": history, "anchor_mean_iou": mean_iou,
            "heldout_coco": {k: coco[k] for k in ("mAP", "mAP_50", "mAP_75", "AR_100", "per_class_AP50",
                                                    "implementation", "version")},
            "heldout_voc_mAP_all": vocr["mAP_all"], "heldout_voc_mAP_11": vocr["mAP_11"],
            "target_mAP_50": 0.90, "target_met": bool(coco["mAP_50"] >= 0.90)}


def _pipeline_numbers(eval_dir: str) -> dict:
    """Summary of a detection Evaluator execution folder (the one holding ``evaluation/``)."""
    import json
    from pathlib import Path

    from components.artifacts import Evaluation, ModelInfo
    from components.base import ComponentError

    d = Path(eval_dir)
    ev = Evaluation.load(d / "evaluation" if (d / "evaluation").is_dir() else d)
    m = ev.metrics
    out = {"evaluation": str(ev.path), "split": m["split"], "num_images": m["num_images"],
           "coco": {k: m["coco"].get(k) for k in ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large",
                                                   "AR_100", "per_class_AP50", "implementation", "version")},
           "voc_mAP_50_all": m["voc"]["mAP_all"], "voc_mAP_50_11pt": m["voc"]["mAP_11"],
           "voc_per_class_ap_all": {k: v["ap_all"] for k, v in m["voc"]["per_class"].items()},
           "timings": m["timings"]}
    meta_path = ev.path.parent / "metadata.json"  # the execution's record (not an artifact): names the model input
    if meta_path.exists():
        model_dir = json.loads(meta_path.read_text()).get("inputs", {}).get("model")
        try:
            info = ModelInfo.read(model_dir) if model_dir else None
        except ComponentError:  # the model folder is gone or not a model
            info = None
        if info is not None:
            out["train"] = {k: info.get(k) for k in ("model", "image_size", "grid", "epochs_run", "best_epoch",
                                                      "train_seconds", "images_per_second", "anchor_mean_iou",
                                                      "params")}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks yolo", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train", action="store_true", help="also train yolo_small on synthetic shapes")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--evaluation", action="append", default=[], metavar="DIR",
                        help="a detection Evaluator's execution folder of a pipeline run (repeatable)")
    parser.add_argument("--skip-timings", action="store_true", help="only --train / --evaluation numbers")
    args = parser.parse_args(argv)
    result = {"command": "python -m benchmarks yolo " + " ".join(argv or [])}
    if not args.skip_timings:
        result.update(_bench_decoding(args.repeats))
        result.update(_bench_map(max(3, args.repeats // 4)))
    if args.evaluation:
        result["pipeline_runs"] = [_pipeline_numbers(e) for e in args.evaluation]
        for r in result["pipeline_runs"]:
            print(f"pipeline {r['evaluation']}: mAP@.5 {r['coco']['mAP_50']:.3f}, mAP {r['coco']['mAP']:.3f}, "
                  f"VOC AP@.5 {r['voc_mAP_50_all']:.3f}")
    if args.train:
        result["train"] = _bench_train(args.train_minutes, args.train_images, args.test_images)
    path = write_result("yolo", result)
    for k, v in result.items():
        if k not in ("train", "pipeline_runs"):
            print(f"{k}: {v}")
    if "train" in result:
        t = result["train"]
        print(f"train: {t['epochs']} epochs in {t['train_seconds']:.0f} s, held-out mAP@.5 {t['heldout_coco']['mAP_50']:.3f}")
    print(f"wrote {path}")
    return result
