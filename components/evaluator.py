"""Evaluator: model + examples (+ the baseline: the registered `@champion` as it was when the
run started) -> `evaluation` (metrics JSON and plots) and `blessing` (thresholds met, the
evaluation not degenerate, and not worse than the baseline on the same data). One skeleton for
every task; the model's task plug-in (components/tasks/) computes the metrics.

The baseline is resolved before the run starts (``resolve_baseline``), like TFX's Resolver node:
the version it names is recorded in the execution's metadata and is part of its cache key, so a
changed champion reruns the Evaluator (and the Pusher after it) and an unchanged one stays
cached. Only the version recorded there is compared, never whatever the alias points at later.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from components.base import ComponentError, ComponentSpec, Params


class EvaluatorParams(Params):
    split: str = "test"  # falls back to "eval" when the examples have no such split
    # Minimum values (maximum for lower-is-better metrics such as EER) of the task's metrics.
    thresholds: dict[str, float] = Field(default_factory=dict)
    baseline_model: str | None = None  # registered model name whose @baseline_alias is the baseline
    baseline_alias: str = "champion"
    max_regression: float = 0.0  # how much worse than the baseline (absolute) still blesses
    blessing_metric: str | None = None  # None: the task's (accuracy, map_50, ...)
    batch_size: int = 128
    test_time_crops: int = Field(1, ge=1)  # classification: crops averaged at test time
    test_time_flip: bool = False
    crop_fraction: float = Field(0.875, gt=0, le=1)
    # Params of the model's task plug-in (components/tasks/<task>.py EvalParams); validated when
    # the model's task is known.
    task_params: dict[str, Any] = Field(default_factory=dict)

    def local_paths(self) -> dict[str, str]:
        f = self.task_params.get("pairs_file")
        return {"task_params.pairs_file": f} if isinstance(f, str) else {}


def resolve_baseline(params: EvaluatorParams, tracking_uri: str, input_fingerprints: dict[str, str]) -> dict:
    """The baseline this evaluation compares with, fixed when the pipeline run starts:
    ``{"baseline": "models:/NAME/VERSION"}`` or ``{"baseline": None}``.

    When the champion is this very candidate (the same model fingerprint, pushed by an earlier
    run of the same Trainer execution), the baseline is the version that candidate was compared
    with then: re-evaluating a model against itself would change nothing, and without this a
    rerun after every push would miss the cache."""
    if not params.baseline_model:
        return {"baseline": None}
    from components.model_uri import champion_baseline

    return {"baseline": champion_baseline(params.baseline_model, params.baseline_alias, tracking_uri,
                                          input_fingerprints.get("model"))}


def run(ctx, inputs, params: EvaluatorParams):
    from components.artifacts import Blessing, Evaluation, Examples, Model
    from components.blessing import bless
    from components.tasks import get_task, validate_task_params

    model_art, examples = Model.load(inputs["model"]), Examples.load(inputs["examples"])
    info = model_art.info
    task = get_task(info.task)
    try:
        tp = validate_task_params(info.task, "Eval", params.task_params)
    except ValueError as e:
        raise ComponentError(f"Evaluator task_params: {e}") from None
    task.check_model(info, examples)
    split = examples.pick_split(params.split, "Evaluator")
    data = task.eval_data(examples, split, params, tp)
    out_eval, out_bless = ctx.outputs["evaluation"], ctx.outputs["blessing"]
    score = task.score(model_art.load_keras(), info, data, params, tp, out_eval, ctx.logger)

    baseline = None
    uri = (ctx.resolved or {}).get("baseline")
    if uri:
        baseline = _baseline_flat(uri, task, info, data, params, tp, ctx)
        if baseline is not None:
            score.report["baseline"] = baseline
    metric = params.blessing_metric or getattr(tp, "blessing_metric", None) or task.blessing_metric
    blessed, reasons = bless(score.flat, params.thresholds, metric, baseline, max_regression=params.max_regression,
                             baseline_name=f"baseline {uri}", lower_is_better=task.lower_is_better)
    degenerate = task.degenerate(score, data)
    if degenerate:
        blessed, reasons = False, [*degenerate, *reasons]
    score.report["flat"] = score.flat
    Evaluation(out_eval, score.report).save()
    Blessing(out_bless, blessed, reasons, metric, score.flat.get(metric), baseline, dict(params.thresholds)).save()
    ctx.tracker.log_artifact(out_eval / Evaluation.FILE)
    ctx.tracker.log_artifact(out_bless / Blessing.FILE)
    for p in score.plots:
        ctx.tracker.log_artifact(p, "plots" if p.parent == out_eval else f"plots/{p.parent.name}")
    ctx.tracker.set_tags({"blessed": str(blessed).lower(), "baseline": uri or ""})
    ctx.logger.info("%s %s -> %s%s", info.model, task.headline(info, score), "BLESSED" if blessed else "NOT blessed",
                    (": " + "; ".join(reasons)) if reasons else "")
    flat = {k: float(v) for k, v in score.flat.items() if isinstance(v, (int, float))}
    if baseline:
        flat[f"baseline_{metric}"] = float(baseline[metric]) if baseline.get(metric) is not None else float("nan")
    return {**flat, "blessed": float(blessed)}


def _baseline_flat(uri: str, task, info, data, params, tp, ctx) -> dict | None:
    """The baseline version's flat metrics on the same data, or None when it cannot be compared."""
    from components.model_uri import ModelNotFound, load_model_and_info

    try:
        model, binfo = load_model_and_info(uri, ctx.tracking_uri)
    except ModelNotFound as e:
        ctx.logger.warning("baseline %s cannot be loaded: %s", uri, e)
        return None
    why = task.comparable(binfo, info)
    if why:
        ctx.logger.info("baseline %s not compared: %s", uri, why)
        return None
    s = task.score(model, binfo, data, params, tp, None, ctx.logger)
    return {"uri": uri, "model": params.baseline_model, "version": uri.rsplit("/", 1)[-1], **s.flat}


def _code_dependencies(params: EvaluatorParams) -> list[str]:
    # which task runs depends on the model, known only at run time: the key covers every task
    from components.tasks import all_task_modules

    return [*all_task_modules(), "components.blessing", "components.artifacts", "components.model_uri"]


SPEC = ComponentSpec(type="Evaluator", description="model + examples (+ champion) -> metrics, plots and a blessing",
                     params=EvaluatorParams, run=run, inputs={"model": True, "examples": True},
                     outputs=("evaluation", "blessing"), code_dependencies=_code_dependencies,
                     resolve=resolve_baseline)
