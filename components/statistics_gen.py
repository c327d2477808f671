"""StatisticsGen: examples -> `statistics` (Beam): per split, counts per class, image sizes,
per-channel mean/std of the pixels (0-255 scale), boxes per image/class and box sizes
(detection), images per identity (faces), duplicate counts from ExampleGen's report; JSON plus
bar-chart PNGs."""
from __future__ import annotations

import json
from pathlib import Path

from components.base import ComponentError, ComponentSpec, Params


class StatisticsGenParams(Params):
    pass


class _StatsAccumulator:
    """CombineFn body: exact sums (float64) so mean/std do not depend on sharding."""

    def create_accumulator(self):
        return {"n": 0, "sum": [0.0] * 3, "sumsq": [0.0] * 3, "pixels": 0, "labels": {}, "sizes": {},
                "boxes": 0, "box_labels": {}, "box_w": [], "box_h": [], "boxes_per_image": {}, "identities": {}}

    def add_input(self, acc, x):
        acc["n"] += 1
        for c in range(3):
            acc["sum"][c] += x["sum"][c]
            acc["sumsq"][c] += x["sumsq"][c]
        acc["pixels"] += x["pixels"]
        if x.get("label") is not None:
            acc["labels"][x["label"]] = acc["labels"].get(x["label"], 0) + 1
        s = f"{x['h']}x{x['w']}"
        acc["sizes"][s] = acc["sizes"].get(s, 0) + 1
        if x.get("identity"):
            acc["identities"][x["identity"]] = acc["identities"].get(x["identity"], 0) + 1
        if x.get("box_labels") is not None:
            nb = len(x["box_labels"])
            acc["boxes"] += nb
            acc["boxes_per_image"][str(nb)] = acc["boxes_per_image"].get(str(nb), 0) + 1
            for lab in x["box_labels"]:
                acc["box_labels"][lab] = acc["box_labels"].get(lab, 0) + 1
            acc["box_w"] += x["box_w"]
            acc["box_h"] += x["box_h"]
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["n"] += a["n"]
            out["pixels"] += a["pixels"]
            out["boxes"] += a["boxes"]
            out["box_w"] += a["box_w"]
            out["box_h"] += a["box_h"]
            for c in range(3):
                out["sum"][c] += a["sum"][c]
                out["sumsq"][c] += a["sumsq"][c]
            for k in ("labels", "sizes", "box_labels", "boxes_per_image", "identities"):
                for kk, v in a[k].items():
                    out[k][kk] = out[k].get(kk, 0) + v
        return out

    def extract_output(self, acc):
        import numpy as np

        n = max(acc["pixels"], 1)
        mean = [s / n for s in acc["sum"]]
        std = [float(np.sqrt(max(sq / n - m * m, 0.0))) for sq, m in zip(acc["sumsq"], mean)]
        # key order and list order follow the merge order, which differs between engines: sort
        acc = {k: dict(sorted(v.items())) if isinstance(v, dict) else v for k, v in acc.items()}
        out = {"num_examples": acc["n"], "mean": mean, "std": std, "class_counts": acc["labels"],
               "image_sizes": acc["sizes"]}
        if acc["box_labels"] or acc["boxes"]:
            w, h = np.array(acc["box_w"]), np.array(acc["box_h"])
            out["detection"] = {
                "boxes": acc["boxes"], "boxes_per_class": acc["box_labels"],
                "boxes_per_image": acc["boxes_per_image"],
                "box_width_hist": np.histogram(w, bins=10, range=(0, 1))[0].tolist() if len(w) else [],
                "box_height_hist": np.histogram(h, bins=10, range=(0, 1))[0].tolist() if len(h) else [],
                "aspect_ratio_hist": (np.histogram(np.log2(w / np.maximum(h, 1e-6)), bins=10, range=(-3, 3))[0].tolist()
                                      if len(w) else []),
                "box_wh": sorted([float(a), float(b)] for a, b in zip(w, h)),
            }
        if acc["identities"]:
            counts = list(acc["identities"].values())
            out["faces"] = {"identities": len(counts), "images_per_identity_min": min(counts),
                            "images_per_identity_max": max(counts),
                            "images_per_identity_mean": float(np.mean(counts))}
        return out


def _example_stats(serialized: bytes) -> dict:
    import io

    import numpy as np
    from PIL import Image

    from data.tfrecord import decode_example_py

    f = decode_example_py(serialized)
    img = np.asarray(Image.open(io.BytesIO(f["image/encoded"][0])).convert("RGB"), dtype=np.float64)
    flat = img.reshape(-1, 3)
    x = {"sum": flat.sum(0).tolist(), "sumsq": (flat ** 2).sum(0).tolist(), "pixels": flat.shape[0],
         "h": img.shape[0], "w": img.shape[1], "label": f.get("image/class/text", [None])[0]}
    if x["label"] is not None:
        x["label"] = x["label"].decode()
    if "image/identity" in f:
        x["identity"] = f["image/identity"][0].decode()
    if "image/object/bbox/xmin" in f or "image/object/class/text" in f:
        xmin, xmax = f.get("image/object/bbox/xmin", []), f.get("image/object/bbox/xmax", [])
        ymin, ymax = f.get("image/object/bbox/ymin", []), f.get("image/object/bbox/ymax", [])
        x["box_labels"] = [t.decode() for t in f.get("image/object/class/text", [])]
        x["box_w"] = [b - a for a, b in zip(xmin, xmax)]
        x["box_h"] = [b - a for a, b in zip(ymin, ymax)]
    return x


def _plot(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(stats["splits"])
    classes = sorted({c for s in splits for c in stats["splits"][s]["class_counts"]},
                     key=lambda c: (len(c), c))
    fig, ax = plt.subplots(figsize=(max(6, len(classes) * 0.6 + 2), 4))
    width = 0.8 / max(len(splits), 1)
    for i, s in enumerate(splits):
        counts = [stats["splits"][s]["class_counts"].get(c, 0) for c in classes]
        ax.bar([j + i * width for j in range(len(classes))], counts, width, label=f"{s} ({stats['splits'][s]['num_examples']})")
    ax.set_xticks([j + width * (len(splits) - 1) / 2 for j in range(len(classes))])
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
    ax.set_ylabel("examples")
    ax.set_title("examples per class and split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _chunk_stats(chunk):
    """(split, file, offset, count, first) -> (split, one record's statistics) per record."""
    from components.beam_engine import read_tfrecord_chunk

    split, name, offset, count, _ = chunk
    for rec in read_tfrecord_chunk(name, offset, count):
        yield split, _example_stats(rec)


def run(ctx, inputs, params: StatisticsGenParams):
    import apache_beam as beam

    from components.artifacts import Examples
    from components.beam_engine import open_pipeline, tfrecord_chunks, tune_worker_process, write_atomic

    examples = Examples.load(inputs["examples"])
    schema = examples.schema
    out = ctx.outputs["statistics"]
    scratch = out / ".beam"
    # the work is cut into record chunks on this side: Beam's TFRecord source does not run on
    # every engine, and chunks are what the engines spread over their workers
    chunks = [(s, *c) for s in schema["splits"] for c in tfrecord_chunks(examples.files(s))]
    expected = {s: sum(c[3] for c in chunks if c[0] == s) for s in schema["splits"]}

    class Combine(beam.CombineFn):
        def __init__(self):
            self.body = _StatsAccumulator()

        def setup(self):
            tune_worker_process()

        def create_accumulator(self):
            return self.body.create_accumulator()

        def add_input(self, acc, x):
            return self.body.add_input(acc, x)

        def merge_accumulators(self, accs):
            return self.body.merge_accumulators(list(accs))

        def extract_output(self, acc):
            return self.body.extract_output(acc)

    class WriteSplit(beam.DoFn):
        def __init__(self, folder):
            self.folder = folder

        def setup(self):
            tune_worker_process()

        def process(self, kv):
            split, st = kv
            write_atomic(Path(self.folder) / f"{split}.json", lambda f: f.write(json.dumps(st).encode()),
                         Path(self.folder) / "tmp")
            yield split

    if chunks:
        with open_pipeline(ctx.beam, ctx.logger, who="StatisticsGen") as p:
            (p | "Chunks" >> beam.Create(chunks)
             | "Stats" >> beam.FlatMap(_chunk_stats)
             | "Combine" >> beam.CombinePerKey(Combine())
             | "Write" >> beam.ParDo(WriteSplit(str(scratch))))
    stats = {"task": schema["task"], "classes": schema["classes"], "image_size": schema["image_size"], "splits": {}}
    for s, n in expected.items():
        f = scratch / f"{s}.json"
        if n:
            got = json.loads(f.read_text())["num_examples"] if f.exists() else 0
            if got != n:  # an engine that skipped or lost work must not leave plausible statistics
                raise ComponentError(f"StatisticsGen: split {s!r} of {examples.path} has {n} records, the Beam engine "
                                     f"({ctx.beam.get('runner', 'local')}) returned statistics of {got}")
            stats["splits"][s] = json.loads(f.read_text())
    if scratch.exists():
        import shutil

        shutil.rmtree(scratch)
    for s in schema["splits"]:
        stats["splits"].setdefault(s, {"num_examples": 0, "mean": [0, 0, 0], "std": [0, 0, 0],
                                       "class_counts": {}, "image_sizes": {}})
    dups_path = examples.path / "duplicates.json"
    if dups_path.exists():
        d = json.loads(dups_path.read_text())
        stats["duplicates"] = {"groups": len(d["groups"]), "leaks": len(d["leaks"]), "dropped": len(d["dropped"]),
                               "leak_keys": [g["keys"] for g in d["leaks"]][:50]}
    train = stats["splits"].get("train") or next(iter(stats["splits"].values()))
    stats["train_mean"], stats["train_std"] = train["mean"], train["std"]
    (out / "statistics.json").write_text(json.dumps(stats, indent=2))
    _plot(stats, out / "class_counts.png")
    ctx.tracker.log_artifact(out / "statistics.json")
    ctx.tracker.log_artifact(out / "class_counts.png", "plots")
    ctx.logger.info("statistics: %s; train mean %s std %s", {s: v["num_examples"] for s, v in stats["splits"].items()},
                    [round(m, 1) for m in train["mean"]], [round(m, 1) for m in train["std"]])
    return {f"num_examples_{s}": v["num_examples"] for s, v in stats["splits"].items()}


SPEC = ComponentSpec(type="StatisticsGen", description="examples -> statistics per split (JSON + plots)",
                     params=StatisticsGenParams, run=run, inputs={"examples": True}, outputs=("statistics",))
