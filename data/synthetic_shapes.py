"""Synthetic detection scenes: coloured shapes with known boxes on textured backgrounds.

Each scene ``index`` of a dataset with ``seed`` is drawn from its own random generator
``default_rng([seed, index])``, so any scene can be regenerated alone (what ``load(ref)`` does
inside a Beam worker) and the whole set is deterministic. Shape colour is random, so the class
is carried by the shape alone. Objects may overlap (box IoU up to ``max_overlap``; later shapes
are drawn over earlier ones) and their size varies over ``scale_range`` (fraction of the image
side).

Three ways to use it:

* ``list_refs(num_images=..., seed=..., ...)`` / ``load(ref)``: the record contract of
  ``data/records.py`` (the default pipeline's ExampleGen);
* ``generate(num_images, ...)``: a list of ``ImageRecord`` in memory (tests, benchmarks);
* ``write_voc(out_dir, num_images, ...)``: a Pascal VOC folder that flows through ``data.voc``.

About 1-2 ms per 128 px scene.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.records import BadRecord, ImageRecord, Ref

CLASSES = ("circle", "square", "triangle")

_DEFAULTS = dict(image_size=128, classes=CLASSES, min_objects=1, max_objects=4,
                 scale_range=(0.15, 0.45), max_overlap=0.3)


def _background(rng, size):
    """Textured background: a colour gradient, stripes or a checkerboard, plus noise; kept
    mid-grey-ish so saturated shapes stand out without being trivial."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(60, 160, size=3).astype(np.float32)
    grad = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    kind = rng.integers(3)
    freq = rng.uniform(4, 16)
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        pattern = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    elif kind == 1:
        pattern = np.sign(np.sin(2 * np.pi * freq * xx) * np.sin(2 * np.pi * freq * yy))
    else:
        pattern = np.zeros_like(xx)
    img += pattern[..., None] * rng.uniform(5, 25)
    img += rng.normal(0, rng.uniform(2, 10), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _box_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_scene(index: int, seed: int = 0, image_size: int = 128, classes=CLASSES, min_objects: int = 1,
               max_objects: int = 4, scale_range=(0.15, 0.45), max_overlap: float = 0.3):
    """One scene: ``(image (S, S, 3) uint8, boxes (N, 4) float32 [xmin, ymin, xmax, ymax] pixels,
    labels (N,) int64)``. Supported shapes: circle, square, triangle, diamond."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([int(seed), int(index)])
    size = int(image_size)
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    boxes, labels = [], []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(20):
            side = rng.uniform(*scale_range) * size
            label = int(rng.integers(len(classes)))
            x0 = rng.uniform(0, size - side)
            y0 = rng.uniform(0, size - side)
            box = [x0, y0, x0 + side, y0 + side]
            if all(_box_iou(box, b) <= max_overlap for b in boxes):
                break
        else:
            continue
        # Saturated colour: one channel high, one low, one random.
        colour = rng.permutation([int(rng.integers(200, 256)), int(rng.integers(0, 60)), int(rng.integers(0, 256))])
        colour = tuple(int(c) for c in colour)
        name = classes[label]
        if name == "circle":
            draw.ellipse(box, fill=colour)
        elif name == "square":
            draw.rectangle(box, fill=colour)
        elif name == "triangle":
            draw.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=colour)
        elif name == "diamond":
            draw.polygon([(x0 + side / 2, y0), (x0 + side, y0 + side / 2), (x0 + side / 2, y0 + side),
                          (x0, y0 + side / 2)], fill=colour)
        else:
            raise ValueError(f"synthetic_shapes: unknown shape {name!r}; use circle, square, triangle, diamond")
        boxes.append(box)
        labels.append(label)
    return (np.asarray(img, np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64))


def _params_tuple(params: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in params.items()))


def list_refs(num_images: int = 200, seed: int = 0, start: int = 0, image_size: int = 128, classes=CLASSES,
              min_objects: int = 1, max_objects: int = 4, scale_range=(0.15, 0.45), max_overlap: float = 0.3
              ) -> list[Ref]:
    """Refs for scenes ``start .. start + num_images - 1``; the scene parameters as in ``make_scene``
    (spelled out so ExampleGen's ``source.options`` are checked against them)."""
    params = {"image_size": image_size, "classes": tuple(classes), "min_objects": min_objects,
              "max_objects": max_objects, "scale_range": tuple(scale_range), "max_overlap": max_overlap}
    extra = (("seed", int(seed)),) + _params_tuple(params)
    return [Ref(key=f"shapes_{seed}_{i:06d}", source="synthetic_shapes", index=i, extra=extra)
            for i in range(start, start + num_images)]


def load(ref: Ref) -> ImageRecord:
    params = dict(ref.extra)
    seed = params.pop("seed", 0)
    classes = tuple(params["classes"])
    try:
        image, boxes, labels = make_scene(ref.index, seed=seed, **params)
    except ValueError as e:
        raise BadRecord(ref.key, str(e)) from None
    return ImageRecord(key=ref.key, image=image, split=ref.split, boxes=boxes, box_labels=labels,
                       box_names=[classes[i] for i in labels], meta={"box_issues": [], "classes": list(classes)})


def generate(num_images: int, seed: int = 0, start: int = 0, **scene_params) -> list[ImageRecord]:
    """Scenes as in-memory ``ImageRecord`` s (boxes in pixels)."""
    return [load(r) for r in list_refs(num_images, seed=seed, start=start, **scene_params)]


def write_voc(out_dir, num_images: int, seed: int = 0, splits=None, **scene_params) -> Path:
    """Write a Pascal VOC folder (``Annotations/``, ``JPEGImages/`` (PNG files, lossless, named in
    each XML's ``<filename>``), ``ImageSets/Main/{split}.txt``). ``splits`` maps split name to
    fraction (default train .8 / val .1 / test .1), assigned in scene order."""
    from xml.sax.saxutils import escape

    from PIL import Image

    out = Path(out_dir)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    splits = splits or {"train": 0.8, "val": 0.1, "test": 0.1}
    names = list(splits)
    bounds = np.cumsum([splits[n] for n in names]) / sum(splits.values()) * num_images
    members: dict[str, list[str]] = {n: [] for n in names}
    for i, rec in enumerate(generate(num_images, seed=seed, **scene_params)):
        stem = f"shapes_{i:06d}"
        Image.fromarray(rec.image).save(out / "JPEGImages" / f"{stem}.png")
        h, w = rec.image.shape[:2]
        objs = "".join(
            f"<object><name>{escape(n)}</name><difficult>0</difficult><bndbox><xmin>{b[0]:.2f}</xmin>"
            f"<ymin>{b[1]:.2f}</ymin><xmax>{b[2]:.2f}</xmax><ymax>{b[3]:.2f}</ymax></bndbox></object>"
            for b, n in zip(rec.boxes, rec.box_names))
        (out / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{stem}.png</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>\n")
        members[names[int(np.searchsorted(bounds, i, side="right"))]].append(stem)
    for name, stems in members.items():
        (out / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(s + "\n" for s in stems))
    return out
