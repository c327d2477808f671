"""Serving a model with MLflow's own scoring server: one place for what `python -m pipeline
serve` / `request`, the InfraValidator and the serving benchmark share.

    the MLflow model   ``save_mlflow_model`` / ``log_kwargs``: what the Pusher registers (the
                       task's served model, ``Task.serving_model``: uint8 images in; a signature;
                       ``model_info.json`` in the MLmodel metadata so a client can read the classes)
    the server         ``Server``: MLflow's scoring-server app (``mlflow.pyfunc.scoring_server``,
                       what ``mlflow models serve --env-manager local`` runs) under uvicorn, in its
                       own process group, on a free 127.0.0.1 port by default; ``wait_ready`` with
                       a timeout; ``stop`` ends the whole group (SIGTERM, then SIGKILL)
    the wire format    ``encode_batch`` / ``Client``: ``{"inputs": uint8 batch}`` JSON in,
                       ``{"predictions": ...}`` out, 4xx/5xx as ``ServingError``; or, ~50x
                       cheaper for batches, ``encode_batch_parquet``: MLflow's Parquet content
                       type with one column of raw image bytes
    the rows           ``request_rows``: the same rows (and so the same printed lines) as
                       ``predict`` in-process, from a running server

The app is MLflow's ``scoring_server.init(model)`` (its routes, parsing, prediction and JSON
answers) with these additions: ``_RequestGuard`` answers 413 to a request whose body is larger
than ``max_body_bytes`` before any of it is parsed (MLflow's server has no limit: a 50 MB JSON
body was parsed, converted and predicted) and 415 to a POST without Content-Type, and ``GET
/metadata`` returns the MLmodel metadata (the model's task, classes, image size). For speed
(``python -m benchmarks serving``): MLflow's request timeout is enforced by ``_RequestGuard`` too,
instead of a Starlette ``BaseHTTPMiddleware``; ``_StrictPixels`` calls the SavedModel's serving
function directly (``_direct_serve``: the same predictions, ~0.5 ms less per call than MLflow's
pyfunc ``predict``); the objects loaded at start-up are frozen out of the garbage collector;
``--workers N`` gets the TCP_NODELAY uvicorn loses there. Where a 32-image Parquet request's time
goes in the server (medians, this 2-core machine, ~7.3 ms from its headers to the end of the
answer): the body has arrived after 0.4 ms; 1.9 ms more until ``_StrictPixels.predict`` is called
(Starlette, MLflow's hop to its worker thread, its ``pandas.read_parquet`` of the body ~1 ms); the
model ~3.6 ms; MLflow's pure-Python JSON answer and the hop back ~0.5 ms; sending it ~0.6 ms.
uvicorn's httptools parser, uvloop and other TensorFlow thread counts (inter-op 1: no change;
intra-op 1 or 3: slower) gained nothing measurable here (servers side by side, 19-24 alternating rounds, paired medians
within the 4-5% that two identical servers differ by). Nothing here imports TensorFlow or MLflow at
module level.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MLFLOW_APP = "mlflow.pyfunc.scoring_server.app:app"  # what MLflow's get_cmd serves
APP_FACTORY = "components.serving:create_app"  # the same app, behind _RequestGuard, plus /metadata
MAX_BODY_ENV = "PIPELINE_SERVING_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # a batch of 32 64x64 images is ~1.6 MB of JSON


class ServingError(Exception):
    """The server could not be started, did not become ready, or answered with an error
    (``status``: the HTTP status, or None when there was no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- the MLflow model

def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference of them makes logging ~100x slower."""
    from importlib.metadata import version

    return [f"tensorflow=={version('tensorflow')}", f"keras=={version('keras')}"]


def served_keras_model(model_art):
    """The Keras model that is registered and served for a Trainer's Model artifact: the task's
    ``serving_model`` of the trained network (a detector decodes its grid into boxes)."""
    from components.tasks import get_task

    return get_task(model_art.info.task).serving_model(model_art.load_keras(), model_art.info)


def log_kwargs(served, info) -> dict:
    """Keyword arguments of ``mlflow.keras.log_model`` / ``save_model`` for ``served``: a real
    SavedModel with a uint8-image signature (``input_example=`` crashes in MLflow 3.17), explicit
    requirements, and ``model_info`` in the MLmodel metadata (read back by ``GET /metadata``)."""
    import numpy as np
    from mlflow.models import infer_signature

    h, w = info.image_size
    example = np.zeros((1, h, w, 3), dtype=np.uint8)
    signature = infer_signature(example, np.asarray(served.predict(example, verbose=0)))
    return {"save_exported_model": True, "signature": signature, "pip_requirements": pip_requirements(),
            "metadata": {"model_info": info.to_json()}}


def save_mlflow_model(model_art, dest: Path, served=None) -> Path:
    """Writes into ``dest`` (which must not exist) the MLflow model the Pusher would register for
    ``model_art`` (``served``: its ``served_keras_model`` when already built); returns ``dest``."""
    import mlflow

    served = served_keras_model(model_art) if served is None else served
    # SavedModel export prints its endpoints to stdout: keep that out of the user's terminal.
    with contextlib.redirect_stdout(_Sink()):
        mlflow.keras.save_model(served, str(dest), **log_kwargs(served, model_art.info))
    return Path(dest)


class _Sink:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def local_model_folder(model_uri: str, tracking_uri: str | None, scratch: Path) -> Path:
    """A local MLflow model folder (one holding ``MLmodel``) for ``model_uri``: ``models:/...`` and
    ``runs:/...`` are downloaded into ``scratch``; a Trainer model folder (``model.keras``) is saved
    there as the Pusher would register it; an MLflow model folder is used as it is."""
    path = Path(model_uri).expanduser()
    if "://" not in model_uri and ":/" not in model_uri:
        if (path / "MLmodel").exists():
            return path
        if (path / "model.keras").exists():
            from components.artifacts import Model

            return save_mlflow_model(Model.load(path), Path(scratch) / "model")
        raise ServingError(f"{model_uri}: neither an MLflow model folder (MLmodel) nor a Trainer model folder "
                           f"(model.keras); give models:/NAME@ALIAS, models:/NAME/VERSION or such a folder")
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(scratch)))
    except Exception as e:
        raise ServingError(f"{model_uri}: cannot fetch it from {tracking_uri or mlflow.get_tracking_uri()} "
                           f"({type(e).__name__}: {e})") from None
    if not (local / "MLmodel").exists():
        raise ServingError(f"{model_uri}: not an MLflow model (no MLmodel in {local})")
    return local


def model_metadata(folder: Path) -> dict:
    """The ``metadata`` of an MLflow model folder's MLmodel (``{}`` when it has none)."""
    import yaml

    try:
        return (yaml.safe_load((Path(folder) / "MLmodel").read_text()) or {}).get("metadata") or {}
    except (OSError, yaml.YAMLError):
        return {}


# ----------------------------------------------------------------------------- the app

def create_app():
    """uvicorn's ``--factory`` target: MLflow's scoring-server app for the model folder MLflow's
    ``get_cmd`` put in the environment, behind ``_RequestGuard`` (body-size limit, 415 for a POST
    without Content-Type, MLflow's request timeout), plus ``GET /metadata``."""
    from fastapi.responses import JSONResponse
    from mlflow.pyfunc import scoring_server

    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT

    model = scoring_server.load_model_with_mlflow_config(os.environ[scoring_server._SERVER_MODEL_PATH])
    app = scoring_server.init(_StrictPixels(model))
    meta = dict(getattr(model.metadata, "metadata", None) or {})
    # MLflow's request timeout is a Starlette BaseHTTPMiddleware, which relays every request and
    # response through extra tasks and streams (0.4-0.5 ms of a 32-image request here): the same
    # timeout and 504 answer are given by the plain ASGI wrapper below instead.
    timed = [m for m in app.user_middleware if getattr(m.kwargs.get("dispatch"), "__name__", "") == "timeout_middleware"]
    app.user_middleware = [m for m in app.user_middleware if m not in timed]
    _freeze_loaded_objects()
    _no_delay_on_inherited_listeners()

    @app.get("/metadata")
    async def metadata():
        return JSONResponse(meta)

    limit = int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_BYTES)
    return _RequestGuard(app, limit, timeout=MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get() if timed else None)


def _freeze_loaded_objects() -> None:
    """Moves everything loaded so far (TensorFlow, MLflow, the model: ~500,000 objects) out of the
    garbage collector's reach. Without it, each full collection that a request's allocations
    trigger walks them all and that request waits 150-300 ms; with it, a collection scans only what
    requests allocate. The loaded objects stay for the life of the server anyway."""
    import gc

    gc.collect()
    gc.freeze()


def _no_delay_on_inherited_listeners() -> None:
    """With ``--workers N`` uvicorn's supervisor binds the listening socket with ``proto`` 0 and
    hands it to each worker; asyncio then skips TCP_NODELAY on every accepted connection (it checks
    ``proto == IPPROTO_TCP``), so each keep-alive response waits ~40 ms for the client's delayed ACK
    (uvicorn issue #3149: /ping took 44 ms with 2 workers, 0.7 ms with one; a batch of 32 56 ms
    instead of 10.5). Linux copies TCP_NODELAY from a listening socket to the connections it
    accepts, so it is set on the unconnected TCP socket this worker inherited (bound; its listen()
    comes after the app is loaded). With one worker there is none yet at this point (uvicorn
    creates it after loading the app, with ``proto`` 6, and asyncio sets the option itself)."""
    import contextlib
    import socket

    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return
    for entry in fds.iterdir():
        with contextlib.suppress(OSError, ValueError):
            fd = int(entry.name)
            if not os.readlink(entry).startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))  # family and type read from the descriptor
            try:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                    try:
                        sock.getpeername()  # a connection, not the listener (bound, listen() comes later)
                    except OSError:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            finally:
                sock.close()


class _StrictPixels:
    """The loaded pyfunc model with its images checked as pixels. MLflow casts the JSON to the
    signature's dtype before its own checks, so ``0.5`` became pixel 0 and a float batch got a
    200; here the JSON is read as it is (no schema cast) and the batch must be integers in
    0..255 with at least one image before it is made uint8 and handed to the model, whose
    signature then checks the shape. Failures are MLflow's 400 (INVALID_PARAMETER_VALUE)."""

    def __init__(self, model):
        self._model = model
        self.metadata = _NoInputCast(model.metadata)
        schema = model.metadata.get_input_schema()
        self._shape = tuple(schema.inputs[0].shape) if schema is not None else None  # (-1, H, W, 3)
        self._serve = _direct_serve(model, self._shape)

    def predict(self, data, params=None):
        import numpy as np
        import pandas as pd
        from mlflow.exceptions import MlflowException

        if isinstance(data, pd.DataFrame):
            data = self._frame_to_batch(data)
        if isinstance(data, (list, tuple)) and not data:  # MLflow leaves an empty "inputs" a list
            raise MlflowException.invalid_parameter_value("empty batch: send at least one image")
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "iub":
            kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
            raise MlflowException.invalid_parameter_value(
                f"expected a batch of uint8 images (integers 0..255, shape (N, H, W, 3)) under 'inputs'; got {kind} "
                f"values")
        if data.ndim == 0 or data.shape[0] == 0:
            raise MlflowException.invalid_parameter_value("empty batch: send at least one image")
        if data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
            raise MlflowException.invalid_parameter_value(
                f"pixel values must be 0..255; got {data.min()}..{data.max()}")
        data = data.astype(np.uint8, copy=False)
        if self._serve is not None and not params and data.ndim == 4 and data.shape[1:] == self._shape[1:]:
            return self._serve(data)
        return self._model.predict(data, params=params)  # MLflow's path (its checks and errors)


    def _frame_to_batch(self, frame):
        """The compact wire format (Parquet, ``encode_batch_parquet``): one ``image`` column of raw
        uint8 bytes, each row one or more whole H*W*3 images (one per row, as it writes them, or a
        whole batch in one row) -> (N, H, W, 3) uint8."""
        import numpy as np
        from mlflow.exceptions import MlflowException

        if list(frame.columns) != [PARQUET_COLUMN] or self._shape is None:
            raise MlflowException.invalid_parameter_value(
                f"a Parquet body must have one column {PARQUET_COLUMN!r} of raw uint8 image bytes; got columns "
                f"{list(frame.columns)[:5]}")
        h, w, c = self._shape[1:]
        size = h * w * c
        # the frame's one column as an array: 0.15 ms less than frame[PARQUET_COLUMN], whose column
        # lookup builds an index engine on each fresh frame
        cells = frame.to_numpy()[:, 0]
        if not len(cells):
            raise MlflowException.invalid_parameter_value("empty batch: send at least one image")
        bad = [i for i, b in enumerate(cells) if not isinstance(b, bytes) or not b or len(b) % size]
        if bad:
            raise MlflowException.invalid_parameter_value(
                f"row {bad[0]}: expected {size} bytes (a {h}x{w}x{c} uint8 image) or a multiple of them")
        flat = cells[0] if len(cells) == 1 else b"".join(cells)
        return np.frombuffer(flat, np.uint8).reshape(-1, h, w, c)


def _direct_serve(model, shape):
    """A faster call of what MLflow's pyfunc ``predict`` runs for our models (``mlflow.keras``'s
    ``KerasModelWrapper.predict``: the loaded SavedModel's ``serve`` function on the numpy batch,
    then ``keras.ops.convert_to_numpy``), or None where it does not apply: (N, H, W, 3) uint8 numpy
    -> the same numpy predictions. ``serve`` binds and canonicalises its arguments against its
    Python signature (``inputs, training=None, mask=None``) on every call, ~0.5 ms on this 2-core
    machine, as much as the model itself takes for one image; here its single concrete function is
    called with the flat tensor input and its captured variables (``_call_flat``, where ``serve``
    ends; TensorFlow's own method, not a public one: should a release change it, the check below
    fails and MLflow's path is used). The caller hands it only batches
    that pass MLflow's own signature check (uint8, that H, W, 3; anything else goes MLflow's way, so
    its errors are unchanged). Applies only to a Keras 3 model saved as a SavedModel whose
    ``serve`` has one concrete function taking one uint8 (None, H, W, 3) tensor and returning one
    tensor, and only when a check batch gives exactly MLflow's predictions."""
    try:
        import numpy as np
        import tensorflow as tf
        from mlflow.keras.load import KerasModelWrapper

        impl = getattr(model, "_model_impl", None)
        if not isinstance(impl, KerasModelWrapper) or not impl.save_exported_model or shape is None:
            return None
        functions = getattr(getattr(impl.get_raw_model(), "serve", None), "concrete_functions", None)
        if not functions or len(functions) != 1:
            return None
        fn = functions[0]
        args, kwargs = fn.structured_input_signature
        spec = args[0] if args else None
        if (kwargs or not isinstance(spec, tf.TensorSpec) or any(a is not None for a in args[1:])
                or spec.dtype != tf.uint8 or not spec.shape.is_compatible_with((None, *shape[1:]))
                or not isinstance(fn.structured_outputs, tf.TensorSpec)):
            return None
        captured = list(fn.captured_inputs)  # the model's variables (resource handles)

        def serve(batch):
            return fn._call_flat([tf.constant(batch)], captured).numpy()

        check = np.random.default_rng(0).integers(0, 256, (2, *shape[1:]), dtype=np.uint8)
        expected = model.predict(check)
        got = serve(check)
        if not isinstance(expected, np.ndarray) or got.shape != expected.shape or got.dtype != expected.dtype \
                or not np.array_equal(got, expected):
            return None
        return serve
    except Exception:  # anything unexpected (another TensorFlow, another MLflow): MLflow's own path
        return None


class _NoInputCast:
    """The model's metadata, without the input schema MLflow would cast the request with."""

    def __init__(self, metadata):
        self._metadata = metadata

    def get_input_schema(self):
        return None

    def __getattr__(self, name):
        return getattr(self._metadata, name)


class _RequestGuard:
    """ASGI middleware in front of MLflow's app, refusing what MLflow's server would mishandle and
    enforcing its timeout: 413 for a request body over ``limit`` bytes, by its
    Content-Length or, for a chunked body, as soon as the bytes received pass it (such a body is
    read here first, so nothing of it reaches the app); 415 for a POST without Content-Type; and,
    with ``timeout``, MLflow's request timeout (504 "Request processing time exceeded limit" when
    no answer has started within ``timeout`` seconds)."""

    def __init__(self, app, limit: int, timeout: float | None = None):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if scope["method"] == "POST" and not headers.get(b"content-type"):
            # MLflow's server answers 500 (it splits a missing header); say what is wrong instead
            return await self._reject(send, 0, 415, "MISSING_CONTENT_TYPE",
                                      "no Content-Type header: send 'Content-Type: application/json'")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                return await self._reject(send, int(length))
        elif scope["method"] in ("POST", "PUT", "PATCH"):  # no length given: read it here, within the limit
            chunks, seen, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # the client went away
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                if seen > self.limit:
                    return await self._reject(send, seen)
                more = message.get("more_body", False)
            receive = _replay(b"".join(chunks), receive)
        if self.timeout is None:
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracked), self.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            if not started:
                body = b"Request processing time exceeded limit"  # MLflow's words
                await send({"type": "http.response.start", "status": 504,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

    async def _reject(self, send, size: int, status: int = 413, code: str = "REQUEST_TOO_LARGE",
                      message: str | None = None):
        message = message or (f"request body of {size} bytes is over the limit of {self.limit} bytes (send "
                              f"smaller batches, or raise {MAX_BODY_ENV})")
        body = json.dumps({"error_code": code, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that first gives ``body`` whole, then defers to ``receive``."""
    given = False

    async def replay():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


# ----------------------------------------------------------------------------- the server process

def free_ports(n: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (all held open while choosing, so none repeats):
    the scoring server's, and the TF_CONFIG addresses of local multi_worker runs."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


class Server:
    """MLflow's scoring server for a local MLflow model folder, as a child process group.

    The command is MLflow's own (``scoring_server.get_cmd``: uvicorn with the model folder and the
    request timeout in the environment), run as ``python -m uvicorn`` of this interpreter (MLflow
    starts ``uvicorn`` by name, which fails with exit 127 when the virtual environment's bin/ is
    not on PATH) and with the app factory above in place of MLflow's module-level app.

        with Server(folder) as s:         # start + wait_ready; stop on exit
            Client(s.url).predict(batch)
    """

    def __init__(self, model_folder, *, host: str = "127.0.0.1", port: int | None = None, workers: int = 1,
                 request_timeout: int = 60, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_path=None,
                 ready_timeout: float = 120.0):
        self.model_folder = Path(model_folder)
        self.host, self.port, self.workers = host, port or free_port(host), workers
        self.request_timeout, self.max_body_bytes = request_timeout, max_body_bytes
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> tuple[list[str], dict]:
        import shlex

        from mlflow.pyfunc import scoring_server

        cmd, env = scoring_server.get_cmd(str(self.model_folder.resolve()), self.port, self.host,
                                          self.request_timeout, self.workers)
        argv = shlex.split(cmd)
        if argv[0] != "uvicorn" or argv[-1] != MLFLOW_APP:  # a future MLflow changed its command
            raise ServingError(f"unexpected MLflow scoring-server command {cmd!r}")
        argv = with_parent_death([sys.executable, "-m", "uvicorn", *argv[1:-1], "--factory", APP_FACTORY,
                                  "--app-dir", str(PROJECT_ROOT), "--timeout-graceful-shutdown", "5"])
        env[MAX_BODY_ENV] = str(self.max_body_bytes)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        return argv, env

    def start(self) -> "Server":
        argv, env = self.command()
        out = err = subprocess.DEVNULL
        if self.log_path is not None and str(self.log_path) == "-":  # the server's lines on our console
            out, err = sys.stdout, sys.stderr
        elif self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = open(self.log_path, "ab")
            err = subprocess.STDOUT
        # its own session: stop() signals the whole group (uvicorn's workers included), and a
        # Ctrl-C in the user's terminal reaches the group only through stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Seconds until ``GET /ping`` answered 200. ServingError when the process exits first or
        ``timeout`` passes (the process is left to ``stop``)."""
        timeout = self.ready_timeout if timeout is None else timeout
        t0 = time.monotonic()
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServingError(f"the scoring server for {self.model_folder} exited with code {rc} before it was "
                                   f"ready{self._log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ServingError(f"the scoring server for {self.model_folder} was not ready after {timeout:.0f} s "
                                   f"(no 200 from {self.url}/ping){self._log_tail()}")
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # uvicorn's worker processes (and multiprocessing's helpers) may outlive their parent by a
        # moment: none may stay
        deadline = time.monotonic() + 5
        while group_members(self.proc.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def rss_bytes(self) -> int:
        """Resident memory of the server's process tree (all its group's processes)."""
        return process_group_rss(self.proc.pid) if self.proc is not None else 0

    def _log_tail(self, lines: int = 8) -> str:
        if self.log_path is None or str(self.log_path) == "-" or not self.log_path.exists():
            return ""
        if self._log is not None:
            self._log.flush()
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return (f"; last lines of {self.log_path}:\n  " + "\n  ".join(tail)) if tail else ""

    def __enter__(self):
        try:
            self.start().wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


# Runs argv[2:] in place of itself after asking the kernel to send it SIGTERM when the process
# that started it dies (Linux prctl PR_SET_PDEATHSIG; it survives the exec): a server started
# by a run, a test or `serve` that is SIGKILLed does not outlive it (its own session keeps it out
# of the terminal's reach, so nothing else would stop it). Elsewhere it just runs argv[2:].
_PARENT_DEATH_LAUNCHER = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_parent_death(argv: list[str]) -> list[str]:
    """``argv`` started so that it gets SIGTERM when this process dies (see above). The kernel
    ties it to the starting thread: start servers from a thread that outlives them."""
    return [sys.executable, "-c", _PARENT_DEATH_LAUNCHER, str(os.getpid()), *argv]


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def process_group_rss(pgid: int) -> int:
    """Sum of VmRSS over the processes of group ``pgid``."""
    total = 0
    for pid in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


# ----------------------------------------------------------------------------- the wire format

PARQUET_COLUMN = "image"
PARQUET = "application/vnd.apache.parquet"


def encode_batch_parquet(images) -> bytes:
    """The compact wire format, another of MLflow's content types: a Parquet table with one
    ``image`` column of raw uint8 bytes per image (the server also takes rows of several whole
    images). JSON costs ~20 ms per 64x64 image to write and parse in Python (and MLflow deep-copies
    the parsed lists); this costs well under 1 ms."""
    import io

    import numpy as np
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame({PARQUET_COLUMN: [im.tobytes() for im in np.ascontiguousarray(images, np.uint8)]}).to_parquet(
        buf, index=False, compression=None)
    return buf.getvalue()


def encode_batch(images) -> bytes:
    """A uint8 image batch (B, H, W, 3) as MLflow's ``{"inputs": ...}`` JSON body."""
    import numpy as np

    return json.dumps({"inputs": np.asarray(images, np.uint8).tolist()}, separators=(",", ":")).encode()


class Client:
    """Requests to a running scoring server (keep-alive: one connection per client)."""

    def __init__(self, url: str, timeout: float = 60.0):
        from urllib.parse import urlsplit

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ServingError(f"{url}: expected http://HOST:PORT")
        self.url = f"http://{parts.netloc}"
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self._conn = None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json") -> tuple[int, bytes]:
        import http.client

        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    self._conn.connect()
                    # http.client writes the headers and the body separately: without this, Nagle's
                    # algorithm may hold the body's last segment until the server acknowledges the
                    # rest (urllib3 sets it on every connection for the same reason)
                    self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._conn.request(method, path, body=body, headers={"Content-Type": content_type} if body else {})
                r = self._conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt:
                    raise ServingError(f"{self.url}{path}: connection lost ({type(e).__name__})") from None
            except OSError as e:
                self.close()
                raise ServingError(f"{self.url}{path}: no answer ({type(e).__name__}: {e})") from None

    def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        """Raw ``POST /invocations``: (status, body), whatever the status."""
        return self._request("POST", "/invocations", body, content_type)

    def predict(self, images, wire: str = "json"):
        """The server's predictions for a uint8 batch, as a numpy array; ServingError on a non-200.
        ``wire``: ``json`` (MLflow's ``{"inputs": ...}``) or ``parquet`` (``encode_batch_parquet``)."""
        import numpy as np

        status, body = (self.post(encode_batch_parquet(images), PARQUET) if wire == "parquet"
                        else self.post(encode_batch(images)))
        if status != 200:
            raise ServingError(f"{self.url}/invocations answered {status}: {error_message(body)}", status)
        return np.asarray(json.loads(body)["predictions"])

    def metadata(self) -> dict:
        status, body = self._request("GET", "/metadata")
        if status != 200:
            raise ServingError(f"{self.url}/metadata answered {status} (a server started by `python -m pipeline "
                               f"serve` has it; for another one give --model)", status)
        return json.loads(body)

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def error_message(body: bytes, limit: int = 300) -> str:
    """The message of an error response (MLflow's ``{"error_code", "message"}`` or plain text)."""
    text = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(text).get("message", text)
    if text.startswith("Failed to") and "Error: " in text:
        # MLflow's "Failed to predict data '<the batch>'. Error: [Failed to enforce ... Error: ]<why>"
        text = text.rsplit("Error: ", 1)[1]
    text = text.strip().splitlines()[0] if text.strip() else "(empty body)"
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------- rows, as predict prints them

class RemoteModel:
    """What a task's ``predictor`` calls on a Keras model, answered by the server (the served model:
    a classifier's probabilities, a face model's raw encodings, a detector's packed boxes); a task's
    ``served_predictor`` turns it into the rows its in-process predictor gives."""

    def __init__(self, client: Client):
        self.client = client

    def predict_on_batch(self, x):
        return self.client.predict(x)

    def predict(self, x, verbose=0, batch_size=None):
        return self.client.predict(x)

    def __call__(self, x, training=False):
        return self.client.predict(x)


def served_predictor(task, client: Client, info, **options):
    """(uint8 images, keys) -> the task's ``predict`` rows, the model answering from the server
    (the task's ``served_predictor`` hook reads the answer)."""
    return task.served_predictor(RemoteModel(client), info, **options)


def server_info(client: Client, model_uri: str | None = None, tracking_uri: str | None = None):
    """The served model's ModelInfo: from ``--model`` (a models:/ URI or Trainer folder) when given,
    else from the server's ``/metadata``."""
    from components.artifacts import ModelInfo

    if model_uri:
        from components.model_uri import ModelNotFound, fetch_keras

        if model_uri.startswith("models:/"):
            try:
                return fetch_keras(model_uri, tracking_uri)[1]
            except ModelNotFound as e:
                raise ServingError(str(e)) from None
        return ModelInfo.read(Path(model_uri).expanduser())
    meta = client.metadata()
    if "model_info" not in meta:
        raise ServingError(f"{client.url}: the served model carries no model_info in its metadata (registered before "
                           f"serving existed?): give --model models:/NAME/VERSION")
    return ModelInfo.model_validate(meta["model_info"])


def request_rows(url: str, images: list[str], *, model_uri: str | None = None, tracking_uri: str | None = None,
                 **options):
    """(task plug-in or None, rows) for image files sent to the server at ``url``: the rows
    ``components.predict.predict_images`` gives in-process (same reading and resizing, same task
    predictor), the predictions coming from the server."""
    import numpy as np

    from components.predict import read_images
    from components.tasks import get_task

    rows = read_images(images)
    good = [r for r in rows if "error" not in r]
    if not good:
        return None, rows
    client = Client(url)
    try:
        info = server_info(client, model_uri, tracking_uri)
        task = get_task(info.task)
        for r in good:
            try:
                r["input"] = task.prepare_image(r.pop("pixels"), info)
            except ValueError as e:
                r["error"] = str(e)
        good = [r for r in good if "error" not in r]
        if good:
            batch = np.stack([r.pop("input") for r in good])
            keys = [r["image"] for r in good]
            predict = served_predictor(task, client, info, **task.predict_options(info, options))
            for r, p in zip(good, predict(batch, keys)):
                p.pop("key", None)
                r.update(p)
    finally:
        client.close()
    return task, rows


def input_size(folder) -> tuple[int, int]:
    """(height, width) of the images an MLflow model folder takes, from its signature."""
    import yaml

    try:
        sig = (yaml.safe_load((Path(folder) / "MLmodel").read_text()) or {}).get("signature") or {}
        shape = json.loads(sig["inputs"])[0]["tensor-spec"]["shape"]
        return int(shape[1]), int(shape[2])
    except (OSError, KeyError, IndexError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ServingError(f"{folder}: no image input (N, H, W, 3) in the MLmodel signature ({e})") from None


def curl_example(url: str, size: tuple[int, int]) -> str:
    """A working curl command for the served model: one black uint8 image of ``size`` (h, w),
    the body written to a temporary file (a 64x64 image is ~50 kB of JSON)."""
    h, w = size
    body = json.dumps({"inputs": [[[[0, 0, 0]] * w] * h]}, separators=(",", ":"))
    path = Path(tempfile.gettempdir()) / f"pipeline-serve-example-{h}x{w}.json"
    path.write_text(body)
    return f"curl -s -X POST {url}/invocations -H 'Content-Type: application/json' --data @{path}"
