"""Face data: identity folders (AT&T, the course images), identity splits, LFW pairs files,
the synthetic identity generator and the sqlite enrolment database."""
from __future__ import annotations

import numpy as np
import pytest

from data import face_db, identity_folders, lfw_pairs, synthetic_faces
from data.records import BadRecord
from tests.conftest import dataset_path


# ---------------------------------------------------------------- identity folders

@pytest.mark.dataset
def test_att_faces_listing_and_load():
    root = dataset_path("att_faces")
    refs = identity_folders.list_refs(root)
    assert len(refs) == 400
    ids = identity_folders.list_identities(root)
    assert ids[:3] == ["s1", "s2", "s3"] and ids[-1] == "s40"  # natural order
    assert {r.label for r in refs} == set(range(40))
    rec = identity_folders.load(refs[0])
    assert rec.key == "s1/1.pgm" and rec.identity == "s1" and rec.label == 0
    assert rec.image.shape == (112, 92, 3) and rec.image.dtype == np.uint8
    assert (rec.image[..., 0] == rec.image[..., 2]).all()  # grey replicated


@pytest.mark.dataset
def test_att_explicit_identity_split_never_leaks():
    root = dataset_path("att_faces")
    refs = identity_folders.list_refs(root, splits={"train": ["s1-s30"], "test": ["s31-s40"]})
    train = {r.label_name for r in refs if r.split == "train"}
    test = {r.label_name for r in refs if r.split == "test"}
    assert len(train) == 30 and len(test) == 10 and not train & test
    assert sum(r.split == "test" for r in refs) == 100
    # labels are global: s31 keeps label 30 in the test split
    assert next(r.label for r in refs if r.label_name == "s31") == 30
    with pytest.raises(ValueError, match="both"):
        identity_folders.list_refs(root, splits={"train": ["s1-s30"], "test": ["s30-s40"]})
    with pytest.raises(ValueError, match="s41"):
        identity_folders.list_refs(root, splits={"test": ["s35-s41"]})


@pytest.mark.dataset
def test_course_images_rgba_is_converted(tmp_path):
    src = dataset_path("coursera_face_recognition_images", "images")
    # arrange two of the course images as identity folders
    for name in ("danielle.png", "andrew.jpg"):
        (tmp_path / name.split(".")[0]).mkdir()
        (tmp_path / name.split(".")[0] / name).write_bytes((src / name).read_bytes())
    refs = identity_folders.list_refs(tmp_path)
    recs = {r.label_name: identity_folders.load(r) for r in refs}
    assert recs["danielle"].image.shape == (96, 96, 3)  # RGBA -> RGB
    assert recs["andrew"].image.shape == (96, 96, 3)


def test_hash_split_is_deterministic_and_by_identity():
    names = [f"person_{k}" for k in range(400)]
    a = identity_folders.hash_split(names, {"train": 0.75, "test": 0.25})
    b = identity_folders.hash_split(list(reversed(names)), {"train": 0.75, "test": 0.25})
    assert a == b  # depends on the name only, not the order
    frac = sum(v == "test" for v in a.values()) / len(a)
    assert 0.18 < frac < 0.32
    assert identity_folders.hash_split(names, salt="x") != identity_folders.hash_split(names)
    with pytest.raises(ValueError, match="sum to 1"):
        identity_folders.hash_split(names, {"train": 0.5})


def test_identity_folders_bad_files_and_ranges(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "1.png").write_bytes(b"not a png")
    (tmp_path / "alice" / "notes.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    (tmp_path / "s1-s3").mkdir()  # a literal folder name wins over the range reading
    from PIL import Image
    Image.new("L", (8, 8), 7).save(tmp_path / "s1-s3" / "a.pgm")
    assert identity_folders.list_identities(tmp_path) == ["alice", "s1-s3"]
    refs = identity_folders.list_refs(tmp_path)
    assert [r.key for r in refs] == ["alice/1.png", "s1-s3/a.pgm"]
    with pytest.raises(BadRecord, match="alice/1.png"):
        identity_folders.load(refs[0])
    assert identity_folders.expand_identities(["s1-s3"], ["s1-s3"]) == ["s1-s3"]
    assert identity_folders.expand_identities("s2-s4", ["s2", "s3", "s4"]) == ["s2", "s3", "s4"]
    with pytest.raises(ValueError, match="bob"):
        identity_folders.list_refs(tmp_path, identities=["bob"])
    with pytest.raises(FileNotFoundError):
        identity_folders.list_refs(tmp_path / "missing")


# ---------------------------------------------------------------- LFW pairs

PAIRS = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Alan_Ball\t1\t2
Tony_Blair 3 7
Amber_Tamblyn\t1\tAngela_Bassett\t3
Alan_Ball\t2\tTony_Blair\t1
"""


def test_parse_lfw_pairs(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text(PAIRS)
    pf = lfw_pairs.parse_pairs(p)
    assert (pf.folds, pf.pairs_per_fold, len(pf.pairs)) == (2, 2, 8)
    assert [x.same for x in pf.pairs] == [True, True, False, False] * 2
    assert pf.pairs[0] == lfw_pairs.Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4, True, 0, 2)
    assert pf.pairs[5].name1 == "Tony_Blair" and pf.pairs[5].index2 == 7  # spaces work too
    assert [x.fold for x in pf.fold(1)] == [1] * 4
    assert lfw_pairs.image_path("/lfw", "Tony_Blair", 3).as_posix() == "/lfw/Tony_Blair/Tony_Blair_0003.jpg"
    refs, i, j, same, fold = lfw_pairs.pairs_to_refs(pf, "/lfw")
    assert len(refs) == 14 and len(i) == 8  # Alan_Ball_0002 is used twice but listed once
    assert refs[i[7]].key == "Alan_Ball/Alan_Ball_0002.jpg" and refs[j[7]].label_name == "Tony_Blair"
    np.testing.assert_array_equal(same, [1, 1, 0, 0, 1, 1, 0, 0])


def test_parse_single_number_header():
    pf = lfw_pairs.parse_pairs("1\nA 1 2\nA 1 B 1\n")
    assert (pf.folds, pf.pairs_per_fold) == (1, 1)


@pytest.mark.parametrize("text, match", [
    ("2 1\nA 1 2\nA 1 B 1\n", r":3: header promises 2 folds"),  # too few lines
    ("1 1\nA 1 B 1\nA 1 B 1\n", r":2: 'A 1 B 1': expected a matched pair"),
    ("1 1\nA 1 2\nA 1 B\n", r":3: 'A 1 B': expected a mismatched pair"),
    ("1 1\nA x 2\nA 1 B 1\n", r":2: .*image number 'x' is not an integer"),
    ("1 1\nA 0 2\nA 1 B 1\n", r":2: .*must be >= 1"),
    ("ten 300\n", r":1: .*number of folds 'ten'"),
    ("1 2 3\n", r":1: .*header must be"),
])
def test_pairs_errors_name_the_line(text, match):
    with pytest.raises(lfw_pairs.PairsFormatError, match=match):
        lfw_pairs.parse_pairs(text)


def test_pairs_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        lfw_pairs.parse_pairs(tmp_path / "nope.txt")


# ---------------------------------------------------------------- synthetic faces

def test_synthetic_faces_deterministic_distinct_and_fast(tmp_path):
    import time

    t0 = time.perf_counter()
    synthetic_faces.generate(tmp_path / "a", num_identities=20, images_per_identity=10, size=64, seed=3)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0  # 200 images; ~0.5 s on an idle core
    synthetic_faces.generate(tmp_path / "b", num_identities=20, images_per_identity=10, size=64, seed=3)
    refs = synthetic_faces.list_refs(tmp_path / "a", 20, 10, 64, 3)
    assert len(refs) == 200 and refs[0].key == "id_000/000.png"
    imgs = np.stack([synthetic_faces.load(r).image for r in refs]).astype(np.float64)
    assert imgs.shape == (200, 64, 64, 3)
    a0 = (tmp_path / "a" / "id_004" / "007.png").read_bytes()
    assert a0 == (tmp_path / "b" / "id_004" / "007.png").read_bytes()  # same seed, same bytes
    # identities are distinct: images are closer to their own identity's mean than to others'
    labels = np.array([r.label for r in refs])
    flat = imgs.reshape(200, -1)
    means = np.stack([flat[labels == k].mean(0) for k in range(20)])
    nearest = np.argmin(((flat[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.9
    # and images of one identity vary (jitter)
    assert np.abs(imgs[0] - imgs[1]).mean() > 5


def test_synthetic_faces_other_seed_and_idempotence(tmp_path):
    synthetic_faces.generate(tmp_path, 3, 2, 32, seed=0)
    first = (tmp_path / "id_001" / "001.png").stat().st_mtime_ns
    synthetic_faces.generate(tmp_path, 3, 2, 32, seed=0)  # manifest matches: not redrawn
    assert (tmp_path / "id_001" / "001.png").stat().st_mtime_ns == first
    other = synthetic_faces.render_face(synthetic_faces._traits(np.random.default_rng([1, 1])), 32,
                                        np.random.default_rng([1, 1, 1]))
    from PIL import Image
    assert not np.array_equal(other, np.asarray(Image.open(tmp_path / "id_001" / "001.png")))
    refs = synthetic_faces.list_refs(tmp_path, 3, 2, 32, 0, fractions={"train": 0.5, "test": 0.5})
    by_id = {}
    for r in refs:
        by_id.setdefault(r.label_name, set()).add(r.split)
    assert all(len(s) == 1 for s in by_id.values())  # split by identity


# ---------------------------------------------------------------- enrolment database

def test_face_db_enroll_nearest_and_persistence(tmp_path):
    path = tmp_path / "db" / "faces.sqlite"
    with face_db.FaceDB(path) as db:
        assert db.nearest(np.zeros(3)) == (None, float("inf"))
        assert db.enroll("alice", np.array([1.0, 0, 0]), "m:1") == 1
        assert db.enroll("bob", np.array([[0.0, 1, 0], [0, 0.8, 0.6]]), "m:1") == 2
        assert db.identities() == ["alice", "bob"] and len(db) == 3
        name, dist = db.nearest(np.array([0.0, 0.6, 0.8]))
        assert name == "bob" and dist == pytest.approx(np.linalg.norm([0, -0.2, 0.2]), abs=1e-6)
    with face_db.FaceDB(path) as db:  # reopened from disk
        assert db.model_version == "m:1" and db.dim == 3
        np.testing.assert_allclose(db.embeddings_for("bob"), [[0, 1, 0], [0, 0.8, 0.6]], atol=1e-7)
        assert db.embeddings_for("carol").shape == (0, 3)
        assert set(db.as_dict()) == {"alice", "bob"}
        assert db.remove("alice") == 1 and db.identities() == ["bob"]


def test_face_db_refuses_to_mix_model_versions(tmp_path):
    db = face_db.FaceDB(tmp_path / "f.sqlite")
    db.enroll("alice", np.ones(4), model_version="facenet:3")
    with pytest.raises(ValueError, match=r"'facenet:4'.*'facenet:3'"):
        db.enroll("bob", np.ones(4), model_version="facenet:4")
    with pytest.raises(ValueError, match=r"'facenet:4'.*'facenet:3'"):
        db.nearest(np.ones(4), model_version="facenet:4")
    assert db.identities() == ["alice"]  # nothing half-written
    with pytest.raises(ValueError, match="dimension"):
        db.enroll("bob", np.ones(5), model_version="facenet:3")
    with pytest.raises(ValueError, match="model_version"):
        db.enroll("bob", np.ones(4), model_version="")
    with pytest.raises(ValueError, match="NaN"):
        db.enroll("bob", np.full(4, np.nan), model_version="facenet:3")
    db.close()
