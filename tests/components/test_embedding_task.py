"""The embedding task plug-in through the components: ExampleGen on synthetic identities split
by identity -> StatisticsGen -> Transform -> Trainer (P x K, triplet loss) -> Evaluator
(verification) -> blessing -> predict / BulkInferrer (with and without a face database); plus
the config checks that must fail before anything runs. The numbers the components report are
recomputed here independently (scikit-learn's AUC, a brute-force threshold search) on the
exported model."""
from __future__ import annotations

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
    from components.artifacts import Examples
    from components.tasks.embedding import load_split

    d, ex, *_ = faces
    examples = Examples.load(ex)
    assert examples.task == "embedding"
    assert examples.schema["splits"] == {"train": 40, "eval": 10, "test": 15}
    # labels index every identity folder in natural order, so classes[label] is the identity
    assert examples.classes == [f"id_{k:03d}" for k in range(13)]
    _, y, ids, _ = load_split(ex, "test", (32, 32))
    assert {examples.classes[k] for k in y} == set(ids) == {"id_010", "id_011", "id_012"}
    x, y2, ids2, keys = load_split(examples, "test")  # an Examples artifact, its image size
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and ids2 == ids and len(set(keys)) == 15


def _eval_embeddings(model_dir, ex, split, flip=False, scales=(1.0,)):
    """The exported model's embeddings of a split (the reference the reported numbers are checked against)."""
    from components.artifacts import Model
    from components.tasks.embedding import embed, load_split

    x, y, ids, keys = load_split(ex, split)
    return embed(Model.load(model_dir).load_keras(), x, flip=flip, scales=list(scales)), y, ids, keys


def _balanced_pairs(y, seed=0):
    """Every matched pair plus as many mismatched ones (the Trainer's and Evaluator's default)."""
    from components.metrics.verification import generate_pairs

    n_pos = sum(c * (c - 1) // 2 for c in np.unique(y, return_counts=True)[1])
    return generate_pairs(y, "sampled", num_pairs=2 * n_pos, seed=seed)


def _brute_force_best_accuracy(d, same):
    """The best accuracy of `distance < t` over every cut between sorted distances."""
    cuts = np.concatenate([[d.min() - 1.0], (np.sort(d)[1:] + np.sort(d)[:-1]) / 2, [d.max() + 1.0]])
    return max(float(np.mean((d < t) == same)) for t in cuts)


def test_trainer_writes_threshold_model_and_export(faces):
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from components.artifacts import Model

    d, ex, tf_dir, model_dir, meta = faces
    art = Model.load(model_dir)
    info, hist = art.info, art.history
    assert info.task == "embedding" and info.get("embedding_dim") == 16 and info.image_size == [32, 32]
    assert info.classes == [f"id_{k:03d}" for k in range(8)]
    assert info.face_crop is None and info.get("task_params")["P"] == 4  # common fields, from the skeleton
    assert len(hist["loss"]) == 2 and len(hist["val_roc_auc"]) == 2
    assert (model_dir / "training_curves.png").stat().st_size > 1000

    # the exported weights are the best epoch's: the epoch with the highest recorded val_roc_auc
    # (ties: the later), and the exported model reproduces that epoch's held-out AUC
    auc = hist["val_roc_auc"]
    best = max(range(len(auc)), key=lambda k: (auc[k], k)) + 1
    assert info.best_metric == "val_roc_auc" and info.best_epoch == best
    assert info.best_value == pytest.approx(auc[best - 1])
    emb, y, _, _ = _eval_embeddings(model_dir, ex, "eval")
    i, j, same = _balanced_pairs(y)
    dist = np.linalg.norm(emb[i] - emb[j], axis=1)
    exported_auc = roc_auc_score(same, -dist)
    assert exported_auc == pytest.approx(auc[best - 1], abs=1e-9)
    if auc[-1] != auc[best - 1]:  # (seed 0: epoch 1 is the best, not the last)
        assert exported_auc != pytest.approx(auc[-1], abs=1e-9)

    # the threshold: chosen on the held-out pairs, the cut that maximises accuracy there
    assert info.get("threshold_source") == "eval"
    best_acc = _brute_force_best_accuracy(dist, same)
    assert info.get("threshold_accuracy") == pytest.approx(best_acc)
    assert np.mean((dist < info.get("threshold")) == same) == pytest.approx(best_acc)
    assert info.get("threshold_roc_auc") == pytest.approx(exported_auc, abs=1e-9)
    assert meta["metrics"]["threshold"] == pytest.approx(info.get("threshold"))
    # images/s: P x K x steps per epoch, over the training time
    assert info.images_per_second == pytest.approx(2 * 3 * 4 * 3 / info.train_seconds, rel=1e-6)

    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    e1 = art.load_keras()(x).numpy()
    sm = tf.saved_model.load(str(art.saved_model_dir))  # keep a reference: it owns the variables
    e2 = sm.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e1, e2, atol=1e-5)  # no augmentation at serving time


def test_evaluator_reports_verification_and_blesses(faces, tmp_path):
    from sklearn.metrics import roc_auc_score

    from components.artifacts import Blessing, Evaluation, Model
    from components.metrics.verification import generate_pairs

    d, ex, tf_dir, model_dir, _ = faces
    flat = run_single("Evaluator", {"model": model_dir, "examples": ex},
                      {"split": "test", "thresholds": {"accuracy": 0.0, "eer": 1.0},
                       "task_params": {"pair_mode": "sampled", "n_folds": 5}}, tmp_path / "ev")["metrics"]
    m = Evaluation.load(tmp_path / "ev" / "evaluation").metrics
    for k in ("accuracy_mean", "accuracy_std", "fold_accuracies", "roc_auc", "eer", "tar_at_far", "threshold",
              "rank1_accuracy", "num_pairs", "roc_auc_all_pairs", "accuracy_at_model_threshold"):
        assert k in m, k
    assert m["split"] == "test" and m["num_identities"] == 3 and m["identities_seen_in_training"] == 0
    assert m["num_matched_pairs"] == m["num_mismatched_pairs"] == 30  # balanced: 3 x C(5, 2) matched
    assert m["tar_at_far"]["0.001"]["tar"] is None and "reason" in m["tar_at_far"]["0.001"]
    for png in ("roc.png", "distance_histogram.png"):
        assert (tmp_path / "ev" / "evaluation" / png).stat().st_size > 1000
    b = Blessing.load(tmp_path / "ev" / "blessing")
    assert b.blessed is True and b.metric == "accuracy" and b.value == pytest.approx(m["accuracy_mean"])
    assert flat["blessed"] == 1.0

    # the numbers are scikit-learn's / plain numpy's on the exported model's distances
    emb, y, _, _ = _eval_embeddings(model_dir, ex, "test")
    i, j, same = _balanced_pairs(y)
    dist = np.linalg.norm(emb[i] - emb[j], axis=1)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(same, -dist), abs=1e-9) == flat["roc_auc"]
    threshold = Model.load(model_dir).info.get("threshold")
    assert m["model_threshold"] == threshold
    assert m["accuracy_at_model_threshold"] == pytest.approx(np.mean((dist < threshold) == same))
    ai, aj, asame = generate_pairs(y, "all")
    all_d = np.linalg.norm(emb[ai] - emb[aj], axis=1)
    assert m["roc_auc_all_pairs"] == pytest.approx(roc_auc_score(asame, -all_d), abs=1e-9)

    run_single("Evaluator", {"model": model_dir, "examples": ex},
               {"split": "test", "thresholds": {"accuracy": 1.01}, "task_params": {"pair_mode": "all"}},
               tmp_path / "ev2")
    b = Blessing.load(tmp_path / "ev2" / "blessing")
    assert b.blessed is False and "accuracy" in b.reasons[0]
    m2 = Evaluation.load(tmp_path / "ev2" / "evaluation").metrics
    assert m2["num_pairs"] == 105 and m2["roc_auc"] == pytest.approx(m["roc_auc_all_pairs"], abs=1e-9)


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
    from components.artifacts import ModelInfo

    info = ModelInfo(model="m", task="embedding", classes=[], image_size=[9, 9], flip_embeddings=True,
                     tta_scales=[1.0, 0.7])
    assert embedding_views(info) == (True, [1.0, 0.7])  # a ModelInfo's task fields


def test_multi_scale_views_recorded_and_followed(faces, tmp_path):
    from sklearn.metrics import roc_auc_score

    from components.artifacts import Evaluation, ModelInfo

    d, ex, tf_dir, model_dir, _ = faces
    info = ModelInfo.read(model_dir)
    assert info.get("tta_scales") == [1.0] and info.get("flip_embeddings") is False  # the defaults
    m = run_single("Trainer", {"examples": ex, "transform": tf_dir},
                   {**TINY, "epochs": 1, "task_params": {**TINY["task_params"], "flip_embeddings": True,
                                                         "tta_scales": [1.0, 0.85]}}, tmp_path / "t")
    info = ModelInfo.read(tmp_path / "t" / "model")
    assert info.get("tta_scales") == [1.0, 0.85] and info.get("flip_embeddings") is True
    assert info.get("threshold") == pytest.approx(m["metrics"]["threshold"])
    # the threshold was chosen on the same views: its held-out AUC is that of the 4-view embeddings
    emb, y, _, _ = _eval_embeddings(tmp_path / "t" / "model", ex, "eval", flip=True, scales=(1.0, 0.85))
    i, j, same = _balanced_pairs(y)
    assert info.get("threshold_roc_auc") == pytest.approx(
        roc_auc_score(same, -np.linalg.norm(emb[i] - emb[j], axis=1)), abs=1e-9)

    # the Evaluator embeds as the model was trained, or as told
    def auc_with(flip, scales):
        emb, y, _, _ = _eval_embeddings(tmp_path / "t" / "model", ex, "test", flip=flip, scales=scales)
        i, j, same = _balanced_pairs(y)
        return roc_auc_score(same, -np.linalg.norm(emb[i] - emb[j], axis=1))

    run_single("Evaluator", {"model": tmp_path / "t" / "model", "examples": ex},
               {"split": "test", "task_params": {"n_folds": 5}}, tmp_path / "ev")
    r = Evaluation.load(tmp_path / "ev" / "evaluation").metrics
    assert r["tta_scales"] == [1.0, 0.85] and r["flip_embeddings"] is True
    assert r["roc_auc"] == pytest.approx(auc_with(True, (1.0, 0.85)), abs=1e-9)
    run_single("Evaluator", {"model": tmp_path / "t" / "model", "examples": ex},
               {"split": "test", "task_params": {"n_folds": 5, "tta_scales": [1.0], "flip": False}}, tmp_path / "ev1")
    r1 = Evaluation.load(tmp_path / "ev1" / "evaluation").metrics
    assert r1["tta_scales"] == [1.0] and r1["flip_embeddings"] is False
    assert r1["roc_auc"] == pytest.approx(auc_with(False, (1.0,)), abs=1e-9)
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


def _write_test_images(ex, folder, n):
    from PIL import Image

    from components.tasks.embedding import load_split

    x, _, ids, _ = load_split(ex, "test")
    folder.mkdir()
    paths = []
    for k in range(n):
        paths.append(str(folder / f"{ids[k]}_{k}.png"))
        Image.fromarray(x[k]).save(paths[-1])
    return x[:n], ids[:n], paths


def test_predict_gives_embeddings_and_the_nearest_enrolled_person(faces, tmp_path):
    from components.artifacts import Model
    from components.predict import PredictError, predict_images
    from components.tasks.embedding import embed
    from data.face_db import FaceDB

    d, ex, tf_dir, model_dir, _ = faces
    x, ids, paths = _write_test_images(ex, tmp_path / "img", 6)  # id_010 x 5, id_011 x 1
    art = Model.load(model_dir)
    want = embed(art.load_keras(), x)
    task, rows = predict_images(str(model_dir), paths + [str(tmp_path / "missing.png")])
    assert task.name == "embedding" and len(rows) == 7 and "error" in rows[-1]
    for r, e in zip(rows, want):
        assert r["embedding_dim"] == 16 and r["norm"] == pytest.approx(1.0, abs=1e-5)  # the network's own L2 norm
        np.testing.assert_allclose(r["embedding"], e, atol=1e-6)
        assert task.format_row(r) == ["embedding of 16 numbers, norm 1.0000"]

    # enrol id_010 from its first image and id_012 from another split image; the others are probes
    other, _, _ = _write_test_images(ex, tmp_path / "all", 15)
    with FaceDB(tmp_path / "faces.db") as db:
        db.enroll("id_010", want[0], model_version="test")
        db.enroll("id_012", embed(art.load_keras(), other[-1:])[0], model_version="test")
        enrolled = {n: db.embeddings_for(n) for n in db.identities()}
    _, rows = predict_images(str(model_dir), paths, face_db=str(tmp_path / "faces.db"))
    threshold = art.info.get("threshold")
    for r, e in zip(rows, want):
        dists = {n: float(np.linalg.norm(v - e, axis=1).min()) for n, v in enrolled.items()}
        nearest = min(dists, key=dists.get)
        assert r["identity"] == nearest and r["distance"] == pytest.approx(dists[nearest], abs=1e-5)
        assert r["threshold"] == threshold and r["match"] is (dists[nearest] < threshold)
        line = task.format_row(r)[0]
        assert line.startswith(nearest if r["match"] else "not in the database") and f"{threshold:.4f}" in line
    assert rows[0]["identity"] == "id_010" and rows[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0]["match"] is True
    with pytest.raises(PredictError, match="does not exist"):
        predict_images(str(model_dir), paths[:1], face_db=str(tmp_path / "nobody.db"))


def test_bulk_inferrer_embeds_a_split(faces, tmp_path):
    from components.artifacts import InferenceResult
    from components.tasks.embedding import embed, load_split
    from models.preprocessing import load_model

    d, ex, tf_dir, model_dir, _ = faces
    meta = run_single("BulkInferrer", {"model": model_dir, "examples": ex}, {"split": "test"}, tmp_path / "bi")
    rows = InferenceResult.load(tmp_path / "bi" / "inference").rows()
    x, _, _, keys = load_split(ex, "test")
    assert meta["metrics"]["predictions"] == 15 and sorted(r["key"] for r in rows) == sorted(keys)
    want = dict(zip(keys, embed(load_model(model_dir / "model.keras"), x)))
    for r in rows:
        np.testing.assert_allclose(r["embedding"], want[r["key"]], atol=1e-6)


def test_a_split_without_two_people_or_matched_pairs_is_never_blessed():
    import logging

    from components.artifacts import ModelInfo
    from components.tasks import get_task
    from components.tasks.embedding_eval import evaluation_pairs

    task = get_task("embedding")
    ep, tp = None, task.EvalParams(n_folds=2)
    info = ModelInfo(model="m", task="embedding", classes=["a"], image_size=[4, 4], threshold=0.5)
    model = lambda x, training=False: np.asarray(x, np.float64).reshape(len(x), -1)[:, :3] + 1.0  # noqa: E731
    x = np.random.default_rng(0).integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)
    for labels, ids, why in (([0, 0, 0], ["a", "a", "a"], "only 1 identity"),
                             ([0, 1, 2], ["a", "b", "c"], "no matched pair")):
        y = np.array(labels)
        pairs, _ = evaluation_pairs(tp, y, ["k"] * 3)
        matched = int(np.asarray(pairs[2]).sum())
        data = {"images": x, "labels": y, "identities": ids, "keys": ["k"] * 3, "split": "test", "pairs": pairs,
                "pairs_missing": 0, "matched": matched, "mismatched": len(pairs[2]) - matched, "notes": []}
        score = task.score(model, info, data, ep, tp, None, logging.getLogger("t"))
        reasons = task.degenerate(score, data)
        assert why in reasons[0] and any("NaN" in r for r in reasons), reasons
        assert np.isnan(score.flat["accuracy"]) and "nan" in task.headline(info, score)


def test_pairs_file_pairs_are_found_by_key(tmp_path):
    from components.tasks.embedding import EvalParams
    from components.tasks.embedding_eval import evaluation_pairs

    keys = ["ana/ana_0001.jpg", "ana/ana_0002.jpg", "bo/bo_0001.jpg"]
    (tmp_path / "pairs.txt").write_text("1\t2\nana\t1\t2\nana\t1\t3\nana\t2\tbo\t1\nbo\t1\tcy\t1\n")
    tp = EvalParams(pair_mode="pairs_file", pairs_file=str(tmp_path / "pairs.txt"))
    (i, j, same), missing = evaluation_pairs(tp, np.array([0, 0, 1]), keys)
    assert i.tolist() == [0, 1] and j.tolist() == [1, 2] and same.tolist() == [True, False] and missing == 2
    with pytest.raises(ComponentError, match="needs pairs_file"):
        evaluation_pairs(EvalParams(pair_mode="pairs_file"), np.array([0, 0, 1]), keys)
