"""A sqlite face-enrolment database (the course's ``database`` dict, made durable).

Every embedding row records the model version that produced it. Embeddings from two
model versions live in different spaces and their distances mean nothing, so the database
refuses to mix them: enrolling or querying with another version raises ``ValueError``
naming both (re-enrol everyone with the new model, e.g. into a new file, instead).

    db = FaceDB("faces.sqlite")
    db.enroll("younes", img_to_encoding("younes.jpg", model), model_version="facenet:3")
    name, dist = db.nearest(encoding)
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,          -- float32 little-endian
    enrolled_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS embeddings_name ON embeddings(name);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class FaceDB:
    """Enrolled identities and their embeddings in one sqlite file (``":memory:"`` works)."""

    def __init__(self, path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path)
        self._conn.executescript(_SCHEMA)
        self._conn.commit()

    # -- context manager / lifecycle
    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- versions
    @property
    def model_version(self) -> str | None:
        """The one model version of the stored embeddings (None when empty)."""
        row = self._conn.execute("SELECT DISTINCT model_version FROM embeddings").fetchall()
        return row[0][0] if row else None

    @property
    def dim(self) -> int | None:
        row = self._conn.execute("SELECT dim FROM embeddings LIMIT 1").fetchone()
        return row[0] if row else None

    def _check_version(self, model_version: str | None, action: str):
        stored = self.model_version
        if model_version is not None and stored is not None and str(model_version) != stored:
            raise ValueError(
                f"cannot {action} with embeddings of model version {model_version!r}: "
                f"{self.path} holds embeddings of model version {stored!r}; distances between "
                "versions are meaningless. Re-enrol every identity with the new model "
                "(a new database file) instead.")

    # -- metadata (which model to use when a command is given none, its threshold, ...)
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    # -- writes
    def enroll(self, name: str, embeddings, model_version: str) -> int:
        """Add one (D,) or several (N, D) embeddings for ``name``; returns how many."""
        if not name:
            raise ValueError("identity name must be a non-empty string")
        if model_version is None or str(model_version) == "":
            raise ValueError("model_version is required (which model made these embeddings)")
        emb = np.asarray(embeddings, dtype=np.float32)
        emb = emb.reshape(1, -1) if emb.ndim == 1 else emb
        if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
            raise ValueError(f"embeddings must be (D,) or (N, D), got shape {np.shape(embeddings)}")
        if not np.all(np.isfinite(emb)):
            raise ValueError(f"embeddings for {name!r} contain NaN or inf")
        self._check_version(model_version, f"enroll {name!r}")
        if self.dim is not None and emb.shape[1] != self.dim:
            raise ValueError(f"embedding dimension {emb.shape[1]} != the database's {self.dim}")
        now = time.time()
        with self._conn:  # one transaction: all rows or none
            self._conn.executemany(
                "INSERT INTO embeddings (name, model_version, dim, vector, enrolled_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(name, str(model_version), emb.shape[1], row.astype("<f4").tobytes(), now)
                 for row in emb])
        return int(emb.shape[0])

    def remove(self, name: str) -> int:
        with self._conn:
            return self._conn.execute("DELETE FROM embeddings WHERE name = ?", (name,)).rowcount

    # -- reads
    def identities(self) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT DISTINCT name FROM embeddings ORDER BY name")]

    def embeddings_for(self, name: str) -> np.ndarray:
        """(N, D) float32 embeddings of ``name`` (N = 0 when not enrolled)."""
        rows = self._conn.execute(
            "SELECT vector FROM embeddings WHERE name = ? ORDER BY id", (name,)).fetchall()
        if not rows:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.stack([np.frombuffer(r[0], dtype="<f4") for r in rows])

    def _all(self):
        rows = self._conn.execute("SELECT name, vector FROM embeddings ORDER BY id").fetchall()
        names = [r[0] for r in rows]
        vecs = (np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]) if rows
                else np.zeros((0, 0), np.float32))
        return names, vecs

    def nearest(self, embedding, model_version: str | None = None):
        """``(name, L2 distance)`` of the closest enrolled embedding; ``(None, inf)`` when the
        database is empty. ``model_version``, when given, must match the stored one."""
        self._check_version(model_version, "query")
        names, vecs = self._all()
        if not names:
            return None, float("inf")
        q = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if q.shape[0] != vecs.shape[1]:
            raise ValueError(f"query dimension {q.shape[0]} != the database's {vecs.shape[1]}")
        d = np.linalg.norm(vecs - q, axis=1)
        k = int(np.argmin(d))
        return names[k], float(d[k])

    def as_dict(self) -> dict[str, np.ndarray]:
        """The course's ``database``: name -> (N, D) embeddings (``verify``/``who_is_it`` use
        the closest of a person's embeddings)."""
        return {n: self.embeddings_for(n) for n in self.identities()}

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
