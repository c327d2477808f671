"""Smoke test of the benchmark modules: they import without TensorFlow, their argument parsing
and cheap pure helpers work. The benchmarks themselves are not run here (minutes of CPU)."""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import yaml

MODULES = ["benchmarks.bench_trainer_input", "benchmarks.bench_pipeline", "benchmarks.bench_example_gen",
           "benchmarks.bench_serving", "benchmarks.bench_first_run", "benchmarks.bench_multiworker"]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_has_main(name):
    mod = importlib.import_module(name)
    assert callable(mod.main)
    assert mod.__doc__ and "python -m benchmarks" in mod.__doc__


def test_modules_do_not_import_tensorflow_at_load():
    import subprocess

    code = ("import sys; " + "; ".join(f"import {m}" for m in MODULES)
            + "; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trainer_input_helpers():
    from benchmarks.bench_trainer_input import epoch_intervals, images_per_s

    assert epoch_intervals(10.0, [11.0, 11.5, 13.0]) == [1.0, 0.5, 1.5]
    assert epoch_intervals(0.0, []) == []
    assert images_per_s(100, [1.0, 2.0, 4.0]) == 50.0


def test_pipeline_helpers(tmp_path):
    from benchmarks.bench_pipeline import imported, make_pipeline_copy, parse_importtime, status_counts
    from components.base import DEFAULT_TRACKING_URI

    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       100 |        100 |     tensorflow.python\n"
              "import time:      2000 |    1500000 |   tensorflow\n"
              "import time:        50 |      50000 | click\n")
    imp = parse_importtime(stderr)
    assert imp["tensorflow"] == pytest.approx(1.5) and imp["click"] == pytest.approx(0.05)
    assert imported(stderr, "tensorflow") and not imported(stderr, "keras")
    assert status_counts("pipeline run 2026-x: 4 cached, 3 done; MLflow run abc") == {"cached": 4, "done": 3}
    assert status_counts("pipeline run 2026-x: 7 cached") == {"cached": 7}

    src = tmp_path / "src" / "pipeline.yaml"
    (src.parent / "data" / "imgs").mkdir(parents=True)  # relative paths that exist are made absolute
    src.write_text(yaml.safe_dump({"name": "p", "root": "pipeline_root", "tracking": {"uri": DEFAULT_TRACKING_URI},
                                   "components": {"gen": {"type": "ExampleGen", "params": {
                                       "source": {"format": "image_folder", "path": "data/imgs"}}}}}))
    dest = tmp_path / "dest"
    dest.mkdir()
    cfg = yaml.safe_load(make_pipeline_copy(src, dest).read_text())
    assert cfg["root"] == str(dest / "pipeline_root")
    assert cfg["tracking"]["uri"] == f"sqlite:///{dest / 'mlflow.db'}"
    assert cfg["components"]["gen"]["params"]["source"]["path"] == str((src.parent / "data/imgs").resolve())


def test_example_gen_helpers(tmp_path):
    from benchmarks.bench_example_gen import list_images, make_tiny_copy

    root = tmp_path / "ds"
    for cls in ("0", "1"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.jpg").write_bytes(b"x")
        (root / cls / "notes.txt").write_text("ignored")
    images = list_images(root)
    assert [(p.name, c) for p, c in images] == [("0.jpg", "0"), ("1.jpg", "0"), ("2.jpg", "0"),
                                                ("0.jpg", "1"), ("1.jpg", "1"), ("2.jpg", "1")]
    n = make_tiny_copy(images, tmp_path / "tiny", 2)
    assert n == 2 and sorted(p.parent.name for p in (tmp_path / "tiny").rglob("*.jpg")) == ["0", "1"]


def test_example_gen_ceiling_writes_every_image_once_over_forked_loops(tmp_path):
    """The ceiling (the loop forked over N processes) does the loop's work: each image written
    once, the bad one counted once."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from benchmarks.bench_example_gen import list_images, parallel_loop

    root = tmp_path / "ds"
    for i in range(7):
        (root / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(root / str(i % 2) / f"{i}.png")
    (root / "1" / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    assert parallel_loop(list_images(root), out, 2) == {"written": 7, "bad": 1}
    keys = sorted(tf.train.Example.FromString(r.numpy()).features.feature["image/key"].bytes_list.value[0].decode()
                  for r in tf.data.TFRecordDataset(sorted(str(f) for f in out.glob("*.tfrecord"))))
    assert keys == sorted(f"{i % 2}/{i}.png" for i in range(7))


def test_example_gen_skips_without_dataset(tmp_path, capsys):
    from benchmarks.bench_example_gen import main

    assert main(["--path", str(tmp_path / "absent")]) == {}
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_faces_benchmark_quick_with_multi_scale_views(tmp_path, monkeypatch):
    """`python -m benchmarks faces --quick` end to end on the real AT&T faces (a few training
    steps): the report's headline AUC and rank-1 are those of the test embeddings it computed
    (recomputed here from their distances), and those embeddings average the views asked for."""
    import benchmarks.bench_faces as bench
    import benchmarks.common as common

    if not (common.DATASETS / "att_faces").exists():
        pytest.skip("../shared/datasets/att_faces not available")
    import components.metrics.verification as verification
    from sklearn.metrics import roc_auc_score

    from components.tasks.embedding import embed

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    # record what the benchmark embeds and what it hands to the metrics
    embedded, reports = [], []
    real_embed, real_report = bench._embed, verification.verification_report

    def spy_embed(model, x, *args, **kwargs):
        e = real_embed(model, x, *args, **kwargs)
        embedded.append((model, x, args, kwargs, e))
        return e

    def spy_report(embeddings=None, labels=None, **kwargs):
        reports.append((np.asarray(embeddings), np.asarray(labels), kwargs))
        return real_report(embeddings, labels, **kwargs)

    monkeypatch.setattr(bench, "_embed", spy_embed)
    monkeypatch.setattr(verification, "verification_report", spy_report)
    out = bench.main(["--quick", "--no-throughput", "--flip-eval", "--tta-scales", "1", "0.8",
                      "--result-name", "faces_quick"])
    assert out["config"]["tta_scales"] == [1.0, 0.8]
    t = out["test"]
    # the headline AUC and rank-1 are those of the test embeddings, recomputed here from their
    # distances on every pair of the 100 unseen images (s31-s40, 10 each)
    emb, labels, _ = next(r for r in reports if r[2].get("plot_dir") is not None)
    assert emb.shape[0] == 100 and sorted(np.unique(labels, return_counts=True)[1]) == [10] * 10
    i, j = np.triu_indices(len(labels), 1)
    dist = np.linalg.norm(emb[i] - emb[j], axis=1)
    same = labels[i] == labels[j]
    assert len(dist) == out["test_all_pairs"]["num_pairs"] == 4950 and same.sum() == 450
    assert t["roc_auc"] == pytest.approx(roc_auc_score(same, -dist), abs=1e-9)
    # rank-1 with one enrolled image per person (the first of each), the 90 others as probes
    gallery = np.array([np.flatnonzero(labels == lab)[0] for lab in np.unique(labels)])
    probes = np.setdiff1d(np.arange(len(labels)), gallery)
    nearest = np.linalg.norm(emb[probes][:, None] - emb[gallery][None], axis=-1).argmin(1)
    assert t["rank1_accuracy"] == pytest.approx(float(np.mean(labels[gallery][nearest] == labels[probes])))
    assert out["test_balanced_pairs"]["num_pairs"] == 900  # all 450 matched + 450 mismatched
    # those embeddings average the flip and 0.8-crop views of the trained model (not one view)
    model, x, args, kwargs, e = next(c for c in embedded if c[4] is not None and np.array_equal(c[4], emb))
    np.testing.assert_allclose(emb, embed(model, x, flip=True, scales=[1.0, 0.8]), atol=1e-5)
    single = embed(model, x)
    assert not np.allclose(emb, single, atol=1e-3)
    assert (tmp_path / "faces_quick.json").exists()
    assert (tmp_path / "faces_quick" / "roc.png").stat().st_size > 1000


@pytest.mark.slow
def test_faces_benchmark_runs_the_pipeline_per_seed(tmp_path, monkeypatch):
    """`--pipeline-config C --seeds ...`: one pipeline run per Trainer seed (up to the
    Evaluator), every seed's metrics and their median; a rerun of a seed is a cache hit."""
    import benchmarks.bench_faces as bench
    import benchmarks.common as common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    splits = {"train": ["id_000-id_007"], "eval": ["id_008-id_009"], "test": ["id_010-id_012"]}
    cfg = {"name": "faces-seeds", "root": str(tmp_path / "root"), "components": {
        "faces_gen": {"type": "ExampleGen", "params": {
            "source": {"format": "synthetic_faces", "path": str(tmp_path / "raw"),
                       "options": {"num_identities": 13, "images_per_identity": 4, "size": 32, "splits": splits}},
            "image_size": [32, 32], "split_map": {"train": "train", "eval": "eval", "test": "test"}}},
        "stats": {"type": "StatisticsGen", "inputs": {"examples": "faces_gen.examples"}},
        "tf": {"type": "Transform", "inputs": {"examples": "faces_gen.examples", "statistics": "stats.statistics"}},
        "faces_train": {"type": "Trainer", "inputs": {"examples": "faces_gen.examples", "transform": "tf.transform"},
                  "params": {"model": "facenet_small", "epochs": 1, "eval_split": "eval",
                             "hyperparameters": {"width": 8, "embedding_dim": 8, "dropout": 0.0},
                             "task_params": {"P": 4, "K": 2, "steps_per_epoch": 2}}},
        "faces_eval": {"type": "Evaluator", "inputs": {"model": "faces_train.model", "examples": "faces_gen.examples"},
                 "params": {"split": "test", "task_params": {"n_folds": 3}}},
        "push": {"type": "Pusher", "inputs": {"model": "faces_train.model", "blessing": "faces_eval.blessing"},
                 "params": {"registered_model_name": "never-reached"}}}}
    path = tmp_path / "faces.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = bench.main(["--pipeline-config", str(path), "--seeds", "0", "1", "0", "--result-name", "seeds"])
    runs = out["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 0]
    assert [r["cached"] for r in runs] == [False, False, True]
    assert runs[2]["accuracy_mean"] == runs[0]["accuracy_mean"]  # the same model, from the cache
    accs = sorted(r["accuracy_mean"] for r in runs)
    assert out["median"]["accuracy_mean"] == accs[1]
    assert out["min_max"]["accuracy_mean"] == [accs[0], accs[2]]
    assert set(out["targets_met_by_median"]) == {"accuracy_mean", "roc_auc", "rank1_accuracy"}
    assert (tmp_path / "results" / "seeds.json").exists()
    assert not list((tmp_path / "root").glob("push*"))  # runs stop at the Evaluator

    # --pipeline-root: the newest execution's numbers (seed 1's: the last seed 0 was a cache
    # hit), and the paired single- vs multi-scale views of that model
    out = bench.main(["--pipeline-root", str(tmp_path / "root"), "--tta-scales", "1", "0.8",
                      "--result-name", "root"])
    assert out["test"]["accuracy_mean"] == runs[1]["accuracy_mean"] and out["embed_faces_per_s"] > 0
    views = out["views_comparison"]
    assert views["single_scale"]["scales"] == [1.0] and views["multi_scale"]["scales"] == [1.0, 0.8]
    # same pairs as the Evaluator (balanced, seed 0), so the same AUC (accuracy differs: 3 folds there)
    assert views["single_scale"]["roc_auc"] == pytest.approx(runs[1]["roc_auc"], abs=1e-4)
    assert views["multi_scale"]["roc_auc_all_pairs"] != views["single_scale"]["roc_auc_all_pairs"]


def test_faces_benchmark_pipeline_config_needs_seeds(tmp_path):
    import benchmarks.bench_faces as bench

    with pytest.raises(SystemExit):
        bench.main(["--pipeline-config", str(tmp_path / "x.yaml")])
    with pytest.raises(SystemExit):  # refused before any training
        bench.main(["--quick", "--tta-scales", "1", "1.5"])


def test_first_run_counts_lines_as_a_user_sees_them():
    from benchmarks.bench_first_run import _lines

    assert _lines("a\nb\n") == 2 and _lines("a\nb") == 2 and _lines("a\n\nb\n") == 3
    # a table of two rows drawn three times in place (cursor up 2, erase line), as rich's Live does
    frame = "\x1b[2Krow 1\nrow 2\n"
    redraw = frame + "\x1b[2A" + frame.replace("1", "one") + "\x1b[2A" + frame
    assert _lines("title\n" + redraw + "done\n") == 4
    assert _lines("bar 10%\rbar 50%\rbar 100%\n") == 1


def test_example_gen_cpu_figures_count_the_forked_workers():
    """The forked SDK workers are the zygote's children, not this process's: their CPU reaches the
    benchmark's figures through the log they write (a CPU-bound Map of ~1 s on multiprocess)."""
    import apache_beam as beam_sdk

    from benchmarks.bench_example_gen import _beam, _measured
    from components.beam_engine import open_pipeline

    def run():
        with open_pipeline(_beam("multiprocess", 2)) as p:
            p | beam_sdk.Create(list(range(16))) | beam_sdk.Map(lambda i: sum(j * j for j in range(1_000_000)))

    m = _measured(run)
    assert m["cpu_children_s"] > 0.5, m
