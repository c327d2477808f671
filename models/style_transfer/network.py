"""The frozen VGG-19 feature extractor: :func:`build_feature_extractor` cuts
``keras.applications.VGG19`` (or a ``.keras`` model) at the style and content layers, and
:func:`min_input_size` says how small an image those layers accept, from VGG-19's layer list
alone (no network built). Where the weights come from is :mod:`.vgg_weights`.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from .costs import CONTENT_LAYER, STYLE_LAYERS
from .vgg_weights import _imagenet_weights_file, _is_random, _load_vgg19_weights

__all__ = ["min_input_size", "build_feature_extractor"]

# VGG-19's layer names in order (include_top=False); used to check names and compute the
# minimum input size without building the network.
_VGG19_BLOCKS = (2, 2, 4, 4, 4)
_VGG19_LAYERS: list[str] = []
for _b, _n in enumerate(_VGG19_BLOCKS, start=1):
    _VGG19_LAYERS += [f"block{_b}_conv{_i}" for _i in range(1, _n + 1)] + [f"block{_b}_pool"]


def _layer_pairs(layers, what: str) -> list[tuple[str, float]]:
    """Accept [(name, weight), ...], a single name, or a list of names (weight 1)."""
    if isinstance(layers, str):
        layers = [(layers, 1.0)]
    out = []
    for item in layers:
        if isinstance(item, str):
            out.append((item, 1.0))
        else:
            name, weight = item
            out.append((str(name), float(weight)))
    if not out:
        raise ValueError(f"{what}: no layers given")
    return out


def _content_name(content_layer) -> str:
    pairs = _layer_pairs(content_layer, "content_layer")
    if len(pairs) != 1:
        raise ValueError(f"content_layer must name exactly one layer, got {[n for n, _ in pairs]}")
    return pairs[0][0]


def min_input_size(style_layers=STYLE_LAYERS, content_layer=CONTENT_LAYER) -> int:
    """Smallest image side (pixels) for which every chosen VGG-19 layer has at least one
    position: each 2x2/2 max-pool before a layer halves the size (rounding down), so a layer
    after k pools needs 2^k. Defaults: block5_conv1 comes after 4 pools -> 16."""
    names = [n for n, _ in _layer_pairs(style_layers, "style_layers")] + [_content_name(content_layer)]
    unknown = [n for n in names if n not in _VGG19_LAYERS]
    if unknown:
        raise ValueError(f"unknown VGG-19 layer(s) {unknown}; VGG-19 (include_top=False) has: "
                         f"{', '.join(_VGG19_LAYERS)}")
    pools = max(sum(1 for x in _VGG19_LAYERS[: _VGG19_LAYERS.index(n) + 1] if x.endswith("_pool"))
                for n in names)
    return 2 ** pools


def _reinit_seeded(model: keras.Model, seed: int) -> None:
    # Keras draws unseeded initial weights from global state; re-draw them from per-layer
    # seeds so weights=None is reproducible without touching the global RNGs.
    for i, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(keras.initializers.GlorotUniform(seed=seed * 1009 + i)(layer.kernel.shape))
            if layer.bias is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, "float32"))


def _check_input_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
    return shape


def build_feature_extractor(weights=None, style_layers=STYLE_LAYERS, content_layer=CONTENT_LAYER,
                            input_shape=(300, 400, 3), *, seed: int | None = 0) -> keras.Model:
    """A frozen keras Model mapping a preprocessed image (1, H, W, 3) (caffe BGR, means
    subtracted: :func:`~models.style_transfer.images.preprocess_image`) to
    ``[style layer outputs..., content output]``.

    ``weights``:
      * ``None`` (or "random"/"none"): VGG-19 with random weights drawn from ``seed``. The
        default offline; results are textures, not paintings (see
        :func:`~models.style_transfer.vgg_weights.describe_weights`).
      * ``"imagenet"``: the Keras cache (``$KERAS_HOME`` or ``~/.keras/models/``) or a
        download; offline without the cached file it raises
        :class:`~models.style_transfer.vgg_weights.WeightsUnavailableError` within a few seconds.
      * a path to a VGG-19 no-top weights file (``.h5`` as distributed by keras.applications,
        or ``.weights.h5``); another architecture's file raises ``ValueError`` naming it.
      * a path to a ``.keras`` model (e.g. one the pipeline registered): loaded with
        ``safe_mode``; ``style_layers``/``content_layer`` must then name its layers, and it
        must expect the same preprocessing.

    ``input_shape`` is (height, width, 3), e.g. (300, 400, 3) for the course's 400x300.
    """
    shape = _check_input_shape(input_shape)
    style_pairs = _layer_pairs(style_layers, "style_layers")
    content_name = _content_name(content_layer)
    names = [n for n, _ in style_pairs] + [content_name]

    keras_model_file = (not _is_random(weights) and weights != "imagenet"
                        and Path(weights).suffix == ".keras")
    if not keras_model_file:
        need = min_input_size(style_pairs, content_name)
        if min(shape[:2]) < need:
            raise ValueError(
                f"image size {shape[1]}x{shape[0]} (width x height) is too small for layers "
                f"{names}: VGG-19 halves the size at each max-pool and the deepest chosen layer "
                f"needs at least {need}x{need} pixels")

    if _is_random(weights) or weights == "imagenet":
        # Resolve the ImageNet file first: offline, fail in seconds before building anything.
        imagenet_file = _imagenet_weights_file() if weights == "imagenet" else None
        # Built on (None, None, 3): keras.applications refuses fixed inputs under 32x32 and
        # builds block5_pool, which sizes 16-31 can't feed; the extractor is cut at the
        # chosen layers anyway and gets its fixed input shape below.
        base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
        if weights == "imagenet":
            try:
                base.load_weights(str(imagenet_file))
            except Exception as e:
                raise ValueError(f"cached ImageNet weights {imagenet_file} cannot be loaded ({e}); "
                                 f"delete it to download again, or pass weights=PATH") from e
        elif seed is not None:
            _reinit_seeded(base, seed)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if keras_model_file:
            try:
                base = keras.saving.load_model(path, compile=False, safe_mode=True)
            except Exception as e:
                raise ValueError(f"cannot load Keras model {path}: {e}") from e
        else:
            base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
            _load_vgg19_weights(base, path)

    available = [l.name for l in base.layers]
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"layer(s) {missing} not in model {base.name!r}; its layers: {', '.join(available)}")
    base.trainable = False
    cut = keras.Model(base.inputs, [base.get_layer(n).output for n in names], name="vgg_cut")

    # Wrap with a fixed-size input so every activation has a static shape (the costs'
    # normalisations then are Python constants in the compiled step).
    in_shape = tuple(cut.inputs[0].shape[1:])
    if any(d is not None and d != s for d, s in zip(in_shape, shape)):
        raise ValueError(f"model {weights} takes inputs of shape {in_shape}, not {shape}; "
                         f"resize the images to match (size={in_shape[1]}x{in_shape[0]})")
    inp = keras.Input(shape=shape, name="image")
    outs = cut(inp)
    for n, o in zip(names, outs):
        if any(d is not None and d < 1 for d in o.shape[1:3]):
            raise ValueError(f"image size {shape[1]}x{shape[0]} is too small: layer {n} output is {o.shape}")
    model = keras.Model(inp, outs, name="nst_feature_extractor")
    model.trainable = False
    return model
