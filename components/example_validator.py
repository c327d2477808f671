"""ExampleValidator: statistics + expectations (params) -> `anomalies`. Errors fail the run (the
anomalies are listed in the message and the log); warnings are recorded and the run goes on."""
from __future__ import annotations

import json

from pydantic import Field

from components.base import ComponentError, ComponentSpec, Params


class ExampleValidatorParams(Params):
    required_splits: list[str] = Field(default_factory=lambda: ["train"])
    classes_in_every_split: bool = True
    min_examples_per_class: int = 1  # in the train split
    # classification: fewer classes than this in the data is an error (one class trains to a
    # constant answer that scores accuracy 1.0 and tells nothing)
    min_classes: int = Field(2, ge=1)
    image_size: tuple[int, int] | None = None  # expected (height, width); None: the ExampleGen's
    max_leak_groups: int | None = None  # None: leaks are a warning; a number: more is an error
    fail_on_warnings: bool = False


def validate(stats: dict, params: ExampleValidatorParams) -> list[dict]:
    anomalies = []

    def add(severity, kind, msg):
        anomalies.append({"severity": severity, "kind": kind, "message": msg})

    splits = stats["splits"]
    for s in params.required_splits:
        if s not in splits or splits[s]["num_examples"] == 0:
            add("error", "empty_split", f"split {s!r} is missing or empty")
    for s, st in splits.items():
        if st["num_examples"] == 0 and s not in params.required_splits:
            add("warning", "empty_split", f"split {s!r} is empty")
    if stats["task"] in ("classification", "binary"):
        classes = stats.get("classes") or []
        if len(classes) < params.min_classes:
            add("error", "too_few_classes", f"{len(classes)} class(es) {classes} in the data; a classifier needs at "
                                            f"least {params.min_classes} (min_classes)")
        train_counts = splits.get("train", {}).get("class_counts", {})
        absent = [c for c in classes if train_counts.get(c, 0) == 0]
        if absent and splits.get("train", {}).get("num_examples") and not params.classes_in_every_split:
            add("error", "missing_classes", f"split 'train' has no examples of class(es) {absent}: the model "
                                            "could never predict them")
    if stats["task"] in ("classification", "binary") and stats.get("classes"):
        classes = stats["classes"]
        for s, st in splits.items():
            if st["num_examples"] == 0:
                continue
            missing = [c for c in classes if st["class_counts"].get(c, 0) == 0]
            if missing and params.classes_in_every_split:
                add("error", "missing_classes", f"split {s!r} has no examples of class(es) {missing}")
        train = splits.get("train", {}).get("class_counts", {})
        few = {c: train.get(c, 0) for c in classes if train.get(c, 0) < params.min_examples_per_class}
        if few and "train" in splits:
            add("error", "too_few_examples", f"classes with fewer than {params.min_examples_per_class} "
                                             f"training examples: {few}")
    expected = tuple(params.image_size or stats["image_size"])
    for s, st in splits.items():
        other = {k: v for k, v in st.get("image_sizes", {}).items() if k != f"{expected[0]}x{expected[1]}"}
        if other:
            add("error", "image_size", f"split {s!r}: {sum(other.values())} images not {expected[0]}x{expected[1]}: {other}")
    d = stats.get("duplicates")
    if d and d["leaks"]:
        sev = "error" if params.max_leak_groups is not None and d["leaks"] > params.max_leak_groups else "warning"
        add(sev, "leak", f"{d['leaks']} groups of identical images cross splits (e.g. {d['leak_keys'][:3]})")
    return anomalies


def run(ctx, inputs, params: ExampleValidatorParams):
    from components.artifacts import Statistics

    stats = Statistics.load(inputs["statistics"]).data
    anomalies = validate(stats, params)
    out = ctx.outputs["anomalies"]
    (out / "anomalies.json").write_text(json.dumps({"anomalies": anomalies}, indent=2))
    ctx.tracker.log_artifact(out / "anomalies.json")
    errors = [a for a in anomalies if a["severity"] == "error" or params.fail_on_warnings]
    for a in anomalies:
        (ctx.logger.error if a in errors else ctx.logger.warning)("%s: %s", a["kind"], a["message"])
    if errors:
        raise ComponentError("ExampleValidator found anomalies:\n" + "\n".join(f"  {a['kind']}: {a['message']}" for a in errors))
    return {"anomalies": len(anomalies), "anomaly_errors": 0}


SPEC = ComponentSpec(type="ExampleValidator", description="statistics + expectations -> anomalies; fails on errors",
                     params=ExampleValidatorParams, run=run, inputs={"statistics": True}, outputs=("anomalies",))
