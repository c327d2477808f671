"""Data and evaluation modes through the components, on files written here: a COCO annotation
file through ExampleGen -> StatisticsGen (classes from the COCO categories, boxes counted per
split), and the face Evaluator's ``pair_mode: pairs_file`` on an LFW-style identity folder and
``pairs.txt`` (pairs found by key, pairs naming images outside the split counted as missing,
metrics on exactly the listed pairs)."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipeline.runner import run_single

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- COCO

# category ids out of order: the classes are the categories sorted by id -> cat, dog, bird
CATEGORIES = [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 9, "name": "bird"}]
# file -> (COCO image id, [(category id, bbox [x, y, w, h], iscrowd)])
IMAGES = {
    "a.png": (1, [(2, [2, 2, 20, 15], 0), (5, [30, 10, 25, 30], 0), (5, [0, 0, 60, 40], 1)]),  # + a crowd region
    "b.png": (2, [(5, [5, 5, 40, 30], 0)]),
    "c.png": (3, [(2, [1, 1, 10, 10], 0), (2, [20, 20, 15, 15], 0), (9, [40, 5, 20, 20], 0)]),
}
NAMES = {2: "cat", 5: "dog", 9: "bird"}


def _coco(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    anns, images = [], []
    for fname, (image_id, objects) in IMAGES.items():
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / fname)
        images.append({"id": image_id, "file_name": fname, "width": 64, "height": 48})
        for cat, bbox, crowd in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox,
                         "iscrowd": crowd, "area": bbox[2] * bbox[3]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


def _salt_splitting_both_ways():
    """A split salt that puts the three keys in both splits (so per-split counts differ)."""
    from components.example_gen import _ratio_pick

    ratios = {"train": 0.5, "test": 0.5}
    return next(s for s in map(str, range(100)) if len({_ratio_pick(ratios, k, s) for k in IMAGES}) == 2)


def test_coco_through_example_gen_and_statistics(tmp_path):
    from data.tfrecord import read_split

    ann = _coco(tmp_path / "coco")
    run_single("ExampleGen", {}, {"source": {"format": "coco", "path": str(ann)}, "image_size": [32, 32],
                                  "split_ratios": {"train": 0.5, "test": 0.5}, "split_by": "key",
                                  "split_salt": _salt_splitting_both_ways()}, tmp_path / "gen")
    ex = tmp_path / "gen" / "examples"
    schema = json.loads((ex / "schema.json").read_text())
    assert schema["task"] == "detection" and schema["classes"] == ["cat", "dog", "bird"]
    run_single("StatisticsGen", {"examples": ex}, {}, tmp_path / "stats")
    stats = json.loads((tmp_path / "stats" / "statistics" / "statistics.json").read_text())
    assert stats["classes"] == ["cat", "dog", "bird"] and stats["task"] == "detection"

    seen = []
    for split in ("train", "test"):
        recs = read_split(sorted(str(f) for f in (ex / split).glob("*.tfrecord*")), (32, 32), boxes=True)
        keys = recs["keys"]
        seen += keys
        # what the annotation file says about the images that landed in this split (crowd excluded)
        objects = [[NAMES[c] for c, _, crowd in IMAGES[k][1] if not crowd] for k in keys]
        st = stats["splits"][split]
        assert st["num_examples"] == len(keys) == schema["splits"][split]
        assert st["detection"]["boxes"] == sum(len(o) for o in objects)
        assert st["detection"]["boxes_per_class"] == dict(Counter(n for o in objects for n in o))
        assert st["detection"]["boxes_per_image"] == dict(Counter(str(len(o)) for o in objects))
        # box labels index the classes in category-id order
        for k, labels, o in zip(keys, recs["box_labels"], objects):
            assert [schema["classes"][int(v)] for v in labels] == o, k
    assert sorted(seen) == sorted(IMAGES)
    assert stats["splits"]["train"]["detection"]["boxes"] + stats["splits"]["test"]["detection"]["boxes"] == 6


# ---------------------------------------------------------------- face Evaluator: pairs_file

TRAIN = ["Ada_Ray", "Bo_Li", "Cy_Ng", "Di_Ko"]
TEST = ["Ed_Wu", "Flo_Fu", "Gus_Yu"]
PAIRS = """1\t4
Ed_Wu\t1\t2
Ed_Wu\t3\t4
Flo_Fu\t1\t3
Gus_Yu\t2\t7
Ed_Wu\t1\tFlo_Fu\t1
Ed_Wu\t4\tGus_Yu\t2
Flo_Fu\t2\tGus_Yu\t3
Ada_Ray\t1\tFlo_Fu\t4
"""
# found in the test split: the first three matched and mismatched lines. Gus_Yu has no 7th
# image and Ada_Ray is a training identity (not in the evaluated split): 2 pairs missing.
FOUND = [("Ed_Wu", 1, "Ed_Wu", 2, True), ("Ed_Wu", 3, "Ed_Wu", 4, True), ("Flo_Fu", 1, "Flo_Fu", 3, True),
         ("Ed_Wu", 1, "Flo_Fu", 1, False), ("Ed_Wu", 4, "Gus_Yu", 2, False), ("Flo_Fu", 2, "Gus_Yu", 3, False)]


def _lfw_folder(tmp_path):
    """Synthetic faces renamed the LFW way: <root>/<Name>/<Name>_0001.png ..."""
    from data.synthetic_faces import generate

    raw = generate(tmp_path / "raw", num_identities=7, images_per_identity=4, size=32)
    root = tmp_path / "lfw"
    for k, name in enumerate(TRAIN + TEST):
        (root / name).mkdir(parents=True)
        for m in range(4):
            shutil.copy(raw / f"id_{k:03d}" / f"{m:03d}.png", root / name / f"{name}_{m + 1:04d}.png")
    return root


def test_evaluator_pairs_file_mode(tmp_path):
    from sklearn.metrics import roc_auc_score

    from components.artifacts import Model
    from components.tasks.embedding import embed, load_split

    root = _lfw_folder(tmp_path)
    run_single("ExampleGen", {}, {"source": {"format": "identity_folders", "path": str(root),
                                             "options": {"splits": {"train": TRAIN, "test": TEST}}},
                                  "split_map": {"train": "train", "test": "test"}, "image_size": [32, 32]},
               tmp_path / "gen")
    ex = tmp_path / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, tmp_path / "stats")
    run_single("Transform", {"examples": ex, "statistics": tmp_path / "stats" / "statistics"}, {}, tmp_path / "tf")
    run_single("Trainer", {"examples": ex, "transform": tmp_path / "tf" / "transform"},
               {"model": "facenet_small", "hyperparameters": {"embedding_dim": 8, "width": 4}, "epochs": 1,
                "task_params": {"P": 3, "K": 2, "steps_per_epoch": 2}}, tmp_path / "train")
    model_dir = tmp_path / "train" / "model"
    (tmp_path / "pairs.txt").write_text(PAIRS)
    meta = run_single("Evaluator", {"model": model_dir, "examples": ex},
                      {"split": "test", "task_params": {"pair_mode": "pairs_file", "n_folds": 3,
                                                        "pairs_file": str(tmp_path / "pairs.txt")}}, tmp_path / "ev")
    m = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    assert m["pair_mode"] == "pairs_file" and m["num_identities"] == 3 and m["num_images"] == 12
    assert m["num_pairs"] == 6 and meta["metrics"]["num_pairs"] == 6
    assert m["num_matched_pairs"] == 3 and m["num_mismatched_pairs"] == 3
    assert m["pairs_missing"] == 2
    assert "2 pairs of" in (tmp_path / "ev" / "log.txt").read_text()

    # the metrics are those of exactly the listed pairs, on the exported model's embeddings
    x, _, _, keys = load_split(ex, "test")
    emb = dict(zip(keys, embed(Model.load(model_dir).load_keras(), x)))
    d = np.array([np.linalg.norm(emb[f"{a}/{a}_{i:04d}.png"] - emb[f"{b}/{b}_{j:04d}.png"]) for a, i, b, j, _ in FOUND])
    same = np.array([s for *_, s in FOUND])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(same, -d), abs=1e-9)
    assert m["distance_mean_matched"] == pytest.approx(d[same].mean(), abs=1e-6)
    assert m["distance_mean_mismatched"] == pytest.approx(d[~same].mean(), abs=1e-6)
