"""The command Beam's FnApiRunner runs for each SDK worker under ``beam.runner: multiprocess``
(see components/beam_worker_pool.py). Run as ``python -I -S <this file>``: it imports nothing
but the standard library, so it starts in a few tens of milliseconds, where a fresh SDK worker
spends over a second importing apache_beam.

It hands its environment (the runner's control and logging addresses, the pipeline options),
its working folder and its stdout/stderr to the pool's zygote over a Unix socket, and waits for
the worker the zygote forks, exiting with that worker's status. Where no zygote answers it
becomes Beam's own worker (``exec python -m apache_beam.runners.worker.sdk_worker_main``), so a
worker always starts.
"""
import json
import os
import socket
import struct
import sys

SOCKET_ENV = "CNN_PIPELINE_BEAM_ZYGOTE"  # = beam_worker_pool.SOCKET_ENV (this file imports no package)
SDK_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"


def _cold_worker() -> None:
    os.execv(sys.executable, [sys.executable, "-m", SDK_WORKER_MAIN])


def main() -> int:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        _cold_worker()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(sock, [struct.pack("<Q", len(body))], [sys.stdout.fileno(), sys.stderr.fileno()])
        sock.sendall(body)
    except OSError:  # no zygote (it exited, or never started): a worker started the usual way
        sock.close()
        _cold_worker()
    status = b""
    while len(status) < 4:
        chunk = sock.recv(4 - len(status))
        if not chunk:  # the worker died without reporting (killed, or crashed in C)
            sys.stderr.write("beam worker launcher: the forked SDK worker ended without an exit status\n")
            return 1
        status += chunk
    return struct.unpack("<i", status)[0]


if __name__ == "__main__":
    sys.exit(main())
