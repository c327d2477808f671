"""Detection metrics: COCO mAP through pycocotools / faster-coco-eval, Pascal VOC AP, and plots.

In-memory formats (plain Python / numpy, pixels, corner boxes):

* ground truth ``gt``: a list with one dict per image::

      {"image_id": int | str, "width": int, "height": int,
       "boxes": (N, 4) [xmin, ymin, xmax, ymax], "labels": (N,) int,
       "difficult": (N,) bool  # optional: VOC "difficult" -> ignored by both evaluators}

* ``detections``: a flat list, one dict per box::

      {"image_id": int | str, "box": [xmin, ymin, xmax, ymax], "score": float, "label": int}

* ``class_names``: list indexed by label (optional; defaults to "0", "1", ...).

COCO AP is never computed here: ``coco_evaluate`` hands the data to COCOeval (the
``faster_coco_eval`` C++ drop-in by default, plain ``pycocotools`` on request) and reports which
implementation and version produced the numbers. Label ``k`` becomes COCO category ``k + 1``
unless ``category_ids`` says otherwise.

VOC AP (``voc_ap``/``voc_evaluate``) is written here: 11-point interpolation (VOC2007) and the
all-point area under the monotone precision envelope (VOC2010+). Differences from the VOC
devkit, on purpose: IoU uses continuous coordinates (no "+1" pixel), and the 11 recall points
are exactly ``i / 10`` (the devkit's ``np.arange(0, 1.1, 0.1)`` yields 0.30000000000000004 and
so misses a recall of exactly 0.3). A detection matches a ground-truth box when IoU > threshold
(strict, as in the devkit); each ground-truth box matches at most once.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COCO_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large",
                   "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


# ---------------------------------------------------------------------------------------------
# helpers
def _num_classes(gt, detections, class_names):
    if class_names is not None:
        return len(class_names)
    labels = [int(x) for g in gt for x in np.asarray(g["labels"]).reshape(-1)]
    labels += [int(d["label"]) for d in detections]
    return max(labels) + 1 if labels else 0


def _names(gt, detections, class_names):
    return list(class_names) if class_names is not None else [str(i) for i in range(_num_classes(gt, detections, None))]


def gt_from_records(records) -> list[dict]:
    """Ground truth in this module's format from ``data.records.ImageRecord`` s (boxes in pixels)."""
    out = []
    for r in records:
        h, w = r.image.shape[:2]
        boxes = np.zeros((0, 4), np.float32) if r.boxes is None else np.asarray(r.boxes, np.float32)
        labels = np.zeros((0,), np.int64) if r.box_labels is None else np.asarray(r.box_labels, np.int64)
        entry = {"image_id": r.key, "width": int(w), "height": int(h), "boxes": boxes, "labels": labels}
        if "difficult" in r.meta:
            entry["difficult"] = np.asarray(r.meta["difficult"], bool)
        out.append(entry)
    return out


def detections_to_coco_json(detections, path=None, image_id_map=None, category_ids=None) -> list[dict]:
    """Detections -> COCO result format ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

    ``image_id_map``: maps this module's image ids to COCO image ids (default: unchanged).
    ``category_ids``: label -> COCO category id (default ``label + 1``). Writes JSON to ``path``
    when given.
    """
    results = []
    for d in detections:
        x1, y1, x2, y2 = (float(v) for v in d["box"])
        label = int(d["label"])
        results.append({
            "image_id": image_id_map[d["image_id"]] if image_id_map is not None else d["image_id"],
            "category_id": int(category_ids[label]) if category_ids is not None else label + 1,
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "score": round(float(d["score"]), 5),
        })
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results))
    return results


def to_coco_dataset(gt, class_names=None, detections=(), category_ids=None):
    """Ground truth -> ``(coco_dict, image_id_map)``; COCO image ids are 1..N in ``gt`` order."""
    names = _names(gt, list(detections), class_names)
    cat_ids = list(category_ids) if category_ids is not None else [k + 1 for k in range(len(names))]
    id_map = {}
    images, annotations = [], []
    for i, g in enumerate(gt, start=1):
        if g["image_id"] in id_map:
            raise ValueError(f"duplicate image_id {g['image_id']!r} in ground truth")
        id_map[g["image_id"]] = i
        images.append({"id": i, "width": int(g["width"]), "height": int(g["height"]),
                       "file_name": str(g["image_id"])})
        boxes = np.asarray(g["boxes"], np.float64).reshape(-1, 4)
        labels = np.asarray(g["labels"]).reshape(-1)
        difficult = np.asarray(g.get("difficult", np.zeros(len(boxes), bool)), bool).reshape(-1)
        for b, lab, diff in zip(boxes, labels, difficult):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat_ids[int(lab)],
                                "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h,
                                "iscrowd": 0, "ignore": int(diff)})
    cats = [{"id": cid, "name": n} for cid, n in zip(cat_ids, names)]
    return {"images": images, "annotations": annotations, "categories": cats}, id_map


def _implementation(name):
    from importlib.metadata import version

    if name == "auto":
        try:
            import faster_coco_eval  # noqa: F401
            name = "faster_coco_eval"
        except ImportError:
            name = "pycocotools"
    if name == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return name, version("faster-coco-eval"), COCO, COCOeval_faster
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return name, version("pycocotools"), COCO, COCOeval
    raise ValueError(f"implementation must be 'auto', 'faster_coco_eval' or 'pycocotools', got {name!r}")


# ---------------------------------------------------------------------------------------------
# COCO
def coco_evaluate(gt, detections, class_names=None, implementation="auto", max_dets=100,
                  category_ids=None) -> dict[str, Any]:
    """COCO box metrics through COCOeval.

    Returns a JSON-serialisable dict: ``implementation``, ``version``, the 12 COCO numbers
    (``mAP`` = AP@[.5:.95], ``mAP_50``, ``mAP_75``, ``mAP_small/medium/large``, ``AR_1``,
    ``AR_10``, ``AR_100`` (AR at ``max_dets``), ``AR_small/medium/large``), ``per_class_AP`` and
    ``per_class_AP50`` (class name -> AP, ``None`` for a class without ground truth),
    ``num_images``, ``num_gt``, ``num_detections``. COCOeval's -1 ("no ground truth") comes back
    as ``None``.
    """
    name, ver, COCO, COCOeval = _implementation(implementation)
    detections = list(detections)
    names = _names(gt, detections, class_names)
    dataset, id_map = to_coco_dataset(gt, names, detections, category_ids)
    unknown = {d["image_id"] for d in detections} - set(id_map)
    if unknown:
        raise ValueError(f"detections name image ids that are not in the ground truth: {sorted(map(str, unknown))[:5]}")
    out: dict[str, Any] = {"implementation": name, "version": ver, "max_dets": max_dets,
                           "num_images": len(gt), "num_gt": len(dataset["annotations"]),
                           "num_detections": len(detections)}
    if not detections:  # COCO.loadRes cannot take an empty list; nothing detected scores 0
        out.update({k: 0.0 for k in COCO_STAT_NAMES})
        has_gt = {a["category_id"] for a in dataset["annotations"]}
        cats = [c["id"] for c in dataset["categories"]]
        out["per_class_AP"] = {n: (0.0 if c in has_gt else None) for n, c in zip(names, cats)}
        out["per_class_AP50"] = dict(out["per_class_AP"])
        return out
    results = detections_to_coco_json(detections, image_id_map=id_map, category_ids=category_ids)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):  # COCOeval prints its tables; keep logs quiet
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out["summary"] = sink.getvalue()
    for k, v in zip(COCO_STAT_NAMES, ev.stats):
        out[k] = None if v < 0 else float(v)
    out["AR_100" if max_dets == 100 else f"AR_{max_dets}"] = out.pop("AR_100")
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    cat_order = list(ev.params.catIds)
    out["per_class_AP"], out["per_class_AP50"] = {}, {}
    for n, c in zip(names, [d["id"] for d in dataset["categories"]]):
        k = cat_order.index(c)
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[0, :, k, 0, -1]
        out["per_class_AP"][n] = float(p_all[p_all > -1].mean()) if (p_all > -1).any() else None
        out["per_class_AP50"][n] = float(p_50[p_50 > -1].mean()) if (p_50 > -1).any() else None
    return out


# ---------------------------------------------------------------------------------------------
# Pascal VOC
def voc_ap(recall, precision, use_07_metric=False) -> float:
    """Average precision from a cumulative recall/precision curve (ordered by falling score).

    ``use_07_metric=True``: VOC2007 11-point interpolation, mean over r in {0, .1, ..., 1} of the
    highest precision at recall >= r (0 when that recall is never reached).
    ``False``: VOC2010+ all-point AP, the area under the precision envelope
    (precision made monotonically non-increasing), summed where recall changes.
    """
    rec = np.asarray(recall, np.float64).reshape(-1)
    prec = np.asarray(precision, np.float64).reshape(-1)
    if use_07_metric:
        ap = 0.0
        for i in range(11):
            t = i / 10
            above = prec[rec >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def _iou_one_to_many(box, boxes):
    iw = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0)
    ih = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _match_class(gt, by_image, detections, k, iou_threshold):
    """VOC matching of class ``k``'s detections, highest score first: (scores, tp, fp, npos).
    A detection on a "difficult" box is neither (tp = fp = 0); a second one on a box is a FP."""
    gt_k, npos = {}, 0
    for g in gt:
        labels = np.asarray(g["labels"]).reshape(-1)
        sel = labels == k
        boxes = np.asarray(g["boxes"], np.float64).reshape(-1, 4)[sel]
        diff = np.asarray(g.get("difficult", np.zeros(len(labels), bool)), bool).reshape(-1)[sel]
        gt_k[g["image_id"]] = (boxes, diff, np.zeros(len(boxes), bool))
        npos += int((~diff).sum())
    dets = [d for d in detections if int(d["label"]) == k]
    order = np.argsort(-np.array([float(d["score"]) for d in dets]), kind="stable")
    tp = np.zeros(len(dets))
    fp = np.zeros(len(dets))
    for rank, i in enumerate(order):
        d = dets[i]
        if d["image_id"] not in by_image:
            raise ValueError(f"detection names image id {d['image_id']!r} that is not in the ground truth")
        boxes, diff, used = gt_k[d["image_id"]]
        if len(boxes) == 0:
            fp[rank] = 1
            continue
        ious = _iou_one_to_many(np.asarray(d["box"], np.float64), boxes)
        j = int(np.argmax(ious))
        if ious[j] > iou_threshold:
            if diff[j]:
                continue  # matched a "difficult" box: ignored
            if not used[j]:
                tp[rank], used[j] = 1, True
            else:
                fp[rank] = 1  # duplicate detection
        else:
            fp[rank] = 1
    scores = np.array([float(dets[i]["score"]) for i in order], np.float64)
    return scores, tp, fp, npos


def voc_evaluate(gt, detections, iou_threshold=0.5, class_names=None) -> dict[str, Any]:
    """Pascal VOC AP per class, both 11-point (VOC2007) and all-point (VOC2010+).

    Returns ``{"iou_threshold", "mAP_11", "mAP_all", "per_class": {name: {"ap_11", "ap_all",
    "num_gt", "num_det", "tp", "fp"}}, "curves": {name: {"recall": [...], "precision": [...]}}}``.
    A class without (non-difficult) ground truth has AP ``None`` and is left out of the means.
    Detections on "difficult" boxes count neither as true nor as false positives.
    """
    detections = list(detections)
    names = _names(gt, detections, class_names)
    by_image = {g["image_id"]: g for g in gt}
    per_class, curves = {}, {}
    for k, name in enumerate(names):
        _, tp, fp, npos = _match_class(gt, by_image, detections, k, iou_threshold)
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        keep = (tp + fp) > 0  # drop ignored ranks from the curve
        ctp, cfp = ctp[keep], cfp[keep]
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        rec = ctp / npos if npos else np.zeros_like(ctp)
        per_class[name] = {
            "ap_11": voc_ap(rec, prec, True) if npos else None,
            "ap_all": voc_ap(rec, prec, False) if npos else None,
            "num_gt": npos, "num_det": int(len(tp)), "tp": int(tp.sum()), "fp": int(fp.sum())}
        curves[name] = {"recall": rec.tolist(), "precision": prec.tolist()}

    def mean(key):
        vals = [v[key] for v in per_class.values() if v[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {"iou_threshold": iou_threshold, "mAP_11": mean("ap_11"), "mAP_all": mean("ap_all"),
            "per_class": per_class, "curves": curves}


def f1_at_thresholds(gt, detections, iou_threshold=0.5, class_names=None) -> dict[str, Any]:
    """Precision, recall and F1 of every score cut, all classes pooled (a detection counts when
    its class and box (IoU > ``iou_threshold``) match a box not already taken, as in VOC).

    Returns ``{"threshold", "f1", "precision", "recall", "tp", "fp", "num_gt"}`` at the cut with the
    highest F1 (keep detections with score >= threshold; ties: the higher threshold, fewer boxes),
    plus ``curve`` ({"threshold", "f1", "tp", "fp"} lists, highest score first: the counts kept at
    each cut). With no true positive at any
    cut, ``threshold`` is None and F1 is 0."""
    detections = list(detections)
    names = _names(gt, detections, class_names)
    by_image = {g["image_id"]: g for g in gt}
    scores, tps, fps, npos = [], [], [], 0
    for k in range(len(names)):
        s, tp, fp, n = _match_class(gt, by_image, detections, k, iou_threshold)
        scores.append(s), tps.append(tp), fps.append(fp)
        npos += n
    s, tp, fp = (np.concatenate(a) if a else np.zeros(0) for a in (scores, tps, fps))
    order = np.argsort(-s, kind="stable")
    s, ctp, cfp = s[order], np.cumsum(tp[order]), np.cumsum(fp[order])
    # a cut keeps every detection scoring >= it: only the last rank of a run of equal scores is a cut
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    s, ctp, cfp = s[last], ctp[last], cfp[last]
    f1 = 2 * ctp / np.maximum(2 * ctp + cfp + (npos - ctp), np.finfo(np.float64).eps)
    out = {"iou_threshold": iou_threshold, "num_gt": npos,
           "curve": {"threshold": s.tolist(), "f1": f1.tolist(), "tp": ctp.astype(int).tolist(),
                     "fp": cfp.astype(int).tolist()}}
    if not len(f1) or f1.max() <= 0:
        return {**out, "threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0, "tp": 0, "fp": int(cfp[-1]) if len(cfp) else 0}
    i = int(np.argmax(f1))  # first maximum = the highest threshold reaching it
    return {**out, "threshold": float(s[i]), "f1": float(f1[i]), "precision": float(ctp[i] / (ctp[i] + cfp[i])),
            "recall": float(ctp[i] / npos) if npos else 0.0, "tp": int(ctp[i]), "fp": int(cfp[i])}


def plot_pr_curves(voc_result, out_dir, prefix="pr_") -> list[Path]:
    """One precision-recall PNG per class from ``voc_evaluate``'s result; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, curve in voc_result["curves"].items():
        stats = voc_result["per_class"][name]
        fig, ax = plt.subplots(figsize=(4.5, 4))
        rec, prec = np.asarray(curve["recall"]), np.asarray(curve["precision"])
        if rec.size:
            env = np.maximum.accumulate(prec[::-1])[::-1]
            ax.plot(rec, prec, lw=1, alpha=0.6, label="precision")
            ax.step(rec, env, where="post", lw=1.5, label="envelope")
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        ax.set_title(f"{name}: AP {fmt(stats['ap_all'])} (all-pt), {fmt(stats['ap_11'])} (11-pt)", fontsize=9)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
        path = out_dir / f"{prefix}{safe}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def draw_detection_grid(images: Sequence[np.ndarray], gt, detections, path, class_names=None,
                        score_threshold=0.3, ncols=4, max_images=16) -> Path:
    """Draw a grid of images with ground truth (green, dashed) and predictions scoring at least
    ``score_threshold`` (red, with class and score) to a PNG. ``images[i]`` is the uint8 image of
    ``gt[i]``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    n = min(len(images), len(gt), max_images)
    names = _names(gt, list(detections), class_names)
    dets_by_image: dict[Any, list] = {}
    for d in detections:
        if float(d["score"]) >= score_threshold:
            dets_by_image.setdefault(d["image_id"], []).append(d)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i])
        g = gt[i]
        for b, lab in zip(np.asarray(g["boxes"]).reshape(-1, 4), np.asarray(g["labels"]).reshape(-1)):
            ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                           edgecolor="lime", linestyle="--", linewidth=1.2))
        for d in dets_by_image.get(g["image_id"], []):
            b = d["box"]
            ax.add_patch(patches.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                           edgecolor="red", linewidth=1.2))
            label = names[int(d["label"])] if int(d["label"]) < len(names) else str(d["label"])
            ax.text(b[0], b[1], f"{label} {float(d['score']):.2f}", color="white", fontsize=6,
                    va="bottom", bbox=dict(facecolor="red", alpha=0.6, pad=0.5, linewidth=0))
        ax.set_title(str(g["image_id"]), fontsize=7)
    fig.suptitle("ground truth (green, dashed) / predictions (red)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
