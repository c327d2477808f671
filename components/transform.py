"""Transform: examples + statistics -> `transform`: the preprocessing the Trainer puts inside the
model (rescale; normalise with the training split's per-channel mean/std; augmentation active
only in training). Saved as `transform.json` (read by the Trainer) and as `preprocessor.keras`
(the same layers, loadable on their own for inspection)."""
from __future__ import annotations

from typing import Any

from components.base import ComponentSpec, Params


class TransformParams(Params):
    normalize: bool = True
    # Keys of models.augmentation.build_augmentation (None: no augmentation). Hand signs: no
    # horizontal flip by default, a flipped hand can mean something else.
    augmentation: dict[str, Any] | None = None


def run(ctx, inputs, params: TransformParams):
    from components.artifacts import Examples, Statistics, TransformGraph

    stats, examples = Statistics.load(inputs["statistics"]).data, Examples.load(inputs["examples"])
    config = {"image_size": list(examples.image_size), "normalize": params.normalize,
              "mean": stats["train_mean"], "std": stats["train_std"], "augmentation": params.augmentation,
              "classes": examples.classes, "task": examples.task,
              # ExampleGen's face detection/crop before resizing: serving must repeat it
              "face_crop": examples.face_crop}
    if params.augmentation:
        from models.augmentation import build_augmentation

        build_augmentation(params.augmentation, (*examples.image_size, 3))  # fail now on a bad key
    graph = TransformGraph(ctx.outputs["transform"], config)
    graph.save()
    from models.preprocessing import build_preprocessor

    build_preprocessor(config).save(graph.path / "preprocessor.keras")
    ctx.tracker.log_artifact(graph.path / TransformGraph.FILE)
    ctx.logger.info("preprocessing: rescale 1/255%s%s", ", normalise mean/std" if params.normalize else "",
                    f", augmentation {params.augmentation}" if params.augmentation else "")
    return {}


SPEC = ComponentSpec(type="Transform", description="statistics -> preprocessing layers saved inside the model",
                     params=TransformParams, run=run, inputs={"examples": True, "statistics": True},
                     outputs=("transform",), code_dependencies=lambda p: ["models.preprocessing", "models.augmentation"])
