"""models.explain: hand-checked rows (course note 1.1 formulas) and totals that equal Keras's
count for every model in the registry."""
from __future__ import annotations

import math

import pytest

keras = pytest.importorskip("keras")

from models.explain import ExplainReport, explain_model, render  # noqa: E402
from models.registry import MODELS, build_model  # noqa: E402


def _n(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def _assert_totals_match_keras(report: ExplainReport, model) -> None:
    assert report.total == model.count_params()
    assert report.trainable == _n(model.trainable_weights)
    assert report.non_trainable == _n(model.non_trainable_weights)


def _signs_cnn():
    # the course's SIGNS CNN (Convolution model application): 64x64x3 -> 6 classes
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 4, padding="same", name="conv1")(inp)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(8, strides=8, padding="same", name="pool1")(x)
    x = keras.layers.Conv2D(16, 2, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(4, strides=4, padding="same", name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    out = keras.layers.Dense(6, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="signs")


def test_signs_cnn_rows_hand_checked():
    model = _signs_cnn()
    report = explain_model(model)
    rows = {r.name: r for r in report.rows}

    conv1 = rows["conv1"]
    assert conv1.output_shape == (64, 64, 8) and conv1.volume == "64 x 64 x 8"
    assert conv1.params == (4 * 4 * 3 + 1) * 8 == 392
    assert conv1.param_formula == "(4*4*3 + 1) * 8"
    # a Dense layer from 64x64x3 to 64x64x8 instead (course note 1.1)
    assert conv1.dense_equivalent == (64 * 64 * 3 + 1) * (64 * 64 * 8)

    assert rows["pool1"].output_shape == (8, 8, 8) and rows["pool1"].params == 0
    conv2 = rows["conv2"]
    assert conv2.output_shape == (8, 8, 16)
    assert conv2.params == (2 * 2 * 8 + 1) * 16 == 528
    assert conv2.dense_equivalent == (8 * 8 * 8 + 1) * (8 * 8 * 16)
    assert rows["pool2"].output_shape == (2, 2, 16)
    assert rows["flatten"].output_shape == (64,)
    assert rows["fc"].params == (64 + 1) * 6 == 390
    assert all(r.source == "formula" and not r.note for r in report.rows)

    assert report.total == 392 + 528 + 390 == 1310
    _assert_totals_match_keras(report, model)


def test_valid_padding_strides_dilation_follow_the_course_formula():
    inp = keras.Input((17, 20, 3))
    x = keras.layers.Conv2D(4, (3, 5), strides=2, use_bias=False, name="rect")(inp)
    x = keras.layers.Conv2D(6, 3, dilation_rate=2, padding="same", name="dilated")(x)
    x = keras.layers.AveragePooling2D(3, strides=2, padding="same", name="avg")(x)
    x = keras.layers.ZeroPadding2D(((1, 2), (0, 3)), name="zpad")(x)
    x = keras.layers.MaxPooling2D(2, name="max")(x)  # strides default to pool_size
    model = keras.Model(inp, x)
    rows = {r.name: r for r in explain_model(model).rows}
    # floor((17 - 3)/2) + 1 = 8, floor((20 - 5)/2) + 1 = 8; no bias: 3*5*3 * 4
    assert rows["rect"].output_shape == (8, 8, 4)
    assert rows["rect"].params == 3 * 5 * 3 * 4 == 180
    assert rows["rect"].volume_formula == "n_H=(17+2*0-3)/2+1=8; n_W=(20+2*0-5)/2+1=8"
    assert rows["dilated"].output_shape == (8, 8, 6) and rows["dilated"].params == (3 * 3 * 4 + 1) * 6
    assert rows["avg"].output_shape == (4, 4, 6)  # "same": ceil(8 / 2)
    assert rows["zpad"].output_shape == (7, 7, 6)
    assert rows["max"].output_shape == (3, 3, 6)
    for r in rows.values():  # the formula volumes agree with what Keras built
        assert tuple(model.get_layer(r.name).output.shape[1:]) == r.output_shape
        assert not r.note


def test_conv3d_course_example():
    # course note 4.6: 32x32x32x16, 32 filters 3x3x3, no pad, stride 1 -> 30x30x30x32
    inp = keras.Input((32, 32, 32, 16))
    model = keras.Model(inp, keras.layers.Conv3D(32, 3, name="c3d")(inp))
    row = {r.name: r for r in explain_model(model).rows}["c3d"]
    assert row.output_shape == (30, 30, 30, 32) and row.volume == "30 x 30 x 30 x 32"
    assert row.params == (3 * 3 * 3 * 16 + 1) * 32
    assert row.volume_formula.startswith("n_D=(32+2*0-3)/1+1=30")


def test_batchnorm_frozen_nested_and_keras_count_fallback():
    sub = keras.Sequential([
        keras.layers.Conv2D(4, 3, padding="same", name="sub_conv"),
        keras.layers.BatchNormalization(name="sub_bn"),
    ], name="block")
    inp = keras.Input((10, 10, 3))
    x = sub(inp)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)  # no course formula: keras count
    x = keras.layers.BatchNormalization(center=False, name="bn_no_beta")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, name="head")(x)
    model = keras.Model(inp, x)
    model.get_layer("head").trainable = False
    report = explain_model(model)
    rows = {r.name: r for r in report.rows}

    assert rows["block"].source == "sub-model" and not rows["block"].counted
    assert rows["block/sub_bn"].params == 4 * 4 and rows["block/sub_bn"].non_trainable == 2 * 4
    assert rows["block/sub_bn"].depth == 1
    assert rows["bn_no_beta"].trainable == 4 and rows["bn_no_beta"].non_trainable == 8
    assert rows["dw"].source == "keras count" and rows["dw"].params == 3 * 3 * 4 + 4
    assert rows["head"].trainable == 0 and rows["head"].non_trainable == (8 * 8 * 4 + 1) * 5
    _assert_totals_match_keras(report, model)

    text = render(report)
    assert "sub_conv" in text and "keras count" in text
    assert f"total params: {model.count_params():,}" in text


def test_render_prints_to_a_given_console():
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    text = render(explain_model(_signs_cnn()), console=console)
    printed = console.export_text()
    assert "(4*4*3 + 1) * 8" in printed and "(2*2*8 + 1) * 16" in printed
    assert "total params: 1,310" in printed and "total params: 1,310" in text


def test_rejects_non_models():
    with pytest.raises(TypeError, match="keras.Model"):
        explain_model(keras.layers.Dense(3))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_model_totals_equal_keras(name):
    model = build_model(name)
    report = explain_model(model)
    _assert_totals_match_keras(report, model)
    # every formula agreed with the layer's weights and Keras's shapes
    assert [r.name for r in report.rows if r.note] == []
    convs = [r for r in report.rows if r.type in ("Conv2D", "Conv3D")]
    assert all(r.source == "formula" for r in convs)
    assert render(report).count("\n") > len(report.rows)
