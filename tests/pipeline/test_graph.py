"""`python -m pipeline graph`: the DAG's layout, the colours read from the execution index, the
text and picture outputs, no TensorFlow on the way, and the picture each run logs to MLflow."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from matplotlib.colors import to_hex

from pipeline import graph
from pipeline.config import load_pipeline
from pipeline.store import ArtifactStore
from tests.conftest import PROJECT_ROOT
from tests.pipeline.test_cli import python_json
from tests.pipeline.test_config import GOOD

# two independent branches: a diamond (gen -> stats -> tf, gen -> tf -> train, gen -> train)
# and a lone generator
SMALL = GOOD.replace("name: t", "name: small") + """\
  other_gen:
    type: ExampleGen
    params:
      source: {format: synthetic_signs, options: {num_examples: 30}}
  other_stats:
    type: StatisticsGen
    inputs: {examples: other_gen.examples}
"""


@pytest.fixture
def small(tmp_path):
    f = tmp_path / "small.yaml"
    f.write_text(SMALL)
    return load_pipeline(f)


@pytest.fixture(scope="module")
def default_pipeline():
    return load_pipeline(PROJECT_ROOT / "pipeline.yaml")


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def _check_layout(p):
    lay = graph.layout(p)
    for cid, comp in p.components.items():
        for prod, _ in comp.inputs.values():
            assert lay.x(prod) < lay.x(cid), (prod, cid)  # a producer is always left of its consumers
    # the columns are the topological depths: one more than the deepest producer
    for cid, comp in p.components.items():
        assert lay.depth[cid] == 1 + max((lay.depth[q] for q, _ in comp.inputs.values()), default=-1)
    # boxes in one column never overlap; an edge skipping a column passes between its boxes
    boxes = [c for c in p.components]
    for a in boxes:
        for b in boxes:
            if a < b and lay.x(a) == lay.x(b):
                assert abs(lay.y[a] - lay.y[b]) >= graph.NODE_H + graph.GAP - 1e-6, (a, b)
    for e in lay.edges:
        for d in e.via:
            for c in boxes:
                if lay.x(c) == lay.x(d):
                    assert abs(lay.y[c] - lay.y[d]) >= graph.NODE_H / 2 + graph.DUMMY_GAP - 1e-6, (e, c)
    # each branch in its own band, the bands one below the other
    assert len(lay.bands) == len(lay.branches)
    for (top, bottom), part in zip(lay.bands, lay.branches):
        for c in part:
            assert top - 1e-9 <= lay.y[c] - graph.NODE_H / 2 and lay.y[c] + graph.NODE_H / 2 <= bottom + 1e-9
    for (_, bottom), (top, _) in zip(lay.bands, lay.bands[1:]):
        assert bottom < top
    return lay


def test_layout_layers_by_depth_producers_left_of_consumers(small):
    lay = _check_layout(small)
    assert lay.depth == {"gen": 0, "stats": 1, "tf": 2, "train": 3, "other_gen": 0, "other_stats": 1}
    assert lay.columns == 4
    assert [sorted(b) for b in lay.branches] == [["gen", "stats", "tf", "train"], ["other_gen", "other_stats"]]
    edges = {(e.producer, e.output, e.consumer, e.input) for e in lay.edges}
    assert ("gen", "examples", "train", "examples") in edges and ("tf", "transform", "train", "transform") in edges
    assert len(edges) == 6
    # gen.examples skips columns 1 and 2 on its way to train: one placeholder per skipped column
    to_train = next(e for e in lay.edges if e.producer == "gen" and e.consumer == "train")
    assert [d[3] for d in to_train.via] == [1, 2]


def test_layout_of_the_default_pipeline_keeps_its_four_branches_apart(default_pipeline):
    lay = _check_layout(default_pipeline)
    assert len(default_pipeline.components) == 24
    assert [b[0] for b in lay.branches] == ["signs_gen", "style_transfer", "faces_gen", "shapes_gen"]
    assert lay.columns == 6


def _store_with_history(tmp_path):
    store = ArtifactStore(tmp_path / "root")
    row = {"pipeline": "small", "type": "T", "cache_key": "k", "cache_hit": 0, "started": 1.0}

    def record(run, cid, status, **kw):
        r = store.record_start(pipeline_run=run, component=cid, status="running", **{**row, **kw})
        if status != "running":
            store.record_update(r, status=status, duration=1.0)

    record("r1", "gen", "done")
    record("r1", "stats", "done")
    record("r1", "tf", "failed")
    record("r2", "gen", "cached")
    record("r2", "stats", "cached")
    record("r2", "tf", "killed")
    # still `running`, but its process is gone: shown as killed (the index is left as it is)
    record("r2", "train", "running", owner_pid=2 ** 22 + 12345)
    record("r3", "other_gen", "done", pipeline="another-pipeline")  # same root, another pipeline
    return store


def _node_colours(fig) -> dict[str, tuple[str, str]]:
    ax = fig.axes[0]
    return {p.get_gid()[len("node-"):]: (to_hex(p.get_facecolor()), to_hex(p.get_edgecolor()))
            for p in ax.patches if (p.get_gid() or "").startswith("node-")}


def test_colours_follow_the_statuses_in_the_execution_index(tmp_path, small):
    store = _store_with_history(tmp_path)
    latest = graph.store_statuses(store.root, "small")
    assert latest == {"gen": "cached", "stats": "cached", "tf": "killed", "train": "killed"}
    assert [r["status"] for r in store.executions(pipeline_run="r2")][-1] == "running"  # not written
    run1 = graph.store_statuses(store.root, "small", run_id="r1")
    assert run1 == {"gen": "done", "stats": "done", "tf": "failed"}
    assert graph.store_statuses(store.root, "small", run_id="nope") == {}
    assert graph.store_statuses(tmp_path / "no_root") == {}
    assert not (tmp_path / "no_root").exists()

    colour = {s: (fill, border) for s, (fill, border) in graph.COLORS.items()}
    got = _node_colours(graph.figure(small, latest))
    assert got == {"gen": colour["cached"], "stats": colour["cached"], "tf": colour["killed"],
                   "train": colour["killed"], "other_gen": colour["not run"], "other_stats": colour["not run"]}
    got = _node_colours(graph.figure(small, {**run1, "train": "skipped"}))
    assert got["gen"] == colour["done"] and got["tf"] == colour["failed"] and got["train"] == colour["skipped"]
    assert got["other_stats"] == colour["not run"]
    assert len({v for v in colour.values()}) == len(colour)  # every status its own colour

    lines = graph.text_lines(small, latest)
    assert lines[small.order.index("train")] == "train [killed] <- gen.examples, tf.transform"
    assert lines[small.order.index("other_gen")] == "other_gen [not run]"


def test_cli_text_of_the_default_pipeline_on_an_empty_root(tmp_path, default_pipeline):
    y = tmp_path / "pipeline.yaml"
    y.write_text((PROJECT_ROOT / "pipeline.yaml").read_text())
    r = cli("graph", str(y))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 24
    assert [line.split(" ")[0] for line in lines] == default_pipeline.order
    assert all(line.split(" ", 1)[1].startswith("[not run]") for line in lines), lines
    assert "signs_train [not run] <- signs_gen.examples, signs_transform.transform" in lines
    assert "signs_gen [not run]" in lines
    assert not (tmp_path / "pipeline_root").exists()  # reading creates nothing
    r = cli("graph", str(y), "--run", "nope")
    assert r.returncode == 1 and "no executions of pipeline run nope" in r.stderr


def test_cli_writes_png_and_svg_and_rejects_a_bad_file(tmp_path):
    y = tmp_path / "pipeline.yaml"
    y.write_text((PROJECT_ROOT / "pipeline.yaml").read_text())
    png, svg = tmp_path / "x.png", tmp_path / "out" / "x.svg"
    r = cli("graph", str(y), "--out", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    r = cli("graph", str(y), "--out", str(svg))
    assert r.returncode == 0, r.stderr
    text = svg.read_text()
    assert "<svg" in text[:1000] and 'id="node-signs_train"' in text
    r = cli("graph", str(y), "--out", str(tmp_path / "x.jpeg"))
    assert r.returncode == 2 and ".png, .svg" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        name: x
        components:
          a:
            type: Nope
        """))
    r = cli("graph", str(bad))
    assert r.returncode == 2 and "invalid pipeline" in r.stderr and "bad.yaml:4: components.a.type" in r.stderr


def test_graph_help_and_text_import_no_tensorflow():
    code = ("import json, sys; from click.testing import CliRunner; from pipeline.cli import main; "
            "h = CliRunner().invoke(main, ['graph', '--help']); heavy_help = [m for m in "
            "('tensorflow', 'keras', 'mlflow', 'apache_beam', 'matplotlib') if m in sys.modules]; "
            "t = CliRunner().invoke(main, ['graph']); "
            "print(json.dumps({'help': h.exit_code, 'text': t.exit_code, 'heavy_help': heavy_help, "
            "'heavy': [m for m in ('tensorflow', 'keras', 'mlflow', 'apache_beam') if m in sys.modules]}))")
    out = python_json(code)
    assert out == {"help": 0, "text": 0, "heavy_help": [], "heavy": []}, out


# ----------------------------------------------------------------------------- the run's picture
class _FakeTracking:
    """Stands in for pipeline.tracking.TrackingSession: records what the runner does."""

    def __init__(self, *a, **k):
        self.parent = None
        self.calls = []

    def start_parent(self, run_name, tags):
        self.parent = SimpleNamespace(info=SimpleNamespace(run_id="parent-1"))
        return "parent-1"

    def tag_parent(self, tags):
        self.calls.append(("tag", tags))

    def end_parent(self, status):
        self.calls.append(("end", status))
        self.parent = None


def _fake_runner(monkeypatch, small, logged):
    """A Runner on `small` whose components 'execute' instantly: gen done, stats cached, tf failed."""
    import pipeline.runner as runner
    import pipeline.tracking as tracking

    session = _FakeTracking()
    monkeypatch.setattr(tracking, "TrackingSession", lambda *a, **k: session)

    class Tracker:
        def __init__(self, run_id):
            self.run_id = run_id

        def log_artifact(self, path, artifact_path=None):
            assert session.parent is not None  # before end_parent
            logged.append((self.run_id, artifact_path, path.name, path.read_bytes()[:8], path.stat().st_size))
            session.calls.append(("artifact", artifact_path))

    monkeypatch.setattr(tracking, "MlflowTracker", Tracker)
    monkeypatch.setattr(runner.Runner, "_keys", lambda self, only=None: {
        c: (f"key-{c}", {}, "", [], None) for c in small.order})
    result = {"gen": "done", "stats": "cached", "tf": "failed"}

    def execute(self, cid, keyinfo, ex, run_id, tracking_, no_cache, view):
        ex.status = result.get(cid, "done")

    monkeypatch.setattr(runner.Runner, "_execute", execute)
    return runner.Runner(small, console=None, tracking=True), session


def test_each_run_logs_the_picture_to_its_parent_run(monkeypatch, small):
    logged = []
    r, session = _fake_runner(monkeypatch, small, logged)
    draws = []
    real = graph.draw
    monkeypatch.setattr(graph, "draw", lambda p, statuses, out, **k: draws.append(dict(statuses)) or real(
        p, statuses, out, **k))
    res = r.run(only=["gen", "stats", "tf", "train"])
    assert [e.status for e in res.executions.values()] == ["done", "cached", "failed", "skipped"]
    assert draws == [{"gen": "done", "stats": "cached", "tf": "failed", "train": "skipped"}]
    assert [(run, where, name, magic) for run, where, name, magic, _ in logged] == [
        ("parent-1", "graph", "pipeline_graph.png", b"\x89PNG\r\n\x1a\n")]
    assert logged[0][4] > 10_000
    assert [c[0] for c in session.calls] == ["tag", "artifact", "end"]


def test_a_picture_that_cannot_be_drawn_never_fails_the_run(monkeypatch, small, caplog):
    logged = []
    r, session = _fake_runner(monkeypatch, small, logged)

    def broken(*a, **k):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(graph, "draw", broken)
    with caplog.at_level(logging.WARNING, logger="pipeline.runner"):
        res = r.run(only=["gen", "stats"])
    assert res.ok and logged == []
    assert session.calls[-1] == ("end", "FINISHED")
    assert "pipeline graph not logged to MLflow: no fonts today" in caplog.text
