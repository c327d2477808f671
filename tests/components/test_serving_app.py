"""The ASGI guard in front of MLflow's scoring-server app (components.serving._RequestGuard), on
stand-in apps (no model, no server process): MLflow's request timeout (504 when no answer started
in time), the body limit of a chunked body (413, nothing of it reaching the app), the replayed
body the app reads, and the 415 of a POST without Content-Type. The model wrapper
(components.serving._StrictPixels) on a small saved model: its direct call of the SavedModel gives
MLflow's predictions and errors. A server dies with the process that started it."""
from __future__ import annotations

import asyncio
import json

from components.serving import _RequestGuard


def _call(app, *, method="POST", headers=(), chunks=(b"",)):
    """(status, body, what the app received) of one request through ``app``."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": method, "path": "/invocations", "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


class _Echo:
    """Reads the whole body and answers its length (what MLflow's handler does first)."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls = delay, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        body, more = b"", True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = m.get("more_body", False)
        await asyncio.sleep(self.delay)
        out = json.dumps({"received": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": out})


JSON = (b"content-type", b"application/json")


def test_a_request_slower_than_the_timeout_gets_mlflows_504_and_a_quick_one_its_answer():
    slow = _RequestGuard(_Echo(delay=0.5), limit=100, timeout=0.05)
    status, body = _call(slow, headers=[JSON, (b"content-length", b"3")], chunks=[b"abc"])
    assert status == 504 and body == b"Request processing time exceeded limit"
    quick = _RequestGuard(_Echo(), limit=100, timeout=5)
    assert _call(quick, headers=[JSON, (b"content-length", b"3")], chunks=[b"abc"]) == (200, b'{"received": 3}')


def test_a_chunked_body_over_the_limit_gets_413_and_never_reaches_the_app():
    app = _Echo()
    status, body = _call(_RequestGuard(app, limit=10), headers=[JSON], chunks=[b"x" * 6, b"x" * 6, b"x" * 6])
    assert status == 413 and "over the limit of 10 bytes" in json.loads(body)["message"] and app.calls == 0
    # within the limit: read here, then given to the app whole
    status, body = _call(_RequestGuard(app, limit=10, timeout=5), headers=[JSON], chunks=[b"x" * 4, b"x" * 5])
    assert (status, json.loads(body)) == (200, {"received": 9}) and app.calls == 1


def test_a_content_length_over_the_limit_and_a_post_without_content_type_are_refused_first():
    app = _Echo()
    status, body = _call(_RequestGuard(app, limit=10), headers=[JSON, (b"content-length", b"11")], chunks=[b"x" * 11])
    assert status == 413 and app.calls == 0
    status, body = _call(_RequestGuard(app, limit=10), headers=[(b"content-length", b"2")], chunks=[b"{}"])
    assert status == 415 and "Content-Type" in json.loads(body)["message"] and app.calls == 0


def test_a_server_dies_with_the_process_that_started_it(tmp_path):
    """A run, test or `serve` that is SIGKILLed takes its server (its own session) with it: the
    launcher asks the kernel for SIGTERM on the parent's death, then execs the server."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    pid_file = tmp_path / "child.pid"
    starter = ("import subprocess, sys, time\n"
               "from components.serving import with_parent_death\n"
               "p = subprocess.Popen(with_parent_death([sys.executable, '-c', 'import time; time.sleep(120)']),"
               " start_new_session=True)\n"
               f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
               "time.sleep(120)\n")
    from tests.conftest import PROJECT_ROOT

    parent = subprocess.Popen([sys.executable, "-c", starter], cwd=PROJECT_ROOT)
    try:
        deadline = time.time() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and parent.poll() is None, "the starter never started its child"
            time.sleep(0.1)
        child = psutil.Process(int(pid_file.read_text()))
        time.sleep(0.5)  # the launcher has exec'd the child by now
        assert "time.sleep(120)" in " ".join(child.cmdline()) and child.is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        child.wait(timeout=10)  # raises psutil.TimeoutExpired if it outlived its parent
    finally:
        parent.kill()
        parent.wait()
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_the_model_wrapper_calls_the_savedmodel_directly_with_mlflows_predictions_and_errors(tmp_path):
    """_StrictPixels calls the SavedModel's serving function itself (not MLflow's pyfunc predict):
    the same predictions for JSON-like and Parquet batches; a batch of the wrong shape still goes
    MLflow's way and gets its error; a model the direct call does not fit is served MLflow's way."""
    import io
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import mlflow
    import numpy as np
    import pandas as pd
    import pytest
    from mlflow.exceptions import MlflowException

    from components.artifacts import ModelInfo
    from components.serving import _StrictPixels, encode_batch_parquet, log_kwargs

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), dtype="uint8", name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inp))
    net = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    info = ModelInfo(model="signs_cnn", task="classification", classes=["a", "b", "c"], image_size=[16, 16])
    mlflow.keras.save_model(net, str(tmp_path / "m"), **log_kwargs(net, info))
    pyfunc = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    model = _StrictPixels(pyfunc)
    assert model._serve is not None  # the direct call applies to what the Pusher registers
    batch = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    expected = pyfunc.predict(batch)
    for got in (model.predict(batch), model.predict(batch.astype(np.int64)),
                model.predict(pd.read_parquet(io.BytesIO(encode_batch_parquet(batch))))):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype and got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-6
    with pytest.raises(MlflowException, match="shape"):
        model.predict(np.zeros((1, 8, 8, 3), np.uint8))
    # a model saved without the SavedModel export (a .keras file): MLflow's own path, same answers
    mlflow.keras.save_model(net, str(tmp_path / "k"), **{**log_kwargs(net, info), "save_exported_model": False})
    plain = _StrictPixels(mlflow.pyfunc.load_model(str(tmp_path / "k")))
    assert plain._serve is None
    assert np.abs(plain.predict(batch) - expected).max() <= 1e-5
