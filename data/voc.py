"""Pascal VOC reader (``Annotations/*.xml`` + ``JPEGImages/`` + optional ``ImageSets/Main/*.txt``).

Layouts: ``Annotations/`` + ``JPEGImages/`` (VOC's own), ``annotations/`` + ``images/`` and
XML files lying beside their images are found by themselves, in the given folder or one level
below; any other layout is named with ``annotations_dir`` and ``images_dir`` (relative to the
folder). A folder that does not exist is its own error.

``list_refs(root, split=None, class_names=None, bad_boxes="drop", annotations_dir=None,
images_dir=None)`` lists one ``Ref`` per annotation file; ``load(ref)`` returns an ``ImageRecord`` with boxes in absolute pixels
``[xmin, ymin, xmax, ymax]`` (VOC's 1-based integer corners are kept as written; a box is
inside the image when ``0 <= xmin < xmax <= width``, same for y), ``box_labels`` (index into
the class names) and ``box_names``.

Splits: with ``ImageSets/Main/{train,val,test}.txt`` each record's ``split`` is the file that
lists it (``trainval.txt`` is used when ``train.txt``/``val.txt`` are missing); ``split=`` keeps
one listing (any ``ImageSets/Main/<split>.txt``, e.g. ``"trainval"``). Without ImageSets the
split is None and the ExampleGen's hash split applies.

Class names come from ``class_names`` or, when None, are discovered: the sorted set of names
in the listed annotation files.

Bad boxes (every one is reported in ``record.meta["box_issues"]``, a list of
``{"key", "object", "name", "box", "issue", "action"}`` dicts the ExampleGen copies to its error
report; ``issue`` is one of ``zero_area``, ``inverted``, ``outside_image``, ``unknown_class``,
``bad_coordinates``):

* ``bad_boxes="drop"`` (default): the box is removed from the record;
* ``"clip"``: boxes reaching outside the image are clipped to it and kept; boxes that cannot be
  repaired (zero area, inverted, unknown class, unparsable) are dropped;
* ``"fail"``: any bad box makes the whole record a ``BadRecord``.

A record whose XML is malformed, or whose image is missing or undecodable, raises
``BadRecord``. ``meta`` also carries ``difficult`` (bool per kept box), ``xml_size``
(width, height written in the XML) and ``filename``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from data.records import BadRecord, ImageRecord, Ref, read_image_file

POLICIES = ("drop", "clip", "fail")
_SPLIT_FILES = ("train", "val", "test")


# The common layouts: (annotations folder, images folder) relative to the dataset folder.
LAYOUTS = (("Annotations", "JPEGImages"), ("annotations", "images"), ("Annotations", "Images"),
           ("annotations", "JPEGImages"))


def _layout(root, annotations_dir: str | None = None, images_dir: str | None = None) -> tuple[Path, Path, Path]:
    """(dataset folder, annotations folder, images folder). Explicit ``annotations_dir`` /
    ``images_dir`` (relative to ``root``) win; otherwise the common layouts are tried in ``root``
    and one level below (``bccd/`` holding ``BCCD/``), then XML files lying beside the images."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (a Pascal VOC dataset is a folder)")
    if annotations_dir or images_dir:
        ann = root / (annotations_dir or "Annotations")
        img = root / (images_dir or "JPEGImages")
        for d, opt in ((ann, "annotations_dir"), (img, "images_dir")):
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: no such folder ({opt})")
        return root, ann, img
    for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        for a, i in LAYOUTS:
            if (base / a).is_dir():
                img = base / i if (base / i).is_dir() else base / a
                return base, base / a, img
    if any(root.glob("*.xml")):
        return root, root, root
    raise FileNotFoundError(
        f"{root}: not a Pascal VOC folder: no {', '.join('/'.join(x) for x in LAYOUTS)} inside it or one level "
        "below, and no .xml files in it; name the folders with source.options annotations_dir and images_dir")


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _split_of(root: Path) -> dict[str, str]:
    main = root / "ImageSets" / "Main"
    membership: dict[str, str] = {}
    names = [s for s in _SPLIT_FILES if (main / f"{s}.txt").is_file()]
    if (main / "trainval.txt").is_file() and not {"train", "val"} <= set(names):
        names = ["trainval"] + [s for s in names if s == "test"]
    for s in names:
        for i in _read_ids(main / f"{s}.txt"):
            membership.setdefault(i, s)
    return membership


def discover_classes(root, ids=None, annotations_dir: str | None = None, images_dir: str | None = None) -> list[str]:
    """Sorted set of object names in the annotation files (all, or those in ``ids``); malformed
    files are skipped here (``load`` reports them)."""
    return _discover(_layout(root, annotations_dir, images_dir)[1], ids)


def _discover(ann: Path, ids=None) -> list[str]:
    files = [ann / f"{i}.xml" for i in ids] if ids is not None else sorted(ann.glob("*.xml"))
    names = set()
    for f in files:
        try:
            for obj in ET.parse(f).getroot().iter("object"):
                n = obj.findtext("name")
                if n and n.strip():
                    names.add(n.strip())
        except (ET.ParseError, OSError):
            continue
    return sorted(names)


def list_refs(root, split: str | None = None, class_names=None, bad_boxes: str = "drop",
              annotations_dir: str | None = None, images_dir: str | None = None) -> list[Ref]:
    """One ``Ref`` per annotation (sorted by id). See the module docstring for the parameters."""
    if bad_boxes not in POLICIES:
        raise ValueError(f"bad_boxes must be one of {POLICIES}, got {bad_boxes!r}")
    root, ann, img = _layout(root, annotations_dir, images_dir)
    membership = _split_of(root)
    if split is not None:
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"split {split!r}: {listing} does not exist")
        ids = _read_ids(listing)
    else:
        ids = sorted(p.stem for p in ann.glob("*.xml"))
    names = tuple(class_names) if class_names is not None else tuple(_discover(ann, ids))
    extra = (("class_names", names), ("bad_boxes", bad_boxes), ("root", str(root)), ("images", str(img)))
    return [Ref(key=i, source=str(ann / f"{i}.xml"),
                split=split if split is not None else membership.get(i), extra=extra) for i in sorted(ids)]


def _image_path(images: Path, xml_root, stem: str) -> Path:
    fname = (xml_root.findtext("filename") or "").strip()
    if fname and (images / fname).is_file():
        return images / fname
    for ext in (".jpg", ".jpeg", ".png", ".JPG", ".bmp"):
        if (images / f"{stem}{ext}").is_file():
            return images / f"{stem}{ext}"
    return images / (fname or f"{stem}.jpg")


def check_boxes(key, raw_boxes, names, class_names, width, height, policy):
    """Apply the bad-box policy to parsed boxes; shared by the VOC and COCO readers.

    ``raw_boxes``: list of 4-sequences (floats or None when unparsable) ``[xmin, ymin, xmax, ymax]``.
    Returns ``(boxes (N, 4) float32, labels (N,) int64, names, kept_indices, issues)``; raises
    ``BadRecord`` under ``policy="fail"`` at the first bad box.
    """
    index = {n: i for i, n in enumerate(class_names)}
    boxes, labels, kept_names, kept, issues = [], [], [], [], []

    def report(i, name, box, issue, action):
        entry = {"key": key, "object": i, "name": name, "box": None if box is None else [float(v) for v in box],
                 "issue": issue, "action": action}
        if policy == "fail":
            raise BadRecord(key, f"object {i} ({name}): {issue} box {entry['box']}")
        issues.append(entry)

    for i, (box, name) in enumerate(zip(raw_boxes, names)):
        if name not in index:
            report(i, name, box, "unknown_class", "dropped")
            continue
        if box is None or not all(np.isfinite(box)):
            report(i, name, box, "bad_coordinates", "dropped")
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 < x1 or y2 < y1:
            report(i, name, box, "inverted", "dropped")
            continue
        if x2 == x1 or y2 == y1:
            report(i, name, box, "zero_area", "dropped")
            continue
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            if policy == "clip":
                c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
                if c[2] <= c[0] or c[3] <= c[1]:
                    report(i, name, box, "outside_image", "dropped")
                    continue
                report(i, name, box, "outside_image", "clipped")
                x1, y1, x2, y2 = c
            else:
                report(i, name, box, "outside_image", "dropped")
                continue
        boxes.append([x1, y1, x2, y2])
        labels.append(index[name])
        kept_names.append(name)
        kept.append(i)
    return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), kept_names, kept, issues)


def load(ref: Ref) -> ImageRecord:
    params = dict(ref.extra)
    images = Path(params.get("images") or Path(params["root"]) / "JPEGImages")
    try:
        xml_root = ET.parse(ref.source).getroot()
    except FileNotFoundError:
        raise BadRecord(ref.key, f"annotation file not found: {ref.source}") from None
    except (ET.ParseError, OSError) as e:
        raise BadRecord(ref.key, f"malformed XML {ref.source}: {e}") from None
    if xml_root.tag != "annotation":
        raise BadRecord(ref.key, f"malformed XML {ref.source}: root element <{xml_root.tag}>, expected <annotation>")
    image_path = _image_path(images, xml_root, ref.key)
    image = read_image_file(str(image_path), ref.key)
    height, width = image.shape[:2]

    def num(el, tag):
        try:
            return float(el.findtext(tag))
        except (TypeError, ValueError):
            return None

    raw, names, difficult = [], [], []
    for obj in xml_root.iter("object"):
        names.append((obj.findtext("name") or "").strip())
        bb = obj.find("bndbox")
        vals = [num(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")] if bb is not None else [None]
        raw.append(None if any(v is None for v in vals) else vals)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    boxes, labels, kept_names, kept, issues = check_boxes(
        ref.key, raw, names, params["class_names"], width, height, params["bad_boxes"])
    size = xml_root.find("size")
    xml_size = None if size is None else (num(size, "width"), num(size, "height"))
    return ImageRecord(key=ref.key, image=image, split=ref.split, boxes=boxes, box_labels=labels,
                       box_names=kept_names,
                       meta={"box_issues": issues, "difficult": [difficult[i] for i in kept],
                             "xml_size": xml_size, "filename": image_path.name,
                             "classes": list(params["class_names"])})
