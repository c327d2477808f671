"""Face detection and cropping before resizing: ExampleGen's ``face_crop`` step, and the same
step for new photos in the ``faces`` commands and ``models.facenet.img_to_encoding`` (the
model records the settings it was trained with, so serving crops the way training did).

Why: a face that fills the frame in one photo and sits small in a wider shot in another
is at two scales; cropping a square around the detected face, ``margin`` wider than the
detector's box, puts every face at one scale. It is for photos where the face is a small or
varying part of the frame. On AT&T, already framed on the head, it gives no consistent gain
(``python -m benchmarks faces --face-crop 0.2``: accuracy up, ROC AUC down; hair and head
outline, which the crop cuts, carry identity there).

The detector is OpenCV's Viola-Jones Haar cascades (frontal face, then profile face and
its mirror image when no frontal face is found). Their XML files ship inside the
``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so nothing is downloaded at
run time, and OpenCV runs beside TensorFlow 2.21 without sharing anything with it. A learned
detector (YuNet, MTCNN, RetinaFace) would find more faces at odd angles, but none installable
here ships its weights inside the package.

Failures are explicit: :func:`crop_face` returns ``found=False`` with the image unchanged
when no face is detected, and the caller decides (``on_miss``): keep the whole image,
or treat the record as bad.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FRONTAL = "haarcascade_frontalface_default.xml"
PROFILE = "haarcascade_profileface.xml"
DETECT_MAX_SIDE = 480  # larger photos are shrunk for detection only (speed); the crop is full-size


@dataclass(frozen=True)
class FaceCropResult:
    image: np.ndarray  # the square crop (H, W, C) uint8, or the input when no face was found
    found: bool
    box: tuple[int, int, int, int] | None = None  # detector box (x, y, w, h) in input pixels


@lru_cache(maxsize=None)
def _cascade(name: str):
    import cv2

    path = cv2.data.haarcascades + name
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise RuntimeError(f"OpenCV could not load its Haar cascade {path}; reinstall opencv-python-headless")
    return c


def detect_face(grey: np.ndarray, min_face: float = 0.2, neighbors: int = 3) -> tuple[int, int, int, int] | None:
    """The largest face in a 2-D uint8 image as ``(x, y, w, h)``, or None.

    ``min_face``: the smallest face side searched for, as a fraction of the image's shorter
    side (a small fraction finds small faces in wide shots, and costs time).
    """
    h, w = grey.shape
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    if scale < 1.0:
        import cv2

        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    side = max(12, int(min_face * min(grey.shape)))
    kw = {"scaleFactor": 1.05, "minNeighbors": neighbors, "minSize": (side, side)}
    boxes = list(_cascade(FRONTAL).detectMultiScale(grey, **kw))
    if not boxes:
        boxes = list(_cascade(PROFILE).detectMultiScale(grey, **kw))
    if not boxes:  # the profile cascade finds faces turned one way: try the mirror image
        gw = grey.shape[1]
        boxes = [(gw - x - bw, y, bw, bh) for x, y, bw, bh in
                 _cascade(PROFILE).detectMultiScale(np.ascontiguousarray(grey[:, ::-1]), **kw)]
    if not boxes:
        return None
    x, y, bw, bh = max(boxes, key=lambda b: int(b[2]) * int(b[3]))
    return tuple(int(round(v / scale)) for v in (x, y, bw, bh))


def square_crop(image: np.ndarray, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """A square around ``box`` whose side is the box's longer side times ``1 + margin``,
    centred on the box; parts outside the image repeat the edge pixels."""
    x, y, bw, bh = box
    side = max(1, int(round(max(bw, bh) * (1.0 + margin))))
    x0 = int(round(x + bw / 2 - side / 2))
    y0 = int(round(y + bh / 2 - side / 2))
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2)
        image = np.pad(image, widths, mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    return np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])


def crop_face(image: np.ndarray, margin: float = 0.2, min_face: float = 0.2, detector=None) -> FaceCropResult:
    """Detect the largest face in an RGB (or grey) uint8 image and crop a square around it.

    ``detector``: a callable ``grey -> box | None`` replacing the Haar cascades (tests).
    """
    import cv2

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] >= 3:
        grey = cv2.cvtColor(np.ascontiguousarray(image[..., :3], dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    else:
        grey = image.reshape(image.shape[:2]).astype(np.uint8)
    box = detector(grey) if detector is not None else detect_face(grey, min_face=min_face)
    if box is None:
        return FaceCropResult(image, False)
    return FaceCropResult(square_crop(image, box, margin), True, tuple(int(v) for v in box))
