"""The embedding task plug-in through the components: ExampleGen on synthetic identities split
by identity -> StatisticsGen -> Transform -> Trainer (P x K, triplet loss) -> Evaluator
(verification) -> blessing; plus the config checks that must fail before anything runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from components.base import ComponentError
from pipeline.runner import run_single

SPLITS = {"train": ["id_000-id_007"], "eval": ["id_008-id_009"], "test": ["id_010-id_012"]}
TINY = {"model": "facenet_small", "hyperparameters": {"width": 8, "embedding_dim": 16, "dropout": 0.0},
        "epochs": 2, "learning_rate": 0.003, "seed": 0,
        "task_params": {"P": 4, "K": 3, "steps_per_epoch": 3, "margin": 0.3, "loss": "semihard"}}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    gen = {"source": {"format": "synthetic_faces", "path": str(d / "raw"),
                      "options": {"num_identities": 13, "images_per_identity": 5, "size": 32, "splits": SPLITS}},
           "image_size": [32, 32], "split_map": {"train": "train", "eval": "eval", "test": "test"}}
    run_single("ExampleGen", {}, gen, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"},
               {"augmentation": {"horizontal_flip": True, "rotation_degrees": 0, "contrast": 0.0}}, d / "tf")
    tf_dir = d / "tf" / "transform"
    meta = run_single("Trainer", {"examples": ex, "transform": tf_dir}, TINY, d / "train")
    return d, ex, tf_dir, d / "train" / "model", meta


def test_example_gen_splits_by_identity_and_names_classes(faces):
    d, ex, *_ = faces
    schema = json.loads((ex / "schema.json").read_text())
    assert schema["task"] == "embedding"
    assert schema["splits"] == {"train": 40, "eval": 10, "test": 15}
    # labels index every identity folder in natural order, so classes[label] is the identity
    assert schema["classes"] == [f"id_{k:03d}" for k in range(13)]
    from components.tasks.embedding import load_split

    _, y, ids, _ = load_split(ex, "test", (32, 32))
    assert {schema["classes"][k] for k in y} == set(ids) == {"id_010", "id_011", "id_012"}


def test_trainer_writes_threshold_model_and_export(faces):
    import tensorflow as tf

    from models.preprocessing import load_model

    d, ex, tf_dir, model_dir, meta = faces
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["task"] == "embedding" and info["embedding_dim"] == 16 and info["image_size"] == [32, 32]
    assert info["threshold_source"] == "eval" and 0.0 < info["threshold"] < 2.0
    assert info["classes"] == [f"id_{k:03d}" for k in range(8)]
    assert info["best_epoch"] in (1, 2) and info["images_per_second"] > 0 and info["train_seconds"] > 0
    hist = json.loads((model_dir / "history.json").read_text())
    assert len(hist["loss"]) == 2 and len(hist["val_roc_auc"]) == 2
    assert (model_dir / "training_curves.png").stat().st_size > 1000
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    km = load_model(model_dir / "model.keras")
    e1 = km(x).numpy()
    sm = tf.saved_model.load(str(model_dir / "saved_model"))  # keep a reference: it owns the variables
    e2 = sm.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e1, e2, atol=1e-5)  # no augmentation at serving time
    assert meta["metrics"]["threshold"] == pytest.approx(info["threshold"])


def test_evaluator_reports_verification_and_blesses(faces, tmp_path):
    d, ex, tf_dir, model_dir, _ = faces
    flat = run_single("Evaluator", {"model": model_dir, "examples": ex},
                      {"split": "test", "thresholds": {"accuracy": 0.0, "eer": 1.0},
                       "task_params": {"pair_mode": "sampled", "n_folds": 5}}, tmp_path / "ev")["metrics"]
    m = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    for k in ("accuracy_mean", "accuracy_std", "fold_accuracies", "roc_auc", "eer", "tar_at_far", "threshold",
              "rank1_accuracy", "num_pairs", "roc_auc_all_pairs", "accuracy_at_model_threshold"):
        assert k in m, k
    assert m["split"] == "test" and m["num_identities"] == 3 and m["identities_seen_in_training"] == 0
    assert m["num_matched_pairs"] == m["num_mismatched_pairs"] == 30  # balanced: 3 x C(5, 2) matched
    assert m["tar_at_far"]["0.001"]["tar"] is None and "reason" in m["tar_at_far"]["0.001"]
    for png in ("roc.png", "distance_histogram.png"):
        assert (tmp_path / "ev" / "evaluation" / png).stat().st_size > 1000
    b = json.loads((tmp_path / "ev" / "blessing" / "blessing.json").read_text())
    assert b["blessed"] is True and b["metric"] == "accuracy" and b["value"] == pytest.approx(m["accuracy_mean"])
    assert flat["blessed"] == 1.0 and 0.0 <= flat["roc_auc"] <= 1.0

    run_single("Evaluator", {"model": model_dir, "examples": ex},
               {"split": "test", "thresholds": {"accuracy": 1.01}, "task_params": {"pair_mode": "all"}},
               tmp_path / "ev2")
    b = json.loads((tmp_path / "ev2" / "blessing" / "blessing.json").read_text())
    assert b["blessed"] is False and "accuracy" in b["reasons"][0]


def test_embed_averages_normalised_views():
    from components.tasks.embedding import embed, embedding_views
    from models.tta import centre_crop

    def model(x, training=False):  # corner and centre pixels: views differ, so averaging shows
        x = np.asarray(x, dtype=np.float64)
        return np.stack([x[:, 0, 0, 0], x[:, -1, -1, 1], x[:, 4, 4, 2] + 1.0], axis=1)

    l2 = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    x = np.random.default_rng(0).integers(0, 255, (5, 9, 9, 3), dtype=np.uint8)
    np.testing.assert_allclose(embed(model, x), l2(model(x)))
    np.testing.assert_allclose(embed(model, x, scales=[1.0]), embed(model, x, scales=None))
    zoom = centre_crop(x, 0.6).numpy()
    want = l2(l2(model(x)) + l2(model(x[:, :, ::-1])) + l2(model(zoom)) + l2(model(zoom[:, :, ::-1])))
    np.testing.assert_allclose(embed(model, x, batch_size=2, flip=True, scales=[1.0, 0.6]), want, atol=1e-12)
    # the views a model was trained with come from its model_info, unless overridden
    assert embedding_views({"flip_embeddings": True, "tta_scales": [1.0, 0.8]}) == (True, [1.0, 0.8])
    assert embedding_views({}) == (False, [1.0])  # models trained before tta_scales existed
    assert embedding_views({"flip_embeddings": True}, flip=False, scales=[0.9]) == (False, [0.9])


def test_multi_scale_views_recorded_and_followed(faces, tmp_path):
    d, ex, tf_dir, model_dir, _ = faces
    info = json.loads((model_dir / "model_info.json").read_text())
    assert info["tta_scales"] == [1.0] and info["flip_embeddings"] is False  # the defaults
    m = run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "epochs": 1, "task_params": {**TINY["task_params"], "flip_embeddings": True,
                                                         "tta_scales": [1.0, 0.85]}}, tmp_path / "t")
    info = json.loads((tmp_path / "t" / "model" / "model_info.json").read_text())
    assert info["tta_scales"] == [1.0, 0.85] and info["flip_embeddings"] is True
    assert info["threshold"] == pytest.approx(m["metrics"]["threshold"])
    # the Evaluator embeds as the model was trained, or as told
    run_single("Evaluator", {"model": tmp_path / "t" / "model", "examples": ex},
               {"split": "test", "task_params": {"n_folds": 5}}, tmp_path / "ev")
    r = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    assert r["tta_scales"] == [1.0, 0.85] and r["flip_embeddings"] is True
    assert r["embed_images_per_second"] == pytest.approx(4 * r["embed_faces_per_second"])
    run_single("Evaluator", {"model": tmp_path / "t" / "model", "examples": ex},
               {"split": "test", "task_params": {"n_folds": 5, "tta_scales": [1.0], "flip": False}}, tmp_path / "ev1")
    r1 = json.loads((tmp_path / "ev1" / "evaluation" / "metrics.json").read_text())
    assert r1["tta_scales"] == [1.0] and r1["flip_embeddings"] is False
    assert r1["roc_auc"] != pytest.approx(r["roc_auc"], abs=1e-9)  # other views, other distances


def test_bad_task_params_fail_validation(faces, tmp_path):
    d, ex, tf_dir, model_dir, _ = faces
    with pytest.raises(ValidationError, match="bogus"):
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "task_params": {"P": 4, "bogus": 1}}, tmp_path / "t")
    with pytest.raises(ValidationError, match="loss"):
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "task_params": {"loss": "contrastive"}}, tmp_path / "t2")
    with pytest.raises(ValidationError, match="tta_scales"):  # a crop cannot be larger than the image
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "task_params": {"tta_scales": [1.0, 1.2]}}, tmp_path / "t4")
    with pytest.raises(ValidationError, match="tta_scales"):
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "task_params": {"tta_scales": []}}, tmp_path / "t5")
    with pytest.raises(ComponentError, match="pair_mode"):
        run_single("Evaluator", {"model": model_dir, "examples": ex},
                   {"task_params": {"pair_mode": "everything"}}, tmp_path / "e")
    with pytest.raises(ComponentError, match="P=9"):  # 8 training identities cannot fill P = 9
        run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "task_params": {"P": 9, "K": 2}}, tmp_path / "t3")
