"""The store's per-cache-key lock: one process executes a (component, cache key) at a time, and
a killed holder never leaves it taken (the kernel drops an flock with its process)."""
from __future__ import annotations

import subprocess
import sys
import time

from pipeline.store import ArtifactStore
from tests.conftest import PROJECT_ROOT

HOLD = """
import sys, time
from pipeline.store import ArtifactStore
lock = ArtifactStore(sys.argv[1]).key_lock("train", "k1")
assert lock.try_acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_second_holder_is_refused_until_the_first_is_killed(tmp_path):
    store = ArtifactStore(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = store.key_lock("train", "k1")
        assert mine.try_acquire() is False
        assert mine.holder().split()[0] == str(holder.pid)  # named in the waiting message
        assert store.key_lock("train", "k2").try_acquire() is True  # another key is independent
        holder.kill()
        holder.wait()
        deadline = time.time() + 10
        while not mine.try_acquire():
            assert time.time() < deadline, "a SIGKILLed holder left the lock taken"
            time.sleep(0.1)
        assert store.key_lock("train", "k1").try_acquire() is False  # now we hold it
        mine.release()
        assert store.key_lock("train", "k1").try_acquire() is True
    finally:
        holder.kill()
        holder.wait()


def test_release_removes_the_file_and_a_waiter_on_the_removed_file_does_not_hold_it(tmp_path, monkeypatch):
    """No empty lock file is left per cache key. The race this opens: a waiter that opened the
    file before the holder removed it gets a lock on a file no one else sees, while a newcomer
    locks a new file at the path; the waiter must see that and compete for the new one."""
    import fcntl

    from pipeline import store as store_module

    store = ArtifactStore(tmp_path)
    first = store.key_lock("train", "k1")
    assert first.try_acquire()
    first.release()
    assert not first.path.exists()

    holder, newcomer, waiter = (store.key_lock("train", "k1") for _ in range(3))
    assert holder.try_acquire()
    real_flock, calls = fcntl.flock, []

    def interleaved(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # the waiter has opened the old file: the holder leaves, a newcomer comes
            holder.release()
            assert newcomer.try_acquire()
        return real_flock(fd, op)

    monkeypatch.setattr(store_module.fcntl, "flock", interleaved)
    assert waiter.try_acquire() is False  # it locked the removed file, saw it, and found the new one taken
    monkeypatch.setattr(store_module.fcntl, "flock", real_flock)
    newcomer.release()
    assert waiter.try_acquire() is True
    waiter.release()
    assert not waiter.path.exists()
