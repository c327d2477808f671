"""The StyleTransfer component through the runner (`run_single`): outputs, costs, sizes, cache
inputs, bad input (clear ComponentError, no output folder), and the built-in images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.base import ComponentError
from components.style_transfer import SPEC, StyleTransferParams
from data import style_images

W, H = 64, 48


def _images(d: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:80]
    content = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    c, s = d / "content.jpg", d / "style.png"
    Image.fromarray(content).save(c)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3)).astype(np.uint8)).save(s)
    return c, s


def _run(params: dict, out: Path, inputs=None):
    from pipeline.runner import run_single

    return run_single("StyleTransfer", inputs or {}, params, out, tracking_uri=f"sqlite:///{out.parent / 'm.db'}")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    d = tmp_path_factory.mktemp("st")
    c, s = _images(d)
    meta = _run({"content": str(c), "style": str(s), "size": f"{W}x{H}", "iterations": 8, "save_every": 4},
                d / "out")
    return d, meta


@pytest.mark.slow  # TensorFlow start-up + VGG-19 trace: ~25 s quiet, ~60 s on a loaded machine
def test_outputs_costs_and_image(done):
    d, meta = done
    out = d / "out" / "stylized"
    for f in ("result.png", "result_grid.png", "result_costs.png", "result.json", "content.png", "style.png",
              "checkpoints/iter_0004.png", "checkpoints/iter_0008.png"):
        assert (out / f).is_file(), f
    r = json.loads((out / "result.json").read_text())
    J = r["history"]["J"]
    assert len(J) == 8 and J[-1] < J[0] and r["final_costs"]["J"] < r["initial_costs"]["J"]
    assert r["seconds_per_iteration"] > 0 and "random" in r["weights_description"] and r["weights"] is None
    assert r["files"]["checkpoints"] == ["checkpoints/iter_0004.png", "checkpoints/iter_0008.png"]
    with Image.open(out / "result.png") as im:
        assert im.size == (W, H) and im.mode == "RGB"
        a = np.asarray(im)
    assert a.dtype == np.uint8 and 0 <= a.min() and a.max() <= 255 and a.std() > 1
    assert meta["metrics"]["J_final"] < meta["metrics"]["J_initial"]


def test_missing_image_is_a_component_error_and_writes_nothing(tmp_path):
    c, _ = _images(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ComponentError, match="style image not found: .*nope.png"):
        _run({"content": str(c), "style": str(tmp_path / "nope.png"), "size": f"{W}x{H}", "iterations": 2}, out)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_unreadable_image_and_too_small_size(tmp_path):
    c, s = _images(tmp_path)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ComponentError, match="cannot read content image .*bad.jpg"):
        _run({"content": str(bad), "style": str(s), "size": f"{W}x{H}", "iterations": 1}, tmp_path / "o1")
    with pytest.raises(ComponentError, match="too small"):
        _run({"content": str(c), "style": str(s), "size": "12x12", "iterations": 1}, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_wrong_weights_file(tmp_path):
    c, s = _images(tmp_path)
    import keras

    wrong = tmp_path / "other.weights.h5"
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    m.save_weights(wrong)
    with pytest.raises(ComponentError, match="not a VGG-19"):
        _run({"content": str(c), "style": str(s), "size": f"{W}x{H}", "iterations": 1, "weights": str(wrong)},
             tmp_path / "o")
    with pytest.raises(ComponentError, match="weights file not found"):
        _run({"content": str(c), "style": str(s), "size": f"{W}x{H}", "iterations": 1,
              "weights": str(tmp_path / "none.h5")}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_image_from_input_artifact(done, tmp_path):
    # The previous result as content (a `stylized` folder: its result.png is used).
    from models import style_transfer as st

    d, _ = done
    _, s = _images(tmp_path)
    iterations, lr = 2, 2.0
    meta = _run({"style": str(s), "size": f"{W}x{H}", "iterations": iterations, "learning_rate": lr,
                 "save_every": 0}, tmp_path / "o", inputs={"content": d / "out" / "stylized"})
    out = tmp_path / "o" / "stylized"
    r = json.loads((out / "result.json").read_text())
    previous = d / "out" / "stylized" / "result.png"
    assert r["content"] == f"input artifact {previous}"
    prev = np.asarray(Image.open(previous))
    # The content optimised against is that image's pixels (same size: no resize), not the default built-in.
    np.testing.assert_array_equal(np.asarray(Image.open(out / "content.png")), prev)

    # The first step's cost, recomputed here from the previous result: the course's initial image
    # (seed 0) through the same random VGG-19 (seed 0). Another content image gives another cost.
    ex = st.build_feature_extractor(None, input_shape=(H, W, 3), seed=0)
    content = st.preprocess_image(prev)
    init = st.generate_noise_image(content, seed=0)
    a_C, a_S, a_G = ex(content), ex(st.preprocess_image(st.load_image(s, (W, H)))), ex(init)
    J0 = st.total_cost(float(st.compute_content_cost(a_C, a_G)), float(st.compute_style_cost(a_S, a_G)))
    assert r["initial_costs"]["J"] == pytest.approx(J0, rel=1e-4)
    assert meta["metrics"]["J_initial"] == pytest.approx(J0, rel=1e-4)
    assert meta["metrics"]["J_final"] < meta["metrics"]["J_initial"]  # the optimisation lowered the cost

    # The written result is the initial image moved by Adam: about `lr` per pixel and step (the first
    # steps' updates are ~lr * sign(gradient); the clip only shortens them), +1 for rounding to uint8.
    moved = np.abs(np.asarray(Image.open(out / "result.png")).astype(int) - st.deprocess_image(init).astype(int))
    assert moved.max() <= iterations * lr + 1
    assert moved.mean() > 0.5 * iterations * lr  # every pixel moved, not just a few
    two = tmp_path / "two"
    two.mkdir()
    _images(two)
    with pytest.raises(ComponentError, match="exactly one image"):
        _run({"size": f"{W}x{H}", "iterations": 1}, tmp_path / "o3", inputs={"style": two})


def test_params_paths_and_cache_files(tmp_path):
    p = StyleTransferParams(content="img/c.jpg", style="builtin:swirls", weights="w.h5", size="64 x 48")
    p.resolve_paths(tmp_path)
    assert p.content == str(tmp_path / "img" / "c.jpg") and p.style == "builtin:swirls"
    assert p.weights == str(tmp_path / "w.h5") and p.size == "64x48" and p.width_height == (64, 48)
    files = SPEC.external_files(p)
    assert str(tmp_path / "img" / "c.jpg") in files and str(tmp_path / "w.h5") in files
    d = StyleTransferParams()
    assert d.size == "400x300" and d.iterations == 200 and d.weights is None
    assert SPEC.external_files(d) == [str(style_images.grace_hopper_path())]
    assert StyleTransferParams(weights="none").weights is None
    from pydantic import ValidationError

    for bad in ({"size": "400"}, {"content": "builtin:nope"}, {"iterations": 0}, {"colour": 1}):
        with pytest.raises(ValidationError):
            StyleTransferParams(**bad)


def test_changing_an_image_changes_the_cache_key(tmp_path):
    from pipeline.runner import compute_key

    c, s = _images(tmp_path)
    p = StyleTransferParams(content=str(c), style=str(s))
    k1 = compute_key("StyleTransfer", p, {})[0]
    assert compute_key("StyleTransfer", p, {})[0] == k1
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(s)
    assert compute_key("StyleTransfer", p, {})[0] != k1
    _, modules = compute_key("StyleTransfer", p, {})[1:]
    assert {"models.style_transfer", "data.style_images"} <= set(modules)
    # The package's modules are in the code fingerprint too: editing the cost maths reruns the component.
    assert {f"models.style_transfer.{m}" for m in ("costs", "network", "vgg_weights", "images", "optimize",
                                                  "report", "runner")} <= set(modules)


def test_builtin_images(tmp_path):
    a = style_images.swirls(size=(96, 72))
    assert a.shape == (72, 96, 3) and a.dtype == np.uint8 and a.std() > 20
    np.testing.assert_array_equal(a, style_images.swirls(size=(96, 72)))  # deterministic
    p = style_images.builtin_path("builtin:swirls", tmp_path)
    assert p == tmp_path / "swirls.png" and p.is_file()
    g = style_images.builtin_path("builtin:grace_hopper", tmp_path)
    with Image.open(g) as im:
        assert im.size[0] > 100
    with pytest.raises(ValueError, match="known: builtin:grace_hopper, builtin:swirls"):
        style_images.builtin_path("builtin:mona_lisa", tmp_path)


def test_default_pipeline_has_a_short_style_transfer(tmp_path):
    from pipeline.config import load_pipeline
    from tests.pipeline.test_config import config_with_datasets

    root = Path(__file__).resolve().parents[2]
    comp = load_pipeline(root / "pipeline.yaml").components["style_transfer"]
    assert comp.type == "StyleTransfer" and comp.params.iterations <= 50
    assert comp.params.content.startswith("builtin:") and comp.params.style.startswith("builtin:")
    # the course's images, read from datasets/ as a user has them (skipped without the data)
    config = config_with_datasets(root / "configs" / "style_louvre_monet.yaml", tmp_path)
    cfg = load_pipeline(config).components["louvre_monet"].params
    assert cfg.iterations == 200 and cfg.size == "400x300"
    assert cfg.content.endswith("nst_images/classic/louvre_small.jpg") and Path(cfg.content).is_absolute()
