"""Synthetic face identities: the face branch's offline default dataset.

Each identity is a procedural cartoon face with its own fixed traits (background, skin and
hair colour, hair style, face shape, eye spacing/height/size/colour, brows, nose, mouth,
glasses); every image of it adds per-image jitter (shift, scale, in-plane rotation,
brightness, expression, sensor noise). Images are written as PNGs into identity folders
``root/id_000/000.png``, so :mod:`data.identity_folders` reads them like any face dataset.

Deterministic: identity k's traits come from ``(seed, k)`` and image m's jitter from
``(seed, k, m)``, so adding identities or images never changes existing ones. Fast: drawn
with PIL at 2x and box-downsampled (anti-aliasing), ~1-2 ms per 64x64 image.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from data import identity_folders

MANIFEST = "synthetic_faces.json"


def _traits(rng: np.random.Generator) -> dict:
    u = rng.uniform
    skin = np.array([u(120, 250), u(80, 200), u(60, 170)])
    return {
        "bg": rng.integers(0, 256, 3).tolist(),
        "skin": skin.tolist(),
        "hair": rng.integers(0, 200, 3).tolist(),
        "hair_style": int(rng.integers(0, 4)),  # 0 bald, 1 cap, 2 fringe, 3 long
        "face_w": u(0.50, 0.72), "face_h": u(0.70, 0.92),
        "eye_dx": u(0.14, 0.26), "eye_y": u(-0.16, 0.0), "eye_r": u(0.035, 0.075),
        "iris": rng.integers(0, 160, 3).tolist(),
        "brow": u(0.0, 1.0), "brow_tilt": u(-0.05, 0.05),
        "nose_len": u(0.06, 0.2), "nose_w": u(0.03, 0.09),
        "mouth_y": u(0.18, 0.32), "mouth_w": u(0.12, 0.30), "mouth_curve": u(-0.06, 0.08),
        "lip": [float(skin[0] * 0.7), float(skin[1] * 0.35), float(skin[2] * 0.35)],
        "glasses": bool(u() < 0.25),
    }


def render_face(traits: dict, size: int, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
    """One (size, size, 3) uint8 image of the face ``traits`` with random per-image jitter
    (``jitter`` scales it; 0 gives the canonical view)."""
    from PIL import Image, ImageDraw

    S = 2 * size  # draw at 2x, then downsample for smooth edges
    j = jitter
    scale = S * 0.5 * (1.0 + j * rng.uniform(-0.1, 0.1))
    cx = S / 2 + j * rng.uniform(-0.08, 0.08) * S
    cy = S / 2 + j * rng.uniform(-0.08, 0.08) * S
    t = traits

    def P(x, y):  # face coordinates (unit ~ half the image) -> pixels
        return cx + x * scale, cy + y * scale

    def box(x, y, rx, ry):
        (x0, y0), (x1, y1) = P(x - rx, y - ry), P(x + rx, y + ry)
        return [x0, y0, x1, y1]

    col = lambda c: tuple(int(np.clip(v, 0, 255)) for v in c)  # noqa: E731
    # the background drifts per image so that it alone does not give the identity away
    bg = col(np.array(t["bg"]) + j * rng.uniform(-40, 40, 3))
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    fw, fh = t["face_w"], t["face_h"]
    if t["hair_style"] == 3:  # long hair behind the face
        d.ellipse(box(0, 0.1, fw + 0.12, fh + 0.1), fill=col(t["hair"]))
    d.ellipse(box(0, 0, fw, fh), fill=col(t["skin"]))
    if t["hair_style"] in (1, 3):
        d.chord(box(0, -0.02, fw + 0.02, fh + 0.02), 180, 360, fill=col(t["hair"]))
        d.ellipse(box(0, -0.02, fw * 0.9, fh * 0.55), fill=col(t["skin"]))
    elif t["hair_style"] == 2:
        d.chord(box(0, -fh * 0.55, fw * 0.95, fh * 0.5), 180, 360, fill=col(t["hair"]))
    # eyes (blink/gaze vary per image)
    ey, er = t["eye_y"], t["eye_r"]
    gaze = j * rng.uniform(-0.3, 0.3) * er
    open_ = 1.0 - j * rng.uniform(0, 0.3)
    for sx in (-1, 1):
        ex = sx * t["eye_dx"]
        d.ellipse(box(ex, ey, er * 1.5, er * open_), fill=(245, 245, 245))
        d.ellipse(box(ex + gaze, ey, er * 0.7, er * 0.7 * open_), fill=col(t["iris"]))
        if t["brow"] > 0.3:  # brows
            by = ey - er * 2.0
            w = int(max(1, S * 0.012 * (1 + 2 * t["brow"])))
            d.line([P(ex - er * 1.6, by + sx * t["brow_tilt"]), P(ex + er * 1.6, by - sx * t["brow_tilt"])],
                   fill=col(t["hair"]), width=w)
        if t["glasses"]:
            d.ellipse(box(ex, ey, er * 2.2, er * 2.0), outline=(20, 20, 20), width=max(1, S // 64))
    # nose
    nl, nw = t["nose_len"], t["nose_w"]
    shade = col(np.array(t["skin"]) * 0.75)
    d.polygon([P(0, ey + 0.04), P(-nw, ey + 0.04 + nl), P(nw, ey + 0.04 + nl)], fill=shade)
    # mouth (expression varies per image)
    my, mw = t["mouth_y"], t["mouth_w"]
    curve = t["mouth_curve"] + j * rng.uniform(-0.03, 0.03)
    pts = [P(x, my + curve * (1 - (x / mw) ** 2)) for x in np.linspace(-mw, mw, 9)]
    d.line(pts, fill=col(t["lip"]), width=max(1, S // 40))
    angle = j * rng.uniform(-10, 10)
    img = img.rotate(angle, resample=Image.BILINEAR, center=(cx, cy), fillcolor=bg)
    img = img.resize((size, size), Image.BOX)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * (1.0 + j * rng.uniform(-0.2, 0.2)) + j * rng.normal(0, 4.0, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def identity_name(k: int) -> str:
    return f"id_{k:03d}"


def generate(root, num_identities: int = 20, images_per_identity: int = 10, size: int = 64,
             seed: int = 0, jitter: float = 1.0) -> Path:
    """Write ``num_identities`` x ``images_per_identity`` PNGs under ``root``; returns root.

    Idempotent: when ``root`` already holds a manifest with the same parameters, nothing is
    redrawn. Existing different content under ``root`` is not deleted (only overwritten).
    """
    from PIL import Image

    root = Path(root)
    params = {"num_identities": int(num_identities), "images_per_identity": int(images_per_identity),
              "size": int(size), "seed": int(seed), "jitter": float(jitter), "version": 1}
    if num_identities < 1 or images_per_identity < 1 or size < 16:
        raise ValueError(f"need num_identities >= 1, images_per_identity >= 1, size >= 16: {params}")
    manifest = root / MANIFEST
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()) == params:
                return root
        except ValueError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    for k in range(num_identities):
        traits = _traits(np.random.default_rng([seed, k]))
        folder = root / identity_name(k)
        folder.mkdir(exist_ok=True)
        for m in range(images_per_identity):
            arr = render_face(traits, size, np.random.default_rng([seed, k, m]), jitter)
            # temporary name + rename: a concurrent reader never sees half a file
            tmp_png = folder / f".{m:03d}.{os.getpid()}.png"
            Image.fromarray(arr).save(tmp_png, compress_level=1)
            tmp_png.replace(folder / f"{m:03d}.png")
    tmp = manifest.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(params))
    tmp.replace(manifest)  # written last: a killed generation is redone next time
    return root


def default_root(num_identities: int = 20, images_per_identity: int = 10, size: int = 64,
                 seed: int = 0, jitter: float = 1.0, **_ignored) -> Path:
    """Where the ExampleGen generates when no ``path`` is given: a cache folder keyed by the
    generation parameters (``$XDG_CACHE_HOME`` or ``~/.cache``, else the temp folder). The
    images are a pure function of these parameters, so they are not "raw data" whose change
    should invalidate the pipeline cache."""
    key = json.dumps([num_identities, images_per_identity, size, seed, float(jitter), 1])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    try:
        Path(base).mkdir(parents=True, exist_ok=True)
        if not os.access(base, os.W_OK):
            raise OSError
    except OSError:
        base = tempfile.gettempdir()
    return Path(base) / "cnn-pipeline" / "synthetic_faces" / digest


def list_refs(root=None, num_identities: int = 20, images_per_identity: int = 10, size: int = 64,
              seed: int = 0, jitter: float = 1.0, splits=None, fractions=None, salt: str = "",
              identities=None):
    """Generate (if needed) and list the synthetic identities; ``splits``, ``fractions``,
    ``salt``, ``identities`` are :func:`data.identity_folders.list_refs`'s (split by
    identity, e.g. ``splits={"train": ["id_0-id_29"], ...}`` or ``fractions=``).
    ``root=None``: :func:`default_root`."""
    if root is None:
        root = default_root(num_identities, images_per_identity, size, seed, jitter)
    generate(root, num_identities, images_per_identity, size, seed, jitter)
    return identity_folders.list_refs(root, splits=splits, fractions=fractions, salt=salt,
                                      identities=identities)


load = identity_folders.load
