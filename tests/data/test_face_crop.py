"""Face detection and cropping (data/face_crop.py) and where it is used: ExampleGen's
``face_crop`` step (report, schema, on_miss) and serving (``load_face_image``, the embedding
task's ``prepare_image`` for ``predict``), so new photos are cropped the way the training
images were."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.base import ComponentError
from data.face_crop import crop_face, detect_face, square_crop
from pipeline.runner import run_single
from tests.conftest import dataset_path


def _att(identity: str, n: int) -> np.ndarray:
    return np.asarray(Image.open(dataset_path("att_faces", identity, f"{n}.pgm")).convert("RGB"))


# ---------------------------------------------------------------- geometry (no detector)

def test_square_crop_is_centred_on_the_box_with_the_margin():
    img = np.arange(100 * 120, dtype=np.int64).reshape(100, 120) % 251
    img = np.stack([img] * 3, -1).astype(np.uint8)
    out = square_crop(img, (40, 30, 20, 30), margin=0.2)  # x, y, w, h: centre (50, 45), side 36
    assert out.shape == (36, 36, 3)
    np.testing.assert_array_equal(out, img[27:63, 32:68])


def test_square_crop_repeats_edges_outside_the_image():
    img = np.zeros((50, 50, 3), np.uint8)
    img[:, 0] = 200  # the left column
    out = square_crop(img, (0, 10, 20, 20), margin=1.0)  # side 40 centred at x=10: 10 px off the left
    assert out.shape == (40, 40, 3)
    assert (out[:, :11] == 200).all() and (out[:, 11:] == 0).all()


def test_crop_face_uses_the_detector_and_reports_misses():
    img = np.full((60, 80, 3), 7, np.uint8)
    hit = crop_face(img, margin=0.0, detector=lambda grey: (10, 5, 30, 30))
    assert hit.found and hit.box == (10, 5, 30, 30) and hit.image.shape == (30, 30, 3)
    miss = crop_face(img, detector=lambda grey: None)
    assert not miss.found and miss.box is None and miss.image is img  # unchanged, nothing lost
    seen = {}
    crop_face(img[..., 0], detector=lambda grey: seen.setdefault("shape", grey.shape) and None)  # grey input
    assert seen["shape"] == (60, 80)


def test_no_face_in_noise():
    noise = np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    assert detect_face(noise[..., 0]) is None
    assert not crop_face(noise).found


# ---------------------------------------------------------------- the Haar detector on real faces

@pytest.mark.dataset
def test_haar_finds_att_faces_and_normalises_scale():
    # s31 is photographed close up (2-5, 10) and from farther away (1, 6-9)
    boxes = {n: detect_face(_att("s31", n)[..., 0]) for n in range(1, 11)}
    assert all(b is not None for b in boxes.values()), boxes
    near = np.mean([boxes[n][2] for n in (2, 3, 4, 5, 10)])
    far = np.mean([boxes[n][2] for n in (1, 6, 7, 8, 9)])
    assert near > 1.1 * far  # the detector sees the scale difference the crop removes


@pytest.mark.dataset
def test_haar_finds_a_small_face_in_a_wide_shot():
    face = _att("s5", 1)
    canvas = np.full((336, 420, 3), 128, np.uint8)
    canvas[150:262, 250:342] = face  # 112x92 face at x=250, y=150 in a 420x336 frame
    box = detect_face(canvas[..., 0], min_face=0.1)
    assert box is not None
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    assert 250 < cx < 342 and 150 < cy < 262  # the box centre is on the pasted face
    crop = crop_face(canvas, margin=0.2, min_face=0.1)
    assert crop.found and crop.image.shape[0] == crop.image.shape[1] < 150


# ---------------------------------------------------------------- ExampleGen and serving

def _noise_folders(root, people=2, per=3):
    rng = np.random.default_rng(1)
    for p in range(people):
        (root / f"p{p}").mkdir(parents=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(root / f"p{p}" / f"{i}.png")
    return root


def test_example_gen_face_crop_misses_are_kept_and_listed(tmp_path):
    raw = _noise_folders(tmp_path / "raw")
    meta = run_single("ExampleGen", {}, {"source": {"format": "identity_folders", "path": str(raw)},
                                         "image_size": [32, 32], "split_by": "identity",
                                         "split_ratios": {"train": 1.0}, "face_crop": {"margin": 0.3}},
                      tmp_path / "gen")
    ex = tmp_path / "gen" / "examples"
    report = json.loads((ex / "error_report.json").read_text())
    assert report["face_crop"]["missed_count"] == 6 and report["face_crop"]["missed"][0] == "p0/0.png"
    assert report["bad_records"] == 0 and meta["metrics"]["examples_train"] == 6  # nothing lost
    schema = json.loads((ex / "schema.json").read_text())
    assert schema["face_crop"] == {"margin": 0.3, "min_face": 0.2, "on_miss": "keep"}


def test_example_gen_face_crop_on_miss_bad_names_the_record(tmp_path):
    raw = _noise_folders(tmp_path / "raw")
    with pytest.raises(ComponentError, match=r"p0/0.png: no face found"):
        run_single("ExampleGen", {}, {"source": {"format": "identity_folders", "path": str(raw)},
                                      "image_size": [32, 32], "face_crop": {"on_miss": "bad"}}, tmp_path / "gen")
    assert not (tmp_path / "gen" / "examples").exists()


def test_example_gen_without_face_crop_records_none(tmp_path):
    raw = _noise_folders(tmp_path / "raw", people=1, per=2)
    run_single("ExampleGen", {}, {"source": {"format": "identity_folders", "path": str(raw)},
                                  "image_size": [32, 32]}, tmp_path / "gen")
    ex = tmp_path / "gen" / "examples"
    assert json.loads((ex / "schema.json").read_text())["face_crop"] is None
    assert "face_crop" not in json.loads((ex / "error_report.json").read_text())


@pytest.mark.dataset
def test_example_gen_crops_att_faces(tmp_path):
    raw = tmp_path / "raw"
    for person in ("s31", "s32"):
        (raw / person).mkdir(parents=True)
        for n in (1, 2):
            (raw / person / f"{n}.pgm").write_bytes(dataset_path("att_faces", person, f"{n}.pgm").read_bytes())
    run_single("ExampleGen", {}, {"source": {"format": "identity_folders", "path": str(raw)}, "image_size": [48, 48],
                                  "split_by": "identity", "split_ratios": {"train": 1.0},
                                  "face_crop": {"margin": 0.2}}, tmp_path / "gen")
    ex = tmp_path / "gen" / "examples"
    assert json.loads((ex / "error_report.json").read_text())["face_crop"]["missed"] == []
    from components.tasks.embedding import load_split

    x, _, ids, keys = load_split(ex, "train")
    by_key = dict(zip(keys, x))
    expected = crop_face(_att("s31", 2), margin=0.2).image
    expected = np.asarray(Image.fromarray(expected).resize((48, 48), Image.BILINEAR))
    np.testing.assert_array_equal(by_key["s31/2.pgm"], expected)  # the same crop serving makes
    # predict's preparation of the raw photo (the face crop the model records) gives the record
    info = _face_info((48, 48), json.loads((ex / "schema.json").read_text())["face_crop"])
    for key in ("s31/1.pgm", "s32/2.pgm"):
        person, n = key.split("/")
        np.testing.assert_array_equal(_task().prepare_image(_att(person, int(n[0])), info), by_key[key])


def _task():
    from components.tasks import get_task

    return get_task("embedding")


def _face_info(size, face_crop):
    from components.artifacts import ModelInfo

    return ModelInfo(model="facenet_small", task="embedding", classes=[], image_size=list(size), face_crop=face_crop)


def test_prepare_image_repeats_the_recorded_face_crop(tmp_path):
    from models.facenet.recognition import load_face_image

    noise = np.random.default_rng(2).integers(0, 255, (50, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    plain = _task().prepare_image(noise, _face_info((32, 32), None))
    assert plain.shape == (32, 32, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, load_face_image(tmp_path / "noise.png", (32, 32)))
    kept = _task().prepare_image(noise, _face_info((32, 32), {"margin": 0.2, "min_face": 0.2, "on_miss": "keep"}))
    np.testing.assert_array_equal(kept, plain)  # no face: the whole photo, as in training
    with pytest.raises(ValueError, match="no face found"):
        _task().prepare_image(noise, _face_info((32, 32), {"margin": 0.2, "on_miss": "bad"}))


def test_load_face_image_crops_like_training(tmp_path):
    from models.facenet.recognition import load_face_image

    noise = np.random.default_rng(2).integers(0, 255, (50, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    plain = load_face_image(tmp_path / "noise.png", (32, 32))
    kept = load_face_image(tmp_path / "noise.png", (32, 32), {"margin": 0.2, "min_face": 0.2, "on_miss": "keep"})
    np.testing.assert_array_equal(plain, kept)  # no face: the whole photo, as in training
    with pytest.raises(ValueError, match="noise.png: no face found"):
        load_face_image(tmp_path / "noise.png", (32, 32), {"margin": 0.2, "on_miss": "bad"})


def test_example_gen_refuses_face_crop_on_detection_data(tmp_path):
    with pytest.raises(ComponentError, match="face_crop would cut away the boxes"):
        run_single("ExampleGen", {}, {"source": {"format": "synthetic_shapes", "path": str(tmp_path / "raw"),
                                                 "options": {"num_images": 2}},
                                      "image_size": [32, 32], "face_crop": {}}, tmp_path / "gen")
    assert not (tmp_path / "gen" / "examples").exists()
