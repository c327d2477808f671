"""Explain a Keras model the way the course counts it (course notes 1.1 and 1.2).

For every layer: its output volume n_H x n_W x n_C and its parameter count, worked out with
the course's formulas rather than read off Keras, so a learner sees *why* the numbers are
what they are:

* output volume of Conv / Pooling / ZeroPadding (1-D, 2-D, 3-D) from the layer's config:
  ``n = floor((n_prev + pad_total - f_eff) / stride) + 1`` (``pad_total = 2*pad`` in the
  course; Keras's "same" pads ``max((ceil(n_prev/s) - 1)*s + f_eff - n_prev, 0)`` in total,
  "valid" pads 0, dilation makes ``f_eff = d*(f - 1) + 1``); other layers report Keras's
  output shape;
* Conv: ``(f_H * f_W * n_C_prev / groups + 1) * n_C`` (no ``+1`` with ``use_bias=False``), next
  to what a fully connected layer from the input volume to the output volume would need,
  ``(n_H_prev * n_W_prev * n_C_prev + 1) * (n_H * n_W * n_C)`` (the note's comparison);
* Dense ``(n_in + 1) * n_out``; BatchNormalization ``4 * C`` of which ``2 * C`` (moving mean
  and variance) are non-trainable; pooling, padding, flatten, activations: 0;
* anything else: ``layer.count_params()``, marked "keras count". Nested models are recursed
  into, so their own layers get rows too.

Every formula row is checked against the layer's actual weights; a disagreement never passes
silently: the row falls back to Keras's count and says so in ``note``. So the totals always
equal ``model.count_params()`` and the trainable / non-trainable split equals Keras's.

    from models.explain import explain_model, render
    print(render(explain_model(model)))
"""
from __future__ import annotations

import dataclasses
import io
import math

import keras

__all__ = ["LayerRow", "ExplainReport", "explain_model", "render"]

FORMULA = "formula"
KERAS_COUNT = "keras count"
SUB_MODEL = "sub-model"


@dataclasses.dataclass
class LayerRow:
    name: str  # "outer/inner" for layers of a nested model
    type: str
    output_shape: tuple[int | None, ...]  # without the batch axis
    volume: str  # "64 x 64 x 8"
    volume_formula: str  # how the volume was computed ("" when read from Keras)
    params: int
    trainable: int
    non_trainable: int
    param_formula: str
    dense_equivalent: int | None  # convolutions only: a Dense layer input volume -> output volume
    source: str  # "formula" | "keras count" | "sub-model" (its rows follow; not in the totals)
    depth: int = 0
    note: str = ""

    @property
    def counted(self) -> bool:
        return self.source != SUB_MODEL


@dataclasses.dataclass
class ExplainReport:
    model_name: str
    rows: list[LayerRow]
    trainable: int
    non_trainable: int
    total: int


# ------------------------------------------------------------------------------ helpers

def _n_weights(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def _shape_of(tensor) -> tuple[int | None, ...] | None:
    if tensor is None or isinstance(tensor, (list, tuple, dict)):
        return None  # several inputs/outputs: no single volume
    return tuple(None if d is None else int(d) for d in tensor.shape[1:])


def _layer_io_shape(layer, attr: str):
    try:
        return _shape_of(getattr(layer, attr))
    except (AttributeError, ValueError, RuntimeError):
        return None  # a layer never called, or called on several inputs


def _fmt_volume(shape) -> str:
    if shape is None:
        return "?"
    return " x ".join("?" if d is None else str(d) for d in shape) or "scalar"


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def _split(shape, channels_last: bool):
    """(spatial dims, channels) of a shape without the batch axis."""
    return (shape[:-1], shape[-1]) if channels_last else (shape[1:], shape[0])


def _join(spatial, channels, channels_last: bool) -> tuple:
    return (*spatial, channels) if channels_last else (channels, *spatial)


def _axis_names(n_spatial: int) -> tuple[str, ...]:
    return {1: ("n",), 2: ("n_H", "n_W"), 3: ("n_D", "n_H", "n_W")}.get(
        n_spatial, tuple(f"n_{i}" for i in range(n_spatial)))


def _window_out(n: int | None, f: int, stride: int, dilation: int, padding: str) -> tuple[int | None, str]:
    """The course's output-size formula for one spatial axis, with Keras's padding modes."""
    if n is None:
        return None, "?"
    f_eff = dilation * (f - 1) + 1
    if padding == "same":
        pad_total = max((math.ceil(n / stride) - 1) * stride + f_eff - n, 0)
    elif padding == "causal":
        pad_total = f_eff - 1
    else:
        pad_total = 0
    out = (n + pad_total - f_eff) // stride + 1
    pad_txt = f"2*{pad_total // 2}" if pad_total % 2 == 0 else str(pad_total)
    return out, f"({n}+{pad_txt}-{f_eff})/{stride}+1={out}"


def _label(parts) -> str:
    return "; ".join(f"{axis}={p}" for axis, p in zip(_axis_names(len(parts)), parts))


# -------------------------------------------------------------------------- per layer type

def _conv_row(layer, in_shape):
    cl = _channels_last(layer)
    spatial, c_prev = _split(in_shape, cl)
    outs, how = zip(*(_window_out(n, f, s, d, layer.padding) for n, f, s, d in
                      zip(spatial, layer.kernel_size, layer.strides, layer.dilation_rate)))
    out_shape = _join(outs, layer.filters, cl)
    groups = getattr(layer, "groups", 1) or 1
    k = math.prod(layer.kernel_size) * (c_prev // groups)
    params = (k + int(layer.use_bias)) * layer.filters
    kernel_txt = "*".join(str(f) for f in layer.kernel_size)
    group_txt = f"/{groups}" if groups != 1 else ""
    k_txt = f"{kernel_txt}*{c_prev}{group_txt}"
    formula = (f"({k_txt} + 1)" if layer.use_bias else k_txt) + f" * {layer.filters}"
    dense = None
    if None not in in_shape and None not in out_shape:
        dense = (math.prod(in_shape) + 1) * math.prod(out_shape)
    return out_shape, _label(how), params, formula, dense


def _pool_row(layer, in_shape):
    cl = _channels_last(layer)
    spatial, c = _split(in_shape, cl)
    strides = layer.strides or layer.pool_size  # Keras: strides=None means pool_size
    outs, how = zip(*(_window_out(n, f, s, 1, layer.padding) for n, f, s in
                      zip(spatial, layer.pool_size, strides)))
    return _join(outs, c, cl), _label(how)


def _zero_padding_row(layer, in_shape):
    cl = _channels_last(layer)
    spatial, c = _split(in_shape, cl)
    outs = tuple(None if n is None else n + lo + hi for n, (lo, hi) in zip(spatial, layer.padding))
    how = [f"{n}+{lo}+{hi}={o}" for n, (lo, hi), o in zip(spatial, layer.padding, outs)]
    return _join(outs, c, cl), _label(how)


_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_POOL = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
         keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)
_ZERO_PAD = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)


def _explain_layer(layer, prefix: str, depth: int) -> LayerRow:
    in_shape = _layer_io_shape(layer, "input")
    keras_out = _layer_io_shape(layer, "output")
    keras_trainable = _n_weights(layer.trainable_weights)
    keras_non_trainable = _n_weights(layer.non_trainable_weights)
    keras_total = keras_trainable + keras_non_trainable

    out_shape, volume_formula = keras_out, ""
    params = trainable = non_trainable = None
    param_formula, dense = "", None

    if isinstance(layer, _CONV) and in_shape is not None and _split(in_shape, _channels_last(layer))[1]:
        out_shape, volume_formula, params, param_formula, dense = _conv_row(layer, in_shape)
        trainable, non_trainable = params, 0
    elif isinstance(layer, _POOL) and in_shape is not None:
        out_shape, volume_formula = _pool_row(layer, in_shape)
        params, trainable, non_trainable, param_formula = 0, 0, 0, "0 (no weights)"
    elif isinstance(layer, _ZERO_PAD) and in_shape is not None:
        out_shape, volume_formula = _zero_padding_row(layer, in_shape)
        params, trainable, non_trainable, param_formula = 0, 0, 0, "0 (no weights)"
    elif isinstance(layer, keras.layers.Dense) and in_shape and in_shape[-1] is not None:
        n_in = in_shape[-1]
        params = (n_in + int(layer.use_bias)) * layer.units
        trainable, non_trainable = params, 0
        param_formula = (f"({n_in} + 1)" if layer.use_bias else str(n_in)) + f" * {layer.units}"
    elif isinstance(layer, keras.layers.BatchNormalization) and in_shape is not None:
        axis = layer.axis  # counts the batch axis; Keras makes it positive once built
        c = None
        if isinstance(axis, int) and -len(in_shape) <= (axis - 1 if axis > 0 else axis) < len(in_shape):
            c = in_shape[axis - 1 if axis > 0 else axis]
        if c is not None:
            learned = int(layer.center) + int(layer.scale)  # beta, gamma
            trainable, non_trainable = learned * c, 2 * c  # + moving mean and variance
            params = trainable + non_trainable
            param_formula = f"{learned + 2} * {c} ({2 * c} non-trainable)"
    elif keras_total == 0 and not layer.weights:
        params, trainable, non_trainable, param_formula = 0, 0, 0, "0 (no weights)"

    note = ""
    source = FORMULA
    if params is not None and not layer.trainable:
        trainable, non_trainable = 0, params  # a frozen layer's weights are all non-trainable
        param_formula += " (frozen)"
    if params is None:
        source, param_formula = KERAS_COUNT, "layer.count_params()"
        params, trainable, non_trainable = keras_total, keras_trainable, keras_non_trainable
    elif (params, trainable, non_trainable) != (keras_total, keras_trainable, keras_non_trainable):
        # never let a formula drift from Keras silently: show Keras's numbers and say why
        note = (f"formula gives {params} ({trainable} trainable) but the layer holds "
                f"{keras_total} ({keras_trainable} trainable)")
        source = KERAS_COUNT
        params, trainable, non_trainable = keras_total, keras_trainable, keras_non_trainable
    if volume_formula and keras_out is not None and tuple(out_shape) != tuple(keras_out):
        note = "; ".join(filter(None, [note, f"formula volume {_fmt_volume(out_shape)} != Keras "
                                              f"{_fmt_volume(keras_out)}"]))

    return LayerRow(
        name=prefix + layer.name, type=type(layer).__name__,
        output_shape=tuple(out_shape) if out_shape is not None else (),
        volume=_fmt_volume(out_shape), volume_formula=volume_formula,
        params=params, trainable=trainable, non_trainable=non_trainable,
        param_formula=param_formula, dense_equivalent=dense, source=source, depth=depth, note=note,
    )


def _walk(model, prefix: str, depth: int, rows: list[LayerRow], seen: set[int]) -> None:
    for layer in model.layers:
        if id(layer) in seen:  # a layer shared between sub-models: its weights count once
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.Model) and getattr(layer, "layers", None):
            header = LayerRow(
                name=prefix + layer.name, type=type(layer).__name__,
                output_shape=_layer_io_shape(layer, "output") or (),
                volume=_fmt_volume(_layer_io_shape(layer, "output")), volume_formula="",
                params=layer.count_params(), trainable=_n_weights(layer.trainable_weights),
                non_trainable=_n_weights(layer.non_trainable_weights),
                param_formula="sum of the rows below", dense_equivalent=None,
                source=SUB_MODEL, depth=depth,
            )
            rows.append(header)
            start = len(rows)
            _walk(layer, prefix + layer.name + "/", depth + 1, rows, seen)
            if sum(r.params for r in rows[start:] if r.counted) != header.params:
                # weights the sub-model's layers list does not reach: count it as one row
                del rows[start:]
                header.source, header.param_formula = KERAS_COUNT, "layer.count_params()"
            continue
        rows.append(_explain_layer(layer, prefix, depth))


def explain_model(model: keras.Model) -> ExplainReport:
    """Layer-by-layer output volumes and parameter counts of a built Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"explain_model expects a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("the model is not built: give it an Input or call model.build(input_shape) first")
    rows: list[LayerRow] = []
    _walk(model, "", 0, rows, set())
    counted = [r for r in rows if r.counted]
    return ExplainReport(
        model_name=model.name, rows=rows,
        trainable=sum(r.trainable for r in counted),
        non_trainable=sum(r.non_trainable for r in counted),
        total=sum(r.params for r in counted),
    )


def render(report: ExplainReport, console=None, width: int = 160) -> str:
    """The report as a rich table plus totals. Prints to `console` when given; always returns
    the plain text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.model_name}: layer by layer (course formulas)")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output volume", justify="right")
    table.add_column("how", style="dim")
    table.add_column("params", justify="right")
    table.add_column("param formula")
    table.add_column("dense equivalent", justify="right")
    table.add_column("source")
    for r in report.rows:
        table.add_row(
            "  " * r.depth + r.name.rsplit("/", 1)[-1], r.type, r.volume, r.volume_formula,
            f"{r.params:,}", r.param_formula,
            f"{r.dense_equivalent:,}" if r.dense_equivalent is not None else "",
            r.source + (f" ({r.note})" if r.note else ""),
            style="dim" if not r.counted else None,
        )
    totals = (f"total params: {report.total:,}  trainable: {report.trainable:,}  "
              f"non-trainable: {report.non_trainable:,}")
    buffer = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    buffer.print(table)
    buffer.print(totals)
    if console is not None:
        console.print(table)
        console.print(totals)
    return buffer.export_text()
