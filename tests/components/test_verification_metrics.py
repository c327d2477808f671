"""Verification metrics on synthetic embeddings whose answers are known."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.metrics.verification import (best_threshold, generate_pairs, kfold_accuracy,
                                             rank1_identification, roc_metrics,
                                             verification_report)


def _clusters(n_ids=10, per_id=10, dim=16, spread=0.01, seed=0):
    """Tight, far-apart clusters: perfectly separable."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_ids, dim)) * 10
    labels = np.repeat(np.arange(n_ids), per_id)
    return centers[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_generate_all_pairs_counts():
    labels = np.repeat(np.arange(10), 10)
    i, j, same = generate_pairs(labels)
    assert len(i) == 100 * 99 // 2 == 4950
    assert same.sum() == 10 * 45  # 45 matched pairs per person
    assert (i < j).all()
    np.testing.assert_array_equal(same, labels[i] == labels[j])


def test_generate_sampled_pairs_balance_and_seed():
    labels = np.repeat(np.arange(10), 10)
    i, j, same = generate_pairs(labels, "sampled", num_pairs=200, matched_fraction=0.25, seed=1)
    assert len(i) == 200 and same.sum() == 50
    assert len(set(zip(i.tolist(), j.tolist()))) == 200  # no repeated pair
    i2, j2, _ = generate_pairs(labels, "sampled", num_pairs=200, matched_fraction=0.25, seed=1)
    np.testing.assert_array_equal(i, i2)
    # asking for more matched pairs than exist gives all of them
    _, _, same = generate_pairs(labels, "sampled", num_pairs=2000, matched_fraction=0.5)
    assert same.sum() == 450 and len(same) == 2000


def test_best_threshold_hand_case():
    d = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.9])
    y = np.array([1, 1, 0, 1, 0, 0], bool)
    t, acc = best_threshold(d, y)
    # cut after 0.2 (acc 5/6) or after 0.5 (5/6); the first maximum is taken: (0.2+0.3)/2
    assert t == pytest.approx(0.25) and acc == pytest.approx(5 / 6)
    # ties at the cut cannot be split
    t, acc = best_threshold(np.array([0.5, 0.5]), np.array([True, False]))
    assert acc == pytest.approx(0.5)


def test_perfectly_separated_embeddings():
    emb, labels = _clusters()
    r = verification_report(emb, labels)
    assert r["accuracy_mean"] == 1.0 and r["accuracy_std"] == 0.0
    assert r["roc_auc"] == 1.0 and r["eer"] == 0.0
    assert r["rank1_accuracy"] == 1.0 and r["num_probes"] == 90 and r["gallery_size"] == 10
    assert r["tar_at_far"]["0.01"]["tar"] == 1.0 and r["tar_at_far"]["0.001"]["tar"] == 1.0
    assert r["distance_mean_matched"] < r["threshold"] < r["distance_mean_mismatched"]
    assert len(r["fold_accuracies"]) == 10
    json.dumps(r)  # plain, JSON-serialisable


def test_random_embeddings_are_at_chance():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 10)
    r = verification_report(rng.normal(size=(200, 32)), labels)
    assert abs(r["roc_auc"] - 0.5) < 0.05
    assert abs(r["eer"] - 0.5) < 0.06
    assert r["rank1_accuracy"] < 0.2  # chance is 1/20
    # the all-pairs set is 95% mismatched: the accuracy reflects the majority rule
    assert r["accuracy_mean"] == pytest.approx(1 - r["num_matched_pairs"] / r["num_pairs"], abs=0.02)


def test_eer_hand_case():
    # matched: 0.1, 0.4 ; mismatched: 0.3, 0.8 -> at t in (0.3, 0.4): FNR 1/2, FAR 1/2
    r = roc_metrics(np.array([0.1, 0.4, 0.3, 0.8]), np.array([1, 1, 0, 0], bool))
    assert r["eer"] == pytest.approx(0.5)
    assert r["roc_auc"] == pytest.approx(0.75)


def test_tar_at_far_needs_enough_negatives():
    emb, labels = _clusters(n_ids=4, per_id=5)  # 190 pairs, 150 mismatched
    r = verification_report(emb, labels)
    assert r["tar_at_far"]["0.01"]["tar"] == 1.0  # 150 >= 100
    far3 = r["tar_at_far"]["0.001"]
    assert far3["tar"] is None and "1000" in far3["reason"]


def test_tar_at_far_value():
    # 1000 mismatched at distances 1..1000/1000, matched at 0.0005 (half) and 0.0115 (half):
    # FAR 1e-2 admits 10 mismatched (d <= 0.010); accepting 0.0115 would admit 11
    d = np.concatenate([np.arange(1, 1001) / 1000, [0.0005] * 5, [0.0115] * 5])
    y = np.concatenate([np.zeros(1000, bool), np.ones(10, bool)])
    r = roc_metrics(d, y)
    assert r["tar_at_far"]["0.01"]["tar"] == pytest.approx(0.5)
    assert r["tar_at_far"]["0.01"]["far"] <= 0.01
    assert r["tar_at_far"]["0.001"]["tar"] == pytest.approx(0.5)


def test_kfold_threshold_chosen_on_training_folds():
    # one mislabelled pair cannot pull the thresholds: every fold learns ~0.5
    d = np.r_[np.linspace(0, 0.45, 50), np.linspace(0.55, 1, 50)]
    y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    r = kfold_accuracy(d, y, n_folds=10, seed=0)
    assert r["accuracy_mean"] == 1.0
    assert all(0.45 < t < 0.55 for t in r["fold_thresholds"])


def test_explicit_pairs_and_distances_inputs():
    emb, labels = _clusters(n_ids=5, per_id=4)
    i, j, same = generate_pairs(labels)
    r1 = verification_report(emb, pairs=(i, j, same))
    assert r1["pair_mode"] == "explicit" and r1["roc_auc"] == 1.0 and "rank1_accuracy" not in r1
    d = np.linalg.norm(emb[i] - emb[j], axis=1)
    r2 = verification_report(distances=d, is_same=same)
    assert r2["threshold"] == pytest.approx(r1["threshold"])


def test_rank1_identification_known_answer():
    # gallery = first image per person; probe 3 is closer to person 1's gallery image
    emb = np.array([[0.0], [10.0], [0.5], [9.0], [6.0]])
    labels = np.array([0, 1, 0, 1, 0])
    r = rank1_identification(emb, labels)
    assert r == {"rank1_accuracy": pytest.approx(2 / 3), "num_probes": 3, "gallery_size": 2}


def test_plots_are_written(tmp_path):
    emb, labels = _clusters(n_ids=5, per_id=4)
    r = verification_report(emb, labels, plot_dir=tmp_path / "plots")
    for key in ("roc", "distance_histogram"):
        data = open(r["plots"][key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
