"""The course's graded cost functions for neural style transfer, with the course's names,
signatures and normalisations: :func:`compute_content_cost`, :func:`gram_matrix`,
:func:`compute_layer_style_cost`, :func:`compute_style_cost`, :func:`total_cost`, the
constants :data:`STYLE_LAYERS` and :data:`CONTENT_LAYER`; plus the optional
:func:`total_variation_cost` (not in the course).

Pure tensor maths on ``keras.ops``: no network, no files, no output.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

__all__ = [
    "STYLE_LAYERS", "CONTENT_LAYER",
    "compute_content_cost", "gram_matrix", "compute_layer_style_cost", "compute_style_cost",
    "total_cost", "total_variation_cost",
]

#: (layer name, weight λ_l) pairs; the course's conv1_1 ... conv5_1, equal weights.
STYLE_LAYERS: list[tuple[str, float]] = [
    ("block1_conv1", 0.2),
    ("block2_conv1", 0.2),
    ("block3_conv1", 0.2),
    ("block4_conv1", 0.2),
    ("block5_conv1", 0.2),
]
#: The content layer, the course's conv4_2, in the course's list-of-one-pair form.
CONTENT_LAYER: list[tuple[str, float]] = [("block4_conv2", 1)]


def _last_if_list(x):
    # The course's TF2 notebook passes the whole list of extractor outputs and takes the
    # content layer (the last one); plain tensors are accepted too.
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("empty list of layer outputs")
        return x[-1]
    return x


def _dims(a) -> tuple[Any, Any, Any]:
    """(n_H, n_W, n_C) of a (1, n_H, n_W, n_C) tensor, as floats when static. Dynamic
    dims are cast to float32 *before* multiplying: n_C^2 (n_H n_W)^2 overflows int32 at
    block1 of a 400x300 image (64^2 * 120000^2 ~ 6e13)."""
    shape = ops.shape(a)
    if len(shape) != 4:
        raise ValueError(f"expected an activation of shape (1, n_H, n_W, n_C), got {tuple(shape)}")
    return tuple(float(d) if isinstance(d, (int, np.integer)) else ops.cast(d, "float32")
                 for d in shape[1:])


def compute_content_cost(a_C, a_G):
    """J_content = sum((a_C - a_G)^2) / (4 n_H n_W n_C).

    ``a_C``, ``a_G``: activations of shape (1, n_H, n_W, n_C) of the content layer for the
    content and the generated image. Either may also be the course's list of all extractor
    outputs (``content_output``, ``generated_output``), whose last element is the content
    layer's: the course's ``a_C = content_output[-1]``.
    """
    a_C, a_G = _last_if_list(a_C), _last_if_list(a_G)
    n_H, n_W, n_C = _dims(a_G)
    # No unrolling needed: the sum over all elements does not depend on the layout.
    return ops.sum(ops.square(ops.subtract(a_C, a_G))) / (4.0 * n_H * n_W * n_C)


def gram_matrix(A):
    """Gram matrix G_A = A A^T of ``A`` with shape (n_C, n_H*n_W) -> (n_C, n_C)."""
    return ops.matmul(A, ops.transpose(A))


def _unroll(a, n_C):
    # The course's unrolling: (1, n_H, n_W, n_C) -> (n_C, n_H*n_W) by transposing the
    # channel axis to the front and then reshaping; reshaping straight to (n_C, -1) would
    # mix channels and positions.
    return ops.reshape(ops.transpose(a, (0, 3, 1, 2)), (n_C, -1))


def compute_layer_style_cost(a_S, a_G):
    """J_style^[l] = sum((G_S - G_G)^2) / (4 n_C^2 (n_H n_W)^2) for one layer.

    ``a_S``, ``a_G``: activations of shape (1, n_H, n_W, n_C) for the style and the
    generated image.
    """
    n_H, n_W, n_C = _dims(a_G)
    c = ops.shape(a_G)[-1]
    GS = gram_matrix(_unroll(a_S, c))
    GG = gram_matrix(_unroll(a_G, c))
    return ops.sum(ops.square(ops.subtract(GS, GG))) / (4.0 * n_C * n_C * (n_H * n_W) ** 2)


def compute_style_cost(style_image_output, generated_image_output, STYLE_LAYERS=STYLE_LAYERS):
    """J_style = sum_l λ_l J_style^[l], the course's convention: the arguments are the lists
    of extractor outputs, the style layers' first and the content layer's **last**; the last
    entry is excluded. ``STYLE_LAYERS`` gives (name, λ_l) in the same order.
    """
    a_S, a_G = list(style_image_output)[:-1], list(generated_image_output)[:-1]
    if len(a_S) != len(STYLE_LAYERS) or len(a_G) != len(STYLE_LAYERS):
        # The course's zip() would silently drop layers; a mismatch is always a bug.
        raise ValueError(
            f"expected {len(STYLE_LAYERS)} style outputs followed by the content output "
            f"({len(STYLE_LAYERS) + 1} in all), got {len(a_S) + 1} and {len(a_G) + 1}")
    J_style = 0.0
    for s, g, (_, weight) in zip(a_S, a_G, STYLE_LAYERS):
        J_style = J_style + float(weight) * compute_layer_style_cost(s, g)
    return J_style


def total_cost(J_content, J_style, alpha=10, beta=40):
    """J(G) = alpha * J_content(C, G) + beta * J_style(S, G)."""
    return alpha * J_content + beta * J_style


def total_variation_cost(image):
    """Anisotropic total variation sum |x[i+1,j]-x[i,j]| + |x[i,j+1]-x[i,j]| of a
    (1, H, W, C) image (the definition of ``tf.image.total_variation``); not in the course,
    an optional smoothness term weighted by ``tv_weight``."""
    dh = image[:, 1:, :, :] - image[:, :-1, :, :]
    dw = image[:, :, 1:, :] - image[:, :, :-1, :]
    return ops.sum(ops.abs(dh)) + ops.sum(ops.abs(dw))
