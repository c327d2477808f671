"""Detection readers: Pascal VOC (BCCD and hand-made folders), COCO JSON, synthetic shapes."""
from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest
from PIL import Image

from data import coco, synthetic_shapes, voc
from data.records import BadRecord
from tests.conftest import dataset_path


# ------------------------------------------------------------------ VOC on BCCD
@pytest.mark.dataset
def test_voc_reader_on_bccd():
    root = dataset_path("bccd")
    refs = voc.list_refs(root)
    assert len(refs) == 364
    assert dict(refs[0].extra)["class_names"] == ("Platelets", "RBC", "WBC")
    splits = {r.split for r in refs}
    assert splits <= {"train", "val", "test", None} and "test" in splits
    assert len(voc.list_refs(root, split="test")) == 72
    assert len(voc.list_refs(root, split="trainval")) == 292
    pickle.dumps(refs[0])  # refs travel through beam.Create
    by_key = {r.key: r for r in refs}
    rec = voc.load(by_key["BloodImage_00000"])
    assert rec.image.shape == (480, 640, 3) and rec.image.dtype == np.uint8
    assert rec.boxes.dtype == np.float32 and rec.boxes.shape == (len(rec.box_labels), 4)
    assert rec.box_names[0] == "WBC" and rec.box_labels[0] == 2
    np.testing.assert_array_equal(rec.boxes[0], [260, 177, 491, 376])
    assert rec.meta["box_issues"] == []
    # The two zero-area boxes of the dataset are reported (and dropped) under the default policy.
    issues = []
    for key in ("BloodImage_00338", "BloodImage_00343"):
        issues += voc.load(by_key[key]).meta["box_issues"]
    assert [i["issue"] for i in issues] == ["zero_area", "zero_area"]
    assert {i["action"] for i in issues} == {"dropped"} and {i["key"] for i in issues} == {"BloodImage_00338", "BloodImage_00343"}
    with pytest.raises(BadRecord, match="zero_area"):
        voc.load(voc.list_refs(root, bad_boxes="fail")[[r.key for r in refs].index("BloodImage_00338")])


# ------------------------------------------------------------------ VOC hand-made cases
def _voc_folder(tmp_path, objects_xml: dict[str, str], size=(40, 30)):
    for sub in ("Annotations", "JPEGImages"):
        (tmp_path / sub).mkdir(exist_ok=True)
    for stem, objs in objects_xml.items():
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "JPEGImages" / f"{stem}.jpg")
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(objs)
    return tmp_path


def _obj(name, x1, y1, x2, y2):
    return (f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def test_voc_bad_cases(tmp_path):
    root = _voc_folder(tmp_path, {
        "good": f"<annotation><filename>good.jpg</filename>{_obj('cat', 1, 2, 10, 12)}</annotation>",
        "broken": "<annotation><object><name>cat</name>",
        "mixed": ("<annotation>" + _obj("cat", 1, 1, 5, 5) + _obj("zebra", 1, 1, 5, 5)
                  + _obj("dog", -5, 3, 20, 40) + _obj("dog", 50, 1, 60, 5) + _obj("cat", 9, 9, 3, 12)
                  + "<object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>"),
    })
    (root / "Annotations" / "noimage.xml").write_text(f"<annotation>{_obj('cat', 1, 1, 2, 2)}</annotation>")
    refs = {r.key: r for r in voc.list_refs(root, class_names=["cat", "dog"])}
    assert refs["good"].split is None
    good = voc.load(refs["good"])
    np.testing.assert_array_equal(good.boxes, [[1, 2, 10, 12]])
    with pytest.raises(BadRecord, match="malformed XML"):
        voc.load(refs["broken"])
    with pytest.raises(BadRecord, match="not found|cannot decode"):
        voc.load(refs["noimage"])

    mixed = voc.load(refs["mixed"])
    assert mixed.box_names == ["cat"]
    assert [(i["object"], i["issue"], i["action"]) for i in mixed.meta["box_issues"]] == [
        (1, "unknown_class", "dropped"), (2, "outside_image", "dropped"), (3, "outside_image", "dropped"),
        (4, "inverted", "dropped"), (5, "bad_coordinates", "dropped")]

    clip_refs = {r.key: r for r in voc.list_refs(root, class_names=["cat", "dog"], bad_boxes="clip")}
    clipped = voc.load(clip_refs["mixed"])
    np.testing.assert_array_equal(clipped.boxes, [[1, 1, 5, 5], [0, 3, 20, 30]])  # image is 40 x 30
    assert ("outside_image", "clipped") in [(i["issue"], i["action"]) for i in clipped.meta["box_issues"]]
    assert clipped.box_labels.tolist() == [0, 1]

    fail_refs = {r.key: r for r in voc.list_refs(root, class_names=["cat", "dog"], bad_boxes="fail")}
    with pytest.raises(BadRecord, match="unknown_class"):
        voc.load(fail_refs["mixed"])
    # Discovered classes: every name in the readable files, sorted.
    assert dict(voc.list_refs(root)[0].extra)["class_names"] == ("cat", "dog", "zebra")
    with pytest.raises(ValueError, match="bad_boxes"):
        voc.list_refs(root, bad_boxes="ignore")


# ------------------------------------------------------------------ COCO
def test_coco_reader(tmp_path):
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (50, 40), (0, 0, 0)).save(tmp_path / name)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40},
                   {"id": 3, "file_name": "b.png", "width": 50, "height": 40},
                   {"id": 9, "file_name": "missing.jpg", "width": 50, "height": 40}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [45, 30, 10, 20], "iscrowd": 0},  # outside
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 4], "iscrowd": 0},     # zero area
            {"id": 5, "image_id": 7, "category_id": 99, "bbox": [1, 1, 3, 3], "iscrowd": 0},    # unknown cat
            {"id": 6, "image_id": 7, "category_id": 1, "bbox": [2, 2, 30, 30], "iscrowd": 1},   # crowd
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    refs = coco.list_refs(path, split="val")
    assert [r.index for r in refs] == [3, 7, 9] and refs[0].split == "val"
    rec = coco.load(refs[1])
    assert dict(refs[1].extra)["class_names"] == ("person", "dog")  # sorted by category id
    np.testing.assert_array_equal(rec.boxes, [[10, 5, 30, 15], [0, 0, 5, 5]])
    assert rec.box_labels.tolist() == [1, 0] and rec.box_names == ["dog", "person"]
    assert rec.meta["category_ids"] == [1, 18] and rec.meta["coco_image_id"] == 7
    assert sorted((i["annotation_id"] if "annotation_id" in i else i["object"], i["issue"], i["action"])
                  for i in rec.meta["box_issues"]) == [
        (3, "outside_image", "dropped"), (4, "zero_area", "dropped"), (5, "unknown_class", "dropped"),
        (6, "crowd", "ignored")]
    assert coco.load(refs[0]).boxes.shape == (0, 4)
    with pytest.raises(BadRecord, match="not found"):
        coco.load(refs[2])
    clip = coco.load(coco.list_refs(path, bad_boxes="clip")[1])
    np.testing.assert_array_equal(clip.boxes[-1], [45, 30, 50, 40])
    with pytest.raises(BadRecord):
        coco.load(coco.list_refs(path, bad_boxes="fail")[1])
    only_dog = coco.load(coco.list_refs(path, class_names=["dog"])[1])
    assert only_dog.box_names == ["dog"]
    bad = tmp_path / "bad.json"
    bad.write_text("{\"images\": []}")
    with pytest.raises(ValueError, match="COCO"):
        coco.list_refs(bad)


# ------------------------------------------------------------------ synthetic shapes
def test_synthetic_shapes_deterministic_fast_and_valid():
    t0 = time.perf_counter()
    recs = synthetic_shapes.generate(200, seed=3, image_size=128)
    assert time.perf_counter() - t0 < 10
    again = synthetic_shapes.generate(3, seed=3, start=5, image_size=128)
    np.testing.assert_array_equal(again[0].image, recs[5].image)
    np.testing.assert_array_equal(again[0].boxes, recs[5].boxes)
    other = synthetic_shapes.generate(1, seed=4, image_size=128)[0]
    assert not np.array_equal(other.image, recs[0].image)
    all_labels = np.concatenate([r.box_labels for r in recs])
    assert set(all_labels.tolist()) == {0, 1, 2}
    for r in recs:
        assert r.image.shape == (128, 128, 3) and 1 <= len(r.boxes) <= 4
        assert np.all(r.boxes >= 0) and np.all(r.boxes <= 128)
        assert np.all(r.boxes[:, 2] > r.boxes[:, 0]) and np.all(r.boxes[:, 3] > r.boxes[:, 1])
    sides = np.concatenate([r.boxes[:, 2] - r.boxes[:, 0] for r in recs]) / 128
    assert sides.min() >= 0.15 - 1e-6 and sides.max() <= 0.45 + 1e-6 and sides.max() - sides.min() > 0.2
    assert sum(len(r.boxes) > 1 for r in recs) > 100  # most scenes have several objects
    # the shape is drawn where its box says: the box centre differs in colour from the border pixels
    r = recs[0]
    x1, y1, x2, y2 = r.boxes[-1].astype(int)
    centre = r.image[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
    assert np.abs(centre - r.image[min(y2 + 1, 127), min(x2 + 1, 127)].astype(int)).sum() > 0


def test_synthetic_shapes_voc_folder_round_trips(tmp_path):
    out = synthetic_shapes.write_voc(tmp_path / "shapes", 20, seed=2, image_size=96)
    refs = voc.list_refs(out, class_names=list(synthetic_shapes.CLASSES))
    assert len(refs) == 20 and [r.split for r in refs].count("train") == 16
    direct = synthetic_shapes.generate(20, seed=2, image_size=96)
    for ref, rec in zip(refs, direct):
        loaded = voc.load(ref)
        np.testing.assert_array_equal(loaded.image, rec.image)  # PNG is lossless
        np.testing.assert_allclose(loaded.boxes, rec.boxes, atol=0.01)
        assert loaded.box_names == rec.box_names and loaded.meta["box_issues"] == []
    ref = synthetic_shapes.list_refs(2, seed=2, image_size=96)[1]
    pickle.dumps(ref)
    np.testing.assert_array_equal(synthetic_shapes.load(ref).image, direct[1].image)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        synthetic_shapes.list_refs(2, colour="red")


def test_example_gen_reports_dropped_boxes_and_fails_past_the_threshold(tmp_path):
    """Dropped boxes are on the console with counts per issue and the images named; more than
    max_dropped_box_fraction of all boxes dropped fails the ExampleGen, naming the images."""
    from rich.console import Console

    from components.base import ComponentError
    from pipeline.runner import run_single

    objs = {f"img{i}": f"<annotation>{_obj('cat', 1, 2, 10, 12)}{_obj('dog', 3, 3, 20, 20)}</annotation>"
            for i in range(5)}
    objs["bad"] = f"<annotation>{_obj('cat', 9, 9, 3, 12)}{_obj('dog', -5, 3, 20, 40)}</annotation>"
    (tmp_path / "voc").mkdir()
    root = _voc_folder(tmp_path / "voc", objs)
    src = {"source": {"format": "voc", "path": str(root)}, "image_size": [30, 40]}
    console = Console(record=True, width=200)
    with pytest.raises(ComponentError, match=r"2 of 12 boxes dropped, in 1 image\(s\) \(bad\)"):
        run_single("ExampleGen", {}, src, tmp_path / "strict", console=console)
    text = console.export_text()
    assert "box issues in 1 image(s): 1 inverted -> dropped, 1 outside_image -> dropped" in text and "bad" in text
    assert not (tmp_path / "strict").exists()
    meta = run_single("ExampleGen", {}, {**src, "max_dropped_box_fraction": 0.2}, tmp_path / "loose")
    assert meta["metrics"]["records"] == 6


@pytest.mark.parametrize("layout", ["voc", "lower", "beside", "named"])
def test_voc_layouts(tmp_path, layout):
    """VOC's own folders, annotations/ + images/, XML beside the images, or folders named by
    option: the same records either way."""
    xml = f"<annotation><filename>a.jpg</filename>{_obj('cat', 1, 2, 10, 12)}</annotation>"
    ann, img = {"voc": ("Annotations", "JPEGImages"), "lower": ("annotations", "images"), "beside": ("", ""),
                "named": ("labels/xml", "pictures")}[layout]
    (tmp_path / ann).mkdir(parents=True, exist_ok=True)
    (tmp_path / img).mkdir(parents=True, exist_ok=True)
    (tmp_path / ann / "a.xml").write_text(xml)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / img / "a.jpg")
    opts = {"annotations_dir": ann, "images_dir": img} if layout == "named" else {}
    refs = voc.list_refs(tmp_path, **opts)
    assert [r.key for r in refs] == ["a"]
    rec = voc.load(refs[0])
    np.testing.assert_array_equal(rec.boxes, [[1, 2, 10, 12]])
    assert rec.image.shape == (30, 40, 3)


def test_voc_missing_folder_and_unknown_layout_are_different_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        voc.list_refs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Pascal VOC folder.*annotations_dir and images_dir"):
        voc.list_refs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder \\(images_dir\\)"):
        (tmp_path / "x" / "ann").mkdir(parents=True)
        voc.list_refs(tmp_path / "x", annotations_dir="ann", images_dir="imgs")
