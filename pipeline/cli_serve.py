"""`python -m pipeline serve` and `python -m pipeline request`: a registered model behind MLflow's
scoring server, and image files sent to it. The server's life cycle, wire format and rows are in
components/serving.py (shared with the InfraValidator and the serving benchmark).

Imports only click at module level: `python -m pipeline --help` stays free of TensorFlow and MLflow."""
from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import click

from pipeline.cli_common import fail, print_rows, quiet_libraries, tracking_uri_option


@click.command("serve")
@click.argument("model_uri")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind (0.0.0.0 exposes the model to the network).")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(0, 65535), help="0: a free port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="uvicorn worker processes (each loads the model).")
@click.option("--max-body-mb", default=16.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Requests with a larger body get 413 before they are parsed.")
@click.option("--startup-timeout", default=300.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the server to answer /ping.")
@tracking_uri_option
def serve(model_uri, host, port, workers, max_body_mb, startup_timeout, tracking_uri):
    """Serve MODEL_URI with MLflow's scoring server (what `mlflow models serve --env-manager local`
    runs: this environment, nothing created or downloaded) until Ctrl-C or SIGTERM, which stop its
    whole process group.

    MODEL_URI is models:/NAME@ALIAS, models:/NAME/VERSION, an MLflow model folder, or a Trainer
    model folder (served as the Pusher would register it). The server takes a uint8 image batch as
    {"inputs": [[[[r, g, b], ...]]]} at POST /invocations and answers {"predictions": ...}: class
    probabilities, a detector's boxes after NMS ((N, 100, 6): xmin, ymin, xmax, ymax in pixels,
    score, class; class -1 is padding), a face model's encodings.

    \b
    Examples:
      python -m pipeline serve models:/signs-cnn@champion
      python -m pipeline request http://127.0.0.1:5001 hand.jpg --top 3
    """
    quiet_libraries()
    from components.serving import (Server, ServingError, curl_example, input_size, local_model_folder,
                                    model_metadata)

    stop_signal: list[int] = []

    def on_signal(signum, frame):
        stop_signal.append(signum)
        raise KeyboardInterrupt

    with tempfile.TemporaryDirectory(prefix="pipeline-serve-") as scratch:
        try:
            folder = local_model_folder(model_uri, tracking_uri, Path(scratch))
        except ServingError as e:
            fail(str(e))
        server = Server(folder, host=host, port=port or None, workers=workers, max_body_bytes=int(max_body_mb * 2**20),
                        ready_timeout=startup_timeout, log_path="-")
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            click.echo(f"starting MLflow's scoring server for {model_uri} ({workers} worker(s))...")
            server.start()
            seconds = server.wait_ready()
            info = (model_metadata(folder) or {}).get("model_info") or {}
            what = {"classification": "class probabilities", "binary": "class probabilities",
                    "detection": "boxes after NMS (N, 100, 6)", "embedding": "encodings"}.get(info.get("task"), "")
            click.echo(f"ready after {seconds:.1f} s: {server.url}/invocations"
                       + (f" ({what} of {info.get('model')})" if what else ""))
            click.echo(f"  try:  {curl_example(server.url, input_size(folder))}")
            click.echo(f"  or:   python -m pipeline request {server.url} IMAGE...")
            click.echo("Ctrl-C stops it.")
            code = server.proc.wait()
            fail(f"the scoring server exited by itself (code {code})")
        except ServingError as e:
            fail(str(e))
        except KeyboardInterrupt:
            code = 143 if stop_signal and stop_signal[-1] == signal.SIGTERM else 130
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            server.stop()
        click.echo("scoring server stopped")
    sys.exit(code)


@click.command("request")
@click.argument("url")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_uri",
              help="The served model (models:/... or a Trainer model folder), for its classes: needed only when "
                   "the server was not started by `python -m pipeline serve` (no /metadata).")
@tracking_uri_option
@click.option("--top", default=1, show_default=True, help="Classifier: show the top-k classes.")
@click.option("--score-threshold", type=click.FloatRange(0, 1),
              help="Detector: keep boxes scoring at least this (default: the model's registered threshold).")
@click.option("--face-db", type=click.Path(dir_okay=False),
              help="Face model: name the nearest person enrolled with `faces enroll` in this database.")
def request(url, images, model_uri, tracking_uri, top, score_threshold, face_db):
    """Send IMAGES to the scoring server at URL (started by `python -m pipeline serve`) and print
    what `predict` prints in-process for them: the same reading, resizing and task output, the
    predictions coming from the server.

    \b
    Example:
      python -m pipeline request http://127.0.0.1:5001 hand.jpg --top 3
    """
    quiet_libraries()
    from components.predict import PredictError
    from components.serving import ServingError, request_rows

    options = {"top": top, "score_threshold": score_threshold, "face_db": face_db}
    try:
        task, rows = request_rows(url, list(images), model_uri=model_uri, tracking_uri=tracking_uri,
                                  **{k: v for k, v in options.items() if v is not None})
    except (ServingError, PredictError) as e:
        fail(str(e))
    sys.exit(print_rows(task, rows))
