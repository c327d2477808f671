"""ResNet-50 and its blocks (models/resnet.py): shapes, the course's parameter counts,
registry wiring and a .keras round trip."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models import registry  # noqa: E402
from models.resnet import ResNet50, convolutional_block, identity_block  # noqa: E402


def _non_trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.non_trainable_weights))


@pytest.fixture(scope="module")
def resnet64():
    keras.utils.set_random_seed(0)
    return ResNet50(input_shape=(64, 64, 3), classes=6)


def test_identity_block_keeps_shape():
    x = keras.Input((15, 15, 256))
    y = identity_block(x, 3, (64, 64, 256))
    assert tuple(y.shape) == (None, 15, 15, 256)
    # 1x1 (256->64), 3x3 (64->64), 1x1 (64->256), each with bias, + 3 BN of 4 params/channel.
    m = keras.Model(x, y)
    expected = (256 * 64 + 64) + (9 * 64 * 64 + 64) + (64 * 256 + 256) + 4 * (64 + 64 + 256)
    assert m.count_params() == expected


def test_identity_block_rejects_channel_mismatch():
    with pytest.raises(ValueError, match="filters\\[2\\]"):
        identity_block(keras.Input((8, 8, 32)), 3, (16, 16, 64))


def test_convolutional_block_halves_spatial_and_sets_channels():
    x = keras.Input((8, 8, 256))
    y = convolutional_block(x, 3, (128, 128, 512), s=2)
    assert tuple(y.shape) == (None, 4, 4, 512)
    # Odd sizes round up like a strided 1x1 'valid' conv: 15 -> 8.
    y = convolutional_block(keras.Input((15, 15, 64)), 3, (64, 64, 256), s=2)
    assert tuple(y.shape) == (None, 8, 8, 256)
    y = convolutional_block(keras.Input((15, 15, 64)), 3, (64, 64, 256), s=1)
    assert tuple(y.shape) == (None, 15, 15, 256)


def test_blocks_numerics_identity_shortcut():
    """With the conv kernels zeroed the residual branch is BN(bias) = 0 at init, so the block
    computes relu(0 + x) = relu(x): the shortcut really is added before the last ReLU."""
    x = keras.Input((4, 4, 8))
    y = identity_block(x, 3, (4, 4, 8), initializer="zeros")
    m = keras.Model(x, y)
    data = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    out = m(data, training=False)
    np.testing.assert_allclose(np.asarray(out), np.maximum(data, 0.0), atol=1e-5)


def test_resnet50_course_parameter_count(resnet64):
    assert resnet64.count_params() == 23_600_006
    assert _non_trainable(resnet64) == 53_120
    assert resnet64.output_shape == (None, 6)
    # The course's layout: 4 stages with 3+4+6+3 blocks -> 16 Add layers.
    assert sum(isinstance(l, keras.layers.Add) for l in resnet64.layers) == 16


def test_resnet50_forward_is_probability(resnet64):
    x = np.random.default_rng(1).uniform(-1, 1, size=(4, 64, 64, 3)).astype("float32")
    p = np.asarray(resnet64(x, training=False))
    assert p.shape == (4, 6)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_resnet50_stage_names_for_freezing(resnet64):
    names = {l.name for l in resnet64.layers}
    assert {"conv1", "bn_conv1", "res2a_branch1", "res3d_branch2c", "res4f_branch2a",
            "bn5c_branch2c", "fc6"} <= names


@pytest.mark.parametrize("size, pooling, params", [
    (100, "avg2x2", 23_600_006),   # 3x3 stage-5 map -> 1x1 after the valid 2x2 pool
    (128, "avg2x2", 23_636_870),   # 4x4 -> 2x2x2048 flattened: Dense grows by 3*2048*6
    (128, "global", 23_600_006),
])
def test_resnet50_larger_inputs(size, pooling, params):
    m = ResNet50(input_shape=(size, size, 3), classes=6, pooling=pooling)
    assert m.count_params() == params
    assert m.output_shape == (None, 6)


def test_resnet50_small_input_needs_global_pooling():
    with pytest.raises(ValueError, match="pooling='global'"):
        ResNet50(input_shape=(32, 32, 3))
    m = ResNet50(input_shape=(32, 32, 3), pooling="global", classes=3)
    assert m.output_shape == (None, 3)


def test_resnet50_hyperparameters_validated():
    with pytest.raises(TypeError):
        ResNet50(input_shape=(64, 64, 3), classes=6, dropuot=0.2)  # misspelt: not swallowed
    with pytest.raises(ValueError, match="pooling"):
        ResNet50(pooling="max")
    with pytest.raises(ValueError, match="dropout"):
        ResNet50(dropout=1.5)


def test_registry_builds_resnet_with_hyperparameters():
    m = registry.build_model("resnet50", num_classes=10, dropout=0.3, pooling="global")
    assert m.input_shape == (None, 64, 64, 3)
    assert m.output_shape == (None, 10)
    assert any(isinstance(l, keras.layers.Dropout) and l.rate == 0.3 for l in m.layers)
    with pytest.raises(TypeError):
        registry.build_model("resnet50", num_classes=6, bogus=1)


def test_resnet50_keras_round_trip_safe_mode(resnet64, tmp_path):
    # ~95 MB file, yet ~3 s: no need for the slow marker.
    path = tmp_path / "resnet50.keras"
    resnet64.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(2).uniform(-1, 1, size=(3, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(resnet64(x, training=False)),
                                  np.asarray(loaded(x, training=False)))
    assert loaded.count_params() == 23_600_006
