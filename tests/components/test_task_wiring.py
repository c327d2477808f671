"""How the Trainer, Evaluator and BulkInferrer are wired to each task plug-in, checked against the
exported model itself: the binary (sigmoid) task's accuracy is the model's predictions
thresholded at 0.5; the BulkInferrer's rows are the model's argmax; the learning-rate schedule
recorded per epoch is the one the params describe; ``init_weights: models:/NAME@champion``
starts from the registered weights; the face Trainer's ``task_params.loss`` picks the triplet
loss that is really used. Small in-process runs (``run_single``) on an easy dark-vs-bright image
folder and on tiny synthetic identities."""
from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.runner import run_single

pytestmark = pytest.mark.slow

SIZE = [64, 64]  # the Happy House model's input (models/registry.py: (64, 64, 3))
FLIPPED = 3  # test images per class stored under the other class: a perfect model scores < 1.0


def _dark_and_bright(root):
    """root/{tr,te}/{dark,bright}/*.png of dark (0-89) and bright (165-255) noise. In te/, the
    first FLIPPED images of each folder belong to the other class (mislabelled on purpose), so
    the test accuracy of a model that learnt the task is not 1.0 and which way a prediction
    was read matters."""
    rng = np.random.default_rng(0)
    ranges = {"dark": (0, 90), "bright": (165, 256)}
    for split, n in (("tr", 30), ("te", 12)):
        for name in ranges:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                other = "bright" if name == "dark" else "dark"
                lo, hi = ranges[other] if split == "te" and i < FLIPPED else ranges[name]
                img = rng.integers(lo, hi, (*SIZE, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("wiring")
    src = _dark_and_bright(d / "raw")
    run_single("ExampleGen", {}, {"source": {"format": "image_folder", "path": str(src),
                                             "options": {"splits": ["tr", "te"]}},
                                  "split_map": {"tr": {"train": 0.8, "eval": 0.2}, "te": "test"},
                                  "image_size": SIZE}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
    return d, {"examples": ex, "transform": d / "tf" / "transform"}


@pytest.fixture(scope="module")
def classifier(data):
    """A signs_cnn trained on dark vs bright (softmax over the 2 classes)."""
    d, inputs = data
    run_single("Trainer", inputs, {"model": "signs_cnn", "epochs": 4, "batch_size": 16, "learning_rate": 0.01},
               d / "cnn")
    return d / "cnn" / "model"


@contextlib.contextmanager
def _mlflow_uri_restored():
    """mlflow.set_tracking_uri (the Pusher calls it too) sets a process-wide URI and the
    MLFLOW_TRACKING_URI variable: put both back so later tests see what they saw before."""
    import mlflow.tracking._tracking_service.utils as u

    before, env = u._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        u._tracking_uri = before
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


@pytest.fixture
def restore_mlflow_uri():
    with _mlflow_uri_restored():
        yield


def _test_split(ex):
    from data.tfrecord import read_split

    return read_split(sorted(str(f) for f in (ex / "test").glob("*.tfrecord*")), SIZE, label=True)


def _model(model_dir):
    from models.preprocessing import load_model

    return load_model(model_dir / "model.keras")


def test_binary_happy_model_accuracy_is_its_sigmoid_thresholded_at_a_half(data, tmp_path):
    d, inputs = data
    ex = inputs["examples"]
    run_single("Trainer", inputs, {"model": "happy", "epochs": 4, "batch_size": 16, "learning_rate": 0.003},
               tmp_path / "happy")
    model_dir = tmp_path / "happy" / "model"
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["task"] == "binary" and info["classes"] == ["bright", "dark"] and info["image_size"] == SIZE
    hist = json.loads((model_dir / "history.json").read_text())
    assert "accuracy" in hist and "val_accuracy" in hist  # BinaryAccuracy, reported under the task's name

    run_single("Evaluator", {"model": model_dir, "examples": ex}, {"split": "test"}, tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())

    split = _test_split(ex)
    probs = _model(model_dir).predict(split["images"], verbose=0)
    assert probs.shape == (len(split["images"]), 1)  # one sigmoid unit: P(class 1 = "dark")
    pred = (probs[:, 0] >= 0.5).astype(int)
    labels = split["labels"]
    assert m["num_examples"] == len(labels) == 24
    assert m["accuracy"] == pytest.approx(float((pred == labels).mean()), abs=1e-12)
    cm = np.zeros((2, 2), int)
    np.add.at(cm, (labels, pred), 1)
    assert m["confusion_matrix"] == cm.tolist()
    # the model learnt the task (sigmoid + binary cross-entropy on 0/1 labels): it is right on the
    # correctly labelled test images, so the mislabelled ones are exactly its errors
    keys = np.array([k.split("/")[-1] for k in split["keys"]])
    mislabelled = np.array([int(k[:2]) < FLIPPED for k in keys])
    assert (pred[~mislabelled] == labels[~mislabelled]).all()
    assert m["accuracy"] == pytest.approx(1 - 2 * FLIPPED / 24)


def test_bulk_inferrer_rows_are_the_models_argmax_sorted_by_key(data, classifier, tmp_path):
    d, inputs = data
    ex = inputs["examples"]
    meta = run_single("BulkInferrer", {"model": classifier, "examples": ex}, {"split": "test", "batch_size": 5},
                      tmp_path / "bi")
    lines = (tmp_path / "bi" / "inference" / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    split = _test_split(ex)
    assert meta["metrics"]["predictions"] == len(rows) == len(split["keys"]) == 24
    assert [r["key"] for r in rows] == sorted(split["keys"])  # one row per example, sorted by key
    probs = _model(classifier).predict(split["images"], verbose=0)
    want = dict(zip(split["keys"], probs))
    classes = ["bright", "dark"]
    for r in rows:
        p = want[r["key"]]
        assert r["class"] == classes[int(np.argmax(p))], r
        np.testing.assert_allclose(r["probabilities"], p, atol=1e-5)
    assert {r["class"] for r in rows} == {"bright", "dark"}


def test_cosine_schedule_with_warmup_is_the_recorded_learning_rate(data, tmp_path):
    d, inputs = data
    run_single("Trainer", inputs, {"model": "signs_cnn", "epochs": 4, "batch_size": 32, "learning_rate": 0.01,
                                   "lr_schedule": {"kind": "cosine", "warmup_epochs": 2}}, tmp_path / "t")
    hist = json.loads((tmp_path / "t" / "model" / "history.json").read_text())
    lr, warmup, epochs, min_lr = 0.01, 2, 4, 1e-6
    want = []
    for e in range(epochs):
        if e < warmup:  # linear warm-up: lr * (e + 1) / (warmup + 1)
            want.append(lr * (e + 1) / (warmup + 1))
        else:  # cosine from lr down towards min_lr over the remaining epochs
            t = (e - warmup) / (epochs - warmup)
            want.append(min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t)))
    assert want == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.0050005])  # the hand computation, spelled out
    assert hist["learning_rate"] == pytest.approx(want, rel=1e-6)


def _first_conv(model_dir):
    m = _model(model_dir)
    core = next(layer for layer in m.layers if layer.name.startswith("signs_cnn") and hasattr(layer, "layers"))
    return core.get_layer("conv1").get_weights()


def _register_champion(d, classifier, uri):
    run_single("Evaluator", {"model": classifier, "examples": d / "gen" / "examples"}, {"split": "test"}, d / "ev_push",
               tracking_uri=uri)
    assert json.loads((d / "ev_push" / "blessing" / "blessing.json").read_text())["blessed"] is True
    run_single("Pusher", {"model": classifier, "blessing": d / "ev_push" / "blessing"},
               {"registered_model_name": "dark-bright"}, d / "push", tracking_uri=uri)
    pushed = json.loads((d / "push" / "pushed_model" / "push.json").read_text())
    assert pushed["alias"] == "champion"


@pytest.fixture(scope="module")
def registry(data, classifier):
    """The classifier registered as dark-bright@champion in a fresh tracking DB."""
    d, _ = data
    uri = f"sqlite:///{d / 'mlflow.db'}"
    with _mlflow_uri_restored():
        _register_champion(d, classifier, uri)
    return uri


INIT = {"model": "signs_cnn", "epochs": 1, "batch_size": 16, "learning_rate": 0.01, "seed": 3,
        "init_weights": "models:/dark-bright@champion", "freeze": "backbone", "freeze_epochs": 1}


def test_init_weights_from_the_registered_champion(data, classifier, registry, tmp_path, restore_mlflow_uri):
    import mlflow

    d, inputs = data
    mlflow.set_tracking_uri(registry)  # load_init_weights resolves models:/ with MLflow's current URI
    run_single("Trainer", inputs, INIT, tmp_path / "t", tracking_uri=registry)
    log = (tmp_path / "t" / "log.txt").read_text()
    assert "transfer learning: copied" in log
    # conv1 is in the frozen backbone for the only epoch: it leaves training as registered,
    # bit for bit (the registered weights are the classifier's, trained from another start)
    for a, b in zip(_first_conv(tmp_path / "t" / "model"), _first_conv(classifier)):
        np.testing.assert_array_equal(a, b)
    # without init_weights the same Trainer (same seed) starts elsewhere: the check can fail
    run_single("Trainer", inputs, {k: v for k, v in INIT.items() if k != "init_weights"}, tmp_path / "fresh")
    assert not np.array_equal(_first_conv(tmp_path / "fresh" / "model")[0], _first_conv(classifier)[0])


def test_init_weights_uses_the_tracking_uri_it_is_given(data, registry, tmp_path, restore_mlflow_uri):
    import mlflow

    d, inputs = data
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # e.g. the default ./mlflow.db
    run_single("Trainer", inputs, INIT, tmp_path / "t", tracking_uri=registry)
    assert "transfer learning: copied" in (tmp_path / "t" / "log.txt").read_text()


# ---------------------------------------------------------------- face Trainer: the triplet loss

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    gen = {"source": {"format": "synthetic_faces", "path": str(d / "raw"),
                      "options": {"num_identities": 8, "images_per_identity": 4, "size": 32,
                                  "splits": {"train": ["id_000-id_005"], "eval": ["id_006-id_007"]}}},
           "split_map": {"train": "train", "eval": "eval"}, "image_size": [32, 32]}
    run_single("ExampleGen", {}, gen, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
    return {"examples": ex, "transform": d / "tf" / "transform"}


@pytest.mark.parametrize("loss, soft", [("hard", False), ("soft_hard", True)])
def test_face_trainer_uses_the_triplet_loss_its_task_params_name(faces, tmp_path, monkeypatch, loss, soft):
    import models.facenet as facenet

    made, calls, semihard = [], [], []
    hard_init, hard_call = facenet.TripletHardLoss.__init__, facenet.TripletHardLoss.call

    def init(self, *args, **kwargs):
        made.append((args, kwargs))
        hard_init(self, *args, **kwargs)

    def call(self, y_true, y_pred):
        calls.append(self.soft)
        return hard_call(self, y_true, y_pred)

    def no_semihard(self, *args, **kwargs):
        semihard.append(kwargs)
        raise AssertionError("TripletSemiHardLoss built")

    monkeypatch.setattr(facenet.TripletHardLoss, "__init__", init)
    monkeypatch.setattr(facenet.TripletHardLoss, "call", call)
    monkeypatch.setattr(facenet.TripletSemiHardLoss, "__init__", no_semihard)
    run_single("Trainer", faces, {"model": "facenet_small", "hyperparameters": {"embedding_dim": 8, "width": 4},
                                  "epochs": 1, "learning_rate": 0.003,
                                  "task_params": {"P": 3, "K": 2, "steps_per_epoch": 2, "loss": loss, "margin": 0.3}},
               tmp_path / "t")
    assert not semihard
    assert len(made) == 1
    args, kwargs = made[0]
    assert not args and kwargs == {"margin": 0.3, "soft": soft, "distance_metric": "L2"}
    assert calls and set(calls) == {soft}  # that loss object is the one the fit called
    info = json.loads((tmp_path / "t" / "model" / "model_info.json").read_text())
    assert info["task_params"]["loss"] == loss and info["task_params"]["margin"] == 0.3
