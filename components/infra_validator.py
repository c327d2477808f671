"""InfraValidator (TFX's name): model + examples -> `infra_blessing`, whether the candidate works in
the real serving binary before it may become champion.

The candidate is written as the very MLflow model the Pusher would register (the task's served
model, signature and metadata: ``components.serving.save_mlflow_model``) into a temporary folder,
and MLflow's scoring server is started on it on a free 127.0.0.1 port (``components.serving.Server``).
Once ``/ping`` answers (within ``startup_timeout_s``), ``num_examples`` images of the eval split go
to ``/invocations`` in requests of ``batch_size``; each answer must equal in-process inference of
the same served Keras model (max abs difference <= ``max_abs_diff``). Latency p50/p99, requests/s
and the start-up time are measured, the server's process group is stopped, and
``infra_blessing.json`` says blessed or not with the reasons: a server that exits, is not ready
in time, answers an error or a different result gives a not-blessed result, never a hang (the
start-up and every request have a timeout).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pydantic import Field

from components.base import ComponentSpec, Params


class InfraValidatorParams(Params):
    split: str = "eval"  # falls back to "eval" when this one is empty
    num_examples: int = Field(16, ge=1)
    batch_size: int = Field(1, ge=1)  # images per request
    startup_timeout_s: float = Field(120.0, gt=0)
    request_timeout_s: float = Field(30.0, gt=0)
    max_abs_diff: float = Field(1e-4, ge=0)
    workers: int = Field(1, ge=1)


def _read_examples(examples, split: str, n: int):
    import numpy as np
    import tensorflow as tf

    from data.tfrecord import parser

    ds = tf.data.TFRecordDataset(examples.require(split, "InfraValidator")).map(parser(examples.image_size)).take(n)
    return np.stack([r["image"].numpy() for r in ds])


def _percentile_ms(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def validate(model_art, images, params: InfraValidatorParams, scratch: Path, log_path: Path | None = None,
             logger=None) -> tuple[list[str], dict]:
    """(reasons it is not blessed, measurements) of serving ``model_art`` and sending ``images``."""
    import numpy as np

    from components.serving import Client, Server, ServingError, save_mlflow_model, served_keras_model

    m: dict = {"examples": int(len(images)), "batch_size": params.batch_size}
    try:
        served = served_keras_model(model_art)
        folder = save_mlflow_model(model_art, Path(scratch) / "model", served=served)
    except Exception as e:  # whatever keeps the model from being written is a reason, named
        return [f"the model could not be written as an MLflow model: {type(e).__name__}: {e}"], m
    server = Server(folder, workers=params.workers, request_timeout=int(max(1, params.request_timeout_s)),
                    ready_timeout=params.startup_timeout_s, log_path=log_path)
    reasons: list[str] = []
    latencies: list[float] = []
    max_diff = 0.0
    try:
        server.start()
        m["startup_s"] = server.wait_ready()
        if logger:
            logger.info("scoring server ready at %s after %.1f s", server.url, m["startup_s"])
        client = Client(server.url, timeout=params.request_timeout_s)
        t_all = time.perf_counter()
        for s in range(0, len(images), params.batch_size):
            batch = images[s:s + params.batch_size]
            expected = np.asarray(served.predict_on_batch(batch))
            t0 = time.perf_counter()
            got = client.predict(batch)
            latencies.append(time.perf_counter() - t0)
            if got.shape != expected.shape:
                reasons.append(f"examples {s}..{s + len(batch) - 1}: the server answered shape {got.shape}, "
                               f"in-process inference {expected.shape}")
                break
            if got.size:
                diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
                if not np.isfinite(diff):  # NaN/inf answers (in the server's or in-process) bless nothing
                    reasons.append(f"examples {s}..{s + len(batch) - 1}: non-finite outputs (NaN or inf)")
                    break
                max_diff = max(max_diff, diff)
        m["seconds"] = time.perf_counter() - t_all
        client.close()
        m["rss_mb"] = server.rss_bytes() / 2**20
    except ServingError as e:
        reasons.append(str(e))
    finally:
        server.stop()
    m.update({"requests": len(latencies), "max_abs_diff": max_diff, "latency_p50_ms": _percentile_ms(latencies, 50),
              "latency_p99_ms": _percentile_ms(latencies, 99),
              "requests_per_s": len(latencies) / sum(latencies) if latencies else 0.0})
    if not reasons and max_diff > params.max_abs_diff:
        reasons.append(f"the server's answers differ from in-process inference by up to {max_diff:.3g} "
                       f"(> max_abs_diff {params.max_abs_diff:g})")
    return reasons, m


def run(ctx, inputs, params: InfraValidatorParams):
    from components.artifacts import Examples, InfraBlessing, Model

    model_art, examples = Model.load(inputs["model"]), Examples.load(inputs["examples"])
    split = examples.pick_split(params.split, "InfraValidator")
    images = _read_examples(examples, split, params.num_examples)
    out = InfraBlessing(ctx.outputs["infra_blessing"], False, [])
    log_path = out.path / "server.log"
    with tempfile.TemporaryDirectory(prefix="infra-") as scratch:
        reasons, m = validate(model_art, images, params, Path(scratch), log_path, ctx.logger)
    m["split"] = split
    out.blessed, out.reasons, out.measurements = not reasons, reasons, m
    out.save()
    ctx.tracker.log_artifact(out.path / out.FILE)
    if log_path.exists():
        ctx.tracker.log_artifact(log_path, "infra_validator")
    ctx.tracker.set_tags({"infra_blessed": str(out.blessed).lower()})
    numbers = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and v == v}
    ctx.tracker.log_metrics({f"infra_{k}": v for k, v in numbers.items()})
    if out.blessed:
        ctx.logger.info("infra blessed: %d requests of %d image(s) to MLflow's scoring server, p50 %.1f ms, p99 %.1f ms, "
                        "%.1f requests/s, max abs difference %.2g", m["requests"], params.batch_size,
                        m["latency_p50_ms"], m["latency_p99_ms"], m["requests_per_s"], m["max_abs_diff"])
    else:
        ctx.logger.warning("not infra blessed: %s", "; ".join(reasons))
    return {"infra_blessed": float(out.blessed), **{k: numbers[k] for k in
            ("latency_p50_ms", "latency_p99_ms", "requests_per_s", "max_abs_diff", "startup_s") if k in numbers}}


def _code_dependencies(params) -> list[str]:
    # the served model is built by the task plug-ins (a detector's decoding wrapper)
    from components.tasks import all_task_modules

    return ["components.serving", "models.yolo.serving", *all_task_modules()]


SPEC = ComponentSpec(type="InfraValidator",
                     description="model + examples -> infra_blessing (served by MLflow's scoring server, answers checked)",
                     params=InfraValidatorParams, run=run, inputs={"model": True, "examples": True},
                     outputs=("infra_blessing",), code_dependencies=_code_dependencies)
