"""Beam SDK workers forked from a warm process, for ``beam.runner: multiprocess``.

Beam's own multi-process mode (``--direct_running_mode=multi_processing``) starts every SDK
worker as a fresh ``python -m apache_beam.runners.worker.sdk_worker_main``: over a second of
imports per worker and per pipeline run, paid again by every Beam component of a pipeline. Here
FnApiRunner keeps its protocol (the same gRPC control, data and logging channels, the same
``SubprocessSDKEnvironment``), only the command it runs per worker differs:

* a *zygote*, started once per driver process (``python -m components.beam_worker_pool``), imports
  Beam's SDK harness and the components' worker code, moves it all out of the garbage
  collector's reach (``gc.freeze``), and waits on a Unix socket;
* the worker command is ``components/beam_worker_launcher.py`` (standard library only, tens of
  milliseconds): it hands the zygote its environment, working folder and stdout/stderr, and
  waits for the worker the zygote forks, exiting with its status;
* the forked worker runs Beam's ``sdk_worker_main.main`` exactly as a fresh one would and
  reports its status; it leaves with ``os._exit`` (the interpreter's teardown of everything it
  holds took a large part of a second, during which the runner waits).

The zygote never starts a thread or a gRPC channel itself (forking those is unsafe): the
preloaded modules are checked to leave it single-threaded apart from the math libraries' own
pools, which handle fork. It ends when the driver does (its stdin is a pipe from the driver).

Used on Linux only (fork is the platform's way there; macOS's system libraries are not
fork-safe). Elsewhere, where the zygote cannot start, or where ``beam.args`` names a
``--direct_running_mode``, Beam's own multi-process mode runs instead.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOCKET_ENV = "CNN_PIPELINE_BEAM_ZYGOTE"  # the zygote's socket, in the driver's (so the launchers') environment
# When set (benchmarks, tests): each forked worker appends "pid user_s system_s" (its own CPU and its
# children's) to this file as it exits. Forked workers are the zygote's children, so the driver's
# RUSAGE_CHILDREN, which counts Beam's cold workers, does not see them.
CPU_LOG_ENV = "CNN_PIPELINE_BEAM_WORKER_CPU_LOG"
LAUNCHER = Path(__file__).with_name("beam_worker_launcher.py")
READY_TIMEOUT_S = 60.0
# imported by the zygote before it forks: Beam's harness and what the components' DoFns use
PRELOAD = ("apache_beam.runners.worker.sdk_worker_main", "numpy", "PIL.Image", "components.example_gen",
           "components.statistics_gen", "components.bulk_inferrer", "components.beam_engine", "data.tfrecord",
           "data.image_folder")

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_zygote: subprocess.Popen | None = None
_socket_path: str | None = None


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(socket, "send_fds")


def worker_command() -> str | None:
    """The shell command for FnApiRunner's ``SubprocessSDKEnvironment``, with this process's
    zygote started (and ready) first; None where forked workers are not available (the caller
    then uses Beam's own multi-process mode)."""
    if not supported():
        return None
    try:
        ensure_zygote()
    except (OSError, RuntimeError) as e:
        _log.warning("Beam workers: could not start the worker zygote (%s); workers start cold", e)
        return None
    return f"{shlex.quote(sys.executable)} -I -S {shlex.quote(str(LAUNCHER))}"


def ensure_zygote() -> str:
    """Starts the zygote unless one of this process is alive; waits until it is ready (its
    preloads imported, its socket listening); returns the socket path, also set in
    ``os.environ[SOCKET_ENV]`` for the launchers."""
    global _zygote, _socket_path
    with _lock:
        if _zygote is not None and _zygote.poll() is None:
            return _socket_path
        folder = tempfile.mkdtemp(prefix="cnn-beam-zygote-")  # mode 0700: only this user can ask for a worker
        path = os.path.join(folder, "zygote.sock")
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
        proc = subprocess.Popen([sys.executable, "-m", "components.beam_worker_pool", path], cwd=root, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
        line = proc.stdout.readline() if ready else b""  # "ready\n" comes in one write, or EOF at a crash
        if line != b"ready\n":
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the zygote did not become ready ({line.decode(errors='replace').strip() or 'no answer'})")
        _zygote, _socket_path = proc, path
        os.environ[SOCKET_ENV] = path
        import atexit

        atexit.register(_stop, proc, folder)
        return path


def stop_zygote() -> None:
    """Ends this process's zygote, if any (the next multiprocess pipeline starts a new one):
    for a cold-start measurement, or after changing the components' code in a long-lived
    process (a notebook), since forked workers run the code the zygote imported."""
    global _zygote, _socket_path
    with _lock:
        if _zygote is not None:
            _stop(_zygote, os.path.dirname(_socket_path))
        _zygote = _socket_path = None
        os.environ.pop(SOCKET_ENV, None)


def _stop(proc: subprocess.Popen, folder: str) -> None:
    import shutil

    try:
        proc.stdin.close()  # the zygote ends at EOF
        proc.wait(5)
    except Exception:  # noqa: BLE001 - at exit: kill it rather than report
        proc.kill()
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the zygote process
def _serve(path: str) -> None:
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    if "tensorflow" in sys.modules:  # its thread pools must not be forked; a change to a preload must not bring it
        raise RuntimeError("a preloaded module imported TensorFlow")
    gc.collect()
    gc.freeze()  # shared with every forked worker, untouched by their collections (copy-on-write stays shared)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C the driver survives must not end the pool
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked workers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([listener, stdin], [], [])
        if stdin in ready and not os.read(stdin, 1024):  # the driver is gone (or stopped us)
            listener.close()
            with contextlib.suppress(OSError):  # its folder too: a driver that ended by os._exit left it
                os.unlink(path)
                os.rmdir(os.path.dirname(path))
            return
        if listener in ready:
            conn, _ = listener.accept()
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError) as e:
                sys.stderr.write(f"beam worker zygote: bad request ({e})\n")
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, stdin)  # not the driver's pipe (its EOF is the zygote's signal to end)
                os.close(devnull)
                _worker(conn, request, fds)  # never returns
            for fd in fds:
                os.close(fd)
            conn.close()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, 8, 2)
    if len(head) != 8 or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ValueError("expected a length and two file descriptors")
    (n,) = struct.unpack("<Q", head)
    body = b""
    while len(body) < n:
        chunk = conn.recv(n - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), fds


def _worker(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the SDK worker the launcher asked for, report its status, exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a DoFn's subprocesses must be waitable
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd, target in zip(fds, (1, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])  # (tune_worker_process has nothing left to do: frozen, os._exit below)
        from apache_beam.runners.worker import sdk_worker_main

        sdk_worker_main.main([])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception, then the status says it
        import traceback

        traceback.print_exc()
    finally:
        try:
            logging.shutdown()
            _log_cpu(os.environ.get(CPU_LOG_ENV))
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            conn.sendall(struct.pack("<i", code))
        finally:
            os._exit(code)


def _log_cpu(path: str | None) -> None:
    if not path:
        return
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    line = f"{os.getpid()} {own.ru_utime + kids.ru_utime:.6f} {own.ru_stime + kids.ru_stime:.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one short O_APPEND write: lines of parallel workers do not mix
    finally:
        os.close(fd)


def forked_workers_cpu(path: str) -> float:
    """The CPU seconds (user + system) the forked workers logged to ``path`` (see CPU_LOG_ENV)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return 0.0
    return sum(float(u) + float(s) for _, u, s in (line.split() for line in text.splitlines() if line.strip()))


if __name__ == "__main__":
    _serve(sys.argv[1])
