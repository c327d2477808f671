"""Trainer and Evaluator on a tiny synthetic dataset: exports that serve raw uint8 images and
agree with Keras, augmentation off at inference, test-time crops, early stopping, weight
loading for transfer learning."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.base import ComponentError
from pipeline.runner import run_single

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("tr")
    run_single("ExampleGen", {}, {"source": {"format": "synthetic_signs", "options": {"num_examples": 120}},
                                  "split_ratios": {"train": 0.6, "eval": 0.2, "test": 0.2}}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"},
               {"augmentation": {"translate": 0.1, "rotation_degrees": 10}}, d / "tf")
    tf_dir = d / "tf" / "transform"
    meta = run_single("Trainer", {"examples": ex, "transform": tf_dir},
                      {"model": "signs_cnn", "epochs": 2, "batch_size": 16}, d / "train")
    return d, ex, tf_dir, d / "train" / "model", meta


def test_export_serves_uint8_and_matches_keras_without_augmentation(base):
    import tensorflow as tf

    from models.preprocessing import load_model

    d, ex, tf_dir, model_dir, meta = base
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["classes"] == ["0", "1", "2", "3", "4", "5"] and info["image_size"] == [64, 64]
    km = load_model(model_dir / "model.keras")
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    p1 = km.predict(x, verbose=0)
    p2 = km(x).numpy()  # a plain call must not augment either
    sm = tf.saved_model.load(str(model_dir / "saved_model"))
    p3 = sm.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    np.testing.assert_allclose(p1, p3, atol=1e-5)
    np.testing.assert_allclose(p1.sum(-1), 1.0, atol=1e-5)
    assert len(json.loads((model_dir / "history.json").read_text())["loss"]) == 2
    assert (model_dir / "training_curves.png").stat().st_size > 1000


def test_evaluator_with_test_time_crops_reports_gain_and_cost(base, tmp_path):
    d, ex, tf_dir, model_dir, _ = base
    meta = run_single("Evaluator", {"model": model_dir, "examples": ex},
                      {"split": "test", "test_time_crops": 5, "test_time_flip": False}, tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    tta = m["test_time_augmentation"]
    # the cost ratio is measured (benchmarks quote it); a unit test only checks it is reported
    assert tta["forward_passes"] == 5 and tta["inference_seconds_tta"] > 0 and tta["inference_seconds_single"] > 0
    assert tta["inference_cost_ratio"] == pytest.approx(tta["inference_seconds_tta"] / tta["inference_seconds_single"])
    assert set(m["per_class"]) == {"0", "1", "2", "3", "4", "5"}
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == m["num_examples"]
    # accuracy is the confusion matrix's trace, recomputed from the model's own predictions
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    from data.tfrecord import read_split
    from models.preprocessing import load_model

    split = read_split(sorted(str(f) for f in (ex / "test").glob("*.tfrecord*")), (64, 64), label=True)
    pred = load_model(model_dir / "model.keras").predict(split["images"], verbose=0).argmax(-1)
    assert m["accuracy"] == pytest.approx(float((pred == split["labels"]).mean()))
    b = json.loads((tmp_path / "ev" / "blessing" / "blessing.json").read_text())
    # no thresholds, no baseline, several classes present: blessed, and the blessing names its metric
    assert b["blessed"] is True and b["metric"] == "accuracy" and b["value"] == m["accuracy"]
    assert meta["metrics"]["accuracy"] == m["accuracy"]


def test_evaluator_threshold_not_met_is_not_blessed(base, tmp_path):
    d, ex, tf_dir, model_dir, _ = base
    run_single("Evaluator", {"model": model_dir, "examples": ex}, {"thresholds": {"accuracy": 1.01}}, tmp_path / "ev")
    b = json.loads((tmp_path / "ev" / "blessing" / "blessing.json").read_text())
    assert b["blessed"] is False and "accuracy" in b["reasons"][0]


def test_early_stopping_stops_and_best_epoch_is_exported(base, tmp_path):
    d, ex, tf_dir, _, _ = base
    meta = run_single("Trainer", {"examples": ex, "transform": tf_dir},
                      {"model": "signs_cnn", "epochs": 20, "batch_size": 16,
                       "early_stopping": {"monitor": "val_loss", "patience": 1, "min_delta": 10.0}}, tmp_path / "t")
    hist = json.loads((tmp_path / "t" / "model" / "history.json").read_text())
    assert len(hist["loss"]) == 2  # no epoch improves by 10: stop after patience 1
    info = json.loads((tmp_path / "t" / "model" / "model_info.json").read_text())
    best = int(np.argmin(hist["val_loss"])) + 1
    assert info["best_epoch"] == best and meta["metrics"]["best_epoch"] == best


def test_transfer_learning_from_a_pipeline_model_copies_matching_layers(base, tmp_path):
    import logging

    from components.training import load_init_weights
    from models.preprocessing import load_model
    from models.registry import build_model

    d, ex, tf_dir, model_dir, _ = base
    donor = load_model(model_dir / "model.keras")
    donor_core = next(l for l in donor.layers if l.name.startswith("signs_cnn") and hasattr(l, "layers"))
    target = build_model("signs_cnn", num_classes=10)  # another dataset: 10 classes, new head
    load_init_weights(target, str(model_dir / "model.keras"), logging.getLogger("t"))
    convs = [l for l in target.layers if l.weights and "conv" in l.name]
    assert convs
    for layer in convs:
        src = donor_core.get_layer(layer.name)
        for a, b in zip(layer.get_weights(), src.get_weights()):
            np.testing.assert_array_equal(a, b)
    dense = [l for l in target.layers if l.weights and "conv" not in l.name]
    assert dense and dense[-1].get_weights()[0].shape[-1] == 10


def test_trainer_base_model_input_and_freeze(base, tmp_path):
    d, ex, tf_dir, model_dir, _ = base
    run_single("Trainer", {"examples": ex, "transform": tf_dir, "base_model": model_dir},
               {"model": "signs_cnn", "epochs": 2, "batch_size": 16, "freeze": "backbone", "freeze_epochs": 1,
                "fine_tune_learning_rate": 1e-4}, tmp_path / "ft")
    log = (tmp_path / "ft" / "log.txt").read_text()
    assert "transfer learning: copied" in log and "phase 1" in log and "finetune epoch" in log
    hist = json.loads((tmp_path / "ft" / "model" / "history.json").read_text())
    assert len(hist["loss"]) == 2  # the frozen epoch and the fine-tuning epoch, one history


def test_freeze_keeps_the_backbone_and_trains_the_head(base, tmp_path):
    """freeze: backbone with freeze_epochs = epochs: the copied backbone layers leave training
    bit-identical to the donor, the head does not."""
    from models.preprocessing import load_model

    d, ex, tf_dir, model_dir, _ = base
    run_single("Trainer", {"examples": ex, "transform": tf_dir, "base_model": model_dir},
               {"model": "signs_cnn", "epochs": 1, "batch_size": 16, "freeze": "backbone", "freeze_epochs": 1,
                "best_metric": "loss"}, tmp_path / "fz")

    def core(path):
        m = load_model(path / "model.keras")
        return next(l for l in m.layers if l.name.startswith("signs_cnn") and hasattr(l, "layers"))

    before, after = core(model_dir), core(tmp_path / "fz" / "model")
    weighted = [l for l in after.layers if l.weights]
    for layer in weighted[:-1]:
        for a, b in zip(layer.get_weights(), before.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    head = weighted[-1]
    assert any(not np.array_equal(a, b) for a, b in zip(head.get_weights(), before.get_layer(head.name).get_weights()))


def test_init_weights_errors_are_clear(base, tmp_path):
    d, ex, tf_dir, _, _ = base
    with pytest.raises(ComponentError, match="file not found"):
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {"model": "signs_cnn", "epochs": 1, "init_weights": str(tmp_path / "nope.keras")}, tmp_path / "a")
    with pytest.raises(ComponentError, match="imagenet"):
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {"model": "signs_cnn", "epochs": 1, "init_weights": "imagenet"}, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_keep_best_prefers_the_later_epoch_on_ties():
    """A saturated held-out metric (val AUC 1.0 from epoch 1 on a tiny eval split) must not
    export the first, least trained epoch."""
    import keras

    from components.training import KeepBest

    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    cb = KeepBest("val_roc_auc")
    cb.set_model(m)
    for epoch, auc in enumerate([1.0, 1.0, 0.9]):
        m.set_weights([np.full((2, 1), float(epoch)), np.zeros(1)])
        cb.on_epoch_end(epoch, {"val_roc_auc": auc})
    cb.on_train_end()
    assert cb.best_epoch == 1 and m.get_weights()[0][0, 0] == 1.0
    loss_cb = KeepBest("val_loss")  # lower is better, ties also go to the later epoch
    loss_cb.set_model(m)
    for epoch, loss in enumerate([0.5, 0.4, 0.4, 0.6]):
        loss_cb.on_epoch_end(epoch, {"val_loss": loss})
    assert loss_cb.best_epoch == 2


def test_keep_best_survives_a_resume(tmp_path):
    """The best epoch before an interruption is still exported when a resumed fit never beats it."""
    import keras

    from components.training import KeepBest

    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    first = KeepBest("val_accuracy", state_dir=tmp_path)
    first.set_model(m)
    for epoch, acc in enumerate([0.5, 0.9]):
        m.set_weights([np.full((2, 1), float(epoch)), np.zeros(1)])
        first.on_epoch_end(epoch, {"val_accuracy": acc})
    # killed here; a new process resumes at epoch 2 with other weights
    resumed = KeepBest("val_accuracy", state_dir=tmp_path)
    resumed.set_model(m)
    m.set_weights([np.full((2, 1), 7.0), np.zeros(1)])
    resumed.on_epoch_end(2, {"val_accuracy": 0.6})
    resumed.on_train_end()
    assert resumed.best_epoch == 1 and resumed.best_value == pytest.approx(0.9)
    assert m.get_weights()[0][0, 0] == 1.0


def test_epoch_log_history_covers_every_epoch_across_a_resume(tmp_path):
    import logging

    import keras

    from components.base import Context
    from components.training import EpochLog

    ctx = Context(outputs={}, work_dir=tmp_path, logger=logging.getLogger("t"))
    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    log = EpochLog(ctx, "train", tmp_path / "h.json", 5, "loss")
    log.set_model(m)
    log.on_train_begin()
    for epoch in range(3):
        log.on_epoch_begin(epoch)
        log.on_epoch_end(epoch, {"loss": float(10 - epoch)})
    m._initial_epoch = 2  # BackupAndRestore's checkpoint said: epoch 3 is next (the third was lost)
    log2 = EpochLog(ctx, "train", tmp_path / "h.json", 5, "loss")
    log2.set_model(m)
    log2.on_train_begin()
    for epoch in range(2, 5):
        log2.on_epoch_begin(epoch)
        log2.on_epoch_end(epoch, {"loss": float(20 + epoch)})
    assert log2.history["loss"] == [10.0, 9.0, 22.0, 23.0, 24.0]
