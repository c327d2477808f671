"""Files in, files out: :func:`run_style_transfer` checks its inputs cheaply, loads the two
images, builds the extractor, runs :func:`~models.style_transfer.optimize.optimize_image`
and writes the result, grid, cost curve and checkpoints (:mod:`.report`). What the pipeline
component and ``python -m pipeline stylize`` wrap.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from .costs import CONTENT_LAYER, STYLE_LAYERS
from .images import load_image, parse_size
from .network import build_feature_extractor, min_input_size
from .optimize import optimize_image
from .report import save_image_atomic, write_result_files
from .vgg_weights import _is_random, describe_weights

__all__ = ["run_style_transfer"]

log = logging.getLogger("models.style_transfer")


def run_style_transfer(content_path, style_path, out_path, *, size=(400, 300), iterations: int = 200,
                       weights=None, alpha: float = 10, beta: float = 40, learning_rate: float = 2.0,
                       tv_weight: float = 0.0, style_layers=STYLE_LAYERS, content_layer=CONTENT_LAYER,
                       save_every: int = 50, seed: int = 0,
                       on_checkpoint: Callable[[int, str, dict], None] | None = None,
                       checkpoint_dir=None, jit_compile: bool = False,
                       extractor: keras.Model | None = None,
                       on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Paint ``content_path`` in the style of ``style_path``; write the result to ``out_path``.

    ``size``: (width, height) or "WIDTHxHEIGHT"; both images are resized to it.
    ``weights``: see :func:`~models.style_transfer.network.build_feature_extractor`
    (``None`` = random VGG-19 = textures).
    Every ``save_every`` iterations (and at the last) the current image is written to
    ``checkpoint_dir`` (default ``<out dir>/<out stem>_checkpoints/``) as
    ``iter_NNNN.png`` and ``on_checkpoint(iteration, png_path, costs)`` is called (costs of
    that step, evaluated before its update). ``extractor``: a prebuilt
    ``build_feature_extractor`` model of this size, to reuse across calls.
    ``on_step(iteration, costs)``: called after every step (see ``optimize_image``).
    Random weights (a texture, not a painting) are for the caller to announce; logged at INFO here.

    Writes ``out_path`` (PNG), ``<stem>_grid.png`` (content | style | result) and
    ``<stem>_costs.png`` (cost curve), each to a temporary name first and renamed into place
    only when all three are complete. Returns ``{"output", "grid", "cost_curve",
    "checkpoints", "final_costs", "history", "seconds_per_iteration", "trace_seconds",
    "total_seconds", "iterations", "size", "weights"}`` (``weights``: the
    ``describe_weights`` line).
    """
    t_start = time.perf_counter()
    width, height = parse_size(size)
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {out_path}")
    # Validate everything cheap before building VGG or touching the output folder.
    if extractor is None and (_is_random(weights) or weights == "imagenet" or Path(weights).suffix != ".keras"):
        need = min_input_size(style_layers, content_layer)
        if min(width, height) < need:
            raise ValueError(f"size {width}x{height} is too small for the chosen VGG-19 layers: the "
                             f"deepest needs at least {need}x{need} pixels (one per max-pool halving)")
    if not _is_random(weights) and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    content_rgb = load_image(content_path, (width, height), "content image")
    style_rgb = load_image(style_path, (width, height), "style image")

    weights_desc = describe_weights(weights)
    if _is_random(weights):
        log.info("style transfer with %s", weights_desc)  # callers say it to the user once
    if extractor is None:
        extractor = build_feature_extractor(weights, style_layers, content_layer, (height, width, 3), seed=seed)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out_path.with_name(f"{out_path.stem}_checkpoints")
    checkpoints: list[str] = []

    def checkpoint(i: int, rgb: np.ndarray, costs: dict) -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        p = save_image_atomic(rgb, ckpt_dir / f"iter_{i:04d}.png")
        checkpoints.append(str(p))
        if on_checkpoint is not None:
            on_checkpoint(i, str(p), dict(costs))

    res = optimize_image(content_rgb, style_rgb, extractor, iterations=iterations, alpha=alpha, beta=beta,
                         learning_rate=learning_rate, tv_weight=tv_weight, style_layers=style_layers,
                         seed=seed, jit_compile=jit_compile,
                         every=save_every or 0, callback=checkpoint, on_step=on_step)

    title = f"{iterations} iterations, {width}x{height}, alpha={alpha:g}, beta={beta:g}; weights: {weights_desc.split(':')[0]}"
    final = write_result_files(out_path, content_rgb, style_rgb, res["image"], res["history"],
                               alpha=alpha, beta=beta, tv_weight=tv_weight, title=title)

    return {**{k: str(v) for k, v in final.items()}, "checkpoints": checkpoints,
            "final_costs": res["final_costs"], "history": res["history"],
            "seconds_per_iteration": res["seconds_per_iteration"], "trace_seconds": res["trace_seconds"],
            "total_seconds": time.perf_counter() - t_start, "iterations": iterations,
            "size": (width, height), "weights": weights_desc}
