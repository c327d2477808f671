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
import struct

import numpy as np


def png_bytes(image) -> bytes:
    """PNG of a uint8 (H, W, 3) array or an RGB ``PIL.Image`` (the same pixels give the same bytes;
    an image saves the array round trip)."""
    from PIL import Image

    buf = io.BytesIO()
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    img.save(buf, format="PNG", compress_level=1)  # level 1: 5x faster, ~same size
    return buf.getvalue()


# ----------------------------------------------------------------------------- writing, without TensorFlow
# ``tf.train.Example`` is written by hand (the few wire-format rules below) rather than with
# TensorFlow's generated classes, so ExampleGen's worker processes never import TensorFlow (seconds
# of CPU per process on a 2-core machine). Why not the ``protobuf`` package with the Example
# messages defined here: its default descriptor pool already holds ``tensorflow.Example`` in any
# process that also imported TensorFlow (a second definition must live in a separate pool and be
# kept in step by hand anyway), and building message objects costs ~5x the few byte joins below.
# The bytes equal ``tf.train.Example.SerializeToString(deterministic=True)`` (features sorted by
# name; tests/data/test_tfrecord_codec.py checks this against TensorFlow for every feature kind).
#
#   Example  { Features features = 1; }            Features { map<string, Feature> feature = 1; }
#   Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
#   Int64List { repeated int64 value = 1 [packed]; }
_SMALL = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    n &= 0xFFFFFFFFFFFFFFFF  # int64: a negative value is its two's complement (10 bytes)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with a one-byte tag (field numbers 1-15)."""
    return _SMALL[tag] + _varint(len(payload)) + payload


def _bytes_feature(values) -> bytes:
    return _field(0x0A, b"".join(_field(0x0A, v) for v in values))


def _int64_feature(values) -> bytes:
    return _field(0x1A, _field(0x0A, b"".join(_varint(int(v)) for v in values)) if len(values) else b"")


def _float_feature(values) -> bytes:
    arr = np.asarray(values, dtype="<f4").reshape(-1)
    return _field(0x12, _field(0x0A, arr.tobytes()) if arr.size else b"")


def serialize_example(features: dict[str, tuple[str, list]]) -> bytes:
    """``{name: (kind, values)}`` with kind ``bytes``, ``int64`` or ``float`` -> a serialized
    ``tf.train.Example`` (features in name order, as TensorFlow's deterministic serialization)."""
    enc = {"bytes": _bytes_feature, "int64": _int64_feature, "float": _float_feature}
    entries = b"".join(_field(0x0A, _field(0x0A, name.encode()) + _field(0x12, enc[kind](values)))
                       for name, (kind, values) in sorted(features.items()))
    return _field(0x0A, entries)


def encode_example(image, key: str, sha256: str, label: int | None = None,
                   label_name: str | None = None, identity: str | None = None,
                   boxes_norm: np.ndarray | None = None, box_labels=None, box_names=None) -> bytes:
    """One image record (a uint8 (H, W, 3) array or an RGB ``PIL.Image``) as a serialized
    ``tf.train.Example`` (see the module's docstring)."""
    height, width = (image.shape[0], image.shape[1]) if isinstance(image, np.ndarray) else (image.height, image.width)
    feats = {
        "image/encoded": ("bytes", [png_bytes(image)]),
        "image/height": ("int64", [height]),
        "image/width": ("int64", [width]),
        "image/key": ("bytes", [key.encode()]),
        "image/sha256": ("bytes", [sha256.encode()]),
    }
    if label is not None:
        feats["image/class/label"] = ("int64", [int(label)])
        feats["image/class/text"] = ("bytes", [(label_name or str(label)).encode()])
    if identity is not None:
        feats["image/identity"] = ("bytes", [identity.encode()])
    if boxes_norm is not None:
        bx = np.asarray(boxes_norm, dtype=np.float32).reshape(-1, 4)
        for j, side in enumerate(("xmin", "ymin", "xmax", "ymax")):
            feats[f"image/object/bbox/{side}"] = ("float", bx[:, j])
        feats["image/object/class/label"] = ("int64", [int(x) for x in (box_labels if box_labels is not None else [])])
        feats["image/object/class/text"] = ("bytes", [n.encode() for n in (box_names or [])])
    return serialize_example(feats)


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked crc32c of ``data``."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked crc32c of the length, the data, masked crc32c of the
    data (little endian), as ``tf.io.TFRecordWriter`` writes it (no compression)."""
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", _masked_crc(head)) + data + struct.pack("<I", _masked_crc(data))


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of a message: an int for a varint, bytes
    otherwise; a truncated or malformed message is a ValueError."""
    i, n = 0, len(buf)
    try:
        while i < n:
            key, i = _read_varint(buf, i)
            wire = key & 7
            if wire == 0:
                value, i = _read_varint(buf, i)
            elif wire == 2:
                length, i = _read_varint(buf, i)
                value, i = buf[i:i + length], i + length
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                value, i = buf[i:i + width], i + width
            else:
                raise ValueError(f"wire type {wire}")
            if i > n:
                raise IndexError
            yield key >> 3, wire, value
    except IndexError:
        raise ValueError("truncated tf.train.Example") from None


def _int64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _feature_values(feature: bytes) -> list:
    """A ``Feature``'s values as TensorFlow's classes list them (floats widened from float32),
    packed or not; the last kind present wins (a oneof); none: []."""
    values: list = []
    for kind, _, payload in _fields(feature):
        if kind not in (1, 2, 3):
            continue
        values = []
        for number, wire, v in _fields(payload):
            if number != 1:
                continue
            if kind == 1:
                values.append(v)
            elif kind == 2:
                values += np.frombuffer(v, "<f4").tolist()  # packed (wire 2) or one fixed32 (wire 5)
            elif wire == 0:
                values.append(_int64(v))
            else:  # packed int64s
                j = 0
                while j < len(v):
                    x, j = _read_varint(v, j)
                    values.append(_int64(x))
    return values


def decode_example_py(serialized: bytes) -> dict:
    """A serialized ``tf.train.Example`` -> ``{feature name: list of values}`` (bytes, int, float),
    in plain Python: StatisticsGen's and BulkInferrer's Beam workers parse records without
    importing TensorFlow (the writing side's reasons, above; tests/data/test_tfrecord_codec.py
    checks it against TensorFlow's parser)."""
    out: dict = {}
    for number, wire, features in _fields(serialized):
        if number != 1 or wire != 2:
            continue
        for entry_number, _, entry in _fields(features):
            if entry_number != 1:
                continue
            name, feature = b"", b""
            for field, _, value in _fields(entry):  # map entry: key = 1, value = 2
                if field == 1:
                    name = value
                elif field == 2:
                    feature = value
            out[name.decode()] = _feature_values(feature)
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
