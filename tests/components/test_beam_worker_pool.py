"""Beam SDK workers forked from a warm zygote under ``beam.runner: multiprocess``
(components/beam_worker_pool.py): the workers are the zygote's children and really share the
work (their CPU logged and above the run's wall time), a DoFn's error still fails the run and
the zygote serves the next one, a launcher that finds no zygote starts Beam's own cold worker,
Beam's own mode runs where the fork is off, and the zygote ends with the process that started
it. (Same content on every engine: test_beam_runners.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from components import beam_worker_pool
from components.beam_engine import open_pipeline, write_atomic

pytestmark = pytest.mark.skipif(not beam_worker_pool.supported(), reason="forked workers are Linux-only")

SETTINGS = {"runner": "multiprocess", "workers": 2, "address": None, "args": []}


def _worker_parents(settings, tmp_path, n=16, fail_at=None) -> dict[int, int]:
    """Runs a CPU-bound Map on the engine; {worker pid: its parent pid}, from a file per element."""
    import pathlib

    import apache_beam as beam_sdk

    class Record(beam_sdk.DoFn):
        def __init__(self, folder, fail_at):
            self.folder, self.fail_at = folder, fail_at

        def process(self, i):
            if i == self.fail_at:
                raise ValueError(f"element {i} is bad")
            sum(j * j for j in range(1_000_000))  # long enough that both workers get a share
            folder = pathlib.Path(self.folder)
            write_atomic(folder / f"{i}.pid", lambda f: f.write(f"{os.getpid()} {os.getppid()}".encode()),
                         folder / "tmp")
            yield i

    out = tmp_path / f"pids{time.monotonic_ns()}"
    out.mkdir()
    with open_pipeline(settings, who="test") as p:
        p | beam_sdk.Create(list(range(n))) | beam_sdk.ParDo(Record(str(out), fail_at))
    seen = [f.read_text().split() for f in out.glob("*.pid")]
    assert len(seen) == n
    return {int(pid): int(ppid) for pid, ppid in seen}


def test_workers_are_forked_from_the_zygote_and_share_the_work(tmp_path, monkeypatch):
    log = tmp_path / "cpu.log"
    monkeypatch.setenv(beam_worker_pool.CPU_LOG_ENV, str(log))
    parents = _worker_parents(SETTINGS, tmp_path)
    zygote = beam_worker_pool._zygote.pid
    assert len(parents) == 2 and os.getpid() not in parents, parents
    assert set(parents.values()) == {zygote}, (parents, zygote)
    # one line per worker, written as it exited; each did a real share of the ~1.2 s of CPU work
    # (the benchmark, not this test, shows CPU above wall time: a loaded test machine would not)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(pid) for pid, _, _ in lines) == sorted(parents)
    assert all(float(user) + float(system) > 0.2 for _, user, system in lines), lines
    assert beam_worker_pool.forked_workers_cpu(str(log)) == pytest.approx(
        sum(float(u) + float(s) for _, u, s in lines))


def test_a_failing_dofn_fails_the_run_and_the_zygote_serves_the_next(tmp_path):
    with pytest.raises(Exception, match="element 3 is bad"):
        _worker_parents(SETTINGS, tmp_path, fail_at=3)
    zygote = beam_worker_pool.ensure_zygote() and beam_worker_pool._zygote.pid
    parents = _worker_parents(SETTINGS, tmp_path)
    assert set(parents.values()) == {zygote}


def test_a_launcher_without_a_zygote_starts_a_cold_worker(tmp_path, monkeypatch):
    beam_worker_pool.ensure_zygote()
    monkeypatch.setenv(beam_worker_pool.SOCKET_ENV, str(tmp_path / "no-such.sock"))
    parents = _worker_parents(SETTINGS, tmp_path)
    assert len(parents) == 2 and beam_worker_pool._zygote.pid not in parents.values(), parents


def test_beam_s_own_mode_where_forking_is_off_or_a_running_mode_is_given(tmp_path, monkeypatch):
    zygote = beam_worker_pool.ensure_zygote() and beam_worker_pool._zygote.pid
    own = {**SETTINGS, "args": ["--direct_running_mode=multi_processing"]}
    parents = _worker_parents(own, tmp_path)
    assert len(parents) == 2 and zygote not in parents.values()
    monkeypatch.setattr(beam_worker_pool, "supported", lambda: False)
    parents = _worker_parents(SETTINGS, tmp_path)
    assert len(parents) == 2 and zygote not in parents.values()


def test_the_zygote_ends_with_its_process_and_on_stop(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(beam_worker_pool.LAUNCHER.parents[1])!r})
        from components import beam_worker_pool
        beam_worker_pool.ensure_zygote()
        print(beam_worker_pool._zygote.pid, beam_worker_pool._socket_path, flush=True)
        import os
        os._exit(0)  # no atexit hook: the zygote must notice on its own
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    pid, sock = out.stdout.split()
    deadline = time.monotonic() + 10
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid)), "the zygote outlived the process that started it"
    assert not os.path.exists(os.path.dirname(sock)), "the zygote left its socket folder"

    beam_worker_pool.ensure_zygote()
    mine = beam_worker_pool._zygote
    beam_worker_pool.stop_zygote()
    assert mine.poll() is not None and beam_worker_pool.SOCKET_ENV not in os.environ


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_malformed_request_to_the_zygote_is_refused_and_the_next_worker_still_forks(tmp_path):
    import socket

    path = beam_worker_pool.ensure_zygote()
    zygote = beam_worker_pool._zygote.pid
    for junk in (b"", b"not a length and no file descriptors"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            try:  # closed without a worker: no exit status comes back (a reset, where junk was left unread)
                answer = s.recv(4)
            except ConnectionResetError:
                answer = b""
            assert answer == b""
    assert beam_worker_pool._zygote.poll() is None
    assert set(_worker_parents(SETTINGS, tmp_path).values()) == {zygote}
