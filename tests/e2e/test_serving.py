"""Serving through MLflow's real scoring server, over real HTTP on 127.0.0.1.

A small classifier is registered in a temporary sqlite MLflow and served by `python -m
pipeline serve models:/signs@champion` (one server for the module): `request` prints exactly what
`predict` prints in-process, the printed curl example works, bad requests (wrong shape, wrong
dtype, out-of-range pixels, not JSON, no Content-Type, an empty batch, a 50 MB body) get a 4xx
with a message and the server keeps answering (the compact Parquet wire format too), and SIGTERM stops the command and its server's
whole process group. An untrained detector, served the way the Pusher registers it, answers
what in-process inference gives: its boxes after NMS, decoded by the served model; an untrained
face model answers the encodings of in-process inference, and `request` the rows of `predict`."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from components.artifacts import Blessing
from pipeline.runner import run_single
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _images(n, dest):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(dest / f"img{i}.png")  # resized
        paths.append(str(dest / f"img{i}.png"))
    return paths


def _classifier(d):
    """A small untrained classifier saved as a Trainer's model (32x32 uint8 images, 3 classes)."""
    import keras

    from components.artifacts import Model, ModelInfo

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inp))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    (d / "model").mkdir()
    Model.save(d / "model", keras.Model(inp, out), ModelInfo(model="signs_cnn", task="classification",
                                                             classes=["fist", "one", "two"], image_size=[32, 32]), {})
    return d / "model"


def _group_members(pgid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(stat))
    return out


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                if int(open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(stat))
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """(Model artifact, its scoring server): started here and waited for in its test, so that it
    loads while the classifier's server does."""
    from components.artifacts import Model
    from components.serving import Server, save_mlflow_model

    d = tmp_path_factory.mktemp("detector")
    art = Model.load(_untrained(d, "detection"))
    server = Server(save_mlflow_model(art, d / "mlflow_model"), log_path=d / "server.log").start()
    yield art, server
    server.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory, detector):
    """(folder, tracking URI, serve process, URL, printed lines, image paths)."""
    d = tmp_path_factory.mktemp("serving")
    model = _classifier(d)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    (d / "bless").mkdir()
    Blessing(d / "bless", True, []).save()
    run_single("Pusher", {"model": model, "blessing": d / "bless"}, {"registered_model_name": "signs"}, d / "push",
               tracking_uri=uri)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "models:/signs@champion", "--port", "0",
                             "--tracking-uri", uri], cwd=d, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    seen, url, deadline = [], None, time.monotonic() + 240
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        m = re.search(r"ready after [\d.]+ s: (http://127\.0\.0\.1:\d+)/invocations", seen[-1])
        url = m.group(1) if m else None
    while True:  # the lines printed right after "ready" (the curl example)
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            break
    if url is None:
        proc.kill()
        pytest.fail("serve did not become ready:\n" + "".join(seen))
    yield d, uri, proc, url, seen, _images(3, d)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _cli(*args):
    from pipeline.cli import main

    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.output


def test_request_prints_what_predict_prints(served):
    d, uri, _, url, _, images = served
    code_p, out_p = _cli("predict", "--model", "models:/signs@champion", "--tracking-uri", uri, "--top", "3", *images)
    code_r, out_r = _cli("request", url, "--top", "3", *images)
    assert code_p == code_r == 0, (out_p, out_r)
    assert out_r == out_p and out_r.count("img") == 3, (out_p, out_r)
    code, out = _cli("request", url, str(d / "missing.png"), images[0])
    assert code == 1 and "missing.png" in out and images[0] in out


def test_the_printed_curl_example_answers_probabilities(served):
    _, _, _, url, seen, _ = served
    curl = next(ln for ln in seen if "curl " in ln).split("try:", 1)[1].strip()
    r = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60)
    probs = json.loads(r.stdout)["predictions"]
    assert len(probs) == 1 and abs(sum(probs[0]) - 1) < 1e-4 and url in curl


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_answering(served):
    from components.serving import Client, error_message

    _, _, _, url, _, _ = served
    c = Client(url)
    good = np.zeros((2, 32, 32, 3), np.uint8)
    before = c.predict(good)
    bad = {
        "wrong shape": (json.dumps({"inputs": np.zeros((1, 8, 8, 3), int).tolist()}), "application/json", "shape"),
        "wrong dtype": (json.dumps({"inputs": (np.zeros((1, 32, 32, 3)) + 0.5).tolist()}), "application/json",
                        "uint8"),
        "pixel out of range": (json.dumps({"inputs": np.full((1, 32, 32, 3), 300).tolist()}), "application/json",
                               "300"),
        "not JSON": ("{this is not json", "application/json", "JSON"),
        "empty batch": (json.dumps({"inputs": []}), "application/json", "empty batch"),
        "no Content-Type": ("{}", "", "Content-Type"),
        "50 MB body": ("[" + "1," * (25 * 2**20) + "1]", "application/json", "over the limit"),
    }
    for what, (body, ctype, says) in bad.items():
        status, answer = c._request("POST", "/invocations", body.encode(), content_type=ctype)
        assert 400 <= status < 500, (what, status, answer[:300])
        assert says in error_message(answer), (what, error_message(answer))
        np.testing.assert_allclose(c.predict(good), before, atol=1e-6)  # still answering, the same
    # the compact wire format (Parquet, raw image bytes): the same answer, and its own 400s
    np.testing.assert_allclose(c.predict(good, wire="parquet"), before, atol=1e-6)
    from components.serving import PARQUET, encode_batch_parquet

    status, answer = c.post(encode_batch_parquet(np.zeros((1, 8, 8, 3), np.uint8)), PARQUET)
    assert status == 400 and "expected 3072 bytes" in error_message(answer), answer[:300]
    c.close()


def _untrained(tmp_path, task):
    """An untrained detector (yolo_small) saved as a Trainer's model."""
    import keras

    from components.artifacts import Model, ModelInfo
    from models.registry import build_model

    keras.utils.set_random_seed(1)
    inp = keras.Input((64, 64, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    core = build_model("yolo_small", input_shape=(64, 64, 3), num_classes=2, num_anchors=3, stride=16, width=8)
    anchors = [[0.5, 0.5], [1.0, 1.5], [2.0, 2.0]]
    info = ModelInfo(model="yolo_small", task="detection", classes=["circle", "square"], image_size=[64, 64],
                     anchors=anchors, anchors_relative=[[a / 4 for a in p] for p in anchors], anchor_source="given",
                     anchor_mean_iou=None, grid=[4, 4], num_anchors=3, class_loss="softmax", nms_iou_threshold=0.5,
                     score_threshold=0.2)
    (tmp_path / task).mkdir()
    Model.save(tmp_path / task, keras.Model(inp, core(x)), info, {})
    return tmp_path / task


def _face_model(d):
    """A small untrained face (embedding) model saved as a Trainer's model: 32x32 uint8 images ->
    8 raw numbers, embedded over two views (the image and its mirror) as its model_info says."""
    import keras

    from components.artifacts import Model, ModelInfo

    keras.utils.set_random_seed(2)
    inp = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.Conv2D(6, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inp))
    out = keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(x))
    info = ModelInfo(model="facenet_small", task="embedding", classes=["ann", "bob"], image_size=[32, 32],
                     threshold=0.9, threshold_source="train", threshold_accuracy=0.5, threshold_roc_auc=0.5,
                     flip_embeddings=True, tta_scales=[1.0], embedding_dim=8)
    (d / "face").mkdir()
    Model.save(d / "face", keras.Model(inp, out), info, {})
    return d / "face"


@pytest.fixture(scope="module")
def face_server(tmp_path_factory):
    """(Model artifact, its scoring server), started here and waited for in its test."""
    from components.artifacts import Model
    from components.serving import Server, save_mlflow_model

    d = tmp_path_factory.mktemp("face")
    art = Model.load(_face_model(d))
    server = Server(save_mlflow_model(art, d / "mlflow_model"), log_path=d / "server.log").start()
    yield art, server
    server.stop()


def test_a_face_model_serves_the_encodings_of_in_process_inference(served, face_server):
    """The face task's served model is its network: the server answers its raw encodings, and the
    task's own predictor, the model answering from the server (both views: the image and its
    mirror), gives the rows `predict` gives in-process."""
    from components.predict import predict_images
    from components.serving import Client, request_rows, served_keras_model

    art, server = face_server
    server.wait_ready()
    images = served[5]
    batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR)) for p in images])
    for wire in ("json", "parquet"):
        got = Client(server.url).predict(batch, wire=wire)
        assert got.shape == (3, 8)
        np.testing.assert_allclose(got, np.asarray(served_keras_model(art).predict_on_batch(batch)), atol=1e-4)
    _, remote = request_rows(server.url, images)
    _, local = predict_images(str(art.path), images)
    assert len(remote) == len(local) == 3
    for r, lo in zip(remote, local):
        assert r.keys() == lo.keys() and r["embedding_dim"] == lo["embedding_dim"] == 8, (r.keys(), lo.keys())
        np.testing.assert_allclose(r["embedding"], lo["embedding"], atol=1e-4)
        assert abs(r["norm"] - lo["norm"]) < 1e-4
    code, out = _cli("request", server.url, images[0])
    assert code == 0 and out.startswith(f"{images[0]}: embedding of 8 numbers, norm {remote[0]['norm']:.4f}"), out


# The detector is the task whose served model is not its network (it serves its decoded boxes):
# its served_predictor reads that layout into the rows of its in-process predictor (each server
# costs ~10-30 s on 2 shared cores).
def test_a_detector_answers_boxes_after_nms_as_in_process_inference(served, detector, tmp_path):
    from components.predict import predict_images
    from components.serving import Client, request_rows, served_keras_model

    rng = np.random.default_rng(0)
    for i in range(2):  # 64x64 scenes with a coloured block
        img = np.zeros((64, 64, 3), np.uint8)
        img[8 + 20 * i:40 + 10 * i, 10:50] = rng.integers(80, 255, 3)
        Image.fromarray(img).save(tmp_path / f"scene{i}.png")
    images = [str(tmp_path / "scene0.png"), str(tmp_path / "scene1.png"), served[5][0]]
    art, server = detector
    server.wait_ready()
    batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.BILINEAR)) for p in images])
    got = Client(server.url).predict(batch)
    assert got.shape == (3, 100, 6)  # boxes after NMS, decoded by the served model
    np.testing.assert_allclose(got, np.asarray(served_keras_model(art).predict_on_batch(batch)), atol=1e-4)
    opts = {"score_threshold": 0.001}
    _, remote = request_rows(server.url, images, **opts)
    _, local = predict_images(str(art.path), images, **opts)
    assert len(remote) == len(local) == 3
    for r, lo in zip(remote, local):
        assert r.keys() == lo.keys(), (r.keys(), lo.keys())
        assert len(r["detections"]) == len(lo["detections"]) and r.get("best_score") == lo.get("best_score")
        for a, b in zip(r["detections"], lo["detections"]):
            assert a["class"] == b["class"] and abs(a["score"] - b["score"]) < 1e-4
            np.testing.assert_allclose(a["box"], b["box"], atol=0.02)
    assert sum(len(r["detections"]) for r in remote) > 0
    # what `request` prints for it is the task's own lines
    code, out = _cli("request", server.url, "--score-threshold", "0.001", images[0])
    assert code == 0 and out.startswith(f"{images[0]}: Found {len(remote[0]['detections'])} boxes"), out


def test_sigterm_stops_serve_and_its_whole_process_group(served):
    _, _, proc, url, _, _ = served
    server_pids = _children(proc.pid)
    assert server_pids and all(_group_members(p) for p in server_pids)  # uvicorn, in its own group
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    deadline = time.monotonic() + 10
    while any(_group_members(p) for p in server_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_group_members(p) for p in server_pids)
    from components.serving import Client, ServingError

    with pytest.raises(ServingError, match="no answer"):
        Client(url, timeout=5).predict(np.zeros((1, 32, 32, 3), np.uint8))


def test_several_workers_answer_keep_alive_requests_without_the_delayed_ack_stall(face_server):
    """With --workers N uvicorn hands its workers a listener on which asyncio does not set
    TCP_NODELAY (uvicorn #3149): each keep-alive answer then waited ~40 ms for the client's delayed
    ACK. The server sets it on the inherited listener."""
    from components.serving import Client, Server

    art, one = face_server
    with Server(one.model_folder, workers=2) as server:
        c = Client(server.url)
        batch = np.zeros((2, 32, 32, 3), np.uint8)
        c.predict(batch, wire="parquet")
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            c.predict(batch, wire="parquet")
            times.append(time.perf_counter() - t0)
        c.close()
    assert sorted(times)[5] < 0.03, times
