"""Neural style transfer (course notes 4.5 and 4.7, "Art Generation with Neural Style Transfer").

NST optimises the *pixels* of a generated image G, not the weights of a network: a frozen
VGG-19 maps an image to activations, and G is pushed towards the content image's activations
at one deep layer (``block4_conv2``, the course's ``conv4_2``) and towards the style image's
Gram matrices (channel correlations) at five layers.

Contents, in the order a learner meets them:

* the course's graded functions with the course's names, signatures and normalisations:
  :func:`compute_content_cost`, :func:`gram_matrix`, :func:`compute_layer_style_cost`,
  :func:`compute_style_cost`, :func:`total_cost`, and the constants :data:`STYLE_LAYERS`,
  :data:`CONTENT_LAYER`;
* :func:`build_feature_extractor`: VGG-19 (``keras.applications``) cut at the chosen layers,
  with random weights (offline default), the ImageNet weights (cached file or download), a
  local weights file, or a ``.keras`` model whose layer names the caller gives;
* image I/O: :func:`load_image`, :func:`preprocess_image` / :func:`deprocess_image` (VGG's
  caffe convention: BGR with the ImageNet channel means subtracted, as
  ``keras.applications.vgg19.preprocess_input``);
* the optimisation: :func:`make_train_step` (one compiled Adam step), :func:`optimize_image`
  (arrays in, array out) and :func:`run_style_transfer` (files in, files out; what the
  pipeline component and ``python -m pipeline stylize`` wrap).

Course defaults kept: 400x300 images, generated image initialised as
``0.6 * uniform(-20, 20) + 0.4 * content`` in the mean-subtracted pixel domain the course's
VGG model takes, Adam with learning rate 2.0, 200 iterations, alpha=10, beta=40.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# TensorFlow/Keras are needed by everything below; this module is only imported by the
# component when it runs (the CLI's --help must stay TensorFlow-free).
import keras
import tensorflow as tf
from keras import ops

log = logging.getLogger(__name__)

__all__ = [
    "STYLE_LAYERS", "CONTENT_LAYER", "VGG_MEANS_BGR", "VGG19_NOTOP_FILE", "VGG19_NOTOP_URL",
    "WeightsUnavailableError",
    "compute_content_cost", "gram_matrix", "compute_layer_style_cost", "compute_style_cost",
    "total_cost", "total_variation_cost",
    "min_input_size", "describe_weights", "build_feature_extractor",
    "parse_size", "load_image", "preprocess_image", "deprocess_image", "generate_noise_image",
    "make_train_step", "optimize_image", "run_style_transfer",
    "save_grid", "save_cost_curve",
]

# --------------------------------------------------------------------------------------
# The course's constants
# --------------------------------------------------------------------------------------

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

#: ImageNet channel means in BGR order (caffe convention, keras.applications.vgg19).
VGG_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   + VGG19_NOTOP_FILE)
# Where a reachability probe is sent before a download is attempted (tests point it at an
# unroutable address); bounded by _PROBE_TIMEOUT_S so an offline machine fails fast.
_IMAGENET_PROBE = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 3.0
_DOWNLOAD_TIMEOUT_S = 60.0

# VGG-19's layer names in order (include_top=False); used to check names and compute the
# minimum input size without building the network.
_VGG19_BLOCKS = (2, 2, 4, 4, 4)
_VGG19_LAYERS: list[str] = []
for _b, _n in enumerate(_VGG19_BLOCKS, start=1):
    _VGG19_LAYERS += [f"block{_b}_conv{_i}" for _i in range(1, _n + 1)] + [f"block{_b}_pool"]


class WeightsUnavailableError(ConnectionError):
    """The ImageNet weights are neither cached nor downloadable from here."""


# --------------------------------------------------------------------------------------
# The course's cost functions
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Feature extractor
# --------------------------------------------------------------------------------------

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


def _keras_home_candidates() -> list[Path]:
    # Where keras.utils.get_file caches the file: $KERAS_HOME, else ~/.keras, else /tmp/.keras.
    roots = []
    if os.environ.get("KERAS_HOME"):
        roots.append(Path(os.environ["KERAS_HOME"]))
    roots += [Path.home() / ".keras", Path("/tmp/.keras")]
    return [r / "models" / VGG19_NOTOP_FILE for r in roots]


def _imagenet_cache_candidates() -> list[Path]:
    return _keras_home_candidates()


def _reachable(host_port: tuple[str, int], timeout: float) -> bool:
    """True when a TCP connection opens within `timeout` seconds. Run in a daemon thread
    because DNS resolution ignores socket timeouts and can block much longer offline."""
    ok = []

    def probe():
        try:
            with socket.create_connection(host_port, timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _imagenet_weights_file() -> Path:
    """A local copy of the VGG-19 no-top ImageNet weights: the Keras cache if present,
    else a bounded download; never a hang."""
    candidates = _imagenet_cache_candidates()
    for c in candidates:
        if c.is_file():
            return c
    how = (f"Use weights=None (random weights: textures, not paintings; CLI --weights random), "
           f"or on a machine with internet download {VGG19_NOTOP_URL} and pass its path as "
           f"weights=PATH (CLI --weights PATH), or copy it to {candidates[0]}.")
    if not _reachable(_IMAGENET_PROBE, _PROBE_TIMEOUT_S):
        raise WeightsUnavailableError(
            f"weights='imagenet': the VGG-19 ImageNet weights are not cached (looked for "
            f"{', '.join(map(str, candidates))}) and {_IMAGENET_PROBE[0]} is unreachable "
            f"(no answer within {_PROBE_TIMEOUT_S:g} s). {how}")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # urlretrieve has no timeout of its own
    try:
        return Path(keras.utils.get_file(VGG19_NOTOP_FILE, VGG19_NOTOP_URL, cache_subdir="models",
                                         file_hash="253f8cb515780f3b799900260a226db6"))
    except Exception as e:  # network errors come in many types (URLError, timeout, hash)
        raise WeightsUnavailableError(f"weights='imagenet': download of {VGG19_NOTOP_URL} "
                                      f"failed: {e}. {how}") from e
    finally:
        socket.setdefaulttimeout(old)


def _legacy_h5_layer_names(path: Path) -> list[str] | None:
    """Layer names stored in a legacy Keras .h5 weights file, or None if it is not one."""
    try:
        import h5py
        with h5py.File(path, "r") as f:
            g = f["model_weights"] if "model_weights" in f else f
            names = g.attrs.get("layer_names")
            return None if names is None else [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (OSError, KeyError):
        return None


def _load_vgg19_weights(base: keras.Model, path: Path) -> None:
    """Load a VGG-19 weights file into ``base``; anything else is a ValueError naming it."""
    import warnings

    conv_names = [l.name for l in base.layers if isinstance(l, keras.layers.Conv2D)]
    saved = _legacy_h5_layer_names(path) if path.suffix in (".h5", ".hdf5") and not path.name.endswith(".weights.h5") else None
    # The full (include_top=True) VGG-19 file holds the same conv layers plus fc1/fc2/
    # predictions: load it by layer name, but only when every conv layer is in it (by-name
    # loading silently skips absent layers, which would leave random ones).
    by_name = saved is not None and len(saved) != len(conv_names) and set(conv_names) <= set(saved)
    try:
        with warnings.catch_warnings():
            # Keras warns once per unmatched layer before raising; the error below says it all.
            warnings.simplefilter("ignore")
            base.load_weights(str(path), **({"by_name": True} if by_name else {}))
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(
            f"{path} is not a VGG-19 (include_top=False) weights file ({detail}). Expected "
            f"{VGG19_NOTOP_FILE} from {VGG19_NOTOP_URL}, or weights saved from "
            f"keras.applications.VGG19(include_top=False); for another network pass a .keras "
            f"model and name its layers") from e


def _is_random(weights) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random"))


def describe_weights(weights) -> str:
    """One line saying what the extractor's weights are, for logs, MLflow params and the
    runner's output (random weights give textures, not paintings: say so)."""
    if _is_random(weights):
        return ("random (weights=None): an untrained VGG-19, so the result is a texture, not a "
                "painting; use weights='imagenet' or a path to " + VGG19_NOTOP_FILE)
    if isinstance(weights, str) and weights == "imagenet":
        return "imagenet (keras.applications VGG-19 ImageNet weights)"
    p = Path(weights)
    if p.suffix == ".keras":
        return f"keras model {p}"
    return f"VGG-19 weights file {p}"


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
    subtracted: :func:`preprocess_image`) to ``[style layer outputs..., content output]``.

    ``weights``:
      * ``None`` (or "random"/"none"): VGG-19 with random weights drawn from ``seed``. The
        default offline; results are textures, not paintings (see :func:`describe_weights`).
      * ``"imagenet"``: the Keras cache (``$KERAS_HOME`` or ``~/.keras/models/``) or a
        download; offline without the cached file it raises :class:`WeightsUnavailableError`
        within a few seconds.
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


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

def parse_size(text: str | Sequence[int]) -> tuple[int, int]:
    """"400x300" (width x height, the CLI's --size) or (400, 300) -> (400, 300)."""
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 400x300; got {text!r}")
        w, h = (int(p) for p in parts)
    else:
        w, h = (int(v) for v in text)
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {w}x{h}")
    return w, h


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


# --------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------

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


def _progress(enabled: bool, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            s = task.speed
            return Text(f"{s:.2f} it/s" if s else "-- it/s", style="progress.data.speed")

    return Progress(
        TextColumn("NST"), BarColumn(bar_width=20), MofNCompleteColumn(),
        TextColumn("J={task.fields[J]:.4g} J_content={task.fields[J_content]:.3g} "
                   "J_style={task.fields[J_style]:.3g}"),
        Speed(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def optimize_image(content_rgb: np.ndarray, style_rgb: np.ndarray, extractor: keras.Model, *,
                   iterations: int = 200, alpha: float = 10, beta: float = 40,
                   learning_rate: float = 2.0, tv_weight: float = 0.0,
                   style_layers=STYLE_LAYERS, noise_ratio: float = 0.6, seed: int | None = 0,
                   jit_compile: bool = False, progress: bool = True, every: int = 0,
                   callback: Callable[[int, np.ndarray, dict], None] | None = None,
                   on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Optimise a generated image; arrays in, arrays out (no files).

    ``content_rgb``/``style_rgb``: RGB uint8 (H, W, 3) of the extractor's input size.
    ``callback(iteration, rgb_uint8, costs)`` runs every ``every`` iterations (and never
    when ``every`` <= 0). ``on_step(iteration, costs)`` runs after every step (cheap: for a
    caller's own progress display, e.g. the pipeline component's). Returns ``{"image": rgb uint8, "history": {"iteration", "J",
    "J_content", "J_style", "J_tv": lists}, "final_costs": costs of the returned image,
    "seconds_per_iteration": median over the steps after the first (which traces),
    "trace_seconds": the first step}``.
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
    with _progress(progress, iterations) as bar:
        task = bar.add_task("nst", total=iterations, J=float("nan"), J_content=float("nan"),
                            J_style=float("nan"))
        for i in range(1, iterations + 1):
            t0 = time.perf_counter()
            costs = {k: float(v) for k, v in step().items()}  # float() waits for the step
            times.append(time.perf_counter() - t0)
            if not all(math.isfinite(v) for v in costs.values()):
                raise FloatingPointError(f"cost became {costs} at iteration {i}; lower the learning rate")
            history["iteration"].append(i)
            for k in keys:
                history[k].append(costs[k])
            bar.update(task, advance=1, J=costs["J"], J_content=costs["J_content"], J_style=costs["J_style"])
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


# --------------------------------------------------------------------------------------
# Files: plots, atomic writes, the end-to-end runner
# --------------------------------------------------------------------------------------

def _tmp_name(path: Path) -> Path:
    # Same folder (so os.replace is atomic), same suffix (so PIL/matplotlib pick the format).
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _save_rgb(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image
    Image.fromarray(rgb).save(path)


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


def run_style_transfer(content_path, style_path, out_path, *, size=(400, 300), iterations: int = 200,
                       weights=None, alpha: float = 10, beta: float = 40, learning_rate: float = 2.0,
                       tv_weight: float = 0.0, style_layers=STYLE_LAYERS, content_layer=CONTENT_LAYER,
                       save_every: int = 50, seed: int = 0, progress: bool = True,
                       on_checkpoint: Callable[[int, str, dict], None] | None = None,
                       checkpoint_dir=None, jit_compile: bool = False,
                       extractor: keras.Model | None = None,
                       on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Paint ``content_path`` in the style of ``style_path``; write the result to ``out_path``.

    ``size``: (width, height) or "WIDTHxHEIGHT"; both images are resized to it.
    ``weights``: see :func:`build_feature_extractor` (``None`` = random VGG-19 = textures).
    Every ``save_every`` iterations (and at the last) the current image is written to
    ``checkpoint_dir`` (default ``<out dir>/<out stem>_checkpoints/``) as
    ``iter_NNNN.png`` and ``on_checkpoint(iteration, png_path, costs)`` is called (costs of
    that step, evaluated before its update). ``extractor``: a prebuilt
    :func:`build_feature_extractor` model of this size, to reuse across calls.
    ``on_step(iteration, costs)``: called after every step (see :func:`optimize_image`).

    Writes ``out_path`` (PNG), ``<stem>_grid.png`` (content | style | result) and
    ``<stem>_costs.png`` (cost curve), each to a temporary name first and renamed into place
    only when all three are complete. Returns ``{"output", "grid", "cost_curve",
    "checkpoints", "final_costs", "history", "seconds_per_iteration", "trace_seconds",
    "total_seconds", "iterations", "size", "weights"}``.
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
    if progress:
        from rich.console import Console
        Console(stderr=True).print(f"[bold]feature extractor:[/bold] {weights_desc}", highlight=False)
    elif _is_random(weights):
        log.warning("style transfer with %s", weights_desc)  # still said when the bar is off
    if extractor is None:
        extractor = build_feature_extractor(weights, style_layers, content_layer, (height, width, 3), seed=seed)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out_path.with_name(f"{out_path.stem}_checkpoints")
    checkpoints: list[str] = []

    def checkpoint(i: int, rgb: np.ndarray, costs: dict) -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        p = ckpt_dir / f"iter_{i:04d}.png"
        tmp = _tmp_name(p)
        _save_rgb(rgb, tmp)
        os.replace(tmp, p)
        checkpoints.append(str(p))
        if on_checkpoint is not None:
            on_checkpoint(i, str(p), dict(costs))

    res = optimize_image(content_rgb, style_rgb, extractor, iterations=iterations, alpha=alpha, beta=beta,
                         learning_rate=learning_rate, tv_weight=tv_weight, style_layers=style_layers,
                         seed=seed, jit_compile=jit_compile, progress=progress,
                         every=save_every or 0, callback=checkpoint, on_step=on_step)

    final = {"output": out_path,
             "grid": out_path.with_name(f"{out_path.stem}_grid.png"),
             "cost_curve": out_path.with_name(f"{out_path.stem}_costs.png")}
    tmps = {k: _tmp_name(p) for k, p in final.items()}
    title = f"{iterations} iterations, {width}x{height}, alpha={alpha:g}, beta={beta:g}; weights: {weights_desc.split(':')[0]}"
    try:
        _save_rgb(res["image"], tmps["output"])
        save_grid(content_rgb, style_rgb, res["image"], tmps["grid"], title=title)
        save_cost_curve(res["history"], tmps["cost_curve"], alpha, beta, tv_weight, title=title)
        for k in final:
            os.replace(tmps[k], final[k])
    finally:
        for t in tmps.values():
            t.unlink(missing_ok=True)

    return {**{k: str(v) for k, v in final.items()}, "checkpoints": checkpoints,
            "final_costs": res["final_costs"], "history": res["history"],
            "seconds_per_iteration": res["seconds_per_iteration"], "trace_seconds": res["trace_seconds"],
            "total_seconds": time.perf_counter() - t_start, "iterations": iterations,
            "size": (width, height), "weights": weights_desc}
