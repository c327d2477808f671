"""The champion rule with real pushes to a registry: a blessed candidate moves `@champion`; one
worse than the champion beyond `max_regression` is registered but does not move it; an
unblessed model never moves it; `register_unblessed: false` registers nothing; lower-is-better
metrics compare the other way."""
from __future__ import annotations

import json

import pytest

from components.blessing import bless
from pipeline.runner import run_single

pytestmark = pytest.mark.slow


def _dark_and_bright(root):
    """An easy two-class image folder (dark vs bright noise): a CNN learns it in a few epochs, so
    a trained model and an untrained one are far apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("tr", 40), ("te", 20)):
        for name, (lo, hi) in (("dark", (0, 90)), ("bright", (165, 256))):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(lo, hi, (32, 32, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("champ")
    src = _dark_and_bright(d / "data")
    run_single("ExampleGen", {}, {"source": {"format": "image_folder", "path": str(src), "options": {"splits": ["tr", "te"]}},
                                  "split_map": {"tr": {"train": 0.8, "eval": 0.2}, "te": "test"},
                                  "image_size": [32, 32]}, d / "gen")
    ex = d / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, d / "stats")
    run_single("Transform", {"examples": ex, "statistics": d / "stats" / "statistics"}, {}, d / "tf")
    inputs = {"examples": ex, "transform": d / "tf" / "transform"}
    run_single("Trainer", inputs, {"model": "signs_cnn", "epochs": 6, "batch_size": 16, "learning_rate": 0.01},
               d / "good")
    run_single("Trainer", inputs, {"model": "signs_cnn", "epochs": 1, "batch_size": 16, "learning_rate": 1e-9},
               d / "bad")
    return d, ex


def _evaluate(d, ex, model: str, out: str, **params):
    uri = f"sqlite:///{d / 'mlflow.db'}"
    meta = run_single("Evaluator", {"model": d / model / "model", "examples": ex},
                      {"split": "test", "baseline_model": "signs", **params}, d / out, tracking_uri=uri)
    return meta, json.loads((d / out / "blessing" / "blessing.json").read_text())


def _push(d, model: str, evaluation: str, out: str, **params):
    run_single("Pusher", {"model": d / model / "model", "blessing": d / evaluation / "blessing"},
               {"registered_model_name": "signs", **params}, d / out, tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    return json.loads((d / out / "pushed_model" / "push.json").read_text())


def _registry(d):
    import mlflow

    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
    versions = sorted(int(v.version) for v in c.search_model_versions("name='signs'"))
    return versions, int(c.get_model_version_by_alias("signs", "champion").version)


def test_the_champion_moves_only_to_a_blessed_model_that_is_not_worse(two_models):
    d, ex = two_models
    meta, b = _evaluate(d, ex, "good", "ev_good")
    assert meta["resolved"] == {"baseline": None} and b["blessed"] is True  # the first model: nothing to beat
    assert _push(d, "good", "ev_good", "push_good")["alias"] == "champion"
    assert _registry(d) == ([1], 1)

    meta, b = _evaluate(d, ex, "bad", "ev_bad")
    assert meta["resolved"] == {"baseline": "models:/signs/1"}
    assert b["baseline"]["accuracy"] > b["value"] + 0.1, b  # the champion is clearly better
    assert b["blessed"] is False and any("worse than baseline models:/signs/1" in r for r in b["reasons"])
    pushed = _push(d, "bad", "ev_bad", "push_bad")
    assert pushed["pushed"] is True and pushed["alias"] is None  # registered, alias not moved
    assert _registry(d) == ([1, 2], 1)

    pushed = _push(d, "bad", "ev_bad", "push_bad_strict", register_unblessed=False)
    assert pushed == {"pushed": False, "reason": b["reasons"]}
    assert _registry(d) == ([1, 2], 1)  # nothing registered

    meta, b = _evaluate(d, ex, "bad", "ev_bad_tolerant", max_regression=1.0)  # any regression allowed
    assert b["blessed"] is True
    assert _push(d, "bad", "ev_bad_tolerant", "push_bad_tolerant")["alias"] == "champion"
    assert _registry(d) == ([1, 2, 3], 3)


def test_lower_is_better_metrics_compare_the_other_way():
    low = frozenset({"eer"})
    ok, _ = bless({"eer": 0.10}, {"eer": 0.2}, "eer", {"eer": 0.12}, lower_is_better=low)
    assert ok
    ok, reasons = bless({"eer": 0.15}, {}, "eer", {"eer": 0.12}, lower_is_better=low)
    assert not ok and "worse than" in reasons[0]
    ok, _ = bless({"eer": 0.15}, {}, "eer", {"eer": 0.12}, max_regression=0.05, lower_is_better=low)
    assert ok
    ok, reasons = bless({"eer": 0.25}, {"eer": 0.2}, "eer", None, lower_is_better=low)
    assert not ok and "eer 0.2500 > threshold 0.2" in reasons[0]


def test_alias_race_with_another_pusher_is_retried_and_other_errors_are_not():
    """MLflow's SQL store replaces an alias with a delete and an insert: a concurrent Pusher can make
    the insert hit the UNIQUE constraint. That is retried; any other MLflow error is raised."""
    import pytest
    from mlflow.exceptions import MlflowException

    from components.pusher import _set_alias

    class Client:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def set_registered_model_alias(self, name, alias, version):
            self.calls += 1
            if self.errors:
                raise MlflowException(self.errors.pop(0))

    c = Client(["(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.alias"])
    _set_alias(c, "m", "champion", 2)
    assert c.calls == 2
    c = Client(["RESOURCE_DOES_NOT_EXIST: no model m"])
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        _set_alias(c, "m", "champion", 2)
    assert c.calls == 1
