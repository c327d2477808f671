"""`predict` and `explain TRAINER` through the CLI for every task kind, on small copies of the
default pipeline's branches (SIGNS classifier, shapes detector, synthetic faces): predict prints
what the task means (classes, boxes, an encoding), and `explain TRAINER --pipeline FILE` builds
the very network the Trainer trained (same parameter count as model_info.json)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import PROJECT_ROOT
from tests.e2e.test_pipeline_e2e import cli

pytestmark = pytest.mark.slow

TRAINERS = {"signs_train": "classification", "shapes_train": "detection", "faces_train": "embedding"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A three-branch pipeline, run up to its Trainers (no MLflow needed: models by folder)."""
    from pipeline.config import load_pipeline
    from pipeline.runner import Runner

    d = tmp_path_factory.mktemp("tasks")
    data = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    keep = {"signs_gen", "signs_stats", "signs_transform", "signs_train",
            "shapes_gen", "shapes_stats", "shapes_anchors", "shapes_transform", "shapes_train",
            "faces_gen", "faces_stats", "faces_transform", "faces_train"}
    c = data["components"] = {k: v for k, v in data["components"].items() if k in keep}
    c["signs_gen"]["params"]["source"]["options"]["num_examples"] = 120
    c["shapes_gen"]["params"]["source"]["options"]["num_images"] = 40
    for t in TRAINERS:
        c[t]["params"]["epochs"] = 1
    c["faces_train"]["params"]["task_params"]["steps_per_epoch"] = 2
    y = d / "pipeline.yaml"
    y.write_text(yaml.safe_dump(data, sort_keys=False))
    res = Runner(load_pipeline(y), console=None, show_progress=False, tracking=False).run()
    assert res.ok, {k: (e.status, e.error) for k, e in res.executions.items()}
    models = {cid: res.executions[cid].dir / "model" for cid in TRAINERS}
    examples = {b: res.executions[f"{b}_gen"].dir / "examples" for b in ("signs", "shapes", "faces")}
    return d, y, models, examples


def _an_image(examples, split, dest):
    from data.tfrecord import read_split

    files = sorted(str(f) for f in (examples / split).glob("*.tfrecord*"))
    img = read_split(files[:1], tuple(json.loads((examples / "schema.json").read_text())["image_size"]))["images"][0]
    Image.fromarray(img).save(dest)
    return str(dest)


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_explain_trainer_builds_the_trained_network(trained, trainer):
    d, y, models, _ = trained
    info = json.loads((models[trainer] / "model_info.json").read_text())
    r = cli("explain", trainer, "--pipeline", str(y), cwd=d)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("served model")][-1]
    assert f"{info['params']:,} parameters" in line, (line, info["params"])


def test_predict_a_classifier_prints_top_k(trained, tmp_path):
    d, y, models, examples = trained
    img = _an_image(examples["signs"], "test", tmp_path / "hand.png")
    r = cli("predict", "--model", str(models["signs_train"]), "--top", "3", img, cwd=d)
    line = r.stdout.strip().splitlines()[-1]
    classes = json.loads((models["signs_train"] / "model_info.json").read_text())["classes"]
    shown = [part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")]
    assert len(shown) == 3 and set(shown) <= set(classes)
    probs = [float(part.split("(")[1].rstrip(")")) for part in line.split(": ", 1)[1].split(", ")]
    assert probs == sorted(probs, reverse=True)


def test_predict_a_detector_prints_and_draws_boxes(trained, tmp_path):
    d, y, models, examples = trained
    img = _an_image(examples["shapes"], "test", tmp_path / "scene.png")
    r = cli("predict", "--model", str(models["shapes_train"]), "--score-threshold", "0", "--out",
            str(tmp_path / "drawn"), img, cwd=d)
    assert "scene.png: Found" in r.stdout
    drawn = tmp_path / "drawn" / "scene.png"
    assert drawn.exists() and np.asarray(Image.open(drawn)).shape[:2] == (96, 96)


def test_predict_a_face_model_prints_the_encoding(trained, tmp_path):
    d, y, models, examples = trained
    img = _an_image(examples["faces"], "test", tmp_path / "face.png")
    r = cli("predict", "--model", str(models["faces_train"]), img, cwd=d)
    dim = json.loads((models["faces_train"] / "model_info.json").read_text())["embedding_dim"]
    assert "face.png:" in r.stdout and str(dim) in r.stdout


def test_predict_checks_the_images_before_loading_the_model(trained, tmp_path):
    d, y, models, _ = trained
    (tmp_path / "notes.txt").write_text("not an image")
    r = cli("predict", "--model", "models:/does-not-exist@champion", str(tmp_path / "notes.txt"),
            str(tmp_path / "missing.png"), cwd=d, check=False)
    # both files are named with their problem; the (nonexistent) model was never looked up
    assert r.returncode == 1 and "notes.txt" in r.stdout and "missing.png" in r.stdout
    assert "does-not-exist" not in r.stdout + r.stderr
