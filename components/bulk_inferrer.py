"""BulkInferrer: model + examples -> `inference`: predictions for a whole split, with Beam.

Records are read with Beam's TFRecord source, batched (`BatchElements`), and predicted by a
DoFn that loads the model once per worker (`setup`). Output: `predictions.jsonl` (one row per
example, with its key) plus, for tasks that define one, a task-specific file (detection: COCO
result JSON). The model's task plug-in supplies the predictor (``Task.predictor``) and any extra
files of the whole split (``Task.finalize_inference``).
"""
from __future__ import annotations

import json

from pydantic import Field

from components.base import ComponentError, ComponentSpec, Params


class BulkInferrerParams(Params):
    split: str = "test"
    batch_size: int = Field(64, ge=1)


def make_predictor(model_dir: str, **options):
    """(the model's task plug-in predictor, ModelInfo) for a Trainer model folder."""
    from components.artifacts import Model
    from components.tasks import get_task

    art = Model.load(model_dir)
    return get_task(art.info.task).predictor(art.load_keras(), art.info, **options), art.info


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

    from components.artifacts import Examples, InferenceResult, Model
    from components.tasks import get_task

    model_art, examples = Model.load(inputs["model"]), Examples.load(inputs["examples"])
    if not examples.files(params.split):
        raise ComponentError(f"BulkInferrer: no TFRecords for split {params.split!r} in {examples.path}")
    out = InferenceResult(ctx.outputs["inference"])

    class Predict(beam.DoFn):
        """Loads the model once per worker (``setup``) and predicts a batch at a time."""

        def __init__(self, model_dir):
            self.model_dir = model_dir

        def setup(self):
            self.predict, _ = make_predictor(self.model_dir)

        def process(self, batch):
            import numpy as np

            keys = [k for k, _ in batch]
            images = np.stack([im for _, im in batch])
            for row in self.predict(images, keys):
                yield json.dumps(row)

    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner", *ctx.beam["args"]])) as p:
        (p | beam.io.ReadFromTFRecord(str(examples.path / params.split / "*.tfrecord"))
         | "Decode" >> beam.Map(_decode)
         | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=params.batch_size)
         | "Predict" >> beam.ParDo(Predict(str(model_art.path)))
         | "Write" >> beam.io.WriteToText(str(out.path / "predictions"), file_name_suffix=".jsonl",
                                          shard_name_template=""))
    rows = out.rows()
    out.write_rows(rows)
    extra = get_task(model_art.info.task).finalize_inference(rows, out.path, model_art.info) or {}
    ctx.tracker.log_artifact(out.path / out.FILE)
    ctx.logger.info("predicted %d %s examples -> %s/%s", len(rows), params.split, "inference", out.FILE)
    return {"predictions": len(rows), **extra}


def _code_dependencies(params) -> list[str]:
    from components.tasks import all_task_modules

    return [*all_task_modules(), "components.artifacts"]


SPEC = ComponentSpec(type="BulkInferrer", description="model + examples -> predictions for a whole split (Beam)",
                     params=BulkInferrerParams, run=run, inputs={"model": True, "examples": True},
                     outputs=("inference",), code_dependencies=_code_dependencies)
