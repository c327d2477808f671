"""BulkInferrer: model + examples -> `inference`: predictions for a whole split, with Beam.

Records are read with Beam's TFRecord source, batched (`BatchElements`), and predicted by a
DoFn that loads the model once per worker (`setup`). Output: `predictions.jsonl` (one row per
example, with its key) plus, for tasks that define one, a task-specific file (detection: COCO
result JSON). Classification is built in; other tasks provide
`components.tasks.<task>.load_predictor(model_dir)` and optionally `finalize(rows, out_dir, info)`.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from components.base import ComponentError, ComponentSpec, Params


class BulkInferrerParams(Params):
    split: str = "test"
    batch_size: int = Field(64, ge=1)


class _ClassificationPredictor:
    def __init__(self, model_dir: str):
        from models.preprocessing import load_model

        self.info = json.loads((Path(model_dir) / "model_info.json").read_text())
        self.model = load_model(Path(model_dir) / "model.keras")

    def __call__(self, images, keys):
        import numpy as np

        probs = np.asarray(self.model.predict_on_batch(images))
        if probs.ndim == 1 or probs.shape[-1] == 1:
            p1 = probs.reshape(-1)
            probs = np.stack([1 - p1, p1], axis=-1)
        classes = self.info["classes"]
        return [{"key": k, "class": classes[int(p.argmax())], "probability": float(p.max()),
                 "probabilities": [round(float(x), 6) for x in p]} for k, p in zip(keys, probs)]


def make_predictor(model_dir: str):
    info = json.loads((Path(model_dir) / "model_info.json").read_text())
    if info["task"] in ("classification", "binary"):
        return _ClassificationPredictor(model_dir)
    from components.tasks import task_module

    return task_module(info["task"]).load_predictor(model_dir)


def _decode(serialized: bytes):
    import io

    import numpy as np
    from PIL import Image

    from data.tfrecord import decode_example_py

    f = decode_example_py(serialized)
    img = np.asarray(Image.open(io.BytesIO(f["image/encoded"][0])).convert("RGB"))
    return f["image/key"][0].decode(), img


def run(ctx, inputs, params: BulkInferrerParams):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    model_dir, examples = Path(inputs["model"]), Path(inputs["examples"])
    info = json.loads((model_dir / "model_info.json").read_text())
    files = sorted((examples / params.split).glob("*.tfrecord"))
    if not files:
        raise ComponentError(f"BulkInferrer: no TFRecords for split {params.split!r} in {examples}")
    out = ctx.outputs["inference"]

    class Predict(beam.DoFn):
        def __init__(self, model_dir):
            self.model_dir = model_dir

        def setup(self):
            self.predict = make_predictor(self.model_dir)

        def process(self, batch):
            import numpy as np

            keys = [k for k, _ in batch]
            images = np.stack([im for _, im in batch])
            for row in self.predict(images, keys):
                yield json.dumps(row)

    with beam.Pipeline(options=PipelineOptions(ctx.beam_args)) as p:
        (p | beam.io.ReadFromTFRecord(str(examples / params.split / "*.tfrecord"))
         | "Decode" >> beam.Map(_decode)
         | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=params.batch_size)
         | "Predict" >> beam.ParDo(Predict(str(model_dir)))
         | "Write" >> beam.io.WriteToText(str(out / "predictions"), file_name_suffix=".jsonl", shard_name_template=""))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["key"])
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = {}
    if info["task"] not in ("classification", "binary"):
        from components.tasks import task_module

        mod = task_module(info["task"])
        if hasattr(mod, "finalize"):
            extra = mod.finalize(rows, out, info) or {}
    ctx.tracker.log_artifact(out / "predictions.jsonl")
    ctx.logger.info("predicted %d %s examples -> %s", len(rows), params.split, out / "predictions.jsonl")
    return {"predictions": len(rows), **extra}


SPEC = ComponentSpec(type="BulkInferrer", description="model + examples -> predictions for a whole split (Beam)",
                     params=BulkInferrerParams, run=run, inputs={"model": True, "examples": True},
                     outputs=("inference",),
                     code_dependencies=lambda p: list(__import__("components.tasks", fromlist=["x"]).TASK_MODULES.values()))
