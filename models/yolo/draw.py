"""Drawing detections and fitting images to a detector's input: the course's ``draw_boxes``
and the plain / letterbox resize used by ``python -m pipeline detect`` and ``predict``."""
from __future__ import annotations


def _palette(n: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)]


def draw_boxes(image, detections, class_names, path) -> None:
    """Draw ``[{"box": [xmin, ymin, xmax, ymax] pixels, "label", "score"}]`` with class names and
    scores on a copy of the uint8 image and save it (the course's ``draw_boxes``)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    thickness = max(1, (img.width + img.height) // 400)
    size = max(10, (img.width + img.height) // 60)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    colours = _palette(len(class_names))
    for d in sorted(detections, key=lambda d: d["score"]):
        x1, y1, x2, y2 = d["box"]
        colour = colours[int(d["label"]) % len(colours)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=thickness)
        text = f"{class_names[int(d['label'])]} {d['score']:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1 + 1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=colour)
        draw.text((x1 + 2, ty + 1), text, fill=(0, 0, 0), font=font)
    img.save(path)


def fit_image(image, size, mode: str):
    """Resize a uint8 image to ``size`` (h, w): ``plain`` (the course's and ExampleGen's resize) or
    ``letterbox`` (keep the aspect ratio, pad with grey). Returns (resized, unmap) where unmap
    turns relative xyxy boxes of the resized image into pixels of the original."""
    import numpy as np
    from PIL import Image

    h0, w0 = image.shape[:2]
    h, w = size
    if mode == "plain":
        out = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC)) if (h0, w0) != (h, w) else image

        def unmap(b):
            return np.clip(np.asarray(b, np.float32).reshape(-1, 4) * [w0, h0, w0, h0], 0, [w0, h0, w0, h0])
        return out, unmap
    s = min(h / h0, w / w0)
    nh, nw = max(1, round(h0 * s)), max(1, round(w0 * s))
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas = np.full((h, w, 3), 128, np.uint8)
    canvas[top:top + nh, left:left + nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))

    def unmap(b):
        px = np.asarray(b, np.float32).reshape(-1, 4) * [w, h, w, h]
        px = (px - [left, top, left, top]) / s
        return np.clip(px, 0, [w0, h0, w0, h0])
    return canvas, unmap
