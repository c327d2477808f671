"""What `make run` promises, checked on the default pipeline.yaml itself (not a smaller copy):
a fresh run executes every component, each demo model passes its Evaluator's blessing
thresholds (read from pipeline.yaml, so the test follows the file), is registered with
`@champion`, the run prints at most 80 lines without a terminal, and an unchanged rerun is all
cache hits. About 5 minutes on 2 cores (the demo settings: 40 SIGNS epochs, 20 face epochs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.e2e.test_pipeline_e2e import cli, executions, last_run_id

pytestmark = pytest.mark.slow

MAX_LINES = 80  # the README's promise for a run without a terminal


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("default")
    shutil.copy(PROJECT_ROOT / "pipeline.yaml", d / "pipeline.yaml")
    r = cli("run", str(d / "pipeline.yaml"), cwd=d, timeout=850)
    return d, r, last_run_id(r.stdout)


def _config() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())


def test_fresh_default_run_executes_every_component_quietly(fresh_run):
    d, r, run_id = fresh_run
    ex = executions(d / "pipeline_root", run_id)
    assert set(ex) == set(_config()["components"])
    assert {cid: e["status"] for cid, e in ex.items() if e["status"] != "done"} == {}
    lines = (r.stdout + r.stderr).splitlines()
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    assert not any("Traceback" in ln for ln in lines), r.stderr[-3000:]


def test_every_demo_model_passes_its_blessing_and_becomes_champion(fresh_run):
    d, _, run_id = fresh_run
    cfg = _config()["components"]
    ex = executions(d / "pipeline_root", run_id)
    evaluators = {cid: c for cid, c in cfg.items() if c["type"] == "Evaluator"}
    assert len(evaluators) == 3
    for cid, c in evaluators.items():
        metrics = json.loads((Path(ex[cid]["artifact_dir"]) / "metadata.json").read_text())["metrics"]
        for name, threshold in c["params"]["thresholds"].items():
            assert metrics[name] >= threshold, (cid, name, metrics[name], threshold)
        assert metrics["blessed"] == 1.0, (cid, metrics)  # metrics are numbers: 1.0 is blessed

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    pushers = {cid: c for cid, c in cfg.items() if c["type"] == "Pusher"}
    assert len(pushers) == 3
    for cid, c in pushers.items():
        name = c["params"]["registered_model_name"]
        mv = client.get_model_version_by_alias(name, "champion")
        assert mv.tags["pipeline_run"] == run_id, (name, mv.tags)
    # the SIGNS model became champion only after it answered real requests in MLflow's server
    infra = json.loads((Path(ex["signs_infra"]["artifact_dir"]) / "infra_blessing" / "infra_blessing.json").read_text())
    assert infra["blessed"] is True, infra


def test_unchanged_default_rerun_is_all_cache_hits(fresh_run):
    d, _, _ = fresh_run
    r = cli("run", str(d / "pipeline.yaml"), cwd=d, timeout=300)
    ex = executions(d / "pipeline_root", last_run_id(r.stdout))
    assert {e["status"] for e in ex.values()} == {"cached"}, ex
    assert len(ex) == len(_config()["components"])
