"""`python -m pipeline ...`: run the pipeline or parts of it, run one component by hand, list
executions, open the MLflow UI, and the course's commands (predict, explain, ...).

Imports here are kept light (click, rich, pydantic): `--help` must not import TensorFlow."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pipeline.cli_common import console as _console
from pipeline.cli_common import fail as _fail
from pipeline.cli_common import parse_kv as _kv
from pipeline.cli_common import print_rows as _print_rows
from pipeline.cli_common import quiet_libraries as _quiet_libraries
from pipeline.cli_common import tracking_uri_option
# The command groups import their helpers from pipeline.cli_common, never from here: no cycle.
from pipeline.cli_detect import detect
from pipeline.cli_faces import faces
from pipeline.cli_serve import request, serve
from pipeline.cli_stylize import stylize


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show every library's start-up lines, warnings and tracebacks.")
def main(verbose):
    """A TFX-style computer-vision pipeline: ExampleGen -> StatisticsGen -> ExampleValidator ->
    Transform -> Trainer -> Evaluator -> Pusher, run by a DAG runner with a content-hash cache
    and tracked in MLflow (one parent run per pipeline run, one child run per component).

    \b
    Quick start:
      python -m pipeline run                      run pipeline.yaml (cached steps are reused)
      python -m pipeline run --set train.epochs=5 change a param: only what depends on it reruns
      python -m pipeline list                     past executions
      python -m pipeline ui                       browse runs and registered models

    \b
    Exit status (every command): 0 ok; 1 a component, data or model failure; 2 a usage or
    configuration error; 130 interrupted (Ctrl-C: a rerun resumes, the cache keeps what finished);
    3 a "no" from faces verify / identify.
    """
    if verbose:
        import pipeline.cli_common as common

        common.VERBOSE = True


@main.command()
@click.argument("pipeline_file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@click.option("--only", multiple=True, metavar="C", help="Run only these components (repeatable); their inputs come from the cache.")
@click.option("--from", "from_", metavar="C", help="Run C and everything downstream of it.")
@click.option("--to", metavar="C", help="Run C and everything upstream of it.")
@click.option("--no-cache", is_flag=True, help="Execute every selected component even if a cached result exists.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value: components.train.params.epochs=5, or short: train.epochs=5.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow (the Pusher still needs it).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), metavar="N",
              help="Run up to N independent components at once (default: the config's `jobs`, 1). "
                   "At most `max_parallel_trainers` Trainers (1) run together.")
@click.option("--quiet", is_flag=True, help="No live view or progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of failures on the console (always in the log).")
def run(pipeline_file, only, from_, to, no_cache, overrides, no_tracking, jobs, quiet, verbose):
    """Run PIPELINE_FILE (default pipeline.yaml), all of it or a part."""
    import pipeline.cli_common as common

    common.VERBOSE = verbose = verbose or common.VERBOSE
    from pipeline.config import ConfigError, load_pipeline

    try:
        p = load_pipeline(pipeline_file, list(overrides) + ([f"jobs={jobs}"] if jobs else []))
    except ConfigError as e:
        _fail(f"invalid pipeline:\n{e}", 2)
    _quiet_libraries()
    from pipeline.runner import Interrupted, PipelineError, Runner

    console = None if quiet else _console()
    _second_ctrl_c_exits_at_once()
    try:
        result = Runner(p, console=console, show_progress=not quiet, tracking=not no_tracking, verbose=verbose).run(
            only=list(only) or None, from_=from_, to=to, no_cache=no_cache)
    except PipelineError as e:
        _fail(str(e), 2)
    except Interrupted as e:
        _fail(str(e), 130)
    except KeyboardInterrupt:  # before the runner started
        _fail("interrupted; `python -m pipeline run` resumes from there", 130)
    from pipeline.runner import InterruptGate

    InterruptGate.deferred = True  # a Ctrl-C while the summary prints: noted, then exit 130
    _print_summary(result, p)
    if InterruptGate.requested:
        _fail("interrupted after the run finished (its records are complete)", 130)
    # Every record is closed: exit now, without the libraries' interpreter teardown (seconds of
    # TensorFlow and MLflow clean-up during which Python no longer handles Ctrl-C).
    code = 0 if result.ok else 1
    if sys.stdout is not sys.__stdout__:  # called in-process (a test's CliRunner): a normal exit
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _second_ctrl_c_exits_at_once():
    """The first Ctrl-C stops the run cleanly (records and MLflow runs marked, one line); a
    second one while that happens exits at once."""
    import os
    import signal

    def second(signum, frame):
        os._exit(130)

    def first(signum, frame):
        import logging
        import threading

        from pipeline.runner import InterruptGate

        signal.signal(signal.SIGINT, second)
        InterruptGate.requested = True
        # what the interruption makes libraries print (Beam's worker threads log the
        # KeyboardInterrupt with its traceback) is noise now: the one line says it all
        logging.disable(logging.ERROR)
        threading.excepthook = lambda args: None
        sys.unraisablehook = lambda unraisable: None
        if not InterruptGate.deferred:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)


def _print_summary(result, p):
    from rich.console import Console

    c = Console()
    c.print()  # never glued to the status table's last border
    for e in result.executions.values():
        if e.status == "failed":
            c.print(f"[bold red]✘ {e.component} ({e.type}) failed:[/] {e.error}")
        elif e.status == "skipped":
            c.print(f"[magenta]– {e.component} skipped:[/] {e.error}")
    for line in _results_lines(result, p):
        click.echo(line)
    counts = {}
    for e in result.executions.values():
        counts[e.status] = counts.get(e.status, 0) + 1
    # one plain line (not wrapped by rich at 80 columns): scripts read the run id from it
    click.echo(f"pipeline run {result.run_id}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + (f"; MLflow run {result.mlflow_run_id}" if result.mlflow_run_id else ""))


# the headline numbers of each task's Evaluator, in the order they are shown
_HEADLINES = (("accuracy", "accuracy"), ("map_50", "mAP@.5"), ("roc_auc", "ROC AUC"), ("eer", "EER"))


def _results_lines(result, p) -> list[str]:
    """What the run produced: each Evaluator's headline metrics and blessing, each Pusher's
    registered version and alias, then where to look next."""
    lines = []
    pushed = {}
    for e in result.executions.values():
        if e.type == "Pusher" and e.metrics.get("pushed"):
            name = p.components[e.component].params.registered_model_name
            v = int(e.metrics.get("registered_version", 0))
            pushed[p.components[e.component].inputs["blessing"][0]] = (
                f"-> {name} v{v}" + (" @champion" if e.metrics.get("alias_moved") else " (alias unchanged)"))
    for e in result.executions.values():
        if e.type != "Evaluator" or e.status not in ("done", "cached") or not e.metrics:
            continue
        nums = ", ".join(f"{label} {e.metrics[k]:.3f}" for k, label in _HEADLINES if k in e.metrics)
        blessed = "blessed" if e.metrics.get("blessed") else "NOT blessed"
        lines.append(f"  {e.component}: {nums}; {blessed} {pushed.get(e.component, '')}".rstrip())
    if lines:
        lines.insert(0, "results:")
    if pushed:
        lines.append(f"next: make ui (http://127.0.0.1:5000/#/?{ML_VIEW}, the runs of experiment "
                     f"{p.config.tracking.experiment}), or python -m pipeline predict --model models:/NAME@champion IMAGE")
    return lines


@main.command("validate")
@click.argument("pipeline_file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate_cmd(pipeline_file, overrides):
    """Check PIPELINE_FILE without running anything."""
    from pipeline.config import ConfigError, load_pipeline

    try:
        p = load_pipeline(pipeline_file, list(overrides))
    except ConfigError as e:
        _fail(f"invalid pipeline:\n{e}", 2)
    click.echo(f"{pipeline_file}: OK ({len(p.order)} components: {' -> '.join(p.order)})")


@main.command("list")
@click.option("--pipeline", "pipeline_file", default="pipeline.yaml", type=click.Path(dir_okay=False),
              help="Pipeline whose root to read.")
@click.option("--root", type=click.Path(file_okay=False), help="Artifact root (instead of --pipeline).")
@click.option("--limit", default=40, show_default=True)
@click.option("--run", "run_id", help="Only the executions of this pipeline run.")
def list_cmd(pipeline_file, root, limit, run_id):
    """Show past component executions: status, cache hit, duration, MLflow run id."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.config import ConfigError, load_pipeline
    from pipeline.store import ArtifactStore

    tracking_uri = None
    if root is None:
        try:
            p = load_pipeline(pipeline_file)
        except ConfigError as e:
            _fail(str(e), 2)
        root, tracking_uri = p.root, p.tracking_uri
    # a fresh clone (nothing has run yet) is not an error
    rows = []
    if (Path(root) / "executions.db").exists():
        from pipeline.runner import reap_dead

        store = ArtifactStore(Path(root))
        reap_dead(store, tracking_uri)  # nothing shows `running` after its process died
        rows = store.executions(limit=limit, pipeline_run=run_id)
    if not rows and run_id:
        _fail(f"no executions of pipeline run {run_id} under {root}", 1)
    if not rows:
        click.echo(f"no executions recorded under {root} yet: run `python -m pipeline run` first")
        return
    t = Table(title=f"executions in {root}")
    for col in ("pipeline run", "component", "type", "status", "cache hit", "duration", "MLflow run", "error"):
        t.add_column(col, overflow="fold")
    for r in (rows if run_id else reversed(rows)):
        t.add_row(r["pipeline_run"], r["component"], r["type"], r["status"], "yes" if r["cache_hit"] else "no",
                  f"{r['duration']:.1f}s" if r["duration"] is not None else "", r["mlflow_run_id"] or "",
                  (r["error"] or "")[:120])
    Console(width=None if sys.stdout.isatty() else 220).print(t)


@main.command("graph")
@click.argument("pipeline_file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE.png|FILE.svg",
              help="Draw the picture into this file (.png, .svg or .pdf); without it, print the text version.")
@click.option("--run", "run_id", help="Colour by the statuses of this pipeline run (default: each component's last).")
def graph_cmd(pipeline_file, out, run_id):
    """Draw PIPELINE_FILE's DAG (default pipeline.yaml): components left to right by depth, artifact
    edges labelled with the output name, each component coloured by its last status in the artifact
    store (done, cached, failed, killed, skipped, not run).

    \b
    Examples:
      python -m pipeline graph                          one line per component: status and inputs
      python -m pipeline graph --out dag.png            the picture (matplotlib; .svg works too)
      python -m pipeline graph --run 20260101-120000-abcdef --out run.png
    """
    from pipeline.config import ConfigError, load_pipeline

    try:
        p = load_pipeline(pipeline_file)
    except ConfigError as e:
        _fail(f"invalid pipeline:\n{e}", 2)
    from pipeline import graph

    if out and not graph.supported_suffix(out):
        _fail(f"--out {out}: expected a .png, .svg or .pdf file", 2)
    statuses = graph.store_statuses(p.root, p.config.name, run_id)
    if run_id and not statuses:
        _fail(f"no executions of pipeline run {run_id} under {p.root}", 1)
    if out is None:
        for line in graph.text_lines(p, statuses):
            click.echo(line)
        return
    title = f"{p.config.name}: pipeline run {run_id}" if run_id else None
    click.echo(f"wrote {graph.draw(p, statuses, out, title=title)}")


@main.command()
@click.argument("component_type")
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH", help="Input artifact folder (repeatable).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A param (dotted keys nest; repeatable).")
@click.option("--params-file", type=click.Path(exists=True, dir_okay=False), help="YAML mapping of params.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (new or empty).")
@tracking_uri_option
def component(component_type, inputs, params, params_file, out, tracking_uri):
    """Run one component on its own, outside any pipeline.yaml.

    \b
    Example:
      python -m pipeline component Trainer --input examples=PATH/examples \\
          --input transform=PATH/transform --param epochs=3 --out /tmp/trainer
    """
    import yaml
    from pydantic import ValidationError

    from components.registry import COMPONENTS

    if component_type not in COMPONENTS:
        _fail(f"unknown component type {component_type!r}; known: {', '.join(COMPONENTS)}", 2)
    p = yaml.safe_load(Path(params_file).read_text()) if params_file else {}
    p.update(_kv(params, "--param"))
    ins = {}
    for item in inputs:
        if "=" not in item:
            _fail(f"--input {item!r}: expected name=PATH")
        k, v = item.split("=", 1)
        ins[k] = Path(v)
    _quiet_libraries()
    from components.base import ComponentError
    from pipeline.runner import PipelineError, run_single

    try:
        meta = run_single(component_type, ins, p, Path(out), tracking_uri=tracking_uri, console=_console())
    except ValidationError as e:
        _fail(f"{component_type} params:\n" + "\n".join(f"  {'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()), 2)
    except (ComponentError, PipelineError) as e:
        _fail(f"{component_type} failed: {e}")
    click.echo(f"{component_type} done in {meta['duration_s']:.1f}s -> {out}")
    for k, v in meta["metrics"].items():
        click.echo(f"  {k}: {v}")


@main.command()
@click.option("--pipeline", "pipeline_file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (127.0.0.1: this machine only).")
@click.option("--port", default=5000, show_default=True)
@click.option("--backend-store-uri", help="Tracking DB (default: the pipeline's).")
def ui(pipeline_file, host, port, backend_store_uri):
    """Start the MLflow UI on the project's tracking DB and print its URL."""
    uri = backend_store_uri
    if uri is None:
        from pipeline.config import ConfigError, load_pipeline

        try:
            uri = load_pipeline(pipeline_file).tracking_uri
        except ConfigError:
            from components.base import DEFAULT_TRACKING_URI

            uri = DEFAULT_TRACKING_URI
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    # MLflow 3.17's UI keeps a "workflow type" (GenAI or model training) that a first visit sets to
    # GenAI; the URL parameter workflowType=machine_learning selects the model-training view.
    view = f"?{ML_VIEW}"
    click.echo(f"MLflow UI: http://{host}:{port}/#/{view}  (tracking DB {uri}; Ctrl-C to stop)")
    for name, exp_id in _experiments(uri):
        click.echo(f"  {name}: http://{host}:{port}/#/experiments/{exp_id}/runs{view}")
    click.echo(f"  registered models: http://{host}:{port}/#/models{view}")
    sys.exit(_serve_until_stopped(cmd))


ML_VIEW = "workflowType=machine_learning"


def _serve_until_stopped(cmd: list[str]) -> int:
    """Run a server in its own process group and, on Ctrl-C or SIGTERM, stop the whole group
    (MLflow's server starts worker processes) and wait for it: nothing is left running."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum, frame):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sys.exit(0 if signum == signal.SIGTERM else 130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return proc.wait()


def _experiments(uri: str) -> list[tuple[str, str]]:
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        return [(e.name, e.experiment_id) for e in client.search_experiments() if e.name != "Default"]
    except Exception:  # the server still starts; it will report what is wrong
        return []


@main.command()
@click.option("--model", "model_uri", required=True,
              help="models:/NAME@ALIAS, models:/NAME/VERSION, a model.keras file or a Trainer model folder "
                   "(a classifier, a detector or a face model).")
@tracking_uri_option
@click.option("--top", default=1, show_default=True, help="Classifier: show the top-k classes.")
@click.option("--score-threshold", type=click.FloatRange(0, 1),
              help="Detector: keep boxes scoring at least this (default: the model's registered threshold, "
                   "its best F1 on its eval split; 0.3 without one).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Detector: also draw the boxes into this folder (<image>.png).")
@click.option("--face-db", type=click.Path(dir_okay=False),
              help="Face model: name the nearest person enrolled with `faces enroll` in this database.")
@click.argument("images", nargs=-1, required=True, type=click.Path())
def predict(model_uri, tracking_uri, top, score_threshold, out_dir, face_db, images):
    """Predict IMAGES with a registered or local model of any task: a classifier prints its top-k
    classes, a detector its boxes (and draws them with --out), a face model the nearest enrolled
    person with --face-db, otherwise the encoding's size and norm (the course's "test on your own
    image"). Images are checked before the model loads.

    \b
    Examples:
      python -m pipeline predict --model models:/signs-cnn@champion hand.jpg --top 3
      python -m pipeline predict --model models:/yolo-shapes@champion scene.png --out drawn/
      python -m pipeline predict --model models:/facenet-small@champion --face-db faces.db me.jpg
    """
    _quiet_libraries()
    from components.predict import PredictError, predict_images

    options = {"top": top, "score_threshold": score_threshold, "out_dir": out_dir, "face_db": face_db}
    try:
        task, rows = predict_images(model_uri, list(images), tracking_uri=tracking_uri,
                                    **{k: v for k, v in options.items() if v is not None})
    except PredictError as e:
        _fail(str(e))
    sys.exit(_print_rows(task, rows))


@main.command()
@click.argument("target")
@click.option("--pipeline", "pipeline_file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@click.option("--input-shape", help="HxWxC, e.g. 64x64x3 (a model name only; default: the model's).")
@click.option("--classes", type=int, help="Number of classes (a model name only).")
def explain(target, pipeline_file, input_shape, classes):
    """Layer by layer: output volume (the course's formula) and parameter counts.

    TARGET is a registered model name (signs_cnn, resnet50, ...), built with its defaults, or a
    Trainer component of the pipeline (e.g. `signs_train`): then the network is built exactly as
    that Trainer builds it (image size, classes, hyperparameters, anchors, from the artifacts of
    the components before it, which must have run), and the served model's parameter count,
    preprocessing included, is the trained model's."""
    from models.registry import MODELS

    if target not in MODELS:
        from pipeline.config import ConfigError, load_pipeline

        try:
            p = load_pipeline(pipeline_file)
        except ConfigError as e:
            _fail(str(e), 2)
        if target not in p.components or p.components[target].type != "Trainer":
            _fail(f"{target!r} is neither a model ({', '.join(MODELS)}) nor a Trainer in {pipeline_file}", 2)
        _quiet_libraries()
        from components.base import ComponentError
        from models.explain import explain_model, render
        from pipeline.inspect_trainer import trainer_network
        from pipeline.runner import PipelineError

        try:
            served, core = trainer_network(p, target)
        except (PipelineError, ComponentError) as e:
            _fail(str(e), 2)
        click.echo(render(explain_model(core)))
        click.echo(f"served model {served.name} (uint8 images, the Transform's preprocessing inside): "
                   f"{served.count_params():,} parameters")
        return
    shape = tuple(int(x) for x in input_shape.lower().split("x")) if input_shape else None
    _quiet_libraries()
    from models.explain import explain_model, render
    from models.registry import build_model

    click.echo(render(explain_model(build_model(target, input_shape=shape, num_classes=classes))))


# Branch-specific command groups live in their own modules (each imports TensorFlow lazily and
# takes its helpers from pipeline.cli_common, never from this module).
main.add_command(stylize)
main.add_command(faces)
main.add_command(detect)
main.add_command(serve)
main.add_command(request)

if __name__ == "__main__":
    main()
