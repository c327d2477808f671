"""Light CLI checks (no training): validate, explain, bad invocations exit with clear messages."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def cli(*args, cwd=PROJECT_ROOT):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_validate_ok_and_error_exit_codes(tmp_path):
    r = cli("validate")
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\ncomponents:\n  a:\n    type: Nope\n")
    r = cli("validate", str(bad))
    assert r.returncode == 2 and "p.yaml:4: components.a.type" in r.stderr and "Nope" in r.stderr


def test_explain_a_registered_model_and_a_pipeline_trainer():
    r = cli("explain", "signs_cnn")
    assert r.returncode == 0, r.stderr
    assert "(4*4*3 + 1) * 8" in r.stdout and "total params: 1,310" in r.stdout
    r = cli("explain", "signs_train")  # the Trainer component of pipeline.yaml
    assert r.returncode == 0 and "total params: 1,310" in r.stdout
    r = cli("explain", "no_such_thing")
    assert r.returncode == 2 and "neither a model" in r.stderr


def test_component_command_rejects_unknown_type_and_bad_params(tmp_path):
    r = cli("component", "Trainr", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown component type" in r.stderr
    r = cli("component", "ExampleGen", "--param", "image_size=big", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "image_size" in r.stderr
    assert not (tmp_path / "y").exists()
