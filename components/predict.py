"""Prediction on image files with a registered (models:/...) or local model: what
`python -m pipeline predict` runs. Images are read, converted to RGB and resized to the model's
input the same way ExampleGen does, so predictions match evaluation."""
from __future__ import annotations



class PredictError(Exception):
    pass


def load_classifier(model_uri: str, tracking_uri: str):
    """Returns (keras model, info dict with classes and image_size)."""
    from components.model_uri import ModelNotFound, load_model_and_info

    try:
        return load_model_and_info(model_uri, tracking_uri)
    except ModelNotFound as e:
        raise PredictError(str(e)) from None


def predict_images(model_uri: str, images: list[str], tracking_uri: str = "sqlite:///mlflow.db", top: int = 1) -> list[dict]:
    import numpy as np
    from PIL import Image

    from data.records import BadRecord, read_image_file

    model, info = load_classifier(model_uri, tracking_uri)
    h, w = info["image_size"]
    classes = info["classes"]
    rows, batch, idx = [], [], []
    for path in images:
        try:
            img = read_image_file(path)
        except BadRecord as e:
            rows.append({"image": path, "error": e.reason})
            continue
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        rows.append({"image": path})
        batch.append(img)
        idx.append(len(rows) - 1)
    if batch:
        probs = model.predict(np.stack(batch), verbose=0)
        for i, pr in zip(idx, probs):
            pr = np.asarray(pr).reshape(-1)
            if pr.size == 1:  # binary sigmoid
                pr = np.array([1 - pr[0], pr[0]])
            order = np.argsort(-pr)[:top]
            rows[i]["top"] = [(classes[j], float(pr[j])) for j in order]
            rows[i]["class"], rows[i]["probability"] = rows[i]["top"][0]
    return rows
