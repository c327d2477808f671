"""StyleTransfer: a content image + a style image -> `stylized`: the content image painted in the
style (neural style transfer, course notes 4.5/4.7; the maths is in models/style_transfer/).

NST optimises the pixels of one image, not a model's weights, so this component "trains" an
image: Adam on the pixels against a frozen VGG-19's content and style activations.

Images come from params (`content`, `style`: a path, relative to pipeline.yaml, or
`builtin:grace_hopper` / `builtin:swirls`, which need no download) or from optional input
artifacts (`content`, `style`: a folder holding one image, or a StyleTransfer `stylized`
folder, whose `result.png` is used). The feature extractor's weights: `weights` (None = random
VGG-19, the offline default; "imagenet"; a VGG-19 weights file; a `.keras` model whose layers
`style_layers`/`content_layer` name) or the optional input `model` (a Trainer `model` folder,
its `model.keras`).

Output `stylized/`: `result.png` (the generated image at `size`), `result_grid.png`
(content | style | result), `result_costs.png` (cost curves), `checkpoints/iter_NNNN.png`
(every `save_every` iterations), `content.png`/`style.png` (the inputs as optimised, resized)
and `result.json` (initial and final costs, the cost history, seconds per iteration, the
weights used). In MLflow: every checkpoint under `checkpoints/` with the costs at that step,
the grid and cost curve under `plots/`, the weights description as a param.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from components.base import ComponentError, ComponentSpec, Params

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_COURSE_STYLE_LAYERS = [("block1_conv1", 0.2), ("block2_conv1", 0.2), ("block3_conv1", 0.2),
                        ("block4_conv1", 0.2), ("block5_conv1", 0.2)]


def _is_random(weights) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random"))


class StyleTransferParams(Params):
    content: str = Field("builtin:grace_hopper", description="content image: path or builtin:NAME")
    style: str = Field("builtin:swirls", description="style image: path or builtin:NAME")
    size: str = Field("400x300", description="WIDTHxHEIGHT both images are resized to (the course's 400x300)")
    iterations: int = Field(200, ge=1)
    weights: str | None = Field(None, description="None (random VGG-19), 'imagenet', or a weights/.keras path")
    alpha: float = Field(10.0, ge=0)
    beta: float = Field(40.0, ge=0)
    learning_rate: float = Field(2.0, gt=0)
    tv_weight: float = Field(0.0, ge=0)
    style_layers: list[tuple[str, float]] = Field(default_factory=lambda: list(_COURSE_STYLE_LAYERS))
    content_layer: str = "block4_conv2"
    save_every: int = Field(50, ge=0, description="checkpoint image + costs every N iterations (0: never)")
    seed: int = 0

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        from data.style_images import parse_size

        w, h = parse_size(v)  # "64 x 48" -> "64x48"; a ValueError says what is wrong
        return f"{w}x{h}"

    @field_validator("content", "style")
    @classmethod
    def _builtin_known(cls, v: str) -> str:
        from data.style_images import builtin_names, is_builtin

        if is_builtin(v) and v.split(":", 1)[1] not in builtin_names():
            raise ValueError(f"unknown built-in image {v!r}; known: "
                             f"{', '.join('builtin:' + n for n in builtin_names())}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v):
        return None if _is_random(v) else v

    @model_validator(mode="after")
    def _layers(self):
        if not self.style_layers:
            raise ValueError("style_layers: give at least one (layer, weight) pair")
        return self

    @property
    def width_height(self) -> tuple[int, int]:
        from data.style_images import parse_size

        return parse_size(self.size)

    def resolve_paths(self, base_dir) -> None:
        """Relative image and weights paths in pipeline.yaml are relative to that file."""
        from data.style_images import is_builtin

        def fix(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (Path(base_dir) / q).resolve())

        if not is_builtin(self.content):
            self.content = fix(self.content)
        if not is_builtin(self.style):
            self.style = fix(self.style)
        if self.weights is not None and self.weights != "imagenet":
            self.weights = fix(self.weights)

    def local_paths(self) -> dict[str, str]:
        from data.style_images import is_builtin

        out = {k: getattr(self, k) for k in ("content", "style") if not is_builtin(getattr(self, k))}
        if self.weights is not None and not _is_random(self.weights) and self.weights != "imagenet":
            out["weights"] = self.weights
        return out


def _external(params: StyleTransferParams) -> list[str]:
    """The files the result depends on outside the artifact store: changing an image (or a
    weights file) invalidates the cache. Generated built-ins are covered by the code
    fingerprint (data/style_images.py), matplotlib's photo by its file stats."""
    from data.style_images import builtin_source_file, is_builtin

    out = []
    for ref in (params.content, params.style):
        if is_builtin(ref):
            try:
                f = builtin_source_file(ref)
            except FileNotFoundError:
                f = None
            if f is not None:
                out.append(str(f))
        else:
            out.append(ref)
    if params.weights is not None and params.weights != "imagenet":
        out.append(params.weights)
    return out


def _image_in_artifact(folder: Path, what: str) -> Path:
    folder = Path(folder)
    if (folder / "result.png").is_file():  # a StyleTransfer output: restyle its result
        return folder / "result.png"
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) != 1:
        raise ComponentError(f"input {what!r}: expected exactly one image in {folder}, found "
                             f"{len(images)}{': ' + ', '.join(p.name for p in images[:10]) if images else ''}")
    return images[0]


def _resolve_image(ref: str, what: str, inputs: dict, scratch: Path) -> tuple[Path, str]:
    """(file, description) of the content or style image."""
    from data.style_images import builtin_path, is_builtin

    if what in inputs:
        p = _image_in_artifact(Path(inputs[what]), what)
        return p, f"input artifact {p}"
    if is_builtin(ref):
        try:
            return builtin_path(ref, scratch), ref
        except (FileNotFoundError, ValueError) as e:
            raise ComponentError(f"{what}: {e}") from None
    p = Path(ref)
    if not p.is_file():
        raise ComponentError(f"{what} image not found: {p}"
                             + ("" if p.is_absolute() else " (relative paths are relative to pipeline.yaml)"))
    return p, str(p)


def _weights_for(params: StyleTransferParams, inputs: dict):
    if "model" in inputs:
        m = Path(inputs["model"]) / "model.keras"
        if not m.is_file():
            raise ComponentError(f"input 'model': no model.keras in {inputs['model']}")
        return str(m)
    if params.weights is not None and params.weights != "imagenet" and not Path(params.weights).is_file():
        raise ComponentError(f"weights file not found: {params.weights} (weights: null for random VGG-19 "
                             f"weights, 'imagenet', or a path to a VGG-19 weights file)")
    return params.weights


def run(ctx, inputs, params: StyleTransferParams):
    out = ctx.outputs["stylized"]
    width, height = params.width_height
    # Cheap checks first: a missing image fails in milliseconds, before TensorFlow loads.
    scratch = Path(ctx.work_dir) / "builtin_images"
    content_path, content_desc = _resolve_image(params.content, "content", inputs, scratch)
    style_path, style_desc = _resolve_image(params.style, "style", inputs, scratch)
    weights = _weights_for(params, inputs)

    import time

    from models import style_transfer as st

    weights_desc = st.describe_weights(weights)
    (ctx.logger.warning if weights is None else ctx.logger.info)("feature extractor: %s", weights_desc)
    ctx.logger.info("content %s, style %s, %dx%d, %d iterations, alpha=%g beta=%g lr=%g tv=%g",
                    content_desc, style_desc, width, height, params.iterations, params.alpha, params.beta,
                    params.learning_rate, params.tv_weight)
    ctx.tracker.log_params({"weights_description": weights_desc, "content_image": content_desc,
                            "style_image": style_desc})

    t_last = [time.perf_counter(), 0]

    def on_checkpoint(i: int, png: str, costs: dict) -> None:
        ctx.tracker.log_artifact(Path(png), "checkpoints")
        ctx.tracker.log_metrics({k: v for k, v in costs.items() if k != "J_tv" or params.tv_weight}, step=i)
        now = time.perf_counter()
        rate = (i - t_last[1]) / max(now - t_last[0], 1e-9)
        t_last[:] = [now, i]
        ctx.logger.info("iteration %d/%d: J=%.4g J_content=%.4g J_style=%.4g (%.2f it/s)", i, params.iterations,
                        costs["J"], costs["J_content"], costs["J_style"], rate)

    try:
        with ctx.progress("style transfer", params.iterations) as advance:
            res = st.run_style_transfer(
                content_path, style_path, out / "result.png", size=(width, height),
                iterations=params.iterations, weights=weights, alpha=params.alpha, beta=params.beta,
                learning_rate=params.learning_rate, tv_weight=params.tv_weight,
                style_layers=[tuple(x) for x in params.style_layers], content_layer=params.content_layer,
                save_every=params.save_every, seed=params.seed,
                on_checkpoint=on_checkpoint if params.save_every else None,
                checkpoint_dir=out / "checkpoints", on_step=lambda i, c: advance(1))
    except (FileNotFoundError, ValueError, ConnectionError, FloatingPointError) as e:
        # Bad images, sizes too small for the layers, wrong-architecture or unavailable weights.
        raise ComponentError(f"style transfer: {e}") from None

    from PIL import Image

    for name, src in (("content", content_path), ("style", style_path)):
        Image.fromarray(st.load_image(src, (width, height), name)).save(out / f"{name}.png")
    h = res["history"]
    initial = {k: h[k][0] for k in ("J", "J_content", "J_style", "J_tv")}
    summary = {
        "content": content_desc, "style": style_desc, "size": [width, height],
        "iterations": params.iterations, "weights": params.weights if "model" not in inputs else weights,
        "weights_description": weights_desc,
        "alpha": params.alpha, "beta": params.beta, "learning_rate": params.learning_rate,
        "tv_weight": params.tv_weight, "style_layers": [list(x) for x in params.style_layers],
        "content_layer": params.content_layer, "seed": params.seed,
        "initial_costs": initial, "final_costs": res["final_costs"],
        "seconds_per_iteration": res["seconds_per_iteration"], "trace_seconds": res["trace_seconds"],
        "total_seconds": res["total_seconds"],
        "files": {"result": "result.png", "grid": Path(res["grid"]).name, "cost_curve": Path(res["cost_curve"]).name,
                  "checkpoints": [str(Path(p).relative_to(out)) for p in res["checkpoints"]]},
        "history": h,
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    ctx.tracker.log_artifact(Path(res["grid"]), "plots")
    ctx.tracker.log_artifact(Path(res["cost_curve"]), "plots")
    ctx.tracker.log_artifact(out / "result.png")
    ctx.tracker.log_artifact(out / "result.json")
    ctx.logger.info("%d iterations, %.2f s/iteration: J %.4g -> %.4g; wrote result.png, %s, %s",
                    params.iterations, res["seconds_per_iteration"], initial["J"], res["final_costs"]["J"],
                    Path(res["grid"]).name, Path(res["cost_curve"]).name)
    return {"J_initial": initial["J"], "J_final": res["final_costs"]["J"],
            "J_content_final": res["final_costs"]["J_content"], "J_style_final": res["final_costs"]["J_style"],
            "seconds_per_iteration": res["seconds_per_iteration"], "total_seconds": res["total_seconds"]}


SPEC = ComponentSpec(
    type="StyleTransfer",
    description="content image + style image -> the content painted in the style (neural style transfer)",
    params=StyleTransferParams,
    run=run,
    inputs={"content": False, "style": False, "model": False},
    outputs=("stylized",),
    code_dependencies=lambda p: ["models.style_transfer", "data.style_images"],
    external_files=_external,
)
