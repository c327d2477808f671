"""BulkInferrer: model + examples -> `inference`: predictions for a whole split, with Beam.

The split is cut into batches of `batch_size` records (file, offset, count: the same batches on
every Beam engine); a DoFn predicts each batch with the model it loads once per worker process
and writes the rows to a part file; the driver checks every record got its row. Output:
`predictions.jsonl` (one row per example, with its key) plus, for tasks that define one, a task-specific file (detection: COCO
result JSON). The model's task plug-in supplies the predictor (``Task.predictor``) and any extra
files of the whole split (``Task.finalize_inference``).
"""
from __future__ import annotations

import json
from pathlib import Path

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


# One predictor per worker process, for the model last used there: the Dask runner calls a
# DoFn's ``setup`` once per partition, and loading a Keras model each time would dominate.
_PREDICTOR: dict = {}


def _cached_predictor(model_dir: str):
    if model_dir not in _PREDICTOR:
        _PREDICTOR.clear()
        _PREDICTOR[model_dir] = make_predictor(model_dir)[0]
    return _PREDICTOR[model_dir]


def run(ctx, inputs, params: BulkInferrerParams):
    import apache_beam as beam

    from components.artifacts import Examples, InferenceResult, Model
    from components.beam_engine import open_pipeline, tfrecord_chunks, tune_worker_process, write_atomic
    from components.tasks import get_task

    model_art, examples = Model.load(inputs["model"]), Examples.load(inputs["examples"])
    if not examples.files(params.split):
        raise ComponentError(f"BulkInferrer: no TFRecords for split {params.split!r} in {examples.path}")
    out = InferenceResult(ctx.outputs["inference"])
    scratch = out.path / ".beam"
    # one chunk = one batch, cut here from the record headers: every engine predicts the same
    # batches (the same numbers), and Beam's TFRecord source and BatchElements do not run on all
    chunks = list(enumerate(tfrecord_chunks(examples.files(params.split), chunk_size=params.batch_size)))
    total = sum(c[2] for _, c in chunks)

    class Predict(beam.DoFn):
        """Predicts one batch and writes its rows to its own part file (renamed into place)."""

        def __init__(self, model_dir, folder):
            self.model_dir, self.folder = model_dir, folder

        def setup(self):
            self.predict = _cached_predictor(self.model_dir)
            tune_worker_process()  # after the model is loaded: it stays for the worker's life too

        def process(self, indexed_chunk):
            import numpy as np

            from components.beam_engine import read_tfrecord_chunk

            i, (name, offset, count, _) = indexed_chunk
            batch = [_decode(r) for r in read_tfrecord_chunk(name, offset, count)]
            rows = self.predict(np.stack([im for _, im in batch]), [k for k, _ in batch])
            text = "".join(json.dumps(row) + "\n" for row in rows)
            write_atomic(Path(self.folder) / f"part-{i:06d}.jsonl", lambda f: f.write(text.encode()),
                         Path(self.folder) / "tmp")
            yield i

    try:
        with open_pipeline(ctx.beam, ctx.logger, who="BulkInferrer") as p:
            (p | "Batches" >> beam.Create(chunks)
             | "Predict" >> beam.ParDo(Predict(str(model_art.path), str(scratch))))
    finally:
        _PREDICTOR.clear()  # the local engine ran the DoFn here: do not keep its model
    rows = []
    for f in sorted(scratch.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if len(rows) != total:  # an engine that skipped or lost batches must not leave plausible predictions
        raise ComponentError(f"BulkInferrer: split {params.split!r} has {total} records, the Beam engine "
                             f"({ctx.beam.get('runner', 'local')}) returned {len(rows)} predictions")
    import shutil

    shutil.rmtree(scratch)
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
