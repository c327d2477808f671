"""Training-time augmentation (models/augmentation.py) and test-time crops (models/tta.py)."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from models.augmentation import (  # noqa: E402
    CUSTOM_OBJECTS, DEFAULTS, TrainingOnlySequential, build_augmentation, resolve_config)
from models.signs_cnn import build_signs_cnn  # noqa: E402
from models.tta import centre_crop, crop_boxes, predict_with_crops  # noqa: E402


def _images(n=4, size=32, seed=0):
    # 0-255 float images with structure (a gradient + noise) so geometric ops change pixels.
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 200, size, dtype="float32")[None, :, None, None]
    return (grad + rng.uniform(0, 55, size=(n, size, size, 3))).astype("float32").transpose(0, 2, 1, 3)


def _classifier(input_shape, aug=None):
    inputs = keras.Input(input_shape)
    x = aug(inputs) if aug is not None else inputs
    x = keras.layers.Rescaling(1 / 255.0)(x)
    outputs = build_signs_cnn(input_shape, num_classes=4)(x)
    return keras.Model(inputs, outputs)


# ---------------------------------------------------------------- augmentation

def test_augmentation_off_and_defaults():
    assert build_augmentation(None, (32, 32, 3)) is None
    assert resolve_config({}) == DEFAULTS
    all_off = {"translate": 0, "zoom": 0, "rotation_degrees": 0, "brightness": 0, "contrast": 0}
    assert build_augmentation(all_off, (32, 32, 3)) is None


def test_augmentation_no_flip_by_default():
    aug = build_augmentation({}, (32, 32, 3))
    kinds = [type(l).__name__ for l in aug.layers]
    assert kinds == ["RandomRotation", "RandomZoom", "RandomTranslation", "RandomBrightness", "RandomContrast"]
    assert not any(isinstance(l, keras.layers.RandomFlip) for l in aug.layers)
    flip = build_augmentation({"horizontal_flip": True}, (32, 32, 3))
    assert isinstance(flip.layers[0], keras.layers.RandomFlip)
    assert flip.layers[0].mode == "horizontal"


def test_augmentation_config_errors_name_the_key():
    with pytest.raises(ValueError, match="rotaton"):
        build_augmentation({"rotaton": 10}, (32, 32, 3))
    with pytest.raises(ValueError, match="translate"):
        build_augmentation({"translate": 1.5}, (32, 32, 3))
    with pytest.raises(ValueError, match="horizontal_flip"):
        build_augmentation({"horizontal_flip": "yes"}, (32, 32, 3))
    with pytest.raises(ValueError, match="fill_mode"):
        build_augmentation({"fill_mode": "mirror"}, (32, 32, 3))


def test_augmentation_identity_at_inference_changes_in_training():
    x = _images()
    aug = build_augmentation({"seed": 1}, x.shape[1:])
    assert isinstance(aug, keras.Sequential) and isinstance(aug, TrainingOnlySequential)
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)
    # No `training` given (plain call, export endpoints): identity too. Keras's own random
    # layers would default to training=True here.
    np.testing.assert_array_equal(np.asarray(aug(x)), x)
    y = np.asarray(aug(x, training=True))
    assert y.shape == x.shape
    assert np.abs(y - x).mean() > 1.0
    # Stays in the 0-255 range it is given (it runs before the Transform's rescaling).
    assert y.min() >= 0.0 and y.max() <= 255.0 and y.max() > 100.0


def test_each_augmentation_alone_changes_training_images():
    x = _images(seed=1)
    off = {"translate": 0, "zoom": 0, "rotation_degrees": 0, "brightness": 0, "contrast": 0}
    for key, value in [("translate", 0.2), ("zoom", 0.2), ("rotation_degrees", 20),
                       ("brightness", 0.2), ("contrast", 0.3), ("horizontal_flip", True)]:
        aug = build_augmentation({**off, key: value, "seed": 3}, x.shape[1:])
        assert len(aug.layers) == 1, key
        y = np.asarray(aug(x, training=True))
        assert not np.allclose(y, x), key
        np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)


def test_augmentation_seed_is_reproducible():
    x = _images(seed=2)
    a = np.asarray(build_augmentation({"seed": 7}, x.shape[1:])(x, training=True))
    b = np.asarray(build_augmentation({"seed": 7}, x.shape[1:])(x, training=True))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_augmentation_inside_model_trains_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    x = _images(n=8)
    y = np.arange(8) % 4
    model = _classifier(x.shape[1:], build_augmentation({"horizontal_flip": True}, x.shape[1:]))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, y)  # the random layers run in a compiled training step
    assert np.isfinite(loss)

    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(expected, np.asarray(model.predict(x, verbose=0)), atol=1e-6)

    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)

    np.testing.assert_array_equal(np.asarray(model(x)), expected)  # no `training` passed

    export_dir = str(tmp_path / "saved_model")
    model.export(export_dir, verbose=False)  # its `serve` calls the model with no `training`
    reloaded = tf.saved_model.load(export_dir)  # keep a reference: its variables die with it
    for _ in range(2):
        np.testing.assert_allclose(np.asarray(reloaded.serve(tf.constant(x))), expected, atol=1e-5)

    # MLflow's save_exported_model=True exports `model.call` through an ExportArchive.
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call,
                         input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.float32)])
    archive.write_out(str(tmp_path / "archive"), verbose=False)
    reloaded2 = tf.saved_model.load(str(tmp_path / "archive"))
    np.testing.assert_allclose(np.asarray(reloaded2.serve(tf.constant(x))), expected, atol=1e-5)


def test_augmentation_runs_inside_fit():
    """fit() turns the block on through Keras's call context: with a frozen 1x1 conv of ones
    and y = f(x), the training loss is > 0 only if the inputs were augmented."""
    x = _images(n=8, seed=3)
    inputs = keras.Input(x.shape[1:])
    h = build_augmentation({"seed": 0}, x.shape[1:])(inputs)
    outputs = keras.layers.Conv2D(1, 1, kernel_initializer="ones")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    y = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(y, x.sum(axis=-1, keepdims=True), rtol=1e-5)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert history.history["loss"][0] > 1.0
    assert model.evaluate(x, y, verbose=0) < 1e-6


def test_augmentation_loads_with_custom_objects(tmp_path):
    aug = build_augmentation({"rotation_degrees": 30, "horizontal_flip": True}, (32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(aug(inputs)))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, custom_objects=CUSTOM_OBJECTS)
    inner = loaded.get_layer("augmentation")
    assert isinstance(inner, TrainingOnlySequential)
    assert [type(l).__name__ for l in inner.layers] == ["RandomFlip", "RandomRotation", "RandomZoom",
                                                         "RandomTranslation", "RandomBrightness",
                                                         "RandomContrast"]
    np.testing.assert_allclose(inner.layers[1].factor, [-30 / 360, 30 / 360])


# ---------------------------------------------------------------- test-time crops

def test_crop_boxes_geometry():
    (centre,) = crop_boxes(1, crop_fraction=0.5)
    np.testing.assert_allclose(centre, [0.25, 0.25, 0.75, 0.75])
    boxes = crop_boxes(5, crop_fraction=0.875)
    assert boxes.shape == (5, 4) and boxes.dtype == np.float32
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 0.875)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], 0.875)
    # Four distinct corners touch the image borders; the last one is centred.
    assert {tuple(b) for b in boxes[:4, :2].round(4).tolist()} == {(0, 0), (0, 0.125), (0.125, 0), (0.125, 0.125)}
    np.testing.assert_allclose(boxes[4], [0.0625, 0.0625, 0.9375, 0.9375])
    np.testing.assert_array_equal(crop_boxes(10), boxes)
    with pytest.raises(ValueError, match="n_crops"):
        crop_boxes(3)
    with pytest.raises(ValueError, match="crop_fraction"):
        crop_boxes(1, crop_fraction=0.0)


def test_centre_crop_is_a_zoom_on_the_centre():
    # A ramp along x is exact under bilinear resizing: the crop's columns must span the centre
    # `fraction` of the original columns, evenly, at the original size.
    w = 9
    ramp = np.tile(np.arange(w, dtype=np.float32)[None, None, :, None], (2, 5, 1, 3))
    out = centre_crop(ramp, 0.5).numpy()
    assert out.shape == ramp.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 2, :, 0], np.linspace(2.0, 6.0, w), atol=1e-5)
    np.testing.assert_allclose(out[:, :, :, 0], np.broadcast_to(out[0, 2, :, 0], (2, 5, w)), atol=1e-5)
    np.testing.assert_array_equal(centre_crop(ramp, 1.0).numpy(), ramp)
    with pytest.raises(ValueError, match="crop_fraction"):
        centre_crop(ramp, 1.2)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        centre_crop(ramp[0], 0.5)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return _classifier((32, 32, 3))


def test_single_full_crop_equals_plain_predict(classifier):
    x = _images(n=5)
    res = predict_with_crops(classifier, x, n_crops=1, crop_fraction=1.0, batch_size=2)
    assert res.forward_passes == 1
    np.testing.assert_allclose(res.probabilities, classifier.predict(x, verbose=0), atol=1e-5)


def test_five_crops_shape_and_distribution(classifier):
    x = _images(n=7, seed=4)
    probs, passes = predict_with_crops(classifier, x, n_crops=5, batch_size=3)
    assert passes == 5
    assert probs.shape == (7, 4)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # It really is the mean over the five crops resized to the model input.
    boxes = crop_boxes(5)
    manual = np.mean([classifier.predict(tf.image.crop_and_resize(
        x, np.repeat(boxes[k:k + 1], 7, 0), np.arange(7), (32, 32)), verbose=0) for k in range(5)], axis=0)
    np.testing.assert_allclose(probs, manual, atol=1e-5)


def test_flip_doubles_forward_passes(classifier):
    x = _images(n=3, seed=5)
    assert predict_with_crops(classifier, x, n_crops=1, flip=True).forward_passes == 2
    with_flip = predict_with_crops(classifier, x, n_crops=5, flip=True)
    assert with_flip.forward_passes == 10
    ten = predict_with_crops(classifier, x, n_crops=10)
    assert ten.forward_passes == 10
    np.testing.assert_allclose(ten.probabilities, with_flip.probabilities, atol=1e-6)
    # Flipping changes the answer for a non-symmetric image.
    without = predict_with_crops(classifier, x, n_crops=5).probabilities
    assert not np.allclose(without, with_flip.probabilities)


def test_crops_resized_to_model_input_for_larger_images(classifier):
    x = _images(n=2, size=48, seed=6)  # the model takes 32x32: crops are resized to it
    res = predict_with_crops(classifier, x, n_crops=5)
    assert res.probabilities.shape == (2, 4)


def test_tta_with_exported_serving_function(classifier, tmp_path):
    x = _images(n=3, seed=7)
    classifier.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = predict_with_crops(reloaded.serve, x, n_crops=5, flip=True)
    direct = predict_with_crops(classifier, x, n_crops=5, flip=True)
    assert served.forward_passes == direct.forward_passes == 10
    np.testing.assert_allclose(served.probabilities, direct.probabilities, atol=1e-5)


def test_tta_with_sigmoid_model():
    from models.happy import HappyModel
    res = predict_with_crops(HappyModel((32, 32, 3)), _images(n=3) / 255.0, n_crops=5)
    assert res.probabilities.shape == (3, 1)
    assert np.all((res.probabilities > 0) & (res.probabilities < 1))
