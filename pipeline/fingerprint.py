"""Cache keys.

key = sha256(component type, params, input artifact fingerprints, external file stats,
             code fingerprint)

The code fingerprint hashes the source of the component's module and, transitively, every
project module it imports (statically, by parsing the source: nothing is imported), plus the
modules its spec names for these params (the model the Trainer builds through the registry).
Editing `models/signs_cnn.py` changes the Trainer's key; editing `models/yolo/` does not.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

PROJECT_PACKAGES = ("components", "models", "data")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PROJECT_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _module_file(name: str) -> Path | None:
    """The source file of a project module, found by path: `importlib.util.find_spec` would
    import parent packages (and `from models.x import f` makes `models.x.f` look like one)."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = PROJECT_ROOT.joinpath(*parts)
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from pkg import sub` may import a submodule
            found.update(f"{mod}.{a.name}" for a in node.names)
    out = set()
    for m in found:
        parts = m.split(".")
        # importing a.b.c also runs a/__init__.py and a/b/__init__.py
        for i in range(1, len(parts) + 1):
            out.add(".".join(parts[:i]))
    return out


def module_closure(roots: Iterable[str]) -> dict[str, Path]:
    seen: dict[str, Path] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        stack.extend(_imports_of(name, path) - seen.keys())
    return seen


def code_fingerprint(roots: Iterable[str]) -> tuple[str, list[str]]:
    mods = module_closure(roots)
    h = hashlib.sha256()
    for name in sorted(mods):
        h.update(name.encode() + b"\0" + mods[name].read_bytes() + b"\0")
    return h.hexdigest(), sorted(mods)


def _files_under(root: str) -> list[tuple[tuple[str, ...], str]]:
    """(path parts below root, path) of every file under root, in ``sorted(Path(root).rglob("*"))``
    order, symlinked files included and symlinked folders not entered, as rglob does. By
    ``os.scandir``: a folder entry says whether it is a file without a stat call per file (pathlib
    made three per file: 0.3 s for 20,000 images, on the critical path of every run)."""
    out: list[tuple[tuple[str, ...], str]] = []
    stack: list[tuple[tuple[str, ...], str]] = [((), root)]
    while stack:
        parts, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_file():
                    out.append(((*parts, e.name), e.path))
                elif e.is_dir(follow_symlinks=False):
                    stack.append(((*parts, e.name), e.path))
            except OSError:
                continue
    out.sort(key=lambda item: item[0])  # Path sorts by parts, not by the joined string
    return out


def external_fingerprint(paths: Iterable[str]) -> str:
    """Cheap fingerprint of raw data: path, size and mtime of every file under the paths
    (hashing gigabytes of images on every run would cost more than most components)."""
    h = hashlib.sha256()
    for p in sorted(set(paths)):
        root = Path(p)
        if root.is_file():
            files = [str(root)]
        elif root.is_dir():
            files = [f for _, f in _files_under(str(root))]
        else:
            h.update(f"missing:{p}".encode())
            continue
        for f in files:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def artifact_fingerprint(path: Path) -> str:
    """Content fingerprint of an artifact folder given by hand (not produced by this store)."""
    path = Path(path)
    meta = path.parent / "metadata.json"
    if meta.exists():
        try:
            m = json.loads(meta.read_text())
            fp = m.get("output_fingerprints", {}).get(path.name)
            if fp:
                return fp
        except (OSError, ValueError):
            pass
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def output_fingerprint(cache_key: str, output: str) -> str:
    """Fingerprint of an output of an execution: derived from the producer's key, so whenever a
    producer re-executes, everything downstream re-executes too (a Merkle chain)."""
    return _sha(f"{cache_key}/{output}".encode())


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def cache_key(type_name: str, params: dict, inputs: dict[str, str], code: str, external: str | None,
              resolved: dict | None = None) -> str:
    parts = {"type": type_name, "params": params, "inputs": inputs, "code": code, "external": external}
    if resolved is not None:  # state resolved outside the DAG (the Evaluator's baseline version)
        parts["resolved"] = resolved
    return _sha(canonical(parts).encode())


def env_fingerprint() -> str:
    return os.environ.get("PIPELINE_CACHE_SALT", "")
