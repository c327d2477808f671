"""TFRecord codec: `tf.train.Example` features shared by every branch, in the naming of the
TensorFlow Object Detection API so other tools can read the files.

    image/encoded       PNG bytes (lossless; decoded once and cached by the Trainer)
    image/height, image/width
    image/key           source file / row, for error reports and predictions
    image/sha256        of the decoded pixels before resizing (duplicate detection)
    image/class/label   int64 (classification; faces: identity index)   -- optional
    image/class/text    bytes                                            -- optional
    image/identity      bytes (faces)                                    -- optional
    image/object/bbox/xmin, ymin, xmax, ymax   float, normalised to [0, 1] (detection)
    image/object/class/label, image/object/class/text
"""
from __future__ import annotations

import io

import numpy as np


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # level 1: 5x faster, ~same size
    return buf.getvalue()


def encode_example(image: np.ndarray, key: str, sha256: str, label: int | None = None,
                   label_name: str | None = None, identity: str | None = None,
                   boxes_norm: np.ndarray | None = None, box_labels=None, box_names=None) -> bytes:
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def f(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    feats = {
        "image/encoded": b([png_bytes(image)]),
        "image/height": i([image.shape[0]]),
        "image/width": i([image.shape[1]]),
        "image/key": b([key.encode()]),
        "image/sha256": b([sha256.encode()]),
    }
    if label is not None:
        feats["image/class/label"] = i([int(label)])
        feats["image/class/text"] = b([(label_name or str(label)).encode()])
    if identity is not None:
        feats["image/identity"] = b([identity.encode()])
    if boxes_norm is not None:
        bx = np.asarray(boxes_norm, dtype=np.float32).reshape(-1, 4)
        feats["image/object/bbox/xmin"] = f(bx[:, 0].tolist())
        feats["image/object/bbox/ymin"] = f(bx[:, 1].tolist())
        feats["image/object/bbox/xmax"] = f(bx[:, 2].tolist())
        feats["image/object/bbox/ymax"] = f(bx[:, 3].tolist())
        feats["image/object/class/label"] = i([int(x) for x in (box_labels if box_labels is not None else [])])
        feats["image/object/class/text"] = b([n.encode() for n in (box_names or [])])
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def decode_example_py(serialized: bytes) -> dict:
    """Parse one record in Python (for Beam DoFns and tests)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    out = {}
    for k, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        vals = list(getattr(feat, kind).value)
        out[k] = vals
    return out


def split_files(examples_dir, split: str) -> list[str]:
    from pathlib import Path

    files = sorted(str(p) for p in (Path(examples_dir) / split).glob("*.tfrecord*"))
    return files


def classification_dataset(files: list[str], image_size: tuple[int, int]):
    """A `tf.data.Dataset` of (uint8 image (H, W, 3), int64 label), parsed and decoded."""
    import tensorflow as tf

    parse = parser(image_size, label=True)
    return tf.data.TFRecordDataset(files).map(lambda x: (lambda r: (r["image"], r["label"]))(parse(x)),
                                              num_parallel_calls=2, deterministic=True)


# ----------------------------------------------------------------------------- reading back
# One feature spec and one parser for every reader (Trainer, Evaluator, BulkInferrer, Anchors,
# StatisticsGen): the groups a task needs are asked for by name.
BOX_SIDES = ("xmin", "ymin", "xmax", "ymax")


def feature_spec(*, label: bool = False, identity: bool = False, boxes: bool = False) -> dict:
    import tensorflow as tf

    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/key": tf.io.FixedLenFeature([], tf.string, default_value="")}
    if label:
        spec["image/class/label"] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
    if identity:
        spec["image/identity"] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if boxes:
        spec["image/object/class/label"] = tf.io.VarLenFeature(tf.int64)
        spec.update({f"image/object/bbox/{s}": tf.io.VarLenFeature(tf.float32) for s in BOX_SIDES})
    return spec


def parser(image_size, *, label: bool = False, identity: bool = False, boxes: bool = False):
    """A function serialized record -> dict with ``image`` (uint8 (H, W, 3)), ``key`` and, as
    asked, ``label``, ``identity``, ``boxes`` ((n, 4) normalised xyxy) and ``box_labels``."""
    import tensorflow as tf

    spec = feature_spec(label=label, identity=identity, boxes=boxes)
    h, w = image_size

    def parse(x):
        f = tf.io.parse_single_example(x, spec)
        out = {"image": tf.ensure_shape(tf.io.decode_png(f["image/encoded"], channels=3), [h, w, 3]),
               "key": f["image/key"]}
        if label:
            out["label"] = f["image/class/label"]
        if identity:
            out["identity"] = f["image/identity"]
        if boxes:
            out["boxes"] = tf.stack([tf.sparse.to_dense(f[f"image/object/bbox/{s}"]) for s in BOX_SIDES], 1)
            out["box_labels"] = tf.sparse.to_dense(f["image/object/class/label"])
        return out
    return parse


def fixed_options(ds):
    """Deterministic, autotune off: on these CPUs tf.data's autotune thread stalls ``fit`` for
    10-20 s at every epoch boundary."""
    import tensorflow as tf

    opts = tf.data.Options()
    opts.autotune.enabled = False
    opts.deterministic = True
    return ds.with_options(opts)


def read_split(files: list[str], image_size, *, label: bool = False, identity: bool = False,
               boxes: bool = False) -> dict:
    """A whole split in memory, in file order: ``images`` uint8 (N, H, W, 3), ``keys`` (list of
    str), and as asked ``labels`` int64 (N,), ``identities`` (list of str), ``boxes`` / ``box_labels``
    (lists of per-image arrays)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(files).map(parser(image_size, label=label, identity=identity, boxes=boxes))
    out: dict = {"images": [], "keys": []}
    if label:
        out["labels"] = []
    if identity:
        out["identities"] = []
    if boxes:
        out["boxes"], out["box_labels"] = [], []
    for r in ds:
        out["images"].append(r["image"].numpy())
        out["keys"].append(r["key"].numpy().decode())
        if label:
            out["labels"].append(int(r["label"].numpy()))
        if identity:
            out["identities"].append(r["identity"].numpy().decode())
        if boxes:
            out["boxes"].append(r["boxes"].numpy().reshape(-1, 4))
            out["box_labels"].append(r["box_labels"].numpy().reshape(-1))
    h, w = image_size
    out["images"] = np.stack(out["images"]) if out["images"] else np.zeros((0, h, w, 3), np.uint8)
    if label:
        out["labels"] = np.asarray(out["labels"], np.int64)
    return out
