"""Prediction on image files with a registered (models:/...) or local model, for every task:
what `python -m pipeline predict` runs. The images are read and checked before the model loads
(a missing or unreadable file is reported at once, not after a 20 s load); each is then
prepared the way ExampleGen prepared the training data (the task's ``prepare_image``) and
predicted by the model's task plug-in (``Task.predictor``), which also formats what is printed."""
from __future__ import annotations

from components.base import DEFAULT_TRACKING_URI


class PredictError(Exception):
    pass


def read_images(paths: list[str]) -> list[dict]:
    """One row per path: ``{"image": path, "pixels": uint8 array}`` or ``{"image", "error"}``."""
    from data.records import BadRecord, read_image_file

    rows = []
    for path in paths:
        try:
            rows.append({"image": path, "pixels": read_image_file(path)})
        except BadRecord as e:
            rows.append({"image": path, "error": e.reason})
    return rows


def predict_images(model_uri: str, images: list[str], tracking_uri: str = DEFAULT_TRACKING_URI, **options):
    """(task plug-in or None when no image was readable, rows): one row per image, the task's prediction merged in (a classifier's
    ``class``/``probability``/``top``, a detector's ``detections``, a face model's ``embedding``
    summary or nearest identity) or an ``error``. ``options`` go to the task's predictor
    (``top``, ``score_threshold``, ``face_db``, ``out_dir``, ...)."""
    import numpy as np

    from components.model_uri import ModelNotFound, load_model_and_info
    from components.tasks import get_task

    rows = read_images(images)
    good = [r for r in rows if "error" not in r]
    if not good:  # nothing to predict: don't load the model
        return None, rows
    try:
        model, info = load_model_and_info(model_uri, tracking_uri)
    except ModelNotFound as e:
        raise PredictError(str(e)) from None
    task = get_task(info.task)
    for r in good:
        try:
            r["input"] = task.prepare_image(r.pop("pixels"), info)
        except ValueError as e:  # e.g. a face model's face crop finding no face (on_miss: bad)
            r["error"] = str(e)
    good = [r for r in good if "error" not in r]
    if not good:
        return task, rows
    batch = np.stack([r.pop("input") for r in good])
    predict = task.predictor(model, info, **task.predict_options(info, options))
    for r, p in zip(good, predict(batch, [r["image"] for r in good])):
        p.pop("key", None)
        r.update(p)
    return task, rows
