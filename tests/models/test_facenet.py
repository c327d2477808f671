"""FaceNet model level: networks, triplet losses (against tensorflow-addons' values), the
P x K sampler and the course's recognition functions."""
from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models.facenet import (PKSampler, TripletHardLoss, TripletSemiHardLoss, faceRecoModel,  # noqa: E402
                            has_preprocessing, img_to_encoding, pk_dataset, small_face_model,
                            triplet_loss, verify, who_is_it)
from tests.conftest import dataset_path  # noqa: E402


# ---------------------------------------------------------------- networks

@pytest.fixture(scope="module")
def nn4():
    return faceRecoModel(input_shape=(96, 96, 3))


def test_nn4_small_has_the_courses_parameter_count(nn4):
    assert nn4.count_params() == 3743280
    assert nn4.output_shape == (None, 128)
    # the course's layer names survive (weights could be loaded by name)
    names = {layer.name for layer in nn4.layers}
    assert {"conv1", "bn1", "inception_3a_3x3_conv1", "inception_5b_1x1_conv", "dense_layer"} <= names


def test_nn4_small_outputs_unit_vectors(nn4):
    x = np.random.default_rng(0).uniform(0, 1, (2, 96, 96, 3)).astype("float32")
    y = np.asarray(nn4(x, training=False))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_nn4_small_rejects_other_sizes():
    with pytest.raises(ValueError, match="96x96"):
        faceRecoModel((64, 64, 3))


def test_small_face_model_shapes_and_norm():
    m = small_face_model((48, 48, 3), embedding_dim=32, width=16)
    assert m.output_shape == (None, 32)
    assert m.count_params() < 400_000
    y = np.asarray(m(np.random.default_rng(1).uniform(0, 1, (3, 48, 48, 3)).astype("float32")))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_registry_builds_face_models():
    from models.registry import build_model

    assert build_model("facenet_small", embedding_dim=16, width=8).output_shape == (None, 16)


# ---------------------------------------------------------------- course triplet loss

@pytest.mark.parametrize("y_pred, alpha, expected", [
    (([1., 1.], [1., 1.], [1., 1.]), 5.0, 5.0),
    (([1., 1.], [1., 1.], [0., 0.]), 1.0, 0.0),  # 0 - 2 + 1 < 0
    (([1., 1.], [0., 0.], [1., 1.]), 0.0, 2.0),
    (([0., 0.], [0., 0.], [0., 0.]), -2.0, 0.0),
    # two triplets: (5 - 1 + 3) + max(2 - 5 + 3, 0) = 7
    (([[1., 1.], [2., 0.]], [[0., 3.], [1., 1.]], [[1., 0.], [0., 1.]]), 3.0, 7.0),
])
def test_course_triplet_loss_known_values(y_pred, alpha, expected):
    y_pred = tuple(np.array(v, dtype="float32") for v in y_pred)
    assert float(triplet_loss(None, y_pred, alpha=alpha)) == pytest.approx(expected)


def test_course_triplet_loss_default_alpha():
    a = np.zeros((1, 3), "float32")
    p = np.array([[0.1, 0, 0]], "float32")  # ||a-p||^2 = 0.01
    n = np.array([[0.3, 0, 0]], "float32")  # ||a-n||^2 = 0.09
    assert float(triplet_loss(None, (a, p, n))) == pytest.approx(0.01 - 0.09 + 0.2)


# ---------------------------------------------------------------- TFA-compatible losses

def _make_loss(key):
    loss, metric, margin = key.split("|")
    if loss == "semihard":
        return TripletSemiHardLoss(margin=float(margin), distance_metric=metric)
    return TripletHardLoss(margin=float(margin), soft=(loss == "hard_soft"), distance_metric=metric)


def test_triplet_losses_match_tensorflow_addons(reference_dir):
    ref = json.loads((reference_dir / "tfa_triplet_refs.json").read_text())
    checked = 0
    for case in ref["cases"]:
        labels = np.array(case["labels"], dtype="int32")
        emb = np.array(case["embeddings"], dtype="float32")
        for key, expected in case["losses"].items():
            got = float(_make_loss(key)(labels, emb))
            assert got == pytest.approx(expected, abs=1e-5), (key, case["seed"], len(labels))
            # (B, 1) labels are accepted too
            if checked % 7 == 0:
                assert float(_make_loss(key)(labels[:, None], emb)) == pytest.approx(expected, abs=1e-5)
            checked += 1
    assert checked == 15 * 18


def test_semihard_loss_by_hand():
    # 1-D embeddings: a0=0, a1=0.5 (class 0); n=0.6 (class 1), n'=3.0 (class 1); squared-L2.
    labels = np.array([0, 0, 1, 1])
    emb = np.array([[0.0], [0.5], [0.6], [3.0]], "float32")
    m = 1.0
    # pair (0,1): d_ap=.25, negatives of 0: .36, 9 -> semi-hard = .36 -> .25-.36+1 = .89
    # pair (1,0): d_ap=.25, negatives of 1: .01, 6.25 -> semi-hard 6.25 -> max(.25-6.25+1,0)=0
    # pair (2,3): d_ap=5.76, negatives of 2: .36, .01 -> none farther -> hardest-inside .36
    #   -> 5.76-.36+1 = 6.4 ; pair (3,2): d_ap=5.76, negs 9, 6.25 -> 6.25 -> 5.76-6.25+1=.51
    expected = (0.89 + 0 + 6.4 + 0.51) / 4
    got = float(TripletSemiHardLoss(m, "squared-L2")(labels, emb))
    assert got == pytest.approx(expected, abs=1e-5)


def test_losses_round_trip_config():
    loss = TripletHardLoss(margin=0.3, soft=True, distance_metric="angular")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (clone.margin, clone.soft, clone.distance_metric) == (0.3, True, "angular")
    with pytest.raises(ValueError, match="distance_metric"):
        TripletSemiHardLoss(distance_metric="cosine")


def test_semihard_loss_trains_in_graph_mode():
    """model.fit (tf.function) with the loss and P x K batches lowers the loss."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 8)).astype("float32")
    labels = np.repeat(np.arange(6), 10)
    x = centers[labels] + 0.5 * rng.normal(size=(60, 8)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16), keras.layers.UnitNormalization()])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=TripletSemiHardLoss(margin=0.5))
    ds = pk_dataset(x, labels, P=3, K=4, seed=0)
    before = float(model.evaluate(ds, steps=10, verbose=0))
    model.fit(ds, epochs=3, steps_per_epoch=20, verbose=0, shuffle=False)
    after = float(model.evaluate(ds, steps=10, verbose=0))
    assert after < before * 0.5


# ---------------------------------------------------------------- P x K sampler

def test_pk_sampler_batches_have_p_identities_of_k():
    labels = np.repeat(np.arange(7), [5, 5, 5, 3, 5, 5, 1])  # 3: too few; 6: a single image
    s = PKSampler(labels, P=3, K=4, seed=1)
    assert s.skipped == [6]  # one image: never a positive pair
    batches = s.epoch()
    assert len(batches) == s.batches_per_epoch == 2  # 6 usable identities / 3
    seen = set()
    for b in batches:
        assert b.shape == (12,)
        groups = labels[b].reshape(3, 4)
        assert (groups == groups[:, :1]).all()  # grouped by identity
        assert len(set(groups[:, 0])) == 3  # P distinct identities
        for g, lab in zip(b.reshape(3, 4), groups[:, 0]):
            if lab != 3:
                assert len(set(g)) == 4  # >= K images: no repeats
        seen |= set(groups[:, 0])
    assert seen == {0, 1, 2, 3, 4, 5}  # an epoch visits every identity


def test_pk_sampler_skip_policy_and_determinism():
    labels = np.repeat(np.arange(5), [4, 4, 2, 4, 4])
    s = PKSampler(labels, P=2, K=4, seed=3, small="skip")
    assert s.skipped == [2]
    a = [b.tolist() for b in PKSampler(labels, 2, 4, seed=3).epoch()]
    b = [b.tolist() for b in PKSampler(labels, 2, 4, seed=3).epoch()]
    c = [b.tolist() for b in PKSampler(labels, 2, 4, seed=4).epoch()]
    assert a == b and a != c
    with pytest.raises(ValueError, match="P=6"):
        PKSampler(labels, P=6, K=2)


def test_pk_dataset_yields_image_label_batches():
    x = np.broadcast_to(np.arange(20, dtype="uint8")[:, None, None, None], (20, 4, 4, 3))
    y = np.repeat(np.arange(4), 5)
    xb, yb = next(iter(pk_dataset(x, y, P=2, K=3, seed=0)))
    assert xb.shape == (6, 4, 4, 3) and xb.dtype.name == "float32"
    # each image really is the one its label says (image k is filled with the value k)
    idx = xb.numpy()[:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(y[idx], yb.numpy())


# ---------------------------------------------------------------- recognition

class _MeanColour(keras.Model):
    """A tiny deterministic 'encoder': the image's mean colour as a 3-d vector."""

    def __init__(self, size=96, **kw):
        inp = keras.Input((size, size, 3))
        out = keras.layers.GlobalAveragePooling2D()(inp)
        super().__init__(inp, out, **kw)


@pytest.fixture(scope="module")
def course_images():
    return dataset_path("coursera_face_recognition_images", "images")


@pytest.mark.dataset
def test_img_to_encoding_scales_and_normalises(course_images):
    from PIL import Image

    m = _MeanColour()
    assert not has_preprocessing(m)
    enc = img_to_encoding(course_images / "andrew.jpg", m)
    assert enc.shape == (1, 3)
    assert np.linalg.norm(enc) == pytest.approx(1.0, abs=1e-6)
    mean = np.asarray(Image.open(course_images / "andrew.jpg").convert("RGB"), "float64").mean((0, 1))
    np.testing.assert_allclose(enc[0], mean / np.linalg.norm(mean), atol=1e-4)
    # the RGBA PNG is composited to RGB and resized to the model input (48x48 here)
    enc2 = img_to_encoding(course_images / "danielle.png", _MeanColour(48))
    assert enc2.shape == (1, 3)


@pytest.mark.dataset
def test_img_to_encoding_feeds_raw_pixels_to_models_with_preprocessing(course_images):
    inp = keras.Input((96, 96, 3))
    scaled = keras.layers.Rescaling(1 / 255.0)(inp)
    m = keras.Model(inp, keras.layers.GlobalMaxPooling2D()(keras.layers.Rescaling(1.0)(scaled)))
    assert has_preprocessing(m)
    raw = img_to_encoding(course_images / "kian.jpg", m)
    forced = img_to_encoding(course_images / "kian.jpg", m, preprocess="unit")
    np.testing.assert_allclose(raw, forced, atol=1e-5)  # both unit-normalised, same direction


@pytest.mark.dataset
def test_verify_and_who_is_it_course_messages(course_images, capsys):
    m = _MeanColour()
    names = ["andrew", "bertrand", "kian", "younes"]
    db = {n: img_to_encoding(course_images / f"{n}.jpg", m) for n in names}
    dist, door_open = verify(course_images / "kian.jpg", "kian", db, m)
    assert dist == pytest.approx(0.0, abs=1e-6) and door_open is True
    assert "It's kian, welcome in!" in capsys.readouterr().out
    d_other = float(np.linalg.norm(db["kian"] - db["andrew"]))
    dist, door_open = verify(course_images / "kian.jpg", "andrew", db, m, threshold=d_other / 2)
    assert dist == pytest.approx(d_other, abs=1e-5) and door_open is False
    assert "It's not andrew, please go away" in capsys.readouterr().out

    min_dist, identity = who_is_it(course_images / "younes.jpg", db, m)
    assert identity == "younes" and min_dist == pytest.approx(0.0, abs=1e-6)
    assert "it's younes, the distance is" in capsys.readouterr().out
    min_dist, identity = who_is_it(course_images / "younes.jpg", {"andrew": db["andrew"]}, m,
                                   threshold=0.0)
    assert identity == "andrew"
    assert "Not in the database." in capsys.readouterr().out


@pytest.mark.dataset
def test_who_is_it_with_a_face_db(course_images, tmp_path):
    from data.face_db import FaceDB

    m = _MeanColour()
    with FaceDB(tmp_path / "faces.sqlite") as db:
        for n in ("andrew", "tian"):
            db.enroll(n, img_to_encoding(course_images / f"{n}.jpg", m), model_version="mean:1")
        assert who_is_it(course_images / "tian.jpg", db, m)[1] == "tian"
        assert verify(course_images / "tian.jpg", "tian", db, m)[1] is True
