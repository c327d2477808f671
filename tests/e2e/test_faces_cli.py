"""`python -m pipeline faces enroll|verify|identify|list` on synthetic faces with model folders
shaped like the Trainer's (model.keras + model_info.json with a threshold).

The models are untrained (built here in a second), so decisions are made deterministic with
the threshold: the enrolled image itself is at distance 0 (accepted), another person's image
is farther than the tiny threshold (rejected)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipeline.cli_faces import faces

PROJECT_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _model_folder(path, seed: int, threshold: float = 1e-3, face_crop: dict | None = None):
    import keras

    from models.facenet import small_face_model
    from models.preprocessing import build_preprocessor

    keras.utils.set_random_seed(seed)
    cfg = {"image_size": [32, 32], "mean": None}
    inp = keras.Input((32, 32, 3), dtype="uint8", name="image")
    core = small_face_model((32, 32, 3), embedding_dim=16, width=8, dropout=0.0)
    model = keras.Model(inp, core(build_preprocessor(cfg)(inp)))
    path.mkdir(parents=True)
    model.save(path / "model.keras")
    (path / "model_info.json").write_text(json.dumps({"model": "facenet_small", "task": "embedding",
                                                      "image_size": [32, 32], "threshold": threshold,
                                                      "embedding_dim": 16, "face_crop": face_crop}))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from data.synthetic_faces import generate

    d = tmp_path_factory.mktemp("facecli")
    raw = generate(d / "raw", num_identities=3, images_per_identity=3, size=40)
    return d, raw, _model_folder(d / "model_a", 0), _model_folder(d / "model_b", 1)


def invoke(*args):
    return CliRunner().invoke(faces, [str(a) for a in args], catch_exceptions=False)


def test_enroll_verify_identify(setup, tmp_path):
    d, raw, model_a, _ = setup
    db = tmp_path / "faces.db"
    r = invoke("enroll", "--db", db, "--model", model_a, "ana", raw / "id_000" / "000.png", raw / "id_000" / "001.png")
    assert r.exit_code == 0 and "enrolled ana: 2 image(s)" in r.output, r.output
    r = invoke("enroll", "--db", db, "--model", model_a / "model.keras", "bob", raw / "id_001" / "000.png")
    assert r.exit_code == 0, r.output  # the same file given as .keras is the same version

    r = invoke("verify", "--db", db, "--as", "ana", raw / "id_000" / "001.png")  # model from the database
    assert r.exit_code == 0 and "accepted" in r.output and "distance 0.0000" in r.output, r.output
    r = invoke("verify", "--db", db, "--model", model_a, "--as", "ana", raw / "id_002" / "000.png")
    assert r.exit_code == 3 and "rejected" in r.output, r.output
    r = invoke("verify", "--db", db, "--as", "ana", "--threshold", "100", raw / "id_002" / "000.png")
    assert r.exit_code == 0, r.output  # --threshold overrides the model's

    r = invoke("identify", "--db", db, raw / "id_001" / "000.png")
    assert r.exit_code == 0 and r.output.startswith("bob (distance 0.0000"), r.output
    r = invoke("identify", "--db", db, raw / "id_002" / "000.png")
    assert r.exit_code == 3 and "not in the database" in r.output, r.output

    r = invoke("list", "--db", db)
    assert "ana: 2 image(s)" in r.output and "bob: 1 image(s)" in r.output


def test_refuses_to_mix_model_versions_and_reports_bad_input(setup, tmp_path):
    d, raw, model_a, model_b = setup
    db = tmp_path / "faces.db"
    assert invoke("enroll", "--db", db, "--model", model_a, "ana", raw / "id_000" / "000.png").exit_code == 0
    r = invoke("enroll", "--db", db, "--model", model_b, "bob", raw / "id_001" / "000.png")
    assert r.exit_code == 1 and "model version" in r.output and "re-enrol" in r.output, r.output
    r = invoke("verify", "--db", db, "--model", model_b, "--as", "ana", raw / "id_000" / "000.png")
    assert r.exit_code == 1 and "model version" in r.output, r.output

    r = invoke("verify", "--db", db, "--as", "ana", tmp_path / "nobody.jpg")
    assert r.exit_code == 1 and "cannot read" in r.output and "nobody.jpg" in r.output, r.output
    r = invoke("enroll", "--db", db, "--model", model_a, "carl", raw / "id_002" / "000.png", tmp_path / "x.png")
    assert r.exit_code == 1 and "cannot read" in r.output
    assert "carl" not in invoke("list", "--db", db).output  # nothing stored when one image fails
    r = invoke("verify", "--db", db, "--as", "zoe", raw / "id_000" / "000.png")
    assert r.exit_code == 1 and "not enrolled" in r.output
    r = invoke("identify", "--db", tmp_path / "missing.db", raw / "id_000" / "000.png")
    assert r.exit_code == 1 and "does not exist" in r.output
    r = invoke("enroll", "--db", db, "--model", tmp_path / "no_model", "x", raw / "id_000" / "000.png")
    assert r.exit_code == 1 and "no model.keras" in r.output


def test_photos_are_cropped_as_the_model_was_trained(setup, tmp_path):
    """A model trained on detected faces (model_info face_crop) crops new photos the same way;
    with on_miss: bad a photo without a face is refused, naming it, and nothing is stored."""
    import numpy as np
    from PIL import Image

    d, raw, _, _ = setup
    model = _model_folder(tmp_path / "cropping", 0, face_crop={"margin": 0.2, "min_face": 0.2, "on_miss": "bad"})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    db = tmp_path / "faces.db"
    r = invoke("enroll", "--db", db, "--model", model, "ana", tmp_path / "n.png")
    assert r.exit_code == 1 and "n.png: no face found" in r.output, r.output
    assert not db.exists() or "ana" not in invoke("list", "--db", db).output


def test_through_python_m_pipeline(setup, tmp_path):
    """The real entry point: `faces` is registered on `python -m pipeline`, exit codes pass through."""
    d, raw, model_a, _ = setup
    db = tmp_path / "faces.db"
    assert invoke("enroll", "--db", db, "--model", model_a, "ana", raw / "id_000" / "000.png").exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-m", "pipeline", "faces", "verify", "--db", str(db), "--as", "ana",
                        str(raw / "id_001" / "000.png")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3 and "rejected" in r.stdout, r.stdout + r.stderr
