"""What a style-transfer run leaves on disk: the content | style | result grid
(:func:`save_grid`), the cost curve (:func:`save_cost_curve`), checkpoint images
(:func:`save_image_atomic`) and the result trio (:func:`write_result_files`). Every file is
written under a temporary name in its folder and renamed into place, so a crash or a
concurrent reader never sees half a PNG. Plots use a bare Agg ``Figure`` (no pyplot state,
no GUI backend).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["save_grid", "save_cost_curve", "save_image_atomic", "write_result_files"]


def _tmp_name(path: Path) -> Path:
    # Same folder (so os.replace is atomic), same suffix (so PIL/matplotlib pick the format).
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _save_rgb(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image
    Image.fromarray(rgb).save(path)


def save_image_atomic(rgb: np.ndarray, path) -> Path:
    """RGB uint8 ``rgb`` as an image at ``path`` (format from the suffix), via a temporary
    name in the same folder; the folder must exist."""
    path = Path(path)
    tmp = _tmp_name(path)
    _save_rgb(rgb, tmp)
    os.replace(tmp, path)
    return path


def _figure(figsize):
    # A bare Figure with the Agg canvas: no pyplot global state, no GUI backend needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_grid(content_rgb, style_rgb, result_rgb, path, title: str | None = None) -> Path:
    """content | style | result side by side, as a PNG at ``path``."""
    fig = _figure((12, 3.6))
    for k, (img, name) in enumerate(((content_rgb, "content"), (style_rgb, "style"), (result_rgb, "result"))):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(img)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def save_cost_curve(history: dict, path, alpha: float = 10, beta: float = 40, tv_weight: float = 0.0,
                    title: str | None = None) -> Path:
    """J and its weighted parts against iterations (log scale), as a PNG at ``path``."""
    it = history["iteration"]
    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(it, history["J"], label="J (total)", lw=2)
    ax.plot(it, [alpha * v for v in history["J_content"]], label=f"{alpha:g} x J_content")
    ax.plot(it, [beta * v for v in history["J_style"]], label=f"{beta:g} x J_style")
    if tv_weight:
        ax.plot(it, [tv_weight * v for v in history["J_tv"]], label=f"{tv_weight:g} x J_tv")
    if all(v > 0 for v in history["J"]):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def write_result_files(out_path: Path, content_rgb: np.ndarray, style_rgb: np.ndarray, result_rgb: np.ndarray,
                       history: dict, *, alpha: float, beta: float, tv_weight: float,
                       title: str | None = None) -> dict[str, Path]:
    """Write ``out_path`` (the result PNG), ``<stem>_grid.png`` and ``<stem>_costs.png``,
    each to a temporary name first and renamed into place only when all three are complete
    (an error while writing leaves no temporary file and replaces none of the three).
    Returns ``{"output", "grid", "cost_curve"}``: the three paths."""
    out_path = Path(out_path)
    final = {"output": out_path,
             "grid": out_path.with_name(f"{out_path.stem}_grid.png"),
             "cost_curve": out_path.with_name(f"{out_path.stem}_costs.png")}
    tmps = {k: _tmp_name(p) for k, p in final.items()}
    try:
        _save_rgb(result_rgb, tmps["output"])
        save_grid(content_rgb, style_rgb, result_rgb, tmps["grid"], title=title)
        save_cost_curve(history, tmps["cost_curve"], alpha, beta, tv_weight, title=title)
        for k in final:
            os.replace(tmps[k], final[k])
    finally:
        for t in tmps.values():
            t.unlink(missing_ok=True)
    return final
