"""ExampleGen on bad and odd input: every unusable record is reported with its file and reason,
the component fails (writing nothing) above max_bad_fraction, and keeps the rest otherwise."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.base import ComponentError
from pipeline.runner import run_single
from tests.conftest import dataset_path


def make_folder(root, per_class=4, size=(40, 48), classes=("a", "b")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def gen(tmp_path, source, out="out", **params):
    return run_single("ExampleGen", {}, {"source": source, "image_size": [32, 32], **params}, tmp_path / out)


def read_split_count(out, split):
    import tensorflow as tf

    files = sorted(str(p) for p in (out / "examples" / split).glob("*.tfrecord"))
    return sum(1 for _ in tf.data.TFRecordDataset(files))


def test_corrupt_jpeg_fails_naming_the_file_and_writes_nothing(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ComponentError) as e:
        gen(tmp_path, {"format": "image_folder", "path": str(root)})
    assert "a/broken.jpg" in str(e.value) and "cannot decode image" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_bad_records_within_tolerance_are_reported_and_the_rest_kept(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "a" / "broken.jpg").write_bytes(b"garbage")
    full = np.asarray(Image.open(root / "b" / "0.png"))
    Image.fromarray(full).save(root / "b" / "trunc.jpg")
    data = (root / "b" / "trunc.jpg").read_bytes()
    (root / "b" / "trunc.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    meta = gen(tmp_path, {"format": "image_folder", "path": str(root)}, max_bad_fraction=0.5,
               split_ratios={"train": 1.0})
    report = json.loads((tmp_path / "out" / "examples" / "error_report.json").read_text())
    assert {b["key"] for b in report["bad"]} == {"a/broken.jpg", "b/trunc.jpg"}
    assert meta["metrics"]["bad_records"] == 2
    assert read_split_count(tmp_path / "out", "train") == 8


def test_modes_are_converted_to_rgb_at_the_configured_size(tmp_path):
    root = tmp_path / "imgs"
    (root / "x").mkdir(parents=True)
    Image.fromarray(np.full((20, 30), 100, np.uint8), "L").save(root / "x" / "grey.png")
    Image.fromarray(np.full((20, 30, 4), 200, np.uint8), "RGBA").save(root / "x" / "rgba.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(root / "x" / "sixteen.png")
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).convert("P").save(root / "x" / "palette.gif")
    gen(tmp_path, {"format": "image_folder", "path": str(root)}, split_ratios={"train": 1.0})
    from data.tfrecord import read_split

    files = sorted(str(p) for p in (tmp_path / "out" / "examples" / "train").glob("*.tfrecord"))
    d = read_split(files, (32, 32))
    assert d["images"].shape == (4, 32, 32, 3) and d["images"].dtype == np.uint8
    by_name = {k.rsplit("/", 1)[-1].split(".")[0]: img for k, img in zip(d["keys"], d["images"])}
    # every mode becomes a grey in all three channels at its own level; RGBA (200, 200, 200, alpha
    # 200) is composited on white: 200 * 200/255 + 255 * 55/255 = 211.9
    assert (by_name["grey"] == 100).all() and (by_name["rgba"] == 212).all()
    # the palette image as PIL decodes it (quantised, dithered), resized: the same mean level
    decoded = np.asarray(Image.open(root / "x" / "palette.gif").convert("RGB"), np.float64)
    assert abs(by_name["palette"].mean() - decoded.mean()) < 2.0
    sixteen = by_name["sixteen"]
    assert (sixteen == sixteen[0, 0, 0]).all() and 0 < sixteen[0, 0, 0] <= 255  # 16-bit scaled into 8 bits


def test_empty_class_folder_is_a_warning_in_the_report(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "empty").mkdir()
    gen(tmp_path, {"format": "image_folder", "path": str(root)})
    report = json.loads((tmp_path / "out" / "examples" / "error_report.json").read_text())
    assert any("empty" in w and "no images" in w for w in report["warnings"])


def _h5(path, n=6, classes=(b"0", b"1", b"2"), labels=None, keys=("train_set_x", "train_set_y")):
    import h5py

    with h5py.File(path, "w") as f:
        f[keys[0]] = np.random.default_rng(0).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
        f[keys[1]] = np.array(labels if labels is not None else [i % len(classes) for i in range(n)])
        f["list_classes"] = np.array(classes)
    return path


def test_course_h5_reads_train_and_test_files(tmp_path):
    tr = _h5(tmp_path / "train_signs.h5")
    te = _h5(tmp_path / "test_signs.h5", n=3, keys=("test_set_x", "test_set_y"))
    meta = gen(tmp_path, {"format": "course_h5", "path": [str(tr), str(te)]},
               split_map={"train": "train", "test": "test"})
    assert meta["metrics"]["examples_train"] == 6 and meta["metrics"]["examples_test"] == 3
    schema = json.loads((tmp_path / "out" / "examples" / "schema.json").read_text())
    assert schema["classes"] == ["0", "1", "2"]


def test_h5_label_outside_list_classes_is_a_bad_record(tmp_path):
    tr = _h5(tmp_path / "train.h5", labels=[0, 1, 2, 7, 0, 1])
    with pytest.raises(ComponentError) as e:
        gen(tmp_path, {"format": "course_h5", "path": [str(tr)]})
    assert "train.h5[3]" in str(e.value) and "label 7 outside list_classes" in str(e.value)


def test_wrong_keyed_and_truncated_h5(tmp_path):
    bad = _h5(tmp_path / "weird.h5", keys=("x", "y"))
    with pytest.raises(ComponentError) as e:
        gen(tmp_path, {"format": "course_h5", "path": [str(bad)]})
    assert "weird.h5" in str(e.value) and "train_set_x" in str(e.value)
    good = _h5(tmp_path / "t.h5")
    data = good.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(ComponentError) as e:
        gen(tmp_path, {"format": "course_h5", "path": [str(tmp_path / "trunc.h5")]}, out="o2")
    assert "trunc.h5" in str(e.value)


def test_duplicates_across_splits_are_reported_and_dropped_from_test(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "test"):
        (root / split / "c").mkdir(parents=True)
    rng = np.random.default_rng(1)
    same = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(same).save(root / "train" / "c" / "x.png")
    Image.fromarray(same).save(root / "test" / "c" / "x copy.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "test" / "c" / "y.png")
    src = {"format": "image_folder", "path": str(root), "options": {"splits": ["train", "test"]}}
    gen(tmp_path, src, out="rep", split_map={"train": "train", "test": "test"}, duplicates="report")
    d = json.loads((tmp_path / "rep" / "examples" / "duplicates.json").read_text())
    assert len(d["leaks"]) == 1 and sorted(d["leaks"][0]["keys"]) == ["test/c/x copy.png", "train/c/x.png"]
    assert read_split_count(tmp_path / "rep", "test") == 2
    gen(tmp_path, src, out="drop", split_map={"train": "train", "test": "test"}, duplicates="drop_leaks")
    d = json.loads((tmp_path / "drop" / "examples" / "duplicates.json").read_text())
    assert [x["key"] for x in d["dropped"]] == ["test/c/x copy.png"]
    assert read_split_count(tmp_path / "drop", "test") == 1 and read_split_count(tmp_path / "drop", "train") == 1


def test_hash_split_is_deterministic_and_follows_ratios(tmp_path):
    src = {"format": "synthetic_signs", "options": {"num_examples": 200}}
    a = gen(tmp_path, src, out="a", split_ratios={"train": 0.75, "eval": 0.25})
    b = gen(tmp_path, src, out="b", split_ratios={"train": 0.75, "eval": 0.25})
    assert a["metrics"] == b["metrics"]
    assert 120 <= a["metrics"]["examples_train"] <= 175


@pytest.mark.dataset
def test_real_signs_folder_counts_and_leaks(tmp_path):
    root = dataset_path("signs_64x64_jpg")
    meta = run_single("ExampleGen", {}, {
        "source": {"format": "image_folder", "path": str(root),
                   "options": {"label_from": "prefix", "splits": ["train_signs", "val_signs", "test_signs"]}},
        "split_map": {"train_signs": "train", "val_signs": "train", "test_signs": "test"},
        "duplicates": "drop_leaks"}, tmp_path / "out")
    m = meta["metrics"]
    assert m["records"] == 1200 and m["bad_records"] == 0
    assert m["leak_groups"] == 12  # 9 test<->train + 3 test<->val, per the dataset's README
    assert m["examples_test"] == 120 - m["dropped_duplicates"]
    assert m["examples_train"] == 1080


def test_scratch_removal_beside_the_reports_fails_the_component_only_when_they_succeeded(tmp_path, monkeypatch):
    """The spill folder is deleted while the reports are written: gone afterwards; a failure to
    delete it fails the component; a failure of the reports themselves is not masked by it."""
    import shutil

    from components.example_gen import _removed_meanwhile

    scratch = tmp_path / "scratch"
    (scratch / "spill").mkdir(parents=True)
    (scratch / "spill" / "b0.tfrecord").write_bytes(b"x" * 1000)
    with _removed_meanwhile(scratch):
        pass
    assert not scratch.exists()

    def refuse(path, *a, **k):
        raise PermissionError(f"cannot remove {path}")

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(ComponentError, match="could not remove its scratch folder"):
        with _removed_meanwhile(scratch):
            pass
    with pytest.raises(ValueError, match="the reports' own error"):
        with _removed_meanwhile(scratch):
            raise ValueError("the reports' own error")
