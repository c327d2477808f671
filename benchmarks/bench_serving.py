"""`python -m benchmarks serving`: a bounded load test of a model behind MLflow's scoring server,
against 127.0.0.1 only.

The model is a registered one (``--model models:/signs-cnn@champion``) or, by default, a SIGNS CNN
trained here for a few epochs on generated hand images (a demo model: the numbers are about the
serving path, not about accuracy). It is served exactly as ``python -m pipeline serve`` serves it
(``components.serving.Server``: MLflow's scoring-server app under uvicorn, its own process group).

Measured for both wire formats (MLflow's ``{"inputs": ...}`` JSON, and its Parquet content type
with one column of raw image bytes: ``components.serving.encode_batch_parquet``), per concurrency
level (``--concurrency 1,4,8``; ``--requests`` each, ``--batch`` images per request, request bodies
encoded once beforehand so the client's encoding is not timed):
latency p50/p99, requests/s, images/s, errors (target 0) and the server's RSS (its process tree,
sampled while loaded). Then at ``--ratio-batch`` (32) images per request: served images/s against
in-process ``predict`` images/s (the Keras model, as ``python -m pipeline predict`` runs it; target
ratio >= 0.5), both measured the same way: the same uint8 batches, ``--ratio-requests`` of them per
round, one caller (one client connection / one thread) and then two, ``--ratio-rounds`` rounds
alternating between the sides so both see the same machine, medians over the rounds. Also the
served folder's pyfunc model called in this process (MLflow's model call without the server), the
server's own model wrapper called in this process (its direct SavedModel call: the server's model
call without the server), and the client's encoding cost per batch on its own (request bodies are
encoded beforehand, as in the load test). ``os.getloadavg()`` before and after (other jobs share the machine: it waits up to
``--wait-load`` seconds for the 1-minute load to drop under ``--max-load`` first).
Results: benchmarks/results/serving.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import wait_for_load, write_result

PARQUET_TYPE = "application/vnd.apache.parquet"  # components.serving.PARQUET (imported lazily there)


def _demo_model(scratch: Path, epochs: int):
    """A SIGNS CNN trained on 240 generated 64x64 hand images: the Trainer's Model artifact."""
    from components.artifacts import Model
    from pipeline.runner import run_single

    run_single("ExampleGen", {}, {"source": {"format": "synthetic_signs", "options": {"num_examples": 240}}},
               scratch / "gen")
    ex = scratch / "gen" / "examples"
    run_single("StatisticsGen", {"examples": ex}, {}, scratch / "stats")
    run_single("Transform", {"examples": ex, "statistics": scratch / "stats" / "statistics"}, {}, scratch / "tf")
    run_single("Trainer", {"examples": ex, "transform": scratch / "tf" / "transform"},
               {"model": "signs_cnn", "epochs": epochs, "batch_size": 32}, scratch / "train")
    return Model.load(scratch / "train" / "model")


def _percentiles(lat: list[float]) -> dict:
    import numpy as np

    a = np.asarray(lat) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)} if len(a) else {}


def load_level(url: str, bodies: list[bytes], requests: int, concurrency: int, batch: int, server,
               content_type: str = "application/json", sample_rss: bool = True) -> dict:
    """``requests`` POSTs spread over ``concurrency`` client threads (each its own keep-alive
    connection); the server's RSS sampled every 0.25 s meanwhile (``sample_rss``). The time is
    from the start to the last answer: the sampler's sleep is not in it (it was, and a short level
    of 30 requests in 0.32 s counted as 0.5 s)."""
    from components.serving import Client, ServingError

    lock = threading.Lock()
    next_i = [0]
    lat: list[float] = []
    errors: list[str] = []
    rss = [server.rss_bytes()]

    ends: list[float] = []

    def worker():
        c = Client(url, timeout=60)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                ends.append(time.perf_counter())
                break
            t0 = time.perf_counter()
            try:
                status, body = c.post(bodies[i % len(bodies)], content_type)
            except ServingError as e:
                status, body = None, str(e).encode()
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    lat.append(dt)
                else:
                    errors.append(f"{status}: {body[:120]!r}")
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while sample_rss and any(t.is_alive() for t in threads):
        rss.append(server.rss_bytes())
        threads[0].join(0.25)
    for t in threads:
        t.join()
    wall = max(ends) - t0
    return {"wire": "parquet" if content_type == PARQUET_TYPE else "json", "concurrency": concurrency, "batch": batch,
            "requests": requests, "ok": len(lat), "errors": len(errors),
            "error_samples": errors[:3], "seconds": round(wall, 3), **_percentiles(lat),
            "requests_per_s": round(len(lat) / wall, 1), "images_per_s": round(len(lat) * batch / wall, 1),
            "server_rss_mb_max": round(max(rss) / 2**20, 1), "server_rss_mb_end": round(rss[-1] / 2**20, 1)}


def local_level(predict, batches, requests: int, concurrency: int) -> dict:
    """In-process counterpart of ``load_level``: ``requests`` calls of ``predict`` on the same
    batches, spread over ``concurrency`` threads."""
    lock = threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                break
            predict(batches[i % len(batches)])

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "seconds": round(wall, 3),
            "images_per_s": round(requests * len(batches[0]) / wall, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a models:/ URI (default: train a demo SIGNS CNN here)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--epochs", type=int, default=3, help="demo model's training epochs")
    parser.add_argument("--requests", type=int, default=1000, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,8", help="client threads, comma-separated levels")
    parser.add_argument("--batch", type=int, default=1, help="images per request in the load test")
    parser.add_argument("--ratio-batch", type=int, default=32, help="images per request for the served/in-process ratio")
    parser.add_argument("--ratio-requests", type=int, default=200,
                        help="requests (and in-process batches) per round for the ratio")
    parser.add_argument("--ratio-rounds", type=int, default=3, help="alternating served/in-process rounds")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--max-load", type=float, default=3.0, help="wait until the 1-minute load is under this")
    parser.add_argument("--wait-load", type=float, default=300.0, help="seconds to wait for it at most")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from components.artifacts import ModelInfo
    from components.serving import (PARQUET, Server, encode_batch, encode_batch_parquet, local_model_folder,
                                    model_metadata, save_mlflow_model)

    result: dict = {"host": "127.0.0.1", "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        scratch = Path(scratch)
        t0 = time.perf_counter()
        if args.model:
            folder = local_model_folder(args.model, args.tracking_uri, scratch)
            result["model"] = {"uri": args.model, "demo": False}
        else:
            art = _demo_model(scratch, args.epochs)
            folder = save_mlflow_model(art, scratch / "mlflow_model")
            result["model"] = {"uri": None, "demo": True,
                               "note": f"SIGNS CNN trained here for {args.epochs} epochs on 240 generated hand images "
                                       "(a demo model: these numbers measure serving, not accuracy)"}
        info = ModelInfo.model_validate(model_metadata(folder)["model_info"])
        result["model"].update({"model": info.model, "task": info.task, "image_size": info.image_size,
                                "prepare_seconds": round(time.perf_counter() - t0, 1)})
        WIRES = (("json", encode_batch, "application/json"), ("parquet", encode_batch_parquet, PARQUET))
        h, w = info.image_size
        rng = np.random.default_rng(0)
        pool = rng.integers(0, 256, (256, h, w, 3), dtype=np.uint8)

        result["load"] = {"before": wait_for_load(args.max_load, args.wait_load)}
        print(f"load average {os.getloadavg()}; serving {folder}")
        with Server(folder, workers=args.workers, log_path=scratch / "server.log") as server:
            result["server"] = {"workers": args.workers, "rss_mb_idle": round(server.rss_bytes() / 2**20, 1)}
            result["levels"] = []
            for wire, encode, ctype in WIRES:
                bodies = [encode(pool[(i * args.batch) % 256:][:args.batch]) for i in range(64)]
                # warm-up (first calls trace the SavedModel's function)
                load_level(server.url, bodies, 20, 1, args.batch, server, ctype)
                for c in levels:
                    r = load_level(server.url, bodies, args.requests, c, args.batch, server, ctype)
                    result["levels"].append(r)
                    print(f"{wire} concurrency {c}: p50 {r.get('p50_ms')} ms, p99 {r.get('p99_ms')} ms, "
                          f"{r['requests_per_s']} requests/s, {r['images_per_s']} images/s, {r['errors']} errors, "
                          f"RSS {r['server_rss_mb_max']} MB")

            # served vs in-process at the same batch size, measured the same way: the same uint8
            # batches, the same number of them per round, one (then two) callers, rounds alternating
            # between the two sides so both see the same machine; medians over the rounds
            b = args.ratio_batch
            batches = [pool[(i * b) % 256:][:b] if (i * b) % 256 + b <= 256 else pool[:b] for i in range(8)]
            encode_ms = {}
            big = {}
            for wire, encode, ctype in WIRES:
                big[wire] = [encode(x) for x in batches]
                t = time.perf_counter()
                for x in batches:
                    encode(x)
                encode_ms[wire] = round((time.perf_counter() - t) / len(batches) * 1000, 2)
                load_level(server.url, big[wire], 3, 1, b, server, ctype)  # warm-up at this batch size

            import keras

            from models.preprocessing import load_model

            if args.model:
                from components.model_uri import load_model_and_info

                model = load_model_and_info(args.model, args.tracking_uri)[0]
            else:
                model = load_model(art.keras_path)
            import mlflow

            from components.serving import _StrictPixels

            pyfunc = mlflow.pyfunc.load_model(str(folder))  # what the server loads, here in-process
            served_call = _StrictPixels(pyfunc)  # the server's model wrapper: its direct SavedModel call
            for x in batches[:2]:
                model.predict_on_batch(x)  # warm-up
                pyfunc.predict(x)
                served_call.predict(x)
            n = args.ratio_requests
            load_at_ratio = os.getloadavg()
            rounds: dict[str, list] = {}
            for _ in range(args.ratio_rounds):
                rounds.setdefault("parquet_4", []).append(
                    load_level(server.url, big["parquet"], n, 4, b, server, PARQUET, sample_rss=False))
                for c in (1, 2):
                    rounds.setdefault(f"in_process_{c}", []).append(
                        local_level(model.predict_on_batch, batches, n, c))
                    rounds.setdefault(f"parquet_{c}", []).append(
                        load_level(server.url, big["parquet"], n, c, b, server, PARQUET, sample_rss=False))
                rounds.setdefault("pyfunc_1", []).append(local_level(pyfunc.predict, batches, n, 1))
                rounds.setdefault("served_call_1", []).append(local_level(served_call.predict, batches, n, 1))
            # JSON is ~100x slower: one round of fewer requests
            rounds["json_1"] = [load_level(server.url, big["json"], max(5, n // 10), 1, b, server, "application/json",
                                           sample_rss=False)]
            result["server"]["rss_mb_end"] = round(server.rss_bytes() / 2**20, 1)

        def median_ips(runs):
            return round(statistics.median(r["images_per_s"] for r in runs), 1)

        def served(key, local_ips):
            runs = rounds[key]
            ips = median_ips(runs)
            return {"served_images_per_s": ips, "rounds_images_per_s": [r["images_per_s"] for r in runs],
                    "served_p50_ms": round(statistics.median(r.get("p50_ms", float("nan")) for r in runs), 2),
                    "errors": sum(r["errors"] for r in runs), "served_over_in_process": round(ips / local_ips, 3)}

        local_1, local_2 = median_ips(rounds["in_process_1"]), median_ips(rounds["in_process_2"])
        result["ratio"] = {
            "batch": b, "target": 0.5, "rounds": args.ratio_rounds, "requests_per_round": n,
            "load_at_start": load_at_ratio,
            "in_process": f"keras {keras.__version__} predict_on_batch of the model `predict` loads, on the same "
                          f"uint8 batches",
            "in_process_images_per_s": local_1,
            "in_process_rounds_images_per_s": [r["images_per_s"] for r in rounds["in_process_1"]],
            "in_process_pyfunc_images_per_s": median_ips(rounds["pyfunc_1"]),
            "in_process_pyfunc": "mlflow.pyfunc.load_model(the served folder).predict in this process: MLflow's "
                                 "own model call, without the server",
            "in_process_served_call_images_per_s": median_ips(rounds["served_call_1"]),
            "in_process_served_call": "the server's model wrapper (components.serving._StrictPixels, its direct "
                                      "SavedModel call) on the same loaded model in this process: the server's model "
                                      "call without the server",
            "served_call_direct": served_call._serve is not None,
            "client_encode_ms_per_batch": encode_ms,
            "json": served("json_1", local_1),
            "parquet": served("parquet_1", local_1),
            "two_callers": {"note": "2 client connections against 2 threads calling predict_on_batch in-process",
                            "in_process_images_per_s": local_2, "parquet": served("parquet_2", local_2)},
            "four_connections": {"note": "the server's throughput with 4 client connections, against the one-thread "
                                         "in-process loop (what `predict` runs)",
                                 "parquet": served("parquet_4", local_1)},
        }
        result["ratio"]["target_met"] = result["ratio"]["parquet"]["served_over_in_process"] >= 0.5
        for wire in ("json", "parquet"):
            r = result["ratio"][wire]
            print(f"batch {b} {wire}: served {r['served_images_per_s']} images/s, in-process {local_1} images/s "
                  f"(pyfunc {result['ratio']['in_process_pyfunc_images_per_s']}, the server's model call "
                  f"{result['ratio']['in_process_served_call_images_per_s']}), ratio {r['served_over_in_process']} "
                  f"(target >= 0.5); client encoding {encode_ms[wire]} ms/batch")
        r2 = result["ratio"]["two_callers"]["parquet"]
        r4 = result["ratio"]["four_connections"]["parquet"]
        print(f"batch {b} parquet, 2 callers: served {r2['served_images_per_s']} images/s, in-process {local_2} "
              f"images/s, ratio {r2['served_over_in_process']}; 4 connections: served {r4['served_images_per_s']} "
              f"images/s, {r4['served_over_in_process']} of the one-thread in-process loop")
    result["load"]["after"] = os.getloadavg()
    result["errors_total"] = (sum(r["errors"] for r in result["levels"])
                              + sum(r["errors"] for runs in rounds.values() for r in runs if "errors" in r))
    path = write_result("serving", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
