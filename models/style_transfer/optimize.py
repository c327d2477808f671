"""The generation loop: NST optimises the *pixels* of the generated image G with Adam, against a
frozen extractor's content and style activations. :func:`make_train_step` is one (compiled)
step; :func:`optimize_image` runs the course's loop, arrays in and arrays out (no files).

Course defaults: G initialised as ``0.6 * uniform(-20, 20) + 0.4 * content`` in the
mean-subtracted pixel domain, Adam with learning rate 2.0, 200 iterations, alpha=10, beta=40.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from .costs import STYLE_LAYERS, compute_content_cost, compute_style_cost, total_cost, total_variation_cost
from .images import VGG_MEANS_BGR, deprocess_image, generate_noise_image, preprocess_image
from .network import _layer_pairs

__all__ = ["make_train_step", "optimize_image"]


def make_train_step(extractor: keras.Model, generated: tf.Variable, a_C, a_S,
                    optimizer: keras.optimizers.Optimizer, *, alpha: float = 10, beta: float = 40,
                    tv_weight: float = 0.0, style_layers=STYLE_LAYERS, compile: bool = True,
                    jit_compile: bool = False) -> Callable[[], dict]:
    """One optimisation step on ``generated`` (a (1, H, W, 3) variable in the preprocessed
    domain): costs, gradient, Adam update, clip to the valid pixel range. Returns a function
    of no arguments giving the costs *before* that step's update, as scalar tensors
    ``{"J", "J_content", "J_style", "J_tv"}``.

    ``a_C``/``a_S``: the extractor's outputs for the content/style image (lists, course
    convention). ``compile``: wrap in ``tf.function`` (graph mode); ``jit_compile``: XLA
    (slower on CPU here, see benchmarks/bench_style_transfer.py).
    """
    style_pairs = _layer_pairs(style_layers, "style_layers")
    a_C = [tf.constant(a) for a in a_C]
    a_S = [tf.constant(a) for a in a_S]
    lo = tf.constant(-VGG_MEANS_BGR)
    hi = tf.constant(255.0 - VGG_MEANS_BGR)
    optimizer.build([generated])  # create Adam's slots outside the traced function

    def step():
        with tf.GradientTape() as tape:
            a_G = extractor(generated, training=False)
            J_content = compute_content_cost(a_C, a_G)
            J_style = compute_style_cost(a_S, a_G, style_pairs)
            J = total_cost(J_content, J_style, alpha=alpha, beta=beta)
            J_tv = total_variation_cost(generated) if tv_weight else tf.constant(0.0)
            J = J + tv_weight * J_tv
        grad = tape.gradient(J, generated)
        optimizer.apply_gradients([(grad, generated)])
        generated.assign(tf.clip_by_value(generated, lo, hi))
        return {"J": J, "J_content": J_content, "J_style": J_style, "J_tv": J_tv}

    return tf.function(step, jit_compile=jit_compile) if compile else step


def optimize_image(content_rgb: np.ndarray, style_rgb: np.ndarray, extractor: keras.Model, *,
                   iterations: int = 200, alpha: float = 10, beta: float = 40,
                   learning_rate: float = 2.0, tv_weight: float = 0.0,
                   style_layers=STYLE_LAYERS, noise_ratio: float = 0.6, seed: int | None = 0,
                   jit_compile: bool = False, every: int = 0,
                   callback: Callable[[int, np.ndarray, dict], None] | None = None,
                   on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Optimise a generated image; arrays in, arrays out (no files).

    ``content_rgb``/``style_rgb``: RGB uint8 (H, W, 3) of the extractor's input size.
    ``callback(iteration, rgb_uint8, costs)`` runs every ``every`` iterations (and never
    when ``every`` <= 0). ``on_step(iteration, costs)`` runs after every step (cheap: for a
    caller's progress display: this package prints nothing).
    Returns ``{"image": rgb uint8, "history": {"iteration", "J", "J_content", "J_style",
    "J_tv": lists}, "final_costs": costs of the returned image, "seconds_per_iteration":
    median over the steps after the first (which traces), "trace_seconds": the first step}``.
    """
    in_shape = tuple(extractor.inputs[0].shape[1:])
    for what, img in (("content", content_rgb), ("style", style_rgb)):
        if tuple(img.shape) != in_shape:
            raise ValueError(f"{what} image has shape {img.shape}, the extractor takes {in_shape}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    content = preprocess_image(content_rgb)
    a_C = [np.asarray(a) for a in extractor(content, training=False)]
    a_S = [np.asarray(a) for a in extractor(preprocess_image(style_rgb), training=False)]
    generated = tf.Variable(generate_noise_image(content, noise_ratio=noise_ratio, seed=seed),
                            name="generated_image")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    step = make_train_step(extractor, generated, a_C, a_S, optimizer, alpha=alpha, beta=beta,
                           tv_weight=tv_weight, style_layers=style_layers, jit_compile=jit_compile)

    keys = ("J", "J_content", "J_style", "J_tv")
    history: dict[str, list] = {"iteration": [], **{k: [] for k in keys}}
    times = []
    for i in range(1, iterations + 1):
        t0 = time.perf_counter()
        costs = {k: float(v) for k, v in step().items()}  # float() waits for the step
        times.append(time.perf_counter() - t0)
        if not all(math.isfinite(v) for v in costs.values()):
            raise FloatingPointError(f"cost became {costs} at iteration {i}; lower the learning rate")
        history["iteration"].append(i)
        for k in keys:
            history[k].append(costs[k])
        if on_step is not None:
            on_step(i, costs)
        if callback is not None and every > 0 and (i % every == 0 or i == iterations):
            callback(i, deprocess_image(generated.numpy()), costs)

    # Costs of the image actually returned (the step's costs are from before its update).
    a_G = extractor(generated, training=False)
    J_content = float(compute_content_cost(a_C, a_G))
    J_style = float(compute_style_cost(a_S, a_G, _layer_pairs(style_layers, "style_layers")))
    J_tv = float(total_variation_cost(generated)) if tv_weight else 0.0
    final = {"J": float(total_cost(J_content, J_style, alpha, beta)) + tv_weight * J_tv,
             "J_content": J_content, "J_style": J_style, "J_tv": J_tv}
    steady = times[1:] or times
    return {"image": deprocess_image(generated.numpy()), "history": history, "final_costs": final,
            "seconds_per_iteration": float(np.median(steady)), "trace_seconds": times[0]}
