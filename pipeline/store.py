"""The artifact store: one folder per component execution, written under a temporary name and
renamed into place when complete, plus a small sqlite index of executions.

    <root>/<component id>/<cache key>/metadata.json
                                      /<output name>/...
    <root>/<component id>/.tmp-<key>-<pid>-<rand>/     (in progress; never read as a result)
    <root>/<component id>/.work/<key>/                 (checkpoints that survive a kill)
    <root>/<component id>/.work/<key>.lock             (held by the one process executing that key)
    <root>/logs/<pipeline run id>/<component id>.log
    <root>/executions.db

A folder named by its cache key exists only if its `os.rename` ran, which is atomic: a run
killed at any moment leaves at most a `.tmp-*` folder that nothing mistakes for a result.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_run TEXT, pipeline TEXT, component TEXT, type TEXT, cache_key TEXT,
    status TEXT, cache_hit INTEGER, started REAL, duration REAL,
    mlflow_run_id TEXT, artifact_dir TEXT, error TEXT
)"""
# A pipeline run's own record: its MLflow parent run must be ended even when the process dies
# after every execution finished (while it closes the run).
_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id TEXT PRIMARY KEY, mlflow_parent_run_id TEXT, owner_pid INTEGER, owner_host TEXT,
    started REAL, status TEXT
)"""
# Added later: who owns a running execution (so the next run can tell live work from dead) and
# the pipeline run's MLflow parent (to end it as KILLED when its process died).
_OWNER_COLUMNS = {"owner_pid": "INTEGER", "owner_host": "TEXT", "mlflow_parent_run_id": "TEXT"}


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._db_path = self.root / "executions.db"
        with self._db() as db:
            db.execute(_SCHEMA)
            db.execute(_RUNS_SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(executions)")}
            for col, kind in _OWNER_COLUMNS.items():
                if col not in have:
                    db.execute(f"ALTER TABLE executions ADD COLUMN {col} {kind}")

    # -- index ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # A busy timeout lets two pipeline processes share the index.
        db = sqlite3.connect(self._db_path, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    def record_start(self, **row: Any) -> int:
        """A new execution row, owned by this process (pid and host recorded)."""
        row = {"owner_pid": os.getpid(), "owner_host": socket.gethostname(), **row}
        cols = ", ".join(row)
        with self._db() as db:
            cur = db.execute(f"INSERT INTO executions ({cols}) VALUES ({', '.join('?' * len(row))})",
                             tuple(row.values()))
            return int(cur.lastrowid)

    def record_update(self, row_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE executions SET {sets} WHERE id = ?", (*fields.values(), row_id))

    def executions(self, limit: int = 50, pipeline_run: str | None = None) -> list[dict]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            if pipeline_run:
                rows = db.execute("SELECT * FROM executions WHERE pipeline_run = ? ORDER BY id",
                                  (pipeline_run,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM executions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def record_pipeline_run(self, run_id: str, mlflow_parent_run_id: str | None, status: str = "running") -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO pipeline_runs VALUES (?, ?, ?, ?, ?, ?)",
                       (run_id, mlflow_parent_run_id, os.getpid(), socket.gethostname(), time.time(), status))

    def finish_pipeline_run(self, run_id: str, status: str) -> None:
        with self._db() as db:
            db.execute("UPDATE pipeline_runs SET status = ? WHERE run_id = ?", (status, run_id))

    def reap_dead_owners(self) -> list[dict]:
        """Mark ``killed`` every execution still ``running`` whose owning process is gone (same
        host, pid not alive or reused by a younger process). Returns the rows it marked, so the
        caller can end their MLflow runs. Executions owned by another host are left alone."""
        host = socket.gethostname()
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM executions WHERE status = 'running'")]
        dead = [r for r in rows if r.get("owner_host") in (host, None)
                and not owner_alive(r.get("owner_pid"), r.get("started") or 0.0)]
        for r in dead:
            self.record_update(r["id"], status="killed",
                               error=f"its process ({r.get('owner_pid') or 'unknown'} on {host}) ended before it did")
        with self._db() as db:
            db.row_factory = sqlite3.Row
            runs = [dict(r) for r in db.execute("SELECT * FROM pipeline_runs WHERE status = 'running'")]
            gone = [r for r in runs if r["owner_host"] == host and not owner_alive(r["owner_pid"], r["started"])]
            for r in gone:
                db.execute("UPDATE pipeline_runs SET status = 'killed' WHERE run_id = ?", (r["run_id"],))
        # a run that died while closing (all its executions recorded) still has its parent run to end
        return dead + [{"component": f"pipeline run {r['run_id']}", "mlflow_parent_run_id": r["mlflow_parent_run_id"]}
                       for r in gone]

    # -- artifacts -----------------------------------------------------------------------
    def final_dir(self, component_id: str, key: str) -> Path:
        return self.root / component_id / key

    def work_dir(self, component_id: str, key: str) -> Path:
        d = self.root / component_id / ".work" / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def key_lock(self, component_id: str, key: str) -> "KeyLock":
        return KeyLock(self.root / component_id / ".work" / f"{key}.lock")

    def log_path(self, pipeline_run: str, component_id: str) -> Path:
        d = self.root / "logs" / pipeline_run
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{component_id}.log"

    def lookup(self, component_id: str, key: str) -> dict | None:
        meta = self.final_dir(component_id, key) / "metadata.json"
        if not meta.exists():
            return None
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        return m if m.get("status") == "complete" else None

    def begin(self, component_id: str, key: str, outputs: tuple[str, ...]) -> Path:
        tmp = self.root / component_id / f".tmp-{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        for o in outputs:
            (tmp / o).mkdir()
        return tmp

    def commit(self, tmp: Path, component_id: str, key: str, metadata: dict) -> Path:
        """Write metadata and rename into place. If another process finished the same key first,
        keep theirs (same inputs, same code) and drop ours."""
        metadata = {**metadata, "status": "complete", "finished": time.time()}
        meta_tmp = tmp / "metadata.json.tmp"
        meta_tmp.write_text(json.dumps(metadata, indent=2, default=str))
        with open(meta_tmp, "rb") as f:
            os.fsync(f.fileno())
        meta_tmp.replace(tmp / "metadata.json")
        final = self.final_dir(component_id, key)
        try:
            os.rename(tmp, final)
        except OSError:
            if self.lookup(component_id, key):
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # a stale, incomplete folder with our name: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
        return final

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def clean_stale(self, max_age_s: float = 3600 * 24) -> int:
        """Remove `.tmp-*` folders left by killed runs (only old ones: another process may be
        writing a fresh one right now)."""
        n = 0
        now = time.time()
        for d in self.root.glob("*/.tmp-*"):
            pid = d.name.split("-")[2] if d.name.count("-") >= 3 else ""
            alive = pid.isdigit() and _pid_alive(int(pid))
            if not alive or now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n


class KeyLock:
    """One executing process per (component, cache key) among the runs sharing the root: two
    identical runs would otherwise share the work folder (checkpoints, Keras' backup
    folder, which Keras deletes when its training ends). An ``flock``: the kernel releases it
    when its holder dies, so a killed run never leaves it taken."""

    def __init__(self, path: Path):
        self.path, self._fd = Path(path), None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if self._still_at_path(fd):
                break
            # the holder we waited behind removed this file on release (and another run may lock
            # a new one there): a lock on the removed file excludes nobody, so try the path again
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return True

    def _still_at_path(self, fd: int) -> bool:
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def holder(self) -> str:
        """'pid host' of the process holding it (for messages), or ''."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Removes the lock file (while still holding it, so that no one takes it meanwhile:
        anyone who opened it before sees it gone and starts again), then drops the lock. A holder
        killed before this leaves the file, which the next holder removes."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._still_at_path(fd):
                    self.path.unlink()
            except OSError:
                pass  # left for the next holder
            finally:
                os.close(fd)  # closing the descriptor drops the flock


def owner_alive(pid: int | None, started: float) -> bool:
    """Whether process ``pid`` is alive and is the one that started at ``started`` (a pid reused
    by a process that started later is not the owner)."""
    if not pid or not _pid_alive(int(pid)):
        return False
    begun = _process_start_time(int(pid))
    return begun is None or begun <= started + 5.0


def _process_start_time(pid: int) -> float | None:
    """Epoch seconds when ``pid`` started (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
