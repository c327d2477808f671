"""A synthetic hand-sign dataset so the default pipeline runs offline with no download: class k
(0..5) is a "hand" (a palm ellipse) with k raised "fingers" (one gesture per count, as in the
course's SIGNS photos), on a varied background, with random
position, scale, rotation, skin tone, lighting and noise. Each image is generated from
(seed, index), so records need no files and the dataset is identical on every machine."""
from __future__ import annotations

import numpy as np

from data.records import ImageRecord, Ref

CLASSES = ["0", "1", "2", "3", "4", "5"]


def list_refs(num_examples: int = 600, seed: int = 0) -> list[Ref]:
    return [Ref(key=f"synthetic_signs/{i:05d}", source="synthetic_signs", index=i, label=i % 6,
                label_name=CLASSES[i % 6], extra=(seed,)) for i in range(num_examples)]


def render(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter

    s = 4  # draw at 4x and downsample: anti-aliased edges, like a photo
    S = size * s
    skin = np.array([224, 172, 140]) * rng.uniform(0.6, 1.1) + rng.normal(0, 8, 3)
    bg = rng.integers(60, 230, size=3)
    while np.abs(bg - skin).max() < 45:  # a hand the colour of its background: a photo nobody would take
        bg = rng.integers(60, 230, size=3)
    img = Image.new("RGB", (S, S), tuple(int(c) for c in bg))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 2))):  # a little background clutter: round, so never a "finger"
        x0, y0 = rng.integers(0, S, 2)
        r = int(rng.integers(8, 30))
        d.ellipse([int(x0) - r, int(y0) - r, int(x0) + r, int(y0) + r], fill=tuple(int(c) for c in rng.integers(40, 240, 3)))
    skin_t = tuple(int(c) for c in np.clip(skin, 0, 255))
    hand = Image.new("L", (S, S), 0)
    h = ImageDraw.Draw(hand)
    # centred like the course's photos (the Transform's augmentation adds the small shifts)
    cx, cy = S / 2 + rng.uniform(-0.04, 0.04) * S, S * 0.62 + rng.uniform(-0.03, 0.03) * S
    pw, ph = S * rng.uniform(0.26, 0.32), S * rng.uniform(0.22, 0.28)
    h.ellipse([cx - pw, cy - ph, cx + pw, cy + ph], fill=255)
    # Fingers fan out from the palm like a real hand's (the thumb, slot 0, to the side), narrower
    # than the gaps between their tips: k raised fingers stay countable at 64 px instead of merging.
    fw = S * 0.07
    angles = np.radians([-55.0, -22.0, -7.0, 8.0, 23.0]) + rng.normal(0, 0.05, 5)
    bases = np.linspace(cx - pw * 0.75, cx + pw * 0.75, 5)
    # Each count is one gesture, as in the SIGNS photos: index first, then middle, ring, little
    # finger, and the thumb last; a hand's tilt and finger lengths still vary.
    raised = [1, 2, 3, 4, 0][:label]
    for j in raised:
        length = S * rng.uniform(0.26, 0.34) * (0.75 if j == 0 else 1.0)
        bx, by = bases[j], cy - ph * (0.35 if j == 0 else 0.75)
        tx, ty = bx + length * np.sin(angles[j]), by - length * np.cos(angles[j])
        h.line([(bx, by), (tx, ty)], fill=255, width=int(fw))
        h.ellipse([tx - fw / 2, ty - fw / 2, tx + fw / 2, ty + fw / 2], fill=255)
    hand = hand.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR, center=(cx, cy))
    img.paste(Image.new("RGB", (S, S), skin_t), (0, 0), hand)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.7, 1.2) + rng.normal(0, 6, (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def load(ref: Ref) -> ImageRecord:
    seed = ref.extra[0] if ref.extra else 0
    rng = np.random.default_rng([seed, ref.index])
    return ImageRecord(key=ref.key, image=render(ref.label, rng), label=ref.label, label_name=ref.label_name)
