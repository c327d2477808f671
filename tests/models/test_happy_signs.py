"""The Happy House model and the SIGNS CNN: the course's layer shapes and parameter counts,
registry wiring and a .keras round trip in safe mode."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models import registry  # noqa: E402
from models.happy import HappyModel  # noqa: E402
from models.signs_cnn import build_signs_cnn  # noqa: E402


def _round_trip(model, path, x):
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)),
                                  np.asarray(loaded(x, training=False)))
    return loaded


def test_happy_model_course_layout():
    m = HappyModel((64, 64, 3))
    assert m.count_params() == 37_633
    # 4,736 conv + 128 BN (64 non-trainable) + 32,769 dense.
    assert int(sum(np.prod(w.shape) for w in m.non_trainable_weights)) == 64
    shapes = [tuple(l.output.shape) for l in m.layers]
    assert shapes == [(None, 64, 64, 3), (None, 70, 70, 3), (None, 64, 64, 32), (None, 64, 64, 32),
                      (None, 64, 64, 32), (None, 32, 32, 32), (None, 32768), (None, 1)]
    assert m.layers[-1].activation is keras.activations.sigmoid


def test_happy_model_outputs_probabilities():
    x = np.random.default_rng(0).uniform(0, 1, size=(5, 64, 64, 3)).astype("float32")
    p = np.asarray(HappyModel()(x, training=False))
    assert p.shape == (5, 1)
    assert np.all((p > 0) & (p < 1))


def test_signs_cnn_course_layout():
    m = build_signs_cnn((64, 64, 3), num_classes=6)
    assert m.count_params() == 1310
    by_name = {l.name: l for l in m.layers}
    assert tuple(by_name["conv1"].output.shape) == (None, 64, 64, 8)
    assert tuple(by_name["pool1"].output.shape) == (None, 8, 8, 8)
    assert tuple(by_name["conv2"].output.shape) == (None, 8, 8, 16)
    assert tuple(by_name["pool2"].output.shape) == (None, 2, 2, 16)
    assert tuple(by_name["fc"].output.shape) == (None, 6)
    assert by_name["conv1"].count_params() == (4 * 4 * 3 + 1) * 8
    assert by_name["conv2"].count_params() == (2 * 2 * 8 + 1) * 16
    assert by_name["fc"].count_params() == (2 * 2 * 16 + 1) * 6


def test_signs_cnn_softmax_and_dropout():
    m = build_signs_cnn((64, 64, 3), num_classes=10, dropout=0.25)
    assert m.count_params() == 392 + 528 + (64 + 1) * 10  # dropout adds no parameters
    x = np.random.default_rng(1).uniform(-1, 1, size=(3, 64, 64, 3)).astype("float32")
    p = np.asarray(m(x, training=False))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="dropout"):
        build_signs_cnn(dropout=-0.1)


def test_registry_builds_happy_and_signs():
    happy = registry.build_model("happy")
    assert happy.count_params() == 37_633 and happy.output_shape == (None, 1)
    # The registry does not pass num_classes to the binary model.
    assert registry.build_model("happy", num_classes=2).output_shape == (None, 1)
    signs = registry.build_model("signs_cnn", num_classes=6)
    assert signs.count_params() == 1310
    signs = registry.build_model("signs_cnn", input_shape=(100, 100, 3), num_classes=10, dropout=0.1)
    assert signs.output_shape == (None, 10)
    with pytest.raises(TypeError):
        registry.build_model("happy", learning_rte=0.1)
    with pytest.raises(TypeError):
        registry.build_model("signs_cnn", num_classes=6, filters=3)


def test_happy_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(2).uniform(0, 1, size=(4, 64, 64, 3)).astype("float32")
    loaded = _round_trip(HappyModel(), tmp_path / "happy.keras", x)
    assert loaded.count_params() == 37_633


def test_signs_cnn_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(3).uniform(0, 1, size=(4, 64, 64, 3)).astype("float32")
    loaded = _round_trip(build_signs_cnn(dropout=0.2), tmp_path / "signs.keras", x)
    assert loaded.count_params() == 1310
