"""Light CLI checks (no training): validate, explain, bad invocations exit with clear messages."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def cli(*args, cwd=PROJECT_ROOT):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def python_json(code: str) -> dict:
    """Run CODE in a fresh interpreter (nothing imported yet) and read the JSON its last line prints."""
    r = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_validate_ok_and_error_exit_codes(tmp_path):
    r = cli("validate")
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\ncomponents:\n  a:\n    type: Nope\n")
    r = cli("validate", str(bad))
    assert r.returncode == 2 and "p.yaml:4: components.a.type" in r.stderr and "Nope" in r.stderr


def test_explain_a_registered_model_and_a_pipeline_trainer(tmp_path):
    r = cli("explain", "signs_cnn")
    assert r.returncode == 0, r.stderr
    assert "(4*4*3 + 1) * 8" in r.stdout and "total params: 1,310" in r.stdout
    # a Trainer is built from its upstream artifacts (tests/e2e/test_predict_explain.py checks the
    # parameter count against trained models); before they exist, the message says what to run
    y = tmp_path / "pipeline.yaml"
    y.write_text((PROJECT_ROOT / "pipeline.yaml").read_text())
    r = cli("explain", "signs_train", "--pipeline", str(y))
    assert r.returncode == 2 and "--to signs_gen" in r.stderr, r.stderr
    r = cli("explain", "no_such_thing")
    assert r.returncode == 2 and "neither a model" in r.stderr


def test_component_command_rejects_unknown_type_and_bad_params(tmp_path):
    r = cli("component", "Trainr", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown component type" in r.stderr
    r = cli("component", "ExampleGen", "--param", "image_size=big", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "image_size" in r.stderr
    assert not (tmp_path / "y").exists()


def test_help_is_fast_and_imports_no_heavy_library():
    code = ("import json, sys, time; from click.testing import CliRunner; t = time.perf_counter(); "
            "from pipeline.cli import main; r = CliRunner().invoke(main, ['--help']); "
            "print(json.dumps({'exit': r.exit_code, 'seconds': time.perf_counter() - t, "
            "'heavy': [m for m in ('tensorflow', 'keras', 'mlflow', 'apache_beam') if m in sys.modules]}))")
    out = python_json(code)
    assert out["exit"] == 0 and out["heavy"] == [], out
    assert out["seconds"] < 5, out  # about 0.05 s; TensorFlow alone would take seconds


def test_list_on_a_fresh_root_is_not_an_error(tmp_path):
    r = cli("list", "--root", str(tmp_path / "pipeline_root"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"no executions recorded under {tmp_path / 'pipeline_root'} yet: "
                                "run `python -m pipeline run` first")
    assert not (tmp_path / "pipeline_root").exists()  # listing creates nothing
    r = cli("list", "--root", str(tmp_path / "pipeline_root"), "--run", "2026-nope")
    assert r.returncode == 1 and "no executions of pipeline run 2026-nope" in r.stderr


def test_tracking_uri_option_defaults_to_the_components_constant():
    import click
    from click.testing import CliRunner

    from components.base import DEFAULT_TRACKING_URI
    from pipeline.cli_common import tracking_uri_option

    @click.command()
    @tracking_uri_option(help="Where runs go.")
    def cmd(tracking_uri):
        click.echo(repr(tracking_uri))

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 0 and r.output.strip() == repr(DEFAULT_TRACKING_URI)
    assert CliRunner().invoke(cmd, ["--tracking-uri", "sqlite:////tmp/x.db"]).output.strip() == "'sqlite:////tmp/x.db'"
    help_text = " ".join(CliRunner().invoke(cmd, ["--help"]).output.split())
    assert f"Where runs go. [default: {DEFAULT_TRACKING_URI}]" in help_text


def test_parse_kv_nests_dotted_keys_and_reads_yaml_values():
    from pipeline.cli_common import parse_kv

    assert parse_kv(["a.b=3", "a.c=true", "d=[1, 2]", "e=", "f=x=y"], "--param") == {
        "a": {"b": 3, "c": True}, "d": [1, 2], "e": "", "f": "x=y"}


def test_command_groups_take_their_helpers_from_cli_common_not_cli():
    import ast

    for name in ("cli_common", "cli_faces", "cli_detect", "cli_stylize"):
        tree = ast.parse((PROJECT_ROOT / "pipeline" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "pipeline.cli" not in imported, name


def test_closing_summary_shows_results_blessings_and_versions():
    from pipeline.cli import _results_lines
    from pipeline.config import load_pipeline
    from pipeline.runner import Execution, RunResult

    p = load_pipeline(PROJECT_ROOT / "pipeline.yaml")
    ex = {"signs_eval": Execution("signs_eval", "Evaluator", "done", metrics={"accuracy": 0.9123, "blessed": 1.0}),
          "signs_push": Execution("signs_push", "Pusher", "done", metrics={"pushed": 1.0, "registered_version": 4.0,
                                                                         "alias_moved": 1.0}),
          "shapes_eval": Execution("shapes_eval", "Evaluator", "cached", metrics={"map_50": 0.5, "blessed": 0.0}),
          "faces_eval": Execution("faces_eval", "Evaluator", "failed", error="boom")}
    lines = _results_lines(RunResult("r", ex, None), p)
    assert lines[0] == "results:"
    assert "  signs_eval: accuracy 0.912; blessed -> signs-cnn v4 @champion" in lines
    assert "  shapes_eval: mAP@.5 0.500; NOT blessed" in lines
    assert not any("faces_eval" in ln for ln in lines) and lines[-1].startswith("next: make ui")
