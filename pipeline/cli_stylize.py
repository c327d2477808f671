"""`python -m pipeline stylize CONTENT STYLE --out OUT.png`: neural style transfer in one command
(the StyleTransfer component without a pipeline: no cache, no MLflow).

Light imports only at module level (click): `python -m pipeline --help` must not load
TensorFlow. models.style_transfer is imported inside the command."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli_common import fail, quiet_libraries


def _fail(msg: str, code: int = 1):
    fail(f"stylize: {msg}", code)


def _image(ref: str, what: str, scratch: Path) -> Path:
    from data.style_images import builtin_path, is_builtin

    if is_builtin(ref):
        try:
            return builtin_path(ref, scratch)
        except (FileNotFoundError, ValueError) as e:
            _fail(f"{what}: {e}")
    p = Path(ref).expanduser()
    if not p.is_file():
        _fail(f"{what} image not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    return p


@click.command("stylize", context_settings={"max_content_width": 100})
@click.argument("content")
@click.argument("style")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Result PNG; the grid and cost curve go beside it (OUT_grid.png, OUT_costs.png).")
@click.option("--iterations", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default="400x300", show_default=True, metavar="WIDTHxHEIGHT",
              help="Both images are resized to this size.")
@click.option("--weights", default="none", show_default=True, metavar="none|imagenet|PATH",
              help="VGG-19 weights: none (random: a texture, not a painting), imagenet (cached or downloaded), "
                   "a VGG-19 no-top weights file, or a .keras model.")
@click.option("--alpha", default=10.0, show_default=True, help="Content cost weight.")
@click.option("--beta", default=40.0, show_default=True, help="Style cost weight.")
@click.option("--lr", "learning_rate", default=2.0, show_default=True, help="Adam learning rate (pixels).")
@click.option("--tv-weight", default=0.0, show_default=True, help="Total-variation (smoothness) weight.")
@click.option("--save-every", default=50, show_default=True, type=click.IntRange(min=0),
              help="Write a checkpoint image every N iterations (0: never), into OUT_checkpoints/.")
@click.option("--seed", default=0, show_default=True, help="Initial noise (and random weights) seed.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def stylize(content, style, out, iterations, size, weights, alpha, beta, learning_rate, tv_weight, save_every,
            seed, no_progress):
    """Paint CONTENT in the style of STYLE (neural style transfer, the course's settings).

    CONTENT and STYLE are image files or built-in images: builtin:grace_hopper (matplotlib's
    sample photo) and builtin:swirls (a generated painting).

    \b
    Example:
      python -m pipeline stylize louvre.jpg monet.jpg --out louvre_monet.png --iterations 200
      python -m pipeline stylize builtin:grace_hopper builtin:swirls --out hopper.png
    """
    import tempfile
    import time

    out_path = Path(out)
    if out_path.suffix.lower() != ".png":
        _fail(f"--out must be a .png file, got {out}", 2)
    from data.style_images import parse_size

    try:
        size_wh = parse_size(size)
    except ValueError as e:
        _fail(f"--size: {e}", 2)
    w = None if weights.lower() in ("none", "random", "null") else weights
    if w is not None and w != "imagenet" and not Path(w).is_file():
        _fail(f"--weights: file not found: {w} (use --weights none, imagenet or a path to a VGG-19 weights file)", 2)
    with tempfile.TemporaryDirectory(prefix="stylize-") as scratch:
        content_path = _image(content, "content", Path(scratch))
        style_path = _image(style, "style", Path(scratch))

        quiet_libraries()
        t0 = time.perf_counter()
        from models import style_transfer as st

        if w is None:
            click.secho("note: --weights none: VGG-19 has random weights (no ImageNet weights on this machine), so "
                        "the result is a texture, not a painting; pass --weights imagenet or a weights file.",
                        fg="yellow", err=True)
        from pipeline.stylize_progress import announce_weights, progress_bar

        try:
            if not no_progress and w is not None:  # random weights: the note above said it already
                announce_weights(st.describe_weights(w))
            with progress_bar(not no_progress, iterations) as show:
                res = st.run_style_transfer(content_path, style_path, out_path, size=size_wh, iterations=iterations,
                                            weights=w, alpha=alpha, beta=beta, learning_rate=learning_rate,
                                            tv_weight=tv_weight, save_every=save_every, seed=seed,
                                            on_step=lambda i, costs: show(costs))
        except (FileNotFoundError, ValueError, ConnectionError, FloatingPointError) as e:
            _fail(str(e))
    total = time.perf_counter() - t0
    h = res["history"]
    click.echo(f"result:      {res['output']}")
    click.echo(f"grid:        {res['grid']}  (content | style | result)")
    click.echo(f"cost curve:  {res['cost_curve']}")
    if res["checkpoints"]:
        click.echo(f"checkpoints: {Path(res['checkpoints'][0]).parent}/ ({len(res['checkpoints'])} images)")
    click.echo(f"{iterations} iterations at {size_wh[0]}x{size_wh[1]}: {res['seconds_per_iteration']:.3f} s/iteration "
               f"(median after the first, which took {res['trace_seconds']:.1f} s to trace); "
               f"{total:.1f} s including model set-up")
    click.echo(f"cost J: {h['J'][0]:.4g} -> {res['final_costs']['J']:.4g} "
               f"(J_content {res['final_costs']['J_content']:.4g}, J_style {res['final_costs']['J_style']:.4g})")
    click.echo(f"weights: {res['weights']}")
