"""Neural style transfer (course notes 4.5 and 4.7, "Art Generation with Neural Style Transfer").

NST optimises the *pixels* of a generated image G, not the weights of a network: a frozen
VGG-19 maps an image to activations, and G is pushed towards the content image's activations
at one deep layer (``block4_conv2``, the course's ``conv4_2``) and towards the style image's
Gram matrices (channel correlations) at five layers.

The modules, in the order a learner meets them (every public name is re-exported here, so
``from models import style_transfer as st; st.compute_content_cost(...)`` works):

* :mod:`.costs`: the course's graded functions with the course's names, signatures and
  normalisations: :func:`compute_content_cost`, :func:`gram_matrix`,
  :func:`compute_layer_style_cost`, :func:`compute_style_cost`, :func:`total_cost`, the
  constants :data:`STYLE_LAYERS`, :data:`CONTENT_LAYER`; and :func:`total_variation_cost`.
* :mod:`.network`: :func:`build_feature_extractor`, VGG-19 (``keras.applications``) cut at
  the chosen layers, and :func:`min_input_size`;
  :mod:`.vgg_weights`: where its weights come from: random (offline default), the ImageNet
  weights (cached file, or a download after a bounded reachability probe), a local weights
  file (h5 sniffed for its layer names), or a ``.keras`` model whose layer names the caller
  gives; :func:`describe_weights`, :class:`WeightsUnavailableError`.
* :mod:`.images`: :func:`parse_size`, :func:`load_image`, :func:`preprocess_image` /
  :func:`deprocess_image` (VGG's caffe convention: BGR with the ImageNet channel means
  subtracted, as ``keras.applications.vgg19.preprocess_input``), :func:`generate_noise_image`.
* :mod:`.optimize`: :func:`make_train_step` (one compiled Adam step) and
  :func:`optimize_image` (arrays in, array out).
* :mod:`.report`: :func:`save_grid`, :func:`save_cost_curve` and the atomic file writes;
  :mod:`.runner`: :func:`run_style_transfer` (files in, files out; what the pipeline
  component and ``python -m pipeline stylize`` wrap).
Nothing in the package prints: callers show progress through ``on_step``.

Course defaults kept: 400x300 images, generated image initialised as
``0.6 * uniform(-20, 20) + 0.4 * content`` in the mean-subtracted pixel domain the course's
VGG model takes, Adam with learning rate 2.0, 200 iterations, alpha=10, beta=40.

TensorFlow/Keras are imported by this package; the component and the CLI import it only when
they run (``python -m pipeline --help`` must stay TensorFlow-free).
"""
from __future__ import annotations

from .costs import (CONTENT_LAYER, STYLE_LAYERS, compute_content_cost, compute_layer_style_cost,
                    compute_style_cost, gram_matrix, total_cost, total_variation_cost)
from .images import (VGG_MEANS_BGR, deprocess_image, generate_noise_image, load_image, parse_size,
                     preprocess_image)
from .network import build_feature_extractor, min_input_size
from .optimize import make_train_step, optimize_image
from .report import save_cost_curve, save_grid
from .runner import run_style_transfer
from .vgg_weights import VGG19_NOTOP_FILE, VGG19_NOTOP_URL, WeightsUnavailableError, describe_weights

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
