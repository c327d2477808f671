"""The command line, in subprocesses: partial runs (`run --to C` runs C and its upstream only,
`run --from C` runs C and its downstream only, reusing the cache for what it needs), a
standalone `component Trainer` with --input / --param / --out, and `predict` naming the right
class of images whose class is known."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_pipeline_e2e import SMALL, cli, executions, last_run_id, signs_only_yaml

pytestmark = pytest.mark.slow

SETTINGS = sum((["--set", s] for s in [*SMALL, "signs_train.epochs=1"]), [])


@pytest.fixture(scope="module")
def partial_runs(tmp_path_factory):
    """A fresh SIGNS-branch project: `run --to signs_stats`, then `run --from signs_transform`
    (whose upstream, signs_gen and signs_stats, the first run left in the cache)."""
    d = tmp_path_factory.mktemp("cli")
    y = signs_only_yaml(d)
    to = cli("run", str(y), "--quiet", "--no-tracking", "--to", "signs_stats", *SETTINGS, cwd=d)
    frm = cli("run", str(y), "--quiet", "--no-tracking", "--from", "signs_transform", *SETTINGS, cwd=d)
    return d, last_run_id(to.stdout), last_run_id(frm.stdout)


def test_run_to_runs_the_component_and_its_upstream_only(partial_runs):
    d, to_run, _ = partial_runs
    ex = executions(d / "pipeline_root", to_run)
    # signs_validate, signs_transform, ... (downstream of signs_stats) were not run
    assert {c: e["status"] for c, e in ex.items()} == {"signs_gen": "done", "signs_stats": "done"}


def test_run_from_runs_the_component_and_its_downstream_only(partial_runs):
    d, to_run, from_run = partial_runs
    ex = executions(d / "pipeline_root", from_run)
    # signs_gen and signs_stats came from the cache without being recorded in this run;
    # signs_validate (downstream of signs_stats, not of signs_transform) was not selected
    assert {c: e["status"] for c, e in ex.items()} == {
        "signs_transform": "done", "signs_train": "done", "signs_eval": "done", "signs_push": "done"}
    first = executions(d / "pipeline_root", to_run)
    meta = json.loads((Path(ex["signs_train"]["artifact_dir"]) / "metadata.json").read_text())
    # the Trainer read the examples the --to run wrote
    assert meta["inputs"]["examples"] == str(Path(first["signs_gen"]["artifact_dir"]) / "examples")
    assert not (d / "pipeline_root" / "signs_validate").exists()


def test_standalone_trainer_component(partial_runs, tmp_path):
    d, to_run, from_run = partial_runs
    gen = Path(executions(d / "pipeline_root", to_run)["signs_gen"]["artifact_dir"])
    tf_dir = Path(executions(d / "pipeline_root", from_run)["signs_transform"]["artifact_dir"])
    out = tmp_path / "trainer"
    r = cli("component", "Trainer", "--input", f"examples={gen / 'examples'}", "--input",
            f"transform={tf_dir / 'transform'}", "--param", "epochs=1", "--param", "batch_size=16",
            "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0 and f"-> {out}" in r.stdout
    assert (out / "model" / "model.keras").exists() and (out / "model" / "saved_model" / "saved_model.pb").exists()
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "complete" and meta["params"]["epochs"] == 1 and meta["params"]["batch_size"] == 16
    info = json.loads((out / "model" / "model_info.json").read_text())
    assert info["epochs_run"] == 1  # --param epochs=1 replaced the default of 10
    assert len(json.loads((out / "model" / "history.json").read_text())["loss"]) == 1
    assert info["classes"] == ["0", "1", "2", "3", "4", "5"] and info["model"] == "signs_cnn"


def _noise(rng, lo, hi):
    return rng.integers(lo, hi, (32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def dark_bright_model(tmp_path_factory):
    """A signs_cnn trained (in-process) on an easy folder of dark vs bright noise images."""
    from pipeline.runner import run_single

    d = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for name, (lo, hi) in (("dark", (0, 90)), ("bright", (165, 256))):
        (d / "raw" / name).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(_noise(rng, lo, hi)).save(d / "raw" / name / f"{i}.png")
    run_single("ExampleGen", {}, {"source": {"format": "image_folder", "path": str(d / "raw")},
                                  "split_ratios": {"train": 0.8, "eval": 0.2}, "image_size": [32, 32]}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
    run_single("Trainer", {"examples": ex, "transform": d / "tf" / "transform"},
               {"model": "signs_cnn", "epochs": 6, "batch_size": 16, "learning_rate": 0.01}, d / "train")
    return d / "train" / "model"


def test_predict_names_the_class_of_known_images(dark_bright_model, tmp_path):
    rng = np.random.default_rng(123)  # images the model has never seen
    truth = {}
    for k in range(3):
        for name, (lo, hi) in (("dark", (0, 90)), ("bright", (165, 256))):
            p = tmp_path / f"{name}{k}.png"
            Image.fromarray(_noise(rng, lo, hi)).save(p)
            truth[str(p)] = name
    r = cli("predict", "--model", str(dark_bright_model), *truth, cwd=tmp_path)
    got = {}
    for line in r.stdout.splitlines():
        path, _, rest = line.partition(": ")
        if path in truth:
            got[path] = rest.split(" (")[0]
    assert got == truth, r.stdout
