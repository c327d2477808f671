"""Default images for neural style transfer that need no download: they ship with an installed
package or the project paints them; and :func:`parse_size`, the one reading of an image size
("400x300" or (400, 300)) that the StyleTransfer params, the model code and this module share.

* ``builtin:grace_hopper`` (content): matplotlib's sample photo
  ``mpl-data/sample_data/grace_hopper.jpg`` (512x600), installed with matplotlib.
* ``builtin:swirls`` (style): a colourful brush-stroke painting generated here, strokes
  following a field of vortices (a nod to *The Starry Night*); deterministic for a given seed
  and size, so the pipeline's cache key only changes when this file changes.

Nothing here imports TensorFlow (or matplotlib: its sample file is found by path).
"""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

PREFIX = "builtin:"
SWIRLS_SIZE = (512, 384)  # (width, height)
SWIRLS_SEED = 7

# Night-sky blues, moon yellows, a warm orange and a dark green, as in the painting it echoes.
_PALETTE = np.array([
    [18, 38, 92], [33, 70, 150], [70, 120, 200], [120, 170, 225],
    [240, 210, 80], [250, 235, 150], [230, 140, 40], [30, 70, 50],
], dtype=np.float64)


_SIZE_RE = re.compile(r"\s*(\d+)\s*[x×X]\s*(\d+)\s*")


def parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    """(width, height) of an image size given as "WIDTHxHEIGHT" (the CLI's --size and the
    StyleTransfer param: "400x300", "400 x 300", "400X300", "400×300") or as a pair of
    integers (400, 300). Anything else, or a side below 1, is a ValueError."""
    if isinstance(size, str):
        m = _SIZE_RE.fullmatch(size)
        if not m:
            raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 400x300; got {size!r}")
        w, h = int(m[1]), int(m[2])
    else:
        w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {w}x{h}")
    return w, h


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


def is_builtin(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _name(ref: str) -> str:
    name = ref[len(PREFIX):] if is_builtin(ref) else ref
    if name not in _BUILTINS:
        raise ValueError(f"unknown built-in image {ref!r}; known: "
                         f"{', '.join(PREFIX + n for n in builtin_names())}")
    return name


def grace_hopper_path() -> Path:
    """matplotlib's sample photo, located without importing matplotlib."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("builtin:grace_hopper needs matplotlib installed (pip install matplotlib)")
    p = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    if not p.is_file():
        raise FileNotFoundError(f"builtin:grace_hopper: {p} is missing from the matplotlib installation")
    return p


def swirls(size: tuple[int, int] = SWIRLS_SIZE, seed: int = SWIRLS_SEED) -> np.ndarray:
    """A procedurally painted (H, W, 3) uint8 image: a dark-blue graded ground, then a few
    thousand short curved brush strokes that follow the flow around four vortices, coloured by
    height (light blues up high, yellows around the 'moons', greens at the bottom)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = parse_size(size)
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, h)[:, None, None]
    ground = (1 - yy) * _PALETTE[1] + yy * _PALETTE[0]
    img = Image.fromarray(np.broadcast_to(ground, (h, w, 3)).astype(np.uint8).copy())
    draw = ImageDraw.Draw(img)

    # Vortices: (x, y) in [0, 1], strength (sign = turning direction), radius of influence.
    vortices = [(0.25, 0.30, 1.0, 0.22), (0.68, 0.22, -0.8, 0.18), (0.82, 0.62, 0.9, 0.20),
                (0.40, 0.72, -0.7, 0.25)]
    moons = [(0.80, 0.16, 0.08), (0.12, 0.12, 0.05)]

    def flow(x: float, y: float) -> float:
        # Angle of the flow at (x, y): a gentle rightward drift plus the vortices' rotation.
        vx, vy = 0.6, 0.05 * math.sin(6 * x)
        for cx, cy, s, r in vortices:
            dx, dy = x - cx, y - cy
            f = s * math.exp(-(dx * dx + dy * dy) / (r * r))
            vx += -dy / r * f * 3
            vy += dx / r * f * 3
        return math.atan2(vy, vx)

    n_strokes = int(2.2 * w * h / 100)
    scale = max(w, h) / 512
    for _ in range(n_strokes):
        x, y = rng.uniform(0, 1), rng.uniform(0, 1)
        near_moon = min(math.hypot(x - mx, (y - my) * h / w) / r for mx, my, r in moons)
        if near_moon < 1.6:
            base = _PALETTE[rng.choice([4, 5, 6])]
        elif y > 0.82:
            base = _PALETTE[rng.choice([7, 0, 6])]
        else:
            base = _PALETTE[rng.choice([0, 1, 2, 3, 3, 5], p=[.15, .25, .25, .15, .1, .1])]
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 14, 3), 0, 255))
        pts = [(x * w, y * h)]
        step = rng.uniform(3, 6) * scale / max(w, h)
        for _ in range(int(rng.integers(6, 14))):
            a = flow(x, y)
            x, y = x + step * math.cos(a), y + step * math.sin(a) * w / h
            pts.append((x * w, y * h))
        draw.line(pts, fill=colour, width=max(1, int(round(rng.uniform(2, 5) * scale))), joint="curve")

    # Moons: bright discs with halos, painted over the strokes, then a slight softening.
    for mx, my, r in moons:
        for k, col in ((2.0, _PALETTE[3]), (1.4, _PALETTE[5]), (1.0, _PALETTE[4])):
            rr = r * k * w
            draw.ellipse([mx * w - rr, my * h - rr, mx * w + rr, my * h + rr],
                         outline=tuple(int(c) for c in col), width=max(1, int(3 * scale)))
        rr = r * 0.8 * w
        draw.ellipse([mx * w - rr, my * h - rr, mx * w + rr, my * h + rr], fill=tuple(int(c) for c in _PALETTE[5]))
    img = img.filter(ImageFilter.SMOOTH)
    return np.asarray(img, dtype=np.uint8).copy()


def _write_png(rgb: np.ndarray, path: Path) -> Path:
    import os

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)  # never a half-written file, even when two processes race
    return path


def _swirls_file(directory: Path) -> Path:
    p = Path(directory) / "swirls.png"
    if not p.is_file():
        _write_png(swirls(), p)
    return p


_BUILTINS = {
    "grace_hopper": lambda directory: grace_hopper_path(),
    "swirls": _swirls_file,
}


def builtin_path(ref: str, directory) -> Path:
    """A file holding built-in image ``ref`` ("builtin:swirls" or "swirls"): the package's
    own file where one ships, else generated into ``directory`` (reused when present)."""
    return _BUILTINS[_name(ref)](Path(directory))


def builtin_source_file(ref: str) -> Path | None:
    """The installed file behind a built-in image (for cache fingerprints), or None when the
    image is generated by this module (its source is already in the code fingerprint)."""
    return grace_hopper_path() if _name(ref) == "grace_hopper" else None
