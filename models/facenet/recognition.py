"""Face verification and recognition with the course's function names and meaning.

``database`` is the course's dict ``name -> encoding`` (or anything with a
``nearest(encoding) -> (name, distance)`` method, e.g. :class:`data.face_db.FaceDB`).
Distances are L2 between L2-normalised encodings; ``dist < threshold`` means "same person".

Input scaling (documented contract): :func:`img_to_encoding` resizes the image to the
model's input size and then

* feeds raw 0-255 float pixels when the model carries its own preprocessing (it contains a
  ``Rescaling`` or ``Normalization`` layer, as the Trainer's exported models do, the
  Transform's layers in front), or
* divides by 255 (the course's ``img / 255``) when the model has no preprocessing layer,
  as ``faceRecoModel()`` and ``small_face_model()`` built bare.

``preprocess=`` overrides the detection: "raw", "unit" (/255) or a callable.

``face_crop=`` (a dict ``{margin, min_face, on_miss}``, as a Trainer model's
``model_info.json`` records it when its ExampleGen cropped faces) detects the face and crops
a square around it before resizing, the way the training images were made. With
``on_miss: bad`` a photo without a detectable face raises ``ValueError``; with ``keep`` the
whole photo is used.
"""
from __future__ import annotations

import numpy as np

_PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


def has_preprocessing(model) -> bool:
    """True when ``model`` (or a nested model) contains a Rescaling/Normalization layer."""
    stack = [model]
    while stack:
        m = stack.pop()
        for layer in getattr(m, "layers", []):
            if type(layer).__name__ in _PREPROCESSING_LAYERS:
                return True
            if getattr(layer, "layers", None):
                stack.append(layer)
    return False


def _input_hw(model) -> tuple[int, int]:
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    h, w = shape[1], shape[2]
    if h is None or w is None:
        raise ValueError("the model's input size is not fixed; cannot decide a resize target")
    return int(h), int(w)


def load_face_image(image_path, size: tuple[int, int], face_crop: dict | None = None) -> np.ndarray:
    """Read an image (any mode, via data.records), crop the face when ``face_crop`` is
    given, and resize to (h, w): float32 0-255."""
    from PIL import Image

    from data.records import read_image_file

    arr = read_image_file(str(image_path))
    if face_crop:
        from data.face_crop import crop_face

        found = crop_face(arr, margin=face_crop.get("margin", 0.2), min_face=face_crop.get("min_face", 0.2))
        if not found.found and face_crop.get("on_miss") == "bad":
            raise ValueError(f"{image_path}: no face found (the model was trained on detected faces only)")
        arr = found.image
    h, w = size
    if arr.shape[:2] != (h, w):
        arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR))
    return arr.astype(np.float32)


def img_to_encoding(image_path, model, preprocess=None, face_crop: dict | None = None) -> np.ndarray:
    """The course's ``img_to_encoding``: the (1, D) L2-normalised encoding of one image file."""
    x = load_face_image(image_path, _input_hw(model), face_crop)
    if preprocess is None:
        preprocess = "raw" if has_preprocessing(model) else "unit"
    if preprocess == "unit":
        x = x / 255.0
    elif callable(preprocess):
        x = np.asarray(preprocess(x), dtype=np.float32)
    elif preprocess != "raw":
        raise ValueError(f"preprocess must be 'raw', 'unit' or a callable, got {preprocess!r}")
    emb = np.asarray(model(x[None], training=False), dtype=np.float32)
    # The models already end in an L2 normalisation; re-normalise as the course does so a
    # model without it still gives unit encodings.
    return emb / np.linalg.norm(emb, ord=2)


def _lookup(database, identity):
    if hasattr(database, "embeddings_for"):
        encs = database.embeddings_for(identity)
        if len(encs) == 0:
            raise KeyError(f"{identity!r} is not enrolled")
        return encs
    if identity not in database:
        raise KeyError(f"{identity!r} is not in the database (known: {sorted(database)})")
    return np.asarray(database[identity], dtype=np.float32).reshape(-1, np.shape(database[identity])[-1])


def verify(image_path, identity, database, model, threshold: float = 0.7, face_crop: dict | None = None):
    """The course's ``verify``: is the person at the door ``identity``?

    Returns ``(dist, door_open)``; ``dist`` is the L2 distance to the identity's (closest)
    enrolled encoding, ``door_open`` is ``dist < threshold``.
    """
    encoding = img_to_encoding(image_path, model, face_crop=face_crop)
    dist = float(np.min(np.linalg.norm(_lookup(database, identity) - encoding, axis=-1)))
    if dist < threshold:
        print("It's " + str(identity) + ", welcome in!")
        door_open = True
    else:
        print("It's not " + str(identity) + ", please go away")
        door_open = False
    return dist, door_open


def who_is_it(image_path, database, model, threshold: float = 0.7, face_crop: dict | None = None):
    """The course's ``who_is_it``: the closest enrolled identity.

    Returns ``(min_dist, identity)``; prints "Not in the database." when ``min_dist`` exceeds
    the threshold (the identity is still returned, as in the course).
    """
    encoding = img_to_encoding(image_path, model, face_crop=face_crop)
    if hasattr(database, "nearest"):
        identity, min_dist = database.nearest(encoding[0])
    else:
        min_dist, identity = 100.0, None  # the course's initial value
        for name, db_enc in database.items():
            dist = float(np.min(np.linalg.norm(
                np.asarray(db_enc, dtype=np.float32).reshape(-1, encoding.shape[-1]) - encoding,
                axis=-1)))
            if dist < min_dist:
                min_dist, identity = dist, name
    min_dist = float(min_dist)
    if min_dist > threshold:
        print("Not in the database.")
    else:
        print("it's " + str(identity) + ", the distance is " + str(min_dist))
    return min_dist, identity
