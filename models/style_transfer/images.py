"""Images in and out of VGG-19's pixel domain: :func:`load_image` (a file as RGB uint8 at a
size), :func:`preprocess_image` / :func:`deprocess_image` (VGG's caffe convention: BGR with
the ImageNet channel means subtracted, as ``keras.applications.vgg19.preprocess_input``) and
the course's initial image :func:`generate_noise_image`. :func:`parse_size` is
``data.style_images.parse_size``, the one reading of "WIDTHxHEIGHT" the project has.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.style_images import parse_size

__all__ = ["VGG_MEANS_BGR", "parse_size", "load_image", "preprocess_image", "deprocess_image",
           "generate_noise_image"]

#: ImageNet channel means in BGR order (caffe convention, keras.applications.vgg19).
VGG_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def load_image(path, size: tuple[int, int] | None = None, what: str = "image") -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), resized to ``size`` = (width, height).
    Missing file: FileNotFoundError; unreadable: ValueError; both name the file."""
    from PIL import Image, ImageOps

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")  # phone photos carry EXIF rotation
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read {what} {p}: {e}") from e


def preprocess_image(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) in [0, 255] -> (1, H, W, 3) float32, BGR with the ImageNet means
    subtracted (same as ``keras.applications.vgg19.preprocess_input``)."""
    x = np.asarray(rgb, dtype=np.float32)[..., ::-1] - VGG_MEANS_BGR
    return x[None]


def deprocess_image(x) -> np.ndarray:
    """Inverse of :func:`preprocess_image`: (1, H, W, 3) or (H, W, 3) -> RGB uint8."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x[0]
    return np.clip(np.rint(x + VGG_MEANS_BGR), 0, 255).astype(np.uint8)[..., ::-1].copy()


def generate_noise_image(content: np.ndarray, noise_ratio: float = 0.6, noise_range: float = 20.0,
                         seed: int | None = 0) -> np.ndarray:
    """The course's initial image: ``noise_ratio * uniform(-noise_range, noise_range) +
    (1 - noise_ratio) * content``, where ``content`` is the *preprocessed* (mean-subtracted)
    image, the pixel domain the course's VGG model takes; clipped to the valid range."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-noise_range, noise_range, size=content.shape).astype(np.float32)
    return _clip_np(noise_ratio * noise + (1.0 - noise_ratio) * content.astype(np.float32))


def _clip_np(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -VGG_MEANS_BGR, 255.0 - VGG_MEANS_BGR).astype(np.float32)
