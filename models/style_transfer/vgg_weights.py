"""Where the feature extractor's weights come from: what a ``weights`` argument means
(:func:`describe_weights`), the ImageNet file (the Keras cache, else a download that is only
tried after a bounded reachability probe, so an offline machine fails in seconds instead of
hanging), and loading a VGG-19 weights file (sniffing legacy ``.h5`` files for their layer
names, so a file of another network is refused by name instead of half-loaded).
"""
from __future__ import annotations

import os
import socket
import threading
import warnings
from pathlib import Path

import keras

__all__ = ["VGG19_NOTOP_FILE", "VGG19_NOTOP_URL", "WeightsUnavailableError", "describe_weights"]

VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   + VGG19_NOTOP_FILE)
# Where a reachability probe is sent before a download is attempted (tests point it at an
# unroutable address); bounded by _PROBE_TIMEOUT_S so an offline machine fails fast.
_IMAGENET_PROBE = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 3.0
_DOWNLOAD_TIMEOUT_S = 60.0


class WeightsUnavailableError(ConnectionError):
    """The ImageNet weights are neither cached nor downloadable from here."""


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


# --------------------------------------------------------------------------------------
# The ImageNet file: cache, reachability probe, bounded download
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# A VGG-19 weights file given by path
# --------------------------------------------------------------------------------------

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
