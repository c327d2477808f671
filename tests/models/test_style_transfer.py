"""Tests for models/style_transfer/ (through the package's re-exports): the course's cost
functions against numpy versions of the same formulas, the VGG-19 feature extractor, the
optimisation loop on small images, the files it writes, every bad-input path (clear error,
nothing half-written), and the package's layout (one concern a module, no console output,
no imports from components/ or pipeline/)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from models import style_transfer as st  # noqa: E402
from tests.conftest import dataset_path  # noqa: E402

SHAPES = [(1, 4, 4, 3), (1, 5, 7, 8), (1, 12, 9, 16), (1, 3, 2, 64)]
W, H = 64, 48  # small images keep every optimisation test to seconds on 2 cores


# ---------------------------------------------------------------- numpy references

def np_content_cost(a_C, a_G):
    _, n_H, n_W, n_C = a_G.shape
    return np.sum((a_C.astype(np.float64) - a_G) ** 2) / (4 * n_H * n_W * n_C)


def np_gram_from_activation(a):
    # G[c, d] = sum over positions of a[h, w, c] * a[h, w, d]; no unrolling involved, so
    # it also checks that the implementation unrolls channels and positions correctly.
    return np.einsum("hwc,hwd->cd", a[0].astype(np.float64), a[0].astype(np.float64))


def np_layer_style_cost(a_S, a_G):
    _, n_H, n_W, n_C = a_G.shape
    d = np_gram_from_activation(a_S) - np_gram_from_activation(a_G)
    return np.sum(d ** 2) / (4 * n_C ** 2 * (n_H * n_W) ** 2)


def rand(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- cost functions

@pytest.mark.parametrize("shape", SHAPES)
def test_content_cost_matches_numpy(shape):
    a_C, a_G = rand(shape, 1), rand(shape, 2)
    got = float(st.compute_content_cost(tf.constant(a_C), tf.constant(a_G)))
    assert got == pytest.approx(np_content_cost(a_C, a_G), rel=1e-5)
    assert float(st.compute_content_cost(tf.constant(a_C), tf.constant(a_C))) == 0.0


def test_content_cost_accepts_course_lists():
    # The course passes the whole extractor output lists and uses the last element.
    a_C, a_G = rand((1, 6, 5, 4), 3), rand((1, 6, 5, 4), 4)
    style_junk = [tf.constant(rand((1, 2, 2, 2), 9))]
    got = float(st.compute_content_cost(style_junk + [tf.constant(a_C)], style_junk + [tf.constant(a_G)]))
    assert got == pytest.approx(np_content_cost(a_C, a_G), rel=1e-5)


@pytest.mark.parametrize("n_C,m", [(3, 1), (4, 10), (16, 37)])
def test_gram_matrix_shape_symmetry_value(n_C, m):
    A = rand((n_C, m), n_C + m)
    G = np.asarray(st.gram_matrix(tf.constant(A)))
    assert G.shape == (n_C, n_C)
    np.testing.assert_allclose(G, G.T, rtol=1e-6)
    np.testing.assert_allclose(G, A.astype(np.float64) @ A.T, rtol=1e-4, atol=1e-4)
    assert np.all(np.linalg.eigvalsh(G.astype(np.float64)) > -1e-3)  # A A^T is PSD


@pytest.mark.parametrize("shape", SHAPES)
def test_layer_style_cost_matches_numpy(shape):
    a_S, a_G = rand(shape, 5), rand(shape, 6)
    got = float(st.compute_layer_style_cost(tf.constant(a_S), tf.constant(a_G)))
    assert got == pytest.approx(np_layer_style_cost(a_S, a_G), rel=1e-4)


def test_layer_style_cost_uses_transpose_then_reshape():
    # Reshaping (1, n_H, n_W, n_C) straight to (n_C, -1) gives a different (wrong) Gram
    # matrix; the course's unrolling must match the einsum reference, not that one.
    a_S, a_G = rand((1, 3, 4, 5), 7), rand((1, 3, 4, 5), 8)
    wrong = lambda a: a.reshape(5, -1).astype(np.float64)  # noqa: E731
    wrong_cost = np.sum((wrong(a_S) @ wrong(a_S).T - wrong(a_G) @ wrong(a_G).T) ** 2) / (4 * 25 * 144)
    got = float(st.compute_layer_style_cost(tf.constant(a_S), tf.constant(a_G)))
    assert got == pytest.approx(np_layer_style_cost(a_S, a_G), rel=1e-4)
    assert got != pytest.approx(wrong_cost, rel=1e-3)


def test_compute_style_cost_course_list_convention():
    layers = [("l1", 0.5), ("l2", 0.3), ("l3", 0.2)]
    shapes = [(1, 8, 6, 4), (1, 4, 3, 8), (1, 2, 2, 16)]
    S = [rand(s, 10 + i) for i, s in enumerate(shapes)]
    G = [rand(s, 20 + i) for i, s in enumerate(shapes)]
    content_S, content_G = rand((1, 4, 3, 8), 30), rand((1, 4, 3, 8), 31)
    expected = sum(w * np_layer_style_cost(s, g) for (_, w), s, g in zip(layers, S, G))
    got = float(st.compute_style_cost([tf.constant(x) for x in S + [content_S]],
                                      [tf.constant(x) for x in G + [content_G]], layers))
    assert got == pytest.approx(expected, rel=1e-4)
    # The last entry is the content layer's output and must not count.
    got2 = float(st.compute_style_cost([tf.constant(x) for x in S + [rand((1, 4, 3, 8), 40)]],
                                       [tf.constant(x) for x in G + [content_G]], layers))
    assert got2 == pytest.approx(got, rel=1e-6)
    with pytest.raises(ValueError, match="style outputs"):
        st.compute_style_cost([tf.constant(x) for x in S], [tf.constant(x) for x in G], layers)


def test_total_cost_and_defaults():
    assert float(st.total_cost(tf.constant(2.0), tf.constant(3.0))) == pytest.approx(10 * 2 + 40 * 3)
    assert float(st.total_cost(2.0, 3.0, alpha=1, beta=2)) == pytest.approx(8.0)
    assert st.STYLE_LAYERS == [("block1_conv1", 0.2), ("block2_conv1", 0.2), ("block3_conv1", 0.2),
                               ("block4_conv1", 0.2), ("block5_conv1", 0.2)]
    assert st.CONTENT_LAYER == [("block4_conv2", 1)]


def test_total_variation_matches_tf_image():
    x = rand((1, 7, 9, 3), 50)
    assert float(st.total_variation_cost(tf.constant(x))) == pytest.approx(
        float(tf.image.total_variation(tf.constant(x[0]))), rel=1e-5)


def test_min_input_size_and_parse_size():
    assert st.min_input_size() == 16  # block5_conv1 sits after 4 max-pools
    assert st.min_input_size([("block1_conv1", 1)], [("block1_conv2", 1)]) == 1
    assert st.min_input_size([("block3_conv1", 1)], [("block4_conv2", 1)]) == 8
    with pytest.raises(ValueError, match="unknown VGG-19 layer"):
        st.min_input_size([("conv1_1", 1)])
    assert st.parse_size("400x300") == (400, 300)
    assert st.parse_size((64, 48)) == (64, 48)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        st.parse_size("400by300")


# ---------------------------------------------------------------- images

def test_preprocess_matches_keras_and_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    x = st.preprocess_image(rgb)
    ref = keras.applications.vgg19.preprocess_input(rgb.astype(np.float32)[None].copy())
    np.testing.assert_allclose(x, np.asarray(ref), atol=1e-4)
    np.testing.assert_array_equal(st.deprocess_image(x), rgb)


def test_noise_image_course_mix():
    content = st.preprocess_image(np.full((10, 12, 3), 128, np.uint8))
    g = st.generate_noise_image(content, seed=3)
    noise = (g - 0.4 * content) / 0.6  # no clipping happens at mid-grey
    assert noise.min() >= -20 - 1e-3 and noise.max() <= 20 + 1e-3 and noise.std() > 5
    np.testing.assert_array_equal(g, st.generate_noise_image(content, seed=3))
    assert not np.array_equal(g, st.generate_noise_image(content, seed=4))


# ---------------------------------------------------------------- extractor and optimisation

@pytest.fixture(scope="module")
def extractor():
    return st.build_feature_extractor(None, input_shape=(H, W, 3), seed=0)


def _images(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    content = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    style = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    return content, style


def test_extractor_outputs(extractor):
    outs = extractor(st.preprocess_image(_images()[0]))
    shapes = [tuple(o.shape) for o in outs]
    assert shapes == [(1, 48, 64, 64), (1, 24, 32, 128), (1, 12, 16, 256), (1, 6, 8, 512),
                      (1, 3, 4, 512), (1, 6, 8, 512)]  # 5 style layers, then block4_conv2
    assert not extractor.trainable and extractor.trainable_weights == []
    # weights=None is reproducible from the seed and changes with it
    again = st.build_feature_extractor(None, input_shape=(H, W, 3), seed=0)
    other = st.build_feature_extractor(None, input_shape=(H, W, 3), seed=1)
    x = st.preprocess_image(_images()[0])
    np.testing.assert_allclose(np.asarray(again(x)[-1]), np.asarray(outs[-1]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(other(x)[-1]), np.asarray(outs[-1]))


def test_train_step_clips_to_valid_pixels(extractor):
    content, style = _images()
    a_C = extractor(st.preprocess_image(content))
    a_S = extractor(st.preprocess_image(style))
    g = tf.Variable(st.generate_noise_image(st.preprocess_image(content)))
    # A huge learning rate would push pixels far outside [0, 255] without the clip.
    step = st.make_train_step(extractor, g, a_C, a_S, keras.optimizers.Adam(500.0))
    for _ in range(3):
        costs = step()
    x = g.numpy() + st.VGG_MEANS_BGR
    assert x.min() >= -1e-3 and x.max() <= 255 + 1e-3
    assert (x < 1).any() and (x > 254).any()  # the clip was actually reached
    assert set(costs) == {"J", "J_content", "J_style", "J_tv"}


def test_cost_decreases_and_tv_weight(extractor):
    content, style = _images()
    res = st.optimize_image(content, style, extractor, iterations=10, seed=0)
    J = res["history"]["J"]
    assert len(J) == 10 and res["history"]["iteration"] == list(range(1, 11))
    assert J[-1] < 0.95 * J[0]
    assert sum(b < a for a, b in zip(J, J[1:])) >= 8  # (almost) monotone
    assert res["final_costs"]["J"] < J[-1]  # the returned image is after the last update
    assert res["image"].shape == (H, W, 3) and res["image"].dtype == np.uint8
    tv = st.optimize_image(content, style, extractor, iterations=3, tv_weight=1e-3)
    assert tv["history"]["J_tv"][0] > 0
    assert tv["history"]["J"][0] == pytest.approx(
        10 * tv["history"]["J_content"][0] + 40 * tv["history"]["J_style"][0] + 1e-3 * tv["history"]["J_tv"][0],
        rel=1e-4)


def _write(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def image_files(tmp_path):
    # Different sizes from the target, so the resize to `size` is exercised.
    rng = np.random.default_rng(1)
    content = _write(tmp_path / "content.jpg", rng.integers(0, 256, (90, 120, 3)).astype(np.uint8))
    style = _write(tmp_path / "style.png", rng.integers(0, 256, (70, 50, 3)).astype(np.uint8))
    return content, style


def test_run_style_transfer_end_to_end(image_files, tmp_path, extractor):
    from PIL import Image
    content, style = image_files
    out = tmp_path / "out" / "result.png"
    calls, steps = [], []
    res = st.run_style_transfer(content, style, out, size=f"{W}x{H}", iterations=10, save_every=4, extractor=extractor,
                                on_checkpoint=lambda i, p, c: calls.append((i, p, c)),
                                on_step=lambda i, c: steps.append((i, c["J"])))
    assert res["output"] == str(out) and out.is_file()
    assert [i for i, _ in steps] == list(range(1, 11))  # on_step: after every step, with its costs
    assert [j for _, j in steps] == res["history"]["J"]
    with Image.open(out) as im:
        assert im.size == (W, H) and im.mode == "RGB"
        arr = np.asarray(im)
    assert arr.std() > 1  # an image, not a constant
    for key in ("grid", "cost_curve"):
        with Image.open(res[key]) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert [c[0] for c in calls] == [4, 8, 10]
    assert all(Path(p).is_file() for _, p, _ in calls) and res["checkpoints"] == [p for _, p, _ in calls]
    assert set(calls[0][2]) == {"J", "J_content", "J_style", "J_tv"}
    assert calls[0][2]["J"] == pytest.approx(res["history"]["J"][3])
    assert res["history"]["J"][-1] < res["history"]["J"][0]
    assert res["seconds_per_iteration"] > 0 and "random" in res["weights"]
    assert not list(out.parent.rglob(".*tmp*"))  # no temporary files left behind


def test_run_style_transfer_course_images(tmp_path):
    d = dataset_path("nst_images", "classic")
    res = st.run_style_transfer(d / "louvre_small.jpg", d / "monet.jpg", tmp_path / "o.png",
                                size=(W, H), iterations=3, save_every=0)
    assert Path(res["output"]).is_file() and res["checkpoints"] == []
    assert len(res["history"]["J"]) == 3


# ---------------------------------------------------------------- bad input

def _assert_nothing_written(folder: Path):
    assert not folder.exists() or not any(folder.iterdir())


def test_missing_and_unreadable_images(image_files, tmp_path):
    content, style = image_files
    out_dir = tmp_path / "never"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        st.run_style_transfer(tmp_path / "nope.jpg", style, out_dir / "o.png", size=(W, H))
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        st.run_style_transfer(content, bad, out_dir / "o.png", size=(W, H))
    with pytest.raises(ValueError, match=r"\.png"):
        st.run_style_transfer(content, style, out_dir / "o.gif", size=(W, H))
    _assert_nothing_written(out_dir)


def test_size_too_small_names_minimum(image_files, tmp_path):
    content, style = image_files
    with pytest.raises(ValueError, match="at least 16x16"):
        st.run_style_transfer(content, style, tmp_path / "x" / "o.png", size=(40, 12))
    with pytest.raises(ValueError, match="at least 16x16"):
        st.build_feature_extractor(None, input_shape=(15, 40, 3))
    _assert_nothing_written(tmp_path / "x")
    # 16x16 itself works: block5_conv1 is 1x1 there.
    ex = st.build_feature_extractor(None, input_shape=(16, 16, 3))
    assert tuple(ex.outputs[4].shape) == (None, 1, 1, 512)


def test_wrong_weights_files(image_files, tmp_path):
    content, style = image_files
    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Dense(2)])
    for name in ("other.weights.h5", "other_legacy.h5"):
        path = tmp_path / name
        if name.endswith(".weights.h5"):
            other.save_weights(path)
        else:
            import h5py  # a legacy-format file of a different network
            with h5py.File(path, "w") as f:
                f.attrs["layer_names"] = [b"conv2d_x"]
                g = f.create_group("conv2d_x")
                g.attrs["weight_names"] = [b"conv2d_x/kernel:0"]
                g.create_dataset("conv2d_x/kernel:0", data=np.zeros((3, 3, 3, 4), "float32"))
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            st.build_feature_extractor(str(path), input_shape=(H, W, 3))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="garbage.h5"):
        st.run_style_transfer(content, style, tmp_path / "o" / "o.png", size=(W, H), weights=str(garbage))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        st.run_style_transfer(content, style, tmp_path / "o" / "o.png", size=(W, H),
                              weights=str(tmp_path / "missing.h5"))
    _assert_nothing_written(tmp_path / "o")


def test_imagenet_unavailable_fails_fast(monkeypatch, tmp_path):
    # No cached file, and a probe to an unroutable address (TEST-NET-1): must raise within
    # the probe timeout, naming the options, on machines with or without internet.
    # The cache lookup and the probe live in the weights module (st.vgg_weights).
    monkeypatch.setattr(st.vgg_weights, "_imagenet_cache_candidates", lambda: [tmp_path / st.VGG19_NOTOP_FILE])
    monkeypatch.setattr(st.vgg_weights, "_IMAGENET_PROBE", ("192.0.2.1", 443))
    monkeypatch.setattr(st.vgg_weights, "_PROBE_TIMEOUT_S", 1.0)
    t0 = time.perf_counter()
    with pytest.raises(st.WeightsUnavailableError) as err:
        st.build_feature_extractor("imagenet", input_shape=(H, W, 3))
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "weights=None" in msg and "--weights PATH" in msg and st.VGG19_NOTOP_FILE in msg


def test_weights_file_round_trip(tmp_path, extractor):
    # A VGG-19 no-top weights file (as a user would bring) is loaded into the extractor.
    vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg19_notop.weights.h5"
    vgg.save_weights(path)
    ex = st.build_feature_extractor(str(path), input_shape=(H, W, 3))
    x = st.preprocess_image(_images()[0])
    ref = keras.Model(vgg.input, vgg.get_layer("block4_conv2").output)(x)
    np.testing.assert_allclose(np.asarray(ex(x)[-1]), np.asarray(ref), rtol=1e-4, atol=1e-4)
    assert "weights file" in st.describe_weights(str(path))


def test_keras_model_file_with_user_layers(tmp_path):
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c3")(x)
    path = tmp_path / "tiny.keras"
    keras.Model(inp, x).save(path)
    layers = [("c1", 0.5), ("c2", 0.5)]
    ex = st.build_feature_extractor(str(path), style_layers=layers, content_layer=[("c3", 1)],
                                    input_shape=(24, 32, 3))
    assert [tuple(o.shape) for o in ex.outputs] == [(None, 24, 32, 4), (None, 12, 16, 8), (None, 12, 16, 8)]
    content = np.random.default_rng(0).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    res = st.optimize_image(content, content[::-1].copy(), ex, iterations=3, style_layers=layers)
    assert len(res["history"]["J"]) == 3
    with pytest.raises(ValueError, match="block4_conv2"):
        st.build_feature_extractor(str(path), input_shape=(24, 32, 3))  # default VGG names absent


# ---------------------------------------------------------------- package layout

PACKAGE_DIR = Path(st.__file__).parent


def _imported_modules(tree) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out


def test_package_layout_one_concern_a_module():
    import ast

    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert {f.stem for f in files} >= {"__init__", "costs", "network", "vgg_weights", "images", "optimize",
                                       "report", "runner"}
    for f in files:
        text = f.read_text()
        assert len(text.splitlines()) < 500, f
        tree = ast.parse(text)
        mods = _imported_modules(tree)
        # models/ sits below components/ and pipeline/: it never imports them.
        assert not {m for m in mods if m.split(".")[0] in ("components", "pipeline")}, (f, mods)
        # No console output in models/: callers display progress through on_step.
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "print" not in calls, f
        assert not {m for m in mods if m.split(".")[0] in ("rich", "click")}, (f, mods)
    # The course's maths needs neither files, plots nor the network.
    costs_mods = _imported_modules(ast.parse((PACKAGE_DIR / "costs.py").read_text()))
    assert costs_mods <= {"__future__", "typing", "numpy", "keras"}, costs_mods


def test_one_size_parser():
    from data import style_images

    assert st.parse_size is style_images.parse_size
    assert st.parse_size(" 64 X 48 ") == st.parse_size("64×48") == (64, 48)
    for bad in ("0x48", "64x", "4OOx300", (64, 0)):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT|positive"):
            st.parse_size(bad)
