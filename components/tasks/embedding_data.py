"""The embedding task's data and embeddings, shared by its Trainer, Evaluator and inference
hooks (``components/tasks/embedding.py``, ``embedding_eval.py``): a split in memory, and the
L2-normalised embeddings averaged over the views a model records (``flip_embeddings``,
``tta_scales``). Import them from ``components.tasks.embedding``."""
from __future__ import annotations

from components.base import ComponentError


def load_split(examples, split: str, image_size=None) -> tuple:
    """(uint8 images (N, H, W, 3), int labels (N,), identity names, keys) of one split;
    ``examples``: an :class:`~components.artifacts.Examples` or its folder."""
    import numpy as np

    from components.artifacts import Examples
    from data.tfrecord import read_split

    ex = examples if isinstance(examples, Examples) else Examples.load(examples)
    files = ex.files(split)
    if not files:
        raise ComponentError(f"no TFRecords for split {split!r} in {ex.path}")
    d = read_split(files, tuple(image_size or ex.image_size), label=True, identity=True)
    y, ids = d["labels"], d["identities"]
    if (y < 0).any():  # records without a label: number the identities
        names = sorted(set(ids))
        y = np.array([names.index(i) for i in ids], dtype=np.int64)
    return d["images"], y.astype(np.int64), ids, d["keys"]


def l2_normalise(e):
    """Each row divided by its L2 norm."""
    import numpy as np

    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def raw_outputs(model, x, batch_size: int):
    """The model's raw outputs (float64) for ``x``, ``batch_size`` images at a time."""
    import numpy as np

    out = [np.asarray(model(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 1))


def embed(model, images, batch_size: int = 64, flip: bool = False, scales=(1.0,)):
    """L2-normalised embeddings of uint8 images, averaged over views: a centre crop of each
    fraction in ``scales`` (1.0 = the image itself), and with ``flip`` also their mirrors."""
    import numpy as np

    from models.tta import centre_crop

    e = 0.0
    for s in scales or (1.0,):
        view = images if float(s) == 1.0 else centre_crop(images, s).numpy()
        e = e + l2_normalise(raw_outputs(model, view, batch_size))
        if flip:
            e = e + l2_normalise(raw_outputs(model, np.ascontiguousarray(view[:, :, ::-1]), batch_size))
    return l2_normalise(e)


def embedding_views(info, flip: bool | None = None, scales=None) -> tuple[bool, list[float]]:
    """The views a model's embeddings are averaged over, as recorded in its model_info
    (``flip_embeddings``, ``tta_scales``; a ModelInfo or a dict), unless overridden."""
    flip = bool(info.get("flip_embeddings")) if flip is None else flip
    scales = list(scales if scales is not None else info.get("tta_scales") or [1.0])
    return flip, scales
