"""Face identity folders: ``root/<identity>/<image>`` (AT&T ``s1..s40/1..10.pgm``, LFW
``Name/Name_0001.jpg``, the synthetic generator's output).

Follows the record contract of :mod:`data.records`: :func:`list_refs` enumerates picklable
refs, :func:`load` reads one (grey, RGBA, 16-bit converted to RGB uint8 by
``read_image_file``), raising ``BadRecord``.

Labels: identities are sorted in natural order (s2 before s10) and numbered from 0 over
*all* identities found under ``root``, so an identity keeps the same integer label whatever
split it lands in. ``identity`` (``Ref.label_name``) is the folder name.

Splitting is by identity, never by image, so held-out people never appear in training:
either explicit lists (``{"train": ["s1-s30"], "test": ["s31-s40"]}``; ``s1-s30`` is a range
when no folder has that literal name) or a deterministic hash of the identity name
(:func:`hash_split`), stable across machines and Python runs (no ``hash()`` salting).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from data.records import BadRecord, ImageRecord, Ref, read_image_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")
_RANGE = re.compile(r"^([A-Za-z_]*)(\d+)-\1(\d+)$")


def natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_identities(root) -> list[str]:
    """Sub-folders of ``root`` that contain at least one image file, in natural order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"identity folder root not found: {root}")
    out = []
    for entry in os.scandir(root):
        if entry.is_dir() and not entry.name.startswith("."):
            if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(entry.path)):
                out.append(entry.name)
    return sorted(out, key=natural_key)


def expand_identities(spec, available) -> list[str]:
    """Expand names and ranges (``"s1-s30"`` -> s1..s30) against the available identities.
    A literal folder name wins over a range reading. Unknown names raise ``ValueError``."""
    available_set = set(available)
    out: list[str] = []
    for item in ([spec] if isinstance(spec, str) else spec):
        item = str(item)
        if item in available_set:
            out.append(item)
            continue
        m = _RANGE.match(item)
        if not m:
            raise ValueError(f"unknown identity {item!r} (not a folder under the root)")
        prefix, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
        # zero-padded ranges (id_000-id_029) keep their width
        width = len(m.group(2)) if len(m.group(2)) > 1 and m.group(2).startswith("0") else 0
        names = [f"{prefix}{k:0{width}d}" if width else f"{prefix}{k}" for k in range(lo, hi + 1)]
        missing = [n for n in names if n not in available_set]
        if missing:
            raise ValueError(f"identity range {item!r}: no folder for {missing[:5]}")
        out.extend(names)
    return out


def hash_split(identities, fractions=None, salt: str = "") -> dict[str, str]:
    """Deterministic identity -> split assignment from sha1(salt + name).

    ``fractions`` maps split names to fractions summing to 1 (default 80% train / 20% test).
    """
    fractions = fractions or {"train": 0.8, "test": 0.2}
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total}")
    bounds, acc = [], 0.0
    for name, frac in fractions.items():
        acc += frac
        bounds.append((acc, name))
    out = {}
    for ident in identities:
        h = int.from_bytes(hashlib.sha1(f"{salt}{ident}".encode()).digest()[:8], "big") / 2 ** 64
        out[ident] = next((name for b, name in bounds if h < b), bounds[-1][1])
    return out


def split_identities(identities, splits=None, fractions=None, salt: str = "") -> dict[str, str]:
    """identity -> split name, from explicit ``splits`` ({split: [names/ranges]}) or by hash.
    With explicit splits an identity listed twice is an error; unlisted ones are left out."""
    identities = list(identities)
    if splits is None:
        return hash_split(identities, fractions, salt)
    out: dict[str, str] = {}
    for split, spec in splits.items():
        for ident in expand_identities(spec, identities):
            if ident in out and out[ident] != split:
                raise ValueError(f"identity {ident!r} is in both {out[ident]!r} and {split!r}")
            out[ident] = split
    return out


def list_refs(root, splits=None, fractions=None, salt: str = "", identities=None,
              extensions=IMAGE_EXTENSIONS) -> list[Ref]:
    """Refs for every image under ``root/<identity>/``.

    ``identities``: restrict to these names/ranges. ``splits`` / ``fractions`` / ``salt``:
    set ``Ref.split`` by identity (see :func:`split_identities`); with neither, no split is
    set. Identities left out of explicit ``splits`` are not listed.
    """
    root = Path(root)
    all_ids = list_identities(root)
    label_of = {name: k for k, name in enumerate(all_ids)}
    chosen = expand_identities(identities, all_ids) if identities is not None else all_ids
    split_of = (split_identities(chosen, splits, fractions, salt)
                if (splits is not None or fractions is not None) else None)
    exts = tuple(e.lower() for e in extensions)
    refs = []
    for ident in chosen:
        if split_of is not None and ident not in split_of:
            continue
        files = sorted((f for f in os.listdir(root / ident) if f.lower().endswith(exts)),
                       key=natural_key)
        for f in files:
            refs.append(Ref(key=f"{ident}/{f}", source=str(root / ident / f), label=label_of[ident],
                            label_name=ident, split=split_of[ident] if split_of else None))
    return refs


def load(ref: Ref) -> ImageRecord:
    """Read one image as (H, W, 3) uint8 with its identity; ``BadRecord`` if unreadable."""
    if ref.label_name is None:
        raise BadRecord(ref.key, "ref has no identity")
    image = read_image_file(ref.source, ref.key)
    return ImageRecord(key=ref.key, image=image, label=ref.label, label_name=ref.label_name,
                       split=ref.split, identity=ref.label_name, meta={"source": ref.source})
