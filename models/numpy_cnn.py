"""The course's "Convolution model step by step" in numpy, vectorised.

Same names, signatures, shapes and caches as the course's graded functions, so a learner can
put this module next to their notebook and compare:

* channels-last: ``A_prev`` is ``(m, n_H_prev, n_W_prev, n_C_prev)``, ``W`` is
  ``(f, f, n_C_prev, n_C)``, ``b`` is ``(1, 1, 1, n_C)``;
* ``hparameters`` is a dict: ``{"stride", "pad"}`` for convolutions, ``{"f", "stride"}`` for
  pooling (pooling never pads, as in the course);
* output size per spatial axis: ``floor((n_prev + 2*pad - f) / stride) + 1``;
* ``conv_forward`` returns ``(Z, (A_prev, W, b, hparameters))`` and ``pool_forward`` returns
  ``(A, (A_prev, hparameters))``; the backward passes take those caches.

Instead of the course's four nested Python loops, every window of the (padded) input is
exposed at once as a strided *view* (``numpy.lib.stride_tricks.as_strided``, no copy) of shape
``(m, n_H, n_W, f, f, n_C_prev)``, copied once into an im2col matrix and multiplied with the
filters in one BLAS matrix product. The backward pass gets dW the same way and scatters the
input gradient back with ``f*f`` strided slice-adds (col2im), each vectorised over batch,
positions and channels.
The core works on any number of spatial axes, which gives ``conv3d_forward`` /
``conv3d_backward`` (course note 4.6) for free.

Max-pool backward keeps the course's mask, ``create_mask_from_window(x) = (x == max(x))``:
when several entries of a window tie for the maximum, *each* of them receives the full
upstream gradient. TensorFlow's ``MaxPoolGrad`` routes it to one entry only, so the two agree
exactly on inputs without ties (random floats) and differ only on ties; the tests check both.

Speed (benchmarks/bench_numpy_cnn.py): the GEMMs are thin, so on a small machine shared
with other jobs OpenBLAS's threads oversubscribe the cores and get several times *slower*;
there, run with ``OPENBLAS_NUM_THREADS=1`` (or ``threadpoolctl``). This module changes no
global thread setting itself.

The course's loop versions live at the end of this file (``*_naive``) as the test oracle and
the benchmark baseline; nothing else should call them.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "zero_pad",
    "conv_single_step",
    "conv_forward",
    "conv_backward",
    "pool_forward",
    "pool_backward",
    "create_mask_from_window",
    "distribute_value",
    "conv3d_forward",
    "conv3d_backward",
    "conv_output_size",
]

POOL_MODES = ("max", "average")


# --------------------------------------------------------------------------------------------
# validation helpers: every bad input is a ValueError that names the argument and the problem
# --------------------------------------------------------------------------------------------

def conv_output_size(n_prev: int, f: int, pad: int = 0, stride: int = 1) -> int:
    """The course's formula: floor((n_prev + 2*pad - f) / stride) + 1."""
    return (n_prev + 2 * pad - f) // stride + 1


def _as_float_array(x: Any, name: str, ndim: int | None = None, layout: str = "") -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)  # integer/bool inputs would silently truncate the maths
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {x.shape} ({x.ndim}-D)")
    return x


def _hparam_int(hparameters: Any, key: str, minimum: int, what: str) -> int:
    if not isinstance(hparameters, dict):
        raise ValueError(f"hparameters must be a dict, got {type(hparameters).__name__}")
    if key not in hparameters:
        raise ValueError(f"hparameters is missing {key!r} (got keys {sorted(hparameters)})")
    value = hparameters[key]
    # bool is an int subclass; hparameters={"pad": True} is a bug, not pad=1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"hparameters[{key!r}] must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"hparameters[{key!r}] must be {what}, got {value}")
    return value


def _check_pad(pad: Any) -> int:
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral):
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    if pad < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    return int(pad)


def _check_window_fits(spatial: tuple[int, ...], f: tuple[int, ...], pad: int, what: str) -> None:
    for axis, (n, k) in enumerate(zip(spatial, f)):
        if k < 1:
            raise ValueError(f"{what} size must be at least 1, got {k} on spatial axis {axis}")
        if k > n + 2 * pad:
            raise ValueError(
                f"{what} size f={k} is larger than the padded input ({n} + 2*{pad} = {n + 2 * pad}) "
                f"on spatial axis {axis}"
            )


def _check_pool_mode(mode: Any) -> str:
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOL_MODES}")
    return mode


# --------------------------------------------------------------------------------------------
# the strided-window core, for any number of spatial axes
# --------------------------------------------------------------------------------------------

def _pad_spatial(x: np.ndarray, pad: int) -> np.ndarray:
    if pad == 0:
        return x
    widths = [(0, 0)] + [(pad, pad)] * (x.ndim - 2) + [(0, 0)]
    return np.pad(x, widths, mode="constant", constant_values=0)


def _windows(x: np.ndarray, f: tuple[int, ...], stride: int) -> np.ndarray:
    """Read-only view of every window: (m, *out_spatial, *f, C) for x of shape (m, *spatial, C).

    No data is copied; window [i, h, w, a, b, c] is x[i, h*stride + a, w*stride + b, c].
    """
    m, *spatial, c = x.shape
    out = tuple(conv_output_size(n, k, 0, stride) for n, k in zip(spatial, f))
    s = x.strides
    shape = (m, *out, *f, c)
    strides = (s[0], *(st * stride for st in s[1:-1]), *s[1:-1], s[-1])
    return as_strided(x, shape=shape, strides=strides, writeable=False)


def _scatter_windows(dwin: np.ndarray, padded_shape: tuple[int, ...], stride: int) -> np.ndarray:
    """Adjoint of `_windows` (col2im): sum window gradients (m, *out, *f, C) back onto the input.

    Loops only over the f*f (or f*f*f) offsets inside a window; each step is one strided
    slice-add over the whole batch, all output positions and all channels.
    """
    nd = len(padded_shape) - 2
    out = dwin.shape[1:1 + nd]
    f = dwin.shape[1 + nd:1 + 2 * nd]
    dx = np.zeros(padded_shape, dtype=dwin.dtype)
    for offset in np.ndindex(*f):
        dx[_offset_slice(offset, out, stride)] += dwin[(slice(None),) * (1 + nd) + offset + (slice(None),)]
    return dx


def _offset_slice(offset: tuple[int, ...], out: tuple[int, ...], stride: int) -> tuple[slice, ...]:
    """Index of the input entries that offset `offset` of every window touches (all windows)."""
    spatial = tuple(slice(o, o + stride * (n - 1) + 1, stride) for o, n in zip(offset, out))
    return (slice(None), *spatial, slice(None))


def _unpad_spatial(x: np.ndarray, pad: int) -> np.ndarray:
    # the course writes dA_prev_pad[pad:-pad, ...], which is empty for pad == 0
    if pad == 0:
        return x
    return x[(slice(None),) + (slice(pad, -pad),) * (x.ndim - 2) + (slice(None),)]


def _check_conv_inputs(A_prev, W, b, hparameters, nd: int):
    names = "n_D_prev, n_H_prev, n_W_prev" if nd == 3 else "n_H_prev, n_W_prev"
    A_prev = _as_float_array(A_prev, "A_prev", nd + 2, f"(m, {names}, n_C_prev)")
    W = _as_float_array(W, "W", nd + 2, f"({', '.join(['f'] * nd)}, n_C_prev, n_C)")
    n_C = W.shape[-1]
    b = _as_float_array(b, "b")
    if b.size != n_C:
        raise ValueError(f"b must hold one bias per filter ({n_C}), got shape {b.shape}")
    if A_prev.shape[-1] != W.shape[-2]:
        raise ValueError(
            f"channel mismatch: A_prev has n_C_prev={A_prev.shape[-1]} channels but W expects "
            f"{W.shape[-2]} (W.shape={W.shape})"
        )
    stride = _hparam_int(hparameters, "stride", 1, "a positive integer")
    pad = _hparam_int(hparameters, "pad", 0, "non-negative")
    _check_window_fits(A_prev.shape[1:-1], W.shape[:nd], pad, "filter")
    return A_prev, W, b.reshape(n_C), stride, pad


def _conv_forward_nd(A_prev, W, b, hparameters, nd):
    A, Wc, bc, stride, pad = _check_conv_inputs(A_prev, W, b, hparameters, nd)
    win = _windows(_pad_spatial(A, pad), Wc.shape[:nd], stride)
    # im2col: one contiguous copy of the windows, (m * positions, f*f*n_C_prev), then one GEMM
    cols = _im2col(win, nd)
    Z = (cols @ Wc.reshape(cols.shape[1], -1)).reshape(win.shape[:nd + 1] + Wc.shape[-1:])
    Z += bc
    return Z, (A_prev, W, b, hparameters)


def _im2col(win: np.ndarray, nd: int) -> np.ndarray:
    # an explicit C-order copy: tensordot on the strided view would copy too, but in a
    # transposed order for dW that measured ~2x slower
    rows = int(np.prod(win.shape[:nd + 1]))
    return np.ascontiguousarray(win).reshape(rows, -1)


def _conv_backward_nd(dZ, cache, nd):
    try:
        A_prev, W, b, hparameters = cache
    except (TypeError, ValueError):
        raise ValueError("cache must be the (A_prev, W, b, hparameters) tuple from conv_forward") from None
    A, Wc, _, stride, pad = _check_conv_inputs(A_prev, W, b, hparameters, nd)
    dZ = _as_float_array(dZ, "dZ", nd + 2)
    f = Wc.shape[:nd]
    A_pad = _pad_spatial(A, pad)
    expected = (A.shape[0], *(conv_output_size(n, k, 0, stride) for n, k in zip(A_pad.shape[1:-1], f)),
                Wc.shape[-1])
    if dZ.shape != expected:
        raise ValueError(f"dZ has shape {dZ.shape}, but conv_forward produced {expected}")
    n_C = Wc.shape[-1]
    dZ2 = dZ.reshape(-1, n_C)
    db = dZ2.sum(axis=0).reshape((1,) * (nd + 1) + (n_C,))
    # dW = im2col(A_pad)^T . dZ: one GEMM over every (example, position)
    dW = (_im2col(_windows(A_pad, f, stride), nd).T @ dZ2).reshape(Wc.shape)
    # dA_prev (col2im): for each offset inside the window, one GEMM dZ . W[offset]^T added
    # into a strided slice. Cheaper than materialising all window gradients at once.
    dA_pad = np.zeros(A_pad.shape, dtype=np.result_type(dZ, Wc, A))
    out = dZ.shape[1:-1]
    for offset in np.ndindex(*f):
        dA_pad[_offset_slice(offset, out, stride)] += (dZ2 @ Wc[offset].T).reshape(dZ.shape[:-1] + (-1,))
    return _unpad_spatial(dA_pad, pad), dW, db


# --------------------------------------------------------------------------------------------
# the course's functions
# --------------------------------------------------------------------------------------------

def zero_pad(X, pad):
    """Pad every image of X (m, n_H, n_W, n_C) with `pad` zeros on height and width.

    Returns X_pad of shape (m, n_H + 2*pad, n_W + 2*pad, n_C).
    """
    X = _as_float_array(X, "X", 4, "(m, n_H, n_W, n_C)")
    return _pad_spatial(X, _check_pad(pad))


def conv_single_step(a_slice_prev, W, b):
    """One filter on one (f, f, n_C_prev) slice: sum(a_slice_prev * W) + b, as a Python float."""
    a = _as_float_array(a_slice_prev, "a_slice_prev")
    W = _as_float_array(W, "W")
    if a.shape != W.shape:
        raise ValueError(f"a_slice_prev has shape {a.shape} but W has shape {W.shape}; they must match")
    b = _as_float_array(b, "b")
    if b.size != 1:
        raise ValueError(f"b must hold a single bias, got shape {b.shape}")
    return float(np.sum(a * W)) + float(b.reshape(()))


def conv_forward(A_prev, W, b, hparameters):
    """Convolution forward pass.

    A_prev (m, n_H_prev, n_W_prev, n_C_prev), W (f, f, n_C_prev, n_C), b (1, 1, 1, n_C),
    hparameters {"stride": s, "pad": p}. Returns Z (m, n_H, n_W, n_C) with
    n_H = floor((n_H_prev + 2p - f) / s) + 1, and cache (A_prev, W, b, hparameters).
    Non-square filters (f_H, f_W, n_C_prev, n_C) work too, each axis with its own f.
    """
    return _conv_forward_nd(A_prev, W, b, hparameters, 2)


def conv_backward(dZ, cache):
    """Convolution backward pass: dZ (m, n_H, n_W, n_C) and conv_forward's cache ->
    (dA_prev (m, n_H_prev, n_W_prev, n_C_prev), dW (f, f, n_C_prev, n_C), db (1, 1, 1, n_C))."""
    return _conv_backward_nd(dZ, cache, 2)


def conv3d_forward(A_prev, W, b, hparameters):
    """3-D convolution (course note 4.6): A_prev (m, n_D, n_H, n_W, n_C_prev),
    W (f, f, f, n_C_prev, n_C), b (1, 1, 1, 1, n_C). E.g. 32x32x32x16 with 32 filters of
    3x3x3, no pad, stride 1 -> (m, 30, 30, 30, 32). Returns (Z, cache) like conv_forward."""
    return _conv_forward_nd(A_prev, W, b, hparameters, 3)


def conv3d_backward(dZ, cache):
    """Backward pass of conv3d_forward: -> (dA_prev, dW, db)."""
    return _conv_backward_nd(dZ, cache, 3)


def create_mask_from_window(x):
    """Boolean mask of the maximum of x. Ties: every maximal entry is True (the course's
    `x == np.max(x)`), so each of them receives the gradient in max-pool backward."""
    x = _as_float_array(x, "x")
    if x.size == 0:
        raise ValueError("x must not be empty")
    return x == np.max(x)


def distribute_value(dz, shape):
    """Spread the scalar gradient dz evenly over a window of the given (n_H, n_W) shape."""
    dz = _as_float_array(dz, "dz")
    if dz.size != 1:
        raise ValueError(f"dz must be a scalar, got shape {dz.shape}")
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of window sizes, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must contain positive window sizes, got {shape}")
    return np.full(shape, float(dz.reshape(())) / float(np.prod(shape)))


def _check_pool_inputs(A_prev, hparameters, mode):
    _check_pool_mode(mode)
    A = _as_float_array(A_prev, "A_prev", 4, "(m, n_H_prev, n_W_prev, n_C_prev)")
    f = _hparam_int(hparameters, "f", 1, "a positive integer")
    stride = _hparam_int(hparameters, "stride", 1, "a positive integer")
    _check_window_fits(A.shape[1:-1], (f, f), 0, "pooling window")
    return A, f, stride


def pool_forward(A_prev, hparameters, mode="max"):
    """Pooling forward pass (no padding, as in the course).

    A_prev (m, n_H_prev, n_W_prev, n_C), hparameters {"f": f, "stride": s}, mode "max" or
    "average". Returns A (m, n_H, n_W, n_C) with n_H = floor((n_H_prev - f) / s) + 1, and
    cache (A_prev, hparameters).
    """
    A, f, stride = _check_pool_inputs(A_prev, hparameters, mode)
    win = _windows(A, (f, f), stride)
    out = win.max(axis=(3, 4)) if mode == "max" else win.mean(axis=(3, 4))
    return out, (A_prev, hparameters)


def pool_backward(dA, cache, mode="max"):
    """Pooling backward pass: dA (m, n_H, n_W, n_C) and pool_forward's cache -> dA_prev.

    "max": each window's gradient goes to the positions where the window equals its maximum
    (all of them on ties, the course's mask). "average": it is spread evenly over the window.
    Overlapping windows (stride < f) accumulate, as in the course's `+=`.
    """
    try:
        A_prev, hparameters = cache
    except (TypeError, ValueError):
        raise ValueError("cache must be the (A_prev, hparameters) tuple from pool_forward") from None
    A, f, stride = _check_pool_inputs(A_prev, hparameters, mode)
    dA = _as_float_array(dA, "dA", 4, "(m, n_H, n_W, n_C)")
    win = _windows(A, (f, f), stride)
    if dA.shape != win.shape[:3] + win.shape[-1:]:
        raise ValueError(f"dA has shape {dA.shape}, but pool_forward produced {win.shape[:3] + win.shape[-1:]}")
    g = dA[:, :, :, None, None, :]
    if mode == "max":
        mask = win == win.max(axis=(3, 4), keepdims=True)
        dwin = np.where(mask, g, 0.0)
    else:
        dwin = np.broadcast_to(g / (f * f), win.shape)
    return _scatter_windows(np.asarray(dwin, dtype=np.result_type(dA, A)), A.shape, stride)


# --------------------------------------------------------------------------------------------
# reference: the course's loop implementations (test oracle and benchmark baseline only)
# --------------------------------------------------------------------------------------------

def conv_forward_naive(A_prev, W, b, hparameters):
    """The course's quadruple loop over (i, h, w, c) calling conv_single_step."""
    stride, pad = hparameters["stride"], hparameters["pad"]
    m, n_H_prev, n_W_prev, _ = A_prev.shape
    f, _, _, n_C = W.shape
    n_H = conv_output_size(n_H_prev, f, pad, stride)
    n_W = conv_output_size(n_W_prev, f, pad, stride)
    Z = np.zeros((m, n_H, n_W, n_C))
    A_prev_pad = zero_pad(A_prev, pad)
    for i in range(m):
        a_prev_pad = A_prev_pad[i]
        for h in range(n_H):
            vs = h * stride
            for w in range(n_W):
                hs = w * stride
                for c in range(n_C):
                    a_slice = a_prev_pad[vs:vs + f, hs:hs + f, :]
                    Z[i, h, w, c] = conv_single_step(a_slice, W[:, :, :, c], b[:, :, :, c])
    return Z, (A_prev, W, b, hparameters)


def conv_backward_naive(dZ, cache):
    """The course's loop backward pass (with the pad == 0 slice fixed)."""
    A_prev, W, b, hparameters = cache
    stride, pad = hparameters["stride"], hparameters["pad"]
    m = A_prev.shape[0]
    f, _, _, n_C = W.shape
    _, n_H, n_W, _ = dZ.shape
    dA_prev = np.zeros(A_prev.shape)
    dW = np.zeros(W.shape)
    db = np.zeros((1, 1, 1, n_C))
    A_prev_pad = zero_pad(A_prev, pad)
    dA_prev_pad = zero_pad(dA_prev, pad)
    for i in range(m):
        a_prev_pad = A_prev_pad[i]
        da_prev_pad = dA_prev_pad[i]
        for h in range(n_H):
            for w in range(n_W):
                for c in range(n_C):
                    vs, hs = h * stride, w * stride
                    a_slice = a_prev_pad[vs:vs + f, hs:hs + f, :]
                    da_prev_pad[vs:vs + f, hs:hs + f, :] += W[:, :, :, c] * dZ[i, h, w, c]
                    dW[:, :, :, c] += a_slice * dZ[i, h, w, c]
                    db[:, :, :, c] += dZ[i, h, w, c]
        dA_prev[i] = _unpad_spatial(da_prev_pad[None], pad)[0]
    return dA_prev, dW, db


def pool_forward_naive(A_prev, hparameters, mode="max"):
    """The course's quadruple pooling loop."""
    f, stride = hparameters["f"], hparameters["stride"]
    m, n_H_prev, n_W_prev, n_C = A_prev.shape
    n_H = conv_output_size(n_H_prev, f, 0, stride)
    n_W = conv_output_size(n_W_prev, f, 0, stride)
    A = np.zeros((m, n_H, n_W, n_C))
    for i in range(m):
        for h in range(n_H):
            for w in range(n_W):
                for c in range(n_C):
                    vs, hs = h * stride, w * stride
                    a_slice = A_prev[i, vs:vs + f, hs:hs + f, c]
                    A[i, h, w, c] = np.max(a_slice) if mode == "max" else np.mean(a_slice)
    return A, (A_prev, hparameters)


def pool_backward_naive(dA, cache, mode="max"):
    """The course's loop pooling backward pass (mask / distribute_value per window)."""
    A_prev, hparameters = cache
    f, stride = hparameters["f"], hparameters["stride"]
    m, n_H, n_W, n_C = dA.shape
    dA_prev = np.zeros(A_prev.shape)
    for i in range(m):
        a_prev = A_prev[i]
        for h in range(n_H):
            for w in range(n_W):
                for c in range(n_C):
                    vs, hs = h * stride, w * stride
                    if mode == "max":
                        a_slice = a_prev[vs:vs + f, hs:hs + f, c]
                        mask = create_mask_from_window(a_slice)
                        dA_prev[i, vs:vs + f, hs:hs + f, c] += mask * dA[i, h, w, c]
                    else:
                        dA_prev[i, vs:vs + f, hs:hs + f, c] += distribute_value(dA[i, h, w, c], (f, f))
    return dA_prev
