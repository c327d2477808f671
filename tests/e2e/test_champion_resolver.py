"""The champion as a recorded input of the Evaluator (TFX's Resolver node), with real pushes:

1. first run: no champion yet -> the Evaluator compares with nothing; v1 registered and champion;
2. rerun: the champion is that same model -> nothing reruns (the resolver substitutes what v1
   was compared with, which is unchanged);
3. another Trainer setting pushes v2 and it becomes the champion;
4. the first setting again: its Trainer is cached, but the champion changed -> its Evaluator and
   Pusher rerun and compare with v2 (recorded in the execution's metadata and the blessing);
5. rerun: all cached.
"""
from __future__ import annotations

import json

import pytest
import yaml

from pipeline.config import load_pipeline
from pipeline.runner import Runner
from tests.e2e.test_pipeline_e2e import signs_only_yaml

pytestmark = pytest.mark.slow

SMALL = ["signs_gen.source.options.num_examples=180", "signs_train.batch_size=16",
         "signs_eval.thresholds={}", "signs_eval.max_regression=1.0",  # every candidate may take over
         "signs_validate.min_examples_per_class=5"]


def _run(y, epochs: int):
    p = load_pipeline(y, [*SMALL, f"signs_train.epochs={epochs}"])
    return Runner(p, console=None, show_progress=False, tracking=True).run()


def _champion(d):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    return c.get_model_version_by_alias("signs-cnn", "champion")


def test_champion_change_reruns_evaluator_and_pusher_only(tmp_path):
    y = signs_only_yaml(tmp_path)
    data = yaml.safe_load(y.read_text())
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    y.write_text(yaml.safe_dump(data, sort_keys=False))

    r1 = _run(y, 1)
    assert r1.ok and {e.status for e in r1.executions.values()} == {"done"}
    meta = json.loads((r1.executions["signs_eval"].dir / "metadata.json").read_text())
    assert meta["resolved"] == {"baseline": None}
    v1 = _champion(tmp_path)
    assert str(v1.version) == "1" and v1.tags["baseline"] == ""

    r2 = _run(y, 1)
    assert {e.status for e in r2.executions.values()} == {"cached"}, {k: e.status for k, e in r2.executions.items()}

    r3 = _run(y, 2)  # another Trainer: compared with v1, pushed as v2
    assert r3.executions["signs_train"].status == "done"
    meta3 = json.loads((r3.executions["signs_eval"].dir / "metadata.json").read_text())
    assert meta3["resolved"] == {"baseline": "models:/signs-cnn/1"}
    assert str(_champion(tmp_path).version) == "2"

    r4 = _run(y, 1)
    status = {k: e.status for k, e in r4.executions.items()}
    assert status["signs_train"] == "cached" and status["signs_gen"] == "cached"
    assert status["signs_eval"] == "done" and status["signs_push"] == "done", status
    meta4 = json.loads((r4.executions["signs_eval"].dir / "metadata.json").read_text())
    assert meta4["resolved"] == {"baseline": "models:/signs-cnn/2"}
    blessing = json.loads((r4.executions["signs_eval"].dir / "blessing" / "blessing.json").read_text())
    assert blessing["baseline"]["uri"] == "models:/signs-cnn/2" and "accuracy" in blessing["baseline"]
    v3 = _champion(tmp_path)
    assert str(v3.version) == "3" and v3.tags["baseline"] == "models:/signs-cnn/2"

    r5 = _run(y, 1)
    assert {e.status for e in r5.executions.values()} == {"cached"}, {k: e.status for k, e in r5.executions.items()}
