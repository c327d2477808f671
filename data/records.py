"""The record contract every dataset reader in `data/` follows.

A reader is two functions, so that Apache Beam can distribute the work cheaply:

* ``list_refs(**params) -> list[Ref]``: enumerates the dataset as small, picklable
  references (a file path, an h5 row index). Only these go through ``beam.Create``;
  the pixels are read inside a DoFn (a large in-memory list is pickled into the pipeline).
* ``load(ref) -> ImageRecord``: reads one record. A record that cannot be used raises
  ``BadRecord`` with a reason; the ExampleGen counts it, lists it in its error report
  and keeps going.

Images are always returned as ``uint8`` arrays of shape (H, W, 3) (grey, RGBA and 16-bit
inputs converted). Resizing to the configured size is the ExampleGen's job, not the reader's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class BadRecord(Exception):
    """A record that cannot be used. ``key`` names the file/row, ``reason`` says why."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Ref:
    """A picklable pointer to one record: ``key`` is shown to users in error reports."""

    key: str
    source: str  # file path (or h5 path)
    index: int = -1  # row index inside a multi-record file, -1 for one-file-one-record
    split: str | None = None  # the dataset's own split, when it has one
    label: int | None = None  # label known from the listing (folder name, prefix)
    label_name: str | None = None
    extra: tuple = ()  # reader-specific, hashable


@dataclasses.dataclass
class ImageRecord:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    label: int | None = None
    label_name: str | None = None
    split: str | None = None
    # Detection: boxes in absolute pixels [xmin, ymin, xmax, ymax] of `image`, with class ids/names.
    boxes: np.ndarray | None = None  # (N, 4) float32
    box_labels: np.ndarray | None = None  # (N,) int64
    box_names: list[str] | None = None
    # Faces: the person's identity (also used as `label` within a split).
    identity: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def to_rgb_uint8(img, key: str) -> np.ndarray:
    """Convert a PIL image of any mode (L, LA, P, RGBA, I;16, I, F, CMYK) to (H, W, 3) uint8."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0  # 16-bit: map the used range into 8 bits
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA"):
        # Composite transparent pixels on white: a transparent background is "no content".
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadRecord(key, f"unexpected image shape {arr.shape}")
    return arr


def read_image_file(path: str, key: str | None = None) -> np.ndarray:
    """Decode an image file (JPEG/PNG/PGM/BMP/...) to (H, W, 3) uint8, or raise BadRecord."""
    from PIL import Image, UnidentifiedImageError

    key = key or path
    try:
        with Image.open(path) as img:
            img.load()  # force a full decode so truncated files fail here
            return to_rgb_uint8(img, key)
    except BadRecord:
        raise
    except FileNotFoundError:
        raise BadRecord(key, "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadRecord(key, f"cannot decode image ({type(e).__name__}: {e})") from None
