"""COCO JSON reader (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).

``list_refs(annotation_file, image_dir=None, class_names=None, bad_boxes="drop", split=None)``
lists one ``Ref`` per entry of ``images`` (``Ref.index`` is the COCO image id); ``load(ref)``
reads the image (``image_dir / file_name``; ``image_dir`` defaults to the JSON's folder) and its
annotations, converted to absolute ``[xmin, ymin, xmax, ymax]`` pixels.

Labels: ``class_names`` given -> a category whose name is not in it is an ``unknown_class``
box; otherwise the classes are the categories sorted by id (label ``k`` is the k-th). The COCO
category id of each label is in ``record.meta["category_ids"]`` so results can be written back
in COCO ids. An annotation naming a category id that ``categories`` lacks is also
``unknown_class``. ``iscrowd=1`` annotations are crowd regions, not objects: they are left out
of the boxes and listed in ``meta["crowd_boxes"]`` (and reported as issue ``crowd``, action
``ignored``). Bad boxes follow the same ``bad_boxes`` policy and ``meta["box_issues"]`` format as
``data.voc``.

The parsed JSON is cached per (path, mtime, size) in each process, so ``load`` in a Beam worker
parses the file once, not once per image.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from data.records import BadRecord, ImageRecord, Ref, read_image_file
from data.voc import POLICIES, check_boxes


@functools.lru_cache(maxsize=4)
def _parse(path: str, mtime: float, size: int):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO detection file (missing list {key!r})")
    cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    images = {int(im["id"]): im for im in data["images"]}
    anns: dict[int, list] = {}
    for a in data["annotations"]:
        anns.setdefault(int(a.get("image_id", -1)), []).append(a)
    return cats, images, anns


def _load_json(path) -> tuple:
    st = os.stat(path)
    return _parse(str(path), st.st_mtime, st.st_size)


def list_refs(annotation_file, image_dir=None, class_names=None, bad_boxes: str = "drop",
              split: str | None = None) -> list[Ref]:
    """One ``Ref`` per image, in image-id order. ``split`` is stamped on every record (COCO files
    are usually one split each, e.g. ``instances_val2017.json`` -> ``"val"``)."""
    if bad_boxes not in POLICIES:
        raise ValueError(f"bad_boxes must be one of {POLICIES}, got {bad_boxes!r}")
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        cats, images, _ = _load_json(path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot read COCO JSON ({e})") from None
    if class_names is None:
        class_names = [cats[c] for c in sorted(cats)]
    name_to_cat = {n: c for c, n in cats.items()}
    category_ids = tuple(name_to_cat.get(n, -1) for n in class_names)
    image_dir = Path(image_dir) if image_dir is not None else path.parent
    extra = (("annotation_file", str(path)), ("image_dir", str(image_dir)), ("class_names", tuple(class_names)),
             ("category_ids", category_ids), ("bad_boxes", bad_boxes))
    refs = []
    for image_id in sorted(images):
        fname = str(images[image_id].get("file_name", image_id))
        refs.append(Ref(key=fname, source=str(image_dir / fname), index=image_id, split=split, extra=extra))
    return refs


def load(ref: Ref) -> ImageRecord:
    params = dict(ref.extra)
    try:
        cats, images, anns = _load_json(params["annotation_file"])
    except (OSError, ValueError) as e:
        raise BadRecord(ref.key, f"cannot read {params['annotation_file']}: {e}") from None
    info = images.get(ref.index)
    if info is None:
        raise BadRecord(ref.key, f"image id {ref.index} not in {params['annotation_file']}")
    image = read_image_file(ref.source, ref.key)
    height, width = image.shape[:2]
    raw, names, crowd, crowd_issues, ann_ids = [], [], [], [], []
    for a in anns.get(ref.index, []):
        name = cats.get(int(a.get("category_id", -1)), f"<category id {a.get('category_id')}>")
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            box = [x, y, x + w, y + h]
        except (KeyError, TypeError, ValueError):
            box = None
        if a.get("iscrowd", 0) and box is not None:
            crowd.append(box)
            crowd_issues.append({"key": ref.key, "object": int(a.get("id", -1)), "name": name, "box": box,
                                 "issue": "crowd", "action": "ignored"})
            continue
        raw.append(box)
        names.append(name)
        ann_ids.append(a.get("id"))
    boxes, labels, kept_names, kept, issues = check_boxes(
        ref.key, raw, names, params["class_names"], width, height, params["bad_boxes"])
    for issue in issues:  # report the COCO annotation id, which users can search for
        issue["annotation_id"] = ann_ids[issue["object"]]
    if (info.get("width"), info.get("height")) != (width, height) and info.get("width") is not None:
        size_note = {"json_size": [info.get("width"), info.get("height")], "image_size": [width, height]}
    else:
        size_note = None
    return ImageRecord(key=ref.key, image=image, split=ref.split, boxes=boxes, box_labels=labels,
                       box_names=kept_names,
                       meta={"box_issues": issues + crowd_issues, "coco_image_id": ref.index,
                             "annotation_ids": [ann_ids[i] for i in kept],
                             "crowd_boxes": np.asarray(crowd, np.float32).reshape(-1, 4).tolist(),
                             "category_ids": list(params["category_ids"]), "classes": list(params["class_names"]),
                             "size_mismatch": size_note})
