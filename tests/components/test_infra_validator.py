"""InfraValidator: the candidate served by MLflow's real scoring server (a subprocess on a free
127.0.0.1 port) is blessed when its answers equal in-process inference; a server that cannot
start, is not ready in time, or a model that cannot be written gives a not-blessed result naming
the reason, in bounded time; the Pusher does not register or move @champion without the infra
blessing when it is wired."""
from __future__ import annotations

import json
import time

import pytest

from components.artifacts import Blessing, InfraBlessing
from pipeline.runner import run_single

pytestmark = pytest.mark.slow


def tiny_signs(d, epochs: int = 1):
    """A small SIGNS branch (60 generated hands at 32x32, one epoch): (examples, model) folders."""
    run_single("ExampleGen", {}, {"source": {"format": "synthetic_signs", "options": {"num_examples": 60}},
                                  "image_size": [32, 32]}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
    run_single("Trainer", {"examples": ex, "transform": d / "tf" / "transform"},
               {"model": "signs_cnn", "epochs": epochs, "batch_size": 16}, d / "train")
    return ex, d / "train" / "model"


@pytest.fixture(scope="module")
def signs(tmp_path_factory):
    d = tmp_path_factory.mktemp("infra")
    ex, model = tiny_signs(d)
    return d, ex, model


def _infra(d, ex, model, out, **params):
    t0 = time.monotonic()
    meta = run_single("InfraValidator", {"model": model, "examples": ex}, params, d / out)
    return InfraBlessing.load(d / out / "infra_blessing"), meta, time.monotonic() - t0


@pytest.fixture(scope="module")
def blessed(signs):
    d, ex, model = signs
    return _infra(d, ex, model, "infra_ok", num_examples=6, batch_size=2)[0]


def test_a_good_model_is_blessed_with_its_latency_measured(signs, blessed):
    d, ex, model = signs
    b = blessed
    assert b.blessed, b.reasons
    m = b.measurements
    assert m["requests"] == 3 and m["examples"] == 6 and m["split"] == "eval"
    assert m["max_abs_diff"] <= 1e-4
    assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"] and m["requests_per_s"] > 0 and m["startup_s"] > 0
    assert json.loads((d / "infra_ok" / "infra_blessing" / "infra_blessing.json").read_text())["blessed"] is True
    assert (d / "infra_ok" / "infra_blessing" / "server.log").exists()


def test_a_server_not_ready_in_time_is_not_blessed_and_nothing_hangs(signs):
    d, ex, model = signs
    b, _, seconds = _infra(d, ex, model, "infra_slow", num_examples=2, startup_timeout_s=0.5)
    assert not b.blessed
    assert "was not ready after 0 s" in b.reasons[0] or "was not ready after 1 s" in b.reasons[0], b.reasons
    assert seconds < 30  # the model write and the stop, not a wait for the server


def test_a_model_that_cannot_be_served_is_not_blessed_with_the_reason(signs, tmp_path):
    import shutil

    d, ex, model = signs
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    (broken / "model.keras").write_bytes(b"not a keras file")
    b, _, _ = _infra(d, ex, broken, "infra_broken", num_examples=2)
    assert not b.blessed and "could not be written as an MLflow model" in b.reasons[0], b.reasons


def test_a_server_that_exits_at_start_is_named_and_its_log_tail_shown(signs, tmp_path):
    """A broken MLflow model folder: the scoring server process exits while loading it."""
    from components.serving import Server, ServingError

    folder = tmp_path / "mlflow_model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: no_such_module\n")
    server = Server(folder, log_path=tmp_path / "server.log", ready_timeout=120)
    t0 = time.monotonic()
    with pytest.raises(ServingError, match="exited with code") as e:
        with server:
            pass
    assert time.monotonic() - t0 < 120 and server.proc.poll() is not None
    assert "no_such_module" in str(e.value)  # the log's last lines say why


def test_the_pusher_needs_the_infra_blessing_when_it_is_wired(signs, blessed):
    import mlflow

    d, ex, model = signs
    uri = f"sqlite:///{d / 'mlflow.db'}"
    ok = d / "bless_ok"
    ok.mkdir()
    Blessing(ok, True, []).save()
    not_infra = d / "infra_no"
    not_infra.mkdir()
    InfraBlessing(not_infra, False, ["the scoring server exited with code 1"]).save()

    run_single("Pusher", {"model": model, "blessing": ok, "infra_blessing": not_infra},
               {"registered_model_name": "signs"}, d / "push_no", tracking_uri=uri)
    pushed = json.loads((d / "push_no" / "pushed_model" / "push.json").read_text())
    assert pushed["pushed"] is True and pushed["alias"] is None
    assert pushed["reason"] == ["infra: the scoring server exited with code 1"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    with pytest.raises(Exception):
        client.get_model_version_by_alias("signs", "champion")
    assert client.get_model_version("signs", "1").tags["infra_blessed"] == "false"

    run_single("Pusher", {"model": model, "blessing": ok, "infra_blessing": not_infra},
               {"registered_model_name": "signs", "register_unblessed": False}, d / "push_strict", tracking_uri=uri)
    assert json.loads((d / "push_strict" / "pushed_model" / "push.json").read_text())["pushed"] is False
    assert len(client.search_model_versions("name='signs'")) == 1  # nothing registered

    run_single("Pusher", {"model": model, "blessing": ok, "infra_blessing": blessed.path},
               {"registered_model_name": "signs"}, d / "push_yes", tracking_uri=uri)
    assert str(client.get_model_version_by_alias("signs", "champion").version) == "2"
