"""Detection augmentation with the boxes transformed, in pure TensorFlow (usable in ``tf.data``).

``augment(image, boxes, labels, seed)``: random scale (zoom in or out) and translation through
``tf.image.crop_and_resize`` of a random window (outside the image is filled with grey),
horizontal flip, and colour jitter (brightness, contrast, saturation, hue). Stateless random
ops driven by ``seed`` make it deterministic: the same seed gives the same result.

Boxes are ``[xmin, ymin, xmax, ymax]`` normalised to [0, 1]. The number of boxes is kept (so
padded batches keep their shape): a box that leaves the window, or keeps less than
``min_visible`` of its area, becomes padding (label -1, box zeros), which ``encode_targets``
skips; partly visible boxes are clipped to the window.
"""
from __future__ import annotations

import tensorflow as tf


def _seed_pair(seed):
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


def augment(image, boxes, labels, seed=0, scale_range=(0.75, 1.25), max_translate=0.15, flip=True,
            brightness=0.15, contrast=0.2, saturation=0.3, hue=0.04, min_visible=0.3):
    """Augment one image. ``image``: (H, W, 3) uint8 or float in [0, 1]; returns float32 in [0, 1].

    Args:
        seed: int or shape-(2,) int tensor (e.g. from ``tf.data.Dataset.random().batch(2)``).
        scale_range: zoom factor range; > 1 zooms in (objects larger), < 1 zooms out.
        max_translate: maximum shift of the window centre, as a fraction of the image.

    Returns: ``(image, boxes, labels)`` with the input's shapes.
    """
    seeds = tf.random.experimental.stateless_split(_seed_pair(seed), 8)
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.uint8:
        image = tf.cast(image, tf.float32) / 255.0
    image = tf.cast(image, tf.float32)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    labels = tf.cast(labels, tf.int64)
    size = tf.shape(image)[:2]

    # Window of side 1/scale (in image fractions) around a shifted centre.
    scale = tf.random.stateless_uniform([], seeds[0], scale_range[0], scale_range[1])
    side = 1.0 / scale
    shift = tf.random.stateless_uniform([2], seeds[1], -max_translate, max_translate)
    cx, cy = 0.5 + shift[0], 0.5 + shift[1]
    x0, y0 = cx - side / 2, cy - side / 2
    window = tf.stack([y0, x0, y0 + side, x0 + side])[None]
    image = tf.image.crop_and_resize(image[None], window, [0], size, extrapolation_value=0.5)[0]

    new = (boxes - tf.stack([x0, y0, x0, y0])) / side
    clipped = tf.clip_by_value(new, 0.0, 1.0)
    area = lambda b: tf.maximum(b[:, 2] - b[:, 0], 0.0) * tf.maximum(b[:, 3] - b[:, 1], 0.0)  # noqa: E731
    visible = area(clipped) / tf.maximum(area(new), 1e-12)
    keep = (labels >= 0) & (area(clipped) > 0) & (visible >= min_visible)
    boxes = tf.where(keep[:, None], clipped, tf.zeros_like(clipped))
    labels = tf.where(keep, labels, -tf.ones_like(labels))

    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[2]) < 0.5
        image = tf.cond(do_flip, lambda: tf.image.flip_left_right(image), lambda: image)
        flipped = tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = tf.where(do_flip & keep[:, None], flipped, boxes)

    if brightness:
        image = tf.image.stateless_random_brightness(image, brightness, seeds[3])
    if contrast:
        image = tf.image.stateless_random_contrast(image, 1 - contrast, 1 + contrast, seeds[4])
    if saturation:
        image = tf.image.stateless_random_saturation(image, 1 - saturation, 1 + saturation, seeds[5])
    if hue:
        image = tf.image.stateless_random_hue(image, hue, seeds[6])
    return tf.clip_by_value(image, 0.0, 1.0), boxes, tf.cast(labels, tf.int64)
