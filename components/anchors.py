"""Anchors: statistics (or examples) -> `anchors`: anchor boxes for a YOLO detector by k-means on
the training boxes' (width, height) with distance ``1 - IoU`` (the YOLOv2 method), and the mean
best IoU of the anchors against those boxes (how well k shapes cover the data; YOLOv2 reports
~0.61 for k=5 on VOC with this method).

Input: ``statistics`` (StatisticsGen's ``detection.box_wh`` of the split) or ``examples`` (the
boxes are read from the split's TFRecords). Output ``anchors/anchors.json``::

    {"anchors": [[w, h], ...]      # fractions of the image, sorted by area
     "k", "seed", "split", "mean_iou", "num_boxes", "source",
     "per_k": {"1": mean_iou, ...}}  # the elbow curve for k = 1 .. max(k, 9), for choosing k

plus ``anchors.png`` (the boxes' shapes and the anchors). The Trainer's detection task runs the
same computation (:func:`compute_anchors`, the boxes sorted first so the result does not depend
on the order Beam or TFRecords deliver them) on the same boxes, so its anchors equal this
component's for the same ``k`` and ``seed``.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from components.base import ComponentError, ComponentSpec, Params


class AnchorsParams(Params):
    k: int = Field(5, ge=1, le=20)
    seed: int = 0
    split: str = "train"
    elbow: bool = True  # also report the mean IoU for k = 1 .. max(k, 9)


def compute_anchors(wh, k: int, seed: int = 0):
    """k-means anchors (image fractions, sorted by area) and the mean best IoU for (N, 2) box
    sizes. Deterministic for a set of boxes, whatever their order."""
    import numpy as np

    from models.yolo.targets import kmeans_anchors

    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[np.lexsort((wh[:, 1], wh[:, 0]))]
    return kmeans_anchors(wh, k, seed=seed)


def boxes_wh_from_examples(examples: Path, split: str):
    """(N, 2) normalised box widths/heights of one split's TFRecords (parsed with the shared
    feature spec; the images are not decoded)."""
    import numpy as np
    import tensorflow as tf

    from components.artifacts import Examples
    from data.tfrecord import BOX_SIDES, feature_spec

    files = Examples.load(examples).files(split)
    if not files:
        raise ComponentError(f"Anchors: no TFRecords for split {split!r} in {examples}")
    spec = feature_spec(boxes=True)
    out = []
    for rec in tf.data.TFRecordDataset(files):
        f = tf.io.parse_single_example(rec, spec)
        x0, y0, x1, y1 = (tf.sparse.to_dense(f[f"image/object/bbox/{s}"]).numpy() for s in BOX_SIDES)
        out.append(np.stack([x1 - x0, y1 - y0], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2))


def _plot(wh, anchors, path: Path, mean_iou: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(wh[:, 0], wh[:, 1], s=4, alpha=0.3, label="boxes")
    ax.scatter(anchors[:, 0], anchors[:, 1], s=60, c="red", marker="x", label="anchors")
    ax.set_xlabel("width (fraction of image)")
    ax.set_ylabel("height (fraction of image)")
    ax.set_title(f"{len(anchors)} anchors, mean best IoU {mean_iou:.3f}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(ctx, inputs, params: AnchorsParams):
    import numpy as np

    from components.artifacts import Anchors, Statistics

    if "statistics" in inputs:
        stats = Statistics.load(inputs["statistics"]).data
        split_stats = stats.get("splits", {}).get(params.split)
        if split_stats is None:
            raise ComponentError(f"Anchors: split {params.split!r} not in the statistics "
                                 f"(splits: {', '.join(stats.get('splits', {}))})")
        det = split_stats.get("detection")
        if not det or "box_wh" not in det:
            raise ComponentError("Anchors: the statistics have no detection box sizes (detection.box_wh); "
                                 "are these detection examples?")
        wh, source = np.asarray(det["box_wh"], np.float64).reshape(-1, 2), "statistics"
    elif "examples" in inputs:
        wh, source = boxes_wh_from_examples(Path(inputs["examples"]), params.split), "examples"
    else:
        raise ComponentError("Anchors: give the input `statistics` (StatisticsGen) or `examples` (ExampleGen)")
    wh = wh[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
    if len(wh) < params.k:
        raise ComponentError(f"Anchors: {len(wh)} boxes in split {params.split!r}, fewer than k={params.k}")
    anchors, mean_iou = compute_anchors(wh, params.k, params.seed)
    result = {"anchors": anchors.tolist(), "k": params.k, "seed": params.seed, "split": params.split,
              "mean_iou": mean_iou, "num_boxes": int(len(wh)), "source": source,
              "units": "fractions of the image (w, h); multiply by the grid size for grid-cell units"}
    if params.elbow:
        result["per_k"] = {str(k): compute_anchors(wh, k, params.seed)[1]
                           for k in range(1, min(max(params.k, 9), len(wh)) + 1)}
    out = ctx.outputs["anchors"]
    path = Anchors(Path(out), result).save()
    _plot(wh, anchors, out / "anchors.png", mean_iou)
    ctx.tracker.log_artifact(path)
    ctx.tracker.log_artifact(out / "anchors.png", "plots")
    ctx.logger.info("%d anchors from %d %s boxes: mean best IoU %.3f; %s", params.k, len(wh), params.split, mean_iou,
                    ", ".join(f"{w:.3f}x{h:.3f}" for w, h in anchors))
    return {"mean_iou": mean_iou, "num_boxes": float(len(wh)), "k": float(params.k)}


SPEC = ComponentSpec(type="Anchors", description="box sizes -> YOLO anchors by k-means (1 - IoU) with their mean IoU",
                     params=AnchorsParams, run=run, inputs={"statistics": False, "examples": False},
                     outputs=("anchors",), code_dependencies=lambda p: ["models.yolo.targets"])
