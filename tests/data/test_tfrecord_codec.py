"""The TensorFlow-free TFRecord codec (data/tfrecord.py): ``encode_example`` gives the bytes of
``tf.train.Example.SerializeToString(deterministic=True)`` for every feature kind ExampleGen
writes, and ``frame_record``'s files are read by ``tf.data.TFRecordDataset`` with its CRC checks."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from data.tfrecord import encode_example, frame_record, serialize_example


def tf_example(feats: dict) -> bytes:
    import tensorflow as tf

    def feature(kind, values):
        if kind == "bytes":
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))
        if kind == "int64":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    ex = tf.train.Example(features=tf.train.Features(feature={k: feature(*v) for k, v in feats.items()}))
    return ex.SerializeToString(deterministic=True)


@pytest.mark.parametrize("feats", [
    {},
    {"a": ("bytes", [])}, {"a": ("int64", [])}, {"a": ("float", [])},
    {"a": ("bytes", [b"", b"x" * 200, bytes(range(256)) * 70])},  # multi-byte lengths
    {"i": ("int64", [0, 1, -1, 127, 128, 300, 2**31, -2**31, 2**63 - 1, -2**63])},
    {"f": ("float", [0.0, -0.0, 1.5, 1e-30, 3.4e38, float("inf"), float("-inf")])},
    {"z": ("int64", [3]), "b/x": ("bytes", [b"k"]), "a": ("float", [0.25, 0.5]), "\u00e9": ("bytes", [b"u"]),
     "m" * 300: ("int64", [1])},
])
def test_serialize_example_is_tensorflows_deterministic_serialization(feats):
    assert serialize_example(feats) == tf_example(feats)


def _tf_encode_example_as_before(image, key, sha, label=None, label_name=None, identity=None, boxes_norm=None,
                                 box_labels=None, box_names=None) -> bytes:
    """The previous encoder, on TensorFlow's classes (the reference)."""
    from data.tfrecord import png_bytes

    feats = {"image/encoded": ("bytes", [png_bytes(image)]), "image/height": ("int64", [image.shape[0]]),
             "image/width": ("int64", [image.shape[1]]), "image/key": ("bytes", [key.encode()]),
             "image/sha256": ("bytes", [sha.encode()])}
    if label is not None:
        feats["image/class/label"] = ("int64", [int(label)])
        feats["image/class/text"] = ("bytes", [(label_name or str(label)).encode()])
    if identity is not None:
        feats["image/identity"] = ("bytes", [identity.encode()])
    if boxes_norm is not None:
        bx = np.asarray(boxes_norm, dtype=np.float32).reshape(-1, 4)
        for j, s in enumerate(("xmin", "ymin", "xmax", "ymax")):
            feats[f"image/object/bbox/{s}"] = ("float", bx[:, j].tolist())
        feats["image/object/class/label"] = ("int64", list(box_labels if box_labels is not None else []))
        feats["image/object/class/text"] = ("bytes", [n.encode() for n in (box_names or [])])
    return tf_example(feats)


CASES = [
    dict(key="a/1.png", sha="ab" * 32, label=3, label_name="three"),
    dict(key="k\u00e9y", sha="0" * 64, label=0),  # label_name None: the label's digits
    dict(key="face/1", sha="f" * 64, label=-1, identity="person_\u00e9"),
    dict(key="det/1", sha="d" * 64, boxes_norm=np.array([[0.1, 0.2, 0.5, 0.9], [0, 0, 1, 1]], np.float32) / 3,
         box_labels=np.array([2, 0]), box_names=["cat", "dog"]),
    dict(key="det/empty", sha="e" * 64, boxes_norm=np.zeros((0, 4), np.float32), box_labels=[], box_names=[]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["key"])
def test_encode_example_equals_the_tensorflow_encoding_and_parses_the_same(case):
    import tensorflow as tf

    from data.tfrecord import decode_example_py, feature_spec

    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    kw = {k: v for k, v in case.items() if k not in ("key", "sha")}
    mine = encode_example(img, case["key"], case["sha"], **kw)
    ref = _tf_encode_example_as_before(img, case["key"], case["sha"], **kw)
    assert mine == ref
    assert decode_example_py(mine) == decode_example_py(ref)
    spec = feature_spec(label="label" in case, identity="identity" in case, boxes="boxes_norm" in case)
    parsed = tf.io.parse_single_example(mine, spec)
    assert parsed["image/key"].numpy().decode() == case["key"]
    assert np.array_equal(tf.io.decode_png(parsed["image/encoded"]).numpy(), img)


def test_framed_records_are_read_by_tensorflow_with_crc_checks(tmp_path):
    import tensorflow as tf

    img = np.full((8, 8, 3), 7, np.uint8)
    records = [encode_example(img, f"k{i}", "s" * 64, label=i) for i in range(5)] + [b"", b"\x00" * 70000]
    path = tmp_path / "a.tfrecord"
    path.write_bytes(b"".join(frame_record(r) for r in records))
    with tf.io.TFRecordWriter(str(tmp_path / "ref.tfrecord")) as w:
        for r in records:
            w.write(r)
    assert path.read_bytes() == (tmp_path / "ref.tfrecord").read_bytes()
    assert [r.numpy() for r in tf.data.TFRecordDataset([str(path)])] == records
    corrupt = bytearray(path.read_bytes())
    corrupt[30] ^= 0xFF  # inside the first record's data: its data CRC no longer matches
    (tmp_path / "bad.tfrecord").write_bytes(bytes(corrupt))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset([str(tmp_path / "bad.tfrecord")]))


def test_encoding_does_not_import_tensorflow():
    code = ("import sys, numpy as np; from data.tfrecord import encode_example, frame_record; "
            "frame_record(encode_example(np.zeros((4, 4, 3), np.uint8), 'k', 's', label=1, boxes_norm=np.zeros((1, 4)),"
            " box_labels=[0], box_names=['a'])); assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__import__("pathlib").Path(__file__).parents[2])


def test_encode_example_of_a_pil_image_equals_that_of_its_array():
    from PIL import Image

    arr = np.random.default_rng(1).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    assert encode_example(Image.fromarray(arr), "k", "s" * 64, label=2) == encode_example(arr, "k", "s" * 64, label=2)


def _tf_decoded(serialized: bytes) -> dict:
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    return {k: list(getattr(f, f.WhichOneof("kind")).value) for k, f in ex.features.feature.items()}


@pytest.mark.parametrize("feats", [
    {},
    {"a": ("bytes", [])}, {"a": ("int64", [])}, {"a": ("float", [])},
    {"a": ("bytes", [b"", b"x" * 200, bytes(range(256)) * 70])},
    {"i": ("int64", [0, 1, -1, 127, 128, 300, 2**31, -2**31, 2**63 - 1, -2**63])},
    {"f": ("float", [0.0, -0.0, 1.5, 1e-30, 3.4e38, float("inf"), float("-inf"), 0.1])},
    {"z": ("int64", [3]), "b/x": ("bytes", [b"k"]), "a": ("float", [0.25, 0.5]), "\u00e9": ("bytes", [b"u"])},
])
def test_decode_example_py_equals_tensorflows_parser(feats):
    from data.tfrecord import decode_example_py

    serialized = tf_example(feats)
    assert decode_example_py(serialized) == _tf_decoded(serialized)


def test_decode_example_py_reads_unpacked_lists_and_refuses_truncated_records():
    """Other writers may send int64 and float lists unpacked (one field per value) and fields in
    another order; a cut record is an error, not a silently shorter one."""
    import struct

    from data.tfrecord import _field, _varint, decode_example_py

    ints = b"".join(b"\x08" + _varint(v & 0xFFFFFFFFFFFFFFFF) for v in (5, -2))  # field 1, wire 0
    floats = b"".join(b"\x0d" + struct.pack("<f", v) for v in (0.5, -1.25))  # field 1, wire 5
    feature = {"i": _field(0x1A, ints), "f": _field(0x12, floats)}
    entries = b"".join(_field(0x0A, _field(0x12, feature[k]) + _field(0x0A, k.encode())) for k in ("i", "f"))
    assert decode_example_py(_field(0x0A, entries)) == {"i": [5, -2], "f": [0.5, -1.25]}
    whole = tf_example({"a": ("bytes", [b"x" * 100])})
    with pytest.raises(ValueError, match="truncated"):
        decode_example_py(whole[:-10])


def test_statistics_and_bulk_inference_decoding_imports_no_tensorflow():
    code = ("import sys; from data.tfrecord import decode_example_py, encode_example; import numpy as np; "
            "r = encode_example(np.zeros((4, 4, 3), np.uint8), 'k', 's', label=1); "
            "assert decode_example_py(r)['image/key'] == [b'k']; assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
