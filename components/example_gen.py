"""ExampleGen: raw data -> `examples` (sharded TFRecords of `tf.train.Example` per split), with
Apache Beam.

* Reads any format of `components/sources.py` (course h5, image folders, synthetic, VOC, COCO,
  identity folders) record by record inside a DoFn (only small refs go through `beam.Create`).
* Converts every image to RGB uint8 at `image_size`, optionally cropping a square around the
  detected face first (`face_crop`, data/face_crop.py); an unreadable record goes to the error
  report with its key and reason. The component fails, writing nothing, when the bad fraction
  exceeds `max_bad_fraction`.
* Splits deterministically by hashing (the content by default, so byte-identical images always
  land in the same split), or keeps the dataset's own splits (`split_map`).
* Finds byte-identical images (sha256 of the decoded pixels) and reports the groups that cross
  splits (leaks); `duplicates` decides whether to only report them or drop the copies outside
  train.

Output folder: `<split>/data-SSSSS-of-NNNNN.tfrecord`, `schema.json` (task, classes, image size,
counts), `error_report.json`, `duplicates.json`.

The Beam pipeline, the same on every engine (components/beam_engine.py):

    Create((index, start, stop) batches of the refs file) | ParDo(Load) | GroupByKey(shard) | ParDo(Write)

* ``Load`` reads a batch of up to 64 refs (the refs travel as a pickle in the scratch folder,
  not inside the pipeline), decodes, hashes, resizes and encodes each image and writes the
  TFRecord-framed examples to one spill file per batch and split (temporary name, renamed: a
  retried batch rewrites the same bytes). It emits one ``(shard, rows)`` element per shard with
  only small rows: the record's fields and spill location, and the report rows. So no image is
  pickled through the shuffle and per-element engine costs are paid once per batch.
* ``Write`` resolves the duplicates of its shard (all copies of one image share a shard) and
  copies the kept records, sorted by key, from the spill files into the shard's files (runs of
  consecutive records are copied at once: without dropped duplicates each spill file whole).
* Nothing in the workers imports TensorFlow (data/tfrecord.py encodes ``tf.train.Example`` and
  the TFRecord framing itself): a worker process starts in about a second.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.base import ComponentError, ComponentSpec, Params

SPLIT_ORDER = {"train": 0, "eval": 1, "test": 2}


class Source(Params):
    format: str = "synthetic_signs"
    path: str | list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        from components.sources import check_options

        check_options(self.format, self.options)
        return self

    def resolve_paths(self, base_dir) -> None:
        """Relative paths in pipeline.yaml are relative to the file, not to the shell's folder."""

        def fix(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (Path(base_dir) / q).resolve())

        if isinstance(self.path, str):
            self.path = fix(self.path)
        elif isinstance(self.path, list):
            self.path = [fix(p) for p in self.path]


class FaceCrop(Params):
    """Detect the face in each image and crop a square around it before resizing
    (data/face_crop.py: OpenCV's Haar cascades, shipped in the wheel)."""
    margin: float = Field(0.2, ge=0.0, le=2.0, description="added to the detector's box side (0.2: 20% wider)")
    min_face: float = Field(0.2, gt=0.0, le=1.0, description="smallest face side, fraction of the image's shorter side")
    # no face found: keep the whole image (listed in error_report.json's face_crop.missed), or a bad record
    on_miss: Literal["keep", "bad"] = "keep"


class ExampleGenParams(Params):
    source: Source = Field(default_factory=Source)
    image_size: tuple[int, int] = (64, 64)  # (height, width)
    face_crop: FaceCrop | None = None  # None: no face detection (the whole image is resized)
    split_ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "eval": 0.2})
    # The dataset's own split name -> our split, or -> ratios to re-split it (e.g. val -> train/eval).
    split_map: dict[str, str | dict[str, float]] = Field(default_factory=dict)
    split_by: Literal["content", "key", "identity"] = "content"
    split_salt: str = ""
    duplicates: Literal["report", "drop_leaks", "drop_all"] = "report"
    max_bad_fraction: float = Field(0.0, ge=0.0, le=1.0)
    # detection: the share of all boxes that bad-box dropping (source.options.bad_boxes) may remove
    max_dropped_box_fraction: float = Field(0.05, ge=0.0, le=1.0)
    num_shards: int = Field(1, ge=1)

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v):
        if not v or abs(sum(v.values()) - 1.0) > 1e-6 or any(r < 0 for r in v.values()):
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {v}")
        return v

    @field_validator("split_map")
    @classmethod
    def _map(cls, v):
        for name, target in v.items():
            if isinstance(target, dict) and abs(sum(target.values()) - 1.0) > 1e-6:
                raise ValueError(f"split_map.{name}: ratios must sum to 1, got {target}")
        return v

    def resolve_paths(self, base_dir) -> None:
        self.source.resolve_paths(base_dir)

    def local_paths(self) -> dict[str, str]:
        if isinstance(self.source.path, list):
            return {f"source.path.{i}": p for i, p in enumerate(self.source.path)}
        if self.source.path and not self.source.format.startswith("synthetic"):  # generated data writes its folder
            return {"source.path": self.source.path}
        return {}

    def split_names(self) -> list[str]:
        names = set()
        if self.split_map:
            for t in self.split_map.values():
                names.update([t] if isinstance(t, str) else t.keys())
        else:
            names.update(self.split_ratios)
        return sorted(names, key=lambda s: (SPLIT_ORDER.get(s, 9), s))


def _ratio_pick(ratios: dict[str, float], token: str, salt: str) -> str:
    """Deterministic hash split: the same token always gets the same split on any machine."""
    u = int(hashlib.sha256(f"{salt}/{token}".encode()).hexdigest()[:15], 16) / float(1 << 60)
    acc = 0.0
    items = sorted(ratios.items(), key=lambda kv: (SPLIT_ORDER.get(kv[0], 9), kv[0]))
    for name, r in items:
        acc += r
        if u < acc:
            return name
    return items[-1][0]


def _report_box_issues(ctx, issues: list[dict], params: ExampleGenParams, kept_boxes: int) -> None:
    """Boxes the reader dropped or clipped: counts per issue on the console, the images listed,
    and a failure when more than ``max_dropped_box_fraction`` of all the boxes were dropped."""
    if not issues:
        return
    from collections import Counter

    per = Counter((i.get("issue", "?"), i.get("action", "?")) for i in issues)
    keys = sorted({i["key"] for i in issues})
    ctx.logger.warning("box issues in %d image(s): %s (policy bad_boxes=%s); e.g. %s%s", len(keys),
                       ", ".join(f"{n} {issue} -> {action}" for (issue, action), n in sorted(per.items())),
                       params.source.options.get("bad_boxes", "drop"), ", ".join(keys[:5]),
                       ", ..." if len(keys) > 5 else "")
    dropped = sum(n for (_, action), n in per.items() if action == "dropped")
    limit = params.max_dropped_box_fraction
    if dropped and dropped / (dropped + kept_boxes) > limit:
        raise ComponentError(f"ExampleGen: {dropped} of {dropped + kept_boxes} boxes dropped, in {len(keys)} image(s) "
                             f"({', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''}): more than "
                             f"max_dropped_box_fraction {limit:.0%}. Fix the annotations, use source.options.bad_boxes: "
                             "clip, or raise max_dropped_box_fraction")


def assign_split(params: ExampleGenParams, own_split: str | None, key: str, sha: str, identity: str | None) -> str | None:
    token = {"content": sha, "key": key, "identity": identity or key}[params.split_by]
    if params.split_map:
        if own_split not in params.split_map:
            return None
        target = params.split_map[own_split]
        return target if isinstance(target, str) else _ratio_pick(target, token, params.split_salt)
    return _ratio_pick(params.split_ratios, token, params.split_salt)


_REFS: tuple = (None, None)  # (refs file, its refs): _RecordLoader.refs' cache


class _RecordLoader:
    """What the ExampleGen's loading DoFn does with one record reference (a plain class, wrapped
    in a ``beam.DoFn`` inside ``run``, so this module needs no Beam import at load time)."""

    def __init__(self, loader, params_json: str):
        self.loader, self.params_json = loader, params_json

    def process(self, ref):
        import numpy as np
        from PIL import Image

        from data.face_crop import crop_face
        from data.records import BadRecord
        from data.tfrecord import encode_example

        if getattr(self, "_params", None) is None:  # parse once per worker, not once per record
            self._params = ExampleGenParams.model_validate_json(self.params_json)
        params = self._params
        try:
            rec = self.loader(ref)
        except BadRecord as e:
            yield "bad", {"key": e.key, "reason": e.reason}
            return
        except Exception as e:  # a reader bug must not lose the record silently either
            yield "bad", {"key": ref.key, "reason": f"{type(e).__name__}: {e}"}
            return
        img = rec.image
        digest = hashlib.sha256(np.ascontiguousarray(img))  # = sha256(pixel bytes + shape), no copies
        digest.update(str(img.shape).encode())
        sha = digest.hexdigest()
        h, w = params.image_size
        oh, ow = img.shape[:2]
        if params.face_crop is not None:
            fc = params.face_crop
            crop = crop_face(img, margin=fc.margin, min_face=fc.min_face)
            if not crop.found:
                if fc.on_miss == "bad":
                    yield "bad", {"key": rec.key, "reason": "no face found (face_crop.on_miss: bad)"}
                    return
                yield "miss", {"key": rec.key}
            img = crop.image
            oh, ow = img.shape[:2]
        if (oh, ow) != (h, w):
            img = Image.fromarray(img).resize((w, h), Image.BILINEAR)  # encoded as it is: no array round trip
        boxes = None
        if rec.boxes is not None:
            b = np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4)
            boxes = b / np.array([ow, oh, ow, oh], dtype=np.float32)
        for issue in rec.meta.get("box_issues", []):
            yield "issue", {"key": rec.key, **issue} if isinstance(issue, dict) else {"key": rec.key, "reason": str(issue)}
        split = assign_split(params, rec.split or ref.split, rec.key, sha, rec.identity)
        if split is None:
            yield "bad", {"key": rec.key, "reason": f"dataset split {rec.split or ref.split!r} is not in split_map"}
            return
        label = rec.label
        example = encode_example(img, rec.key, sha, label=label, label_name=rec.label_name, identity=rec.identity,
                                 boxes_norm=boxes, box_labels=rec.box_labels, box_names=rec.box_names)
        yield "ok", (sha, {"split": split, "key": rec.key, "label": label, "size": [oh, ow],
                           "boxes": 0 if boxes is None else int(len(boxes))}, example)

    def refs(self, refs_file: str) -> list:
        """The run's refs, read once per worker process (they travel as a file, not inside the
        pipeline: Beam pickles and bz2-compresses ``Create``'s values, ~0.6 s for 20,000 refs)."""
        global _REFS
        cached = _REFS  # one read: components may run in parallel threads, each with its own refs
        if cached[0] != refs_file:  # one run's refs per process at a time (the last one asked for)
            with open(refs_file, "rb") as f:
                cached = _REFS = (refs_file, pickle.load(f))  # written by this run's driver (run below)
        return cached[1]

    def process_batch(self, batch, refs_file: str, spill_dir: str, num_shards: int):
        """One batch ``(index, start, stop)`` of the refs file -> ``(shard, rows)`` per shard that got rows. The encoded
        records go to spill files ``b<index>-<split>.tfrecord`` (TFRecord-framed, in key order,
        each written to a temporary name and renamed: a retried bundle rewrites the same bytes);
        only small rows (``("ok", (sha, record's fields + its spill location))`` and the report
        rows) go on through the shuffle, so no image is pickled between processes."""
        from components.beam_engine import write_atomic
        from data.tfrecord import frame_record

        index, start, stop = batch
        refs = self.refs(refs_file)[start:stop]
        rows: dict[int, list] = {}
        by_split: dict[str, list] = {}
        for ref in refs:
            for tag, value in self.process(ref):
                if tag == "ok":
                    by_split.setdefault(value[1]["split"], []).append(value)
                else:
                    rows.setdefault(0, []).append(({"issue": "issues", "miss": "misses"}.get(tag, tag), value))
        for split, recs in sorted(by_split.items()):
            recs.sort(key=lambda v: v[1]["key"])  # stable: the writer's order, so its copies merge into runs
            name = f"b{index:06d}-{split}.tfrecord"
            offset, framed = 0, []
            for sha, rec, example in recs:
                framed.append(frame_record(example))
                rec["loc"] = [name, offset, len(framed[-1])]
                offset += len(framed[-1])
                rows.setdefault(shard_of(sha, num_shards), []).append(("ok", (sha, rec)))
            write_atomic(Path(spill_dir) / name, lambda f: f.write(b"".join(framed)), Path(spill_dir) / "tmp")
        yield from sorted(rows.items())


def _resolve_duplicates(policy: str):
    def fn(kv):
        sha, recs = kv
        recs = sorted(recs, key=lambda r: (SPLIT_ORDER.get(r["split"], 9), r["key"]))
        splits = sorted({r["split"] for r in recs})
        if len(recs) > 1:
            yield "dup", {"sha256": sha, "keys": [r["key"] for r in recs], "splits": [r["split"] for r in recs],
                          "leak": len(splits) > 1}
        keep = recs
        if policy == "drop_all" and len(recs) > 1:
            keep = recs[:1]
        elif policy == "drop_leaks" and len(splits) > 1:
            first = recs[0]["split"]  # train before eval before test: train keeps its copies
            keep = [r for r in recs if r["split"] == first]
        kept = {id(r) for r in keep}  # the copies kept, by identity (each has its own spill location)
        for r in recs:
            if id(r) not in kept:
                yield "dropped", {"key": r["key"], "split": r["split"], "sha256": sha}
        for r in keep:
            yield "keep", r
    return fn


def shard_of(sha: str, num_shards: int) -> int:
    """The shard a record goes to, from its content hash: copies of one image share a shard, so
    each shard's writer resolves its duplicates alone (one GroupByKey for both jobs)."""
    return int(sha[:12], 16) % num_shards


BATCH_MAX = 64  # refs a Load element: per-element engine costs shared by up to 64 images
BATCH_MIN_COUNT = 64  # ... but at least this many elements, so every worker gets several


def ref_batches(n: int) -> list[tuple[int, int, int]]:
    """``(index, start, stop)`` of n refs cut into batches: Load's units of work (one spill file
    per batch and split)."""
    size = max(1, min(BATCH_MAX, n // BATCH_MIN_COUNT))
    return [(i, j, min(j + size, n)) for i, j in enumerate(range(0, n, size))]


_REPORT_TAGS = ("bad", "issues", "misses", "dups", "dropped", "summary")


class _ShardWriter:
    """What the ExampleGen's writing DoFn does with one shard's group: resolve the duplicates,
    write ``<split>/data-SSSSS-of-NNNNN.tfrecord`` for each split (records sorted by key, so the
    bytes are the same on every engine) and the shard's report part, each renamed into place."""

    def __init__(self, out: str, splits: list[str], num_shards: int, policy: str):
        self.out, self.splits, self.num_shards, self.policy = out, splits, num_shards, policy

    def shard_name(self, split: str, shard: int) -> Path:
        return Path(self.out) / split / f"data-{shard:05d}-of-{self.num_shards:05d}.tfrecord"

    def process(self, kv):
        from components.beam_engine import write_atomic

        shard, batches = kv
        part = {t: [] for t in _REPORT_TAGS}
        by_sha: dict[str, list] = {}
        for tag, value in (row for rows in batches for row in rows):
            if tag == "ok":
                by_sha.setdefault(value[0], []).append(value[1])
            else:
                part[tag].append(value)
        keep_by_split: dict[str, list] = {s: [] for s in self.splits}
        resolve = _resolve_duplicates(self.policy)
        for sha in sorted(by_sha):
            for tag, value in resolve((sha, by_sha[sha])):
                if tag == "keep":
                    keep_by_split[value["split"]].append(value)
                    part["summary"].append({"split": value["split"], "label": value["label"], "size": value["size"],
                                            "boxes": value["boxes"], "key": value["key"]})
                else:
                    part[{"dup": "dups", "dropped": "dropped"}[tag]].append(value)
        scratch = Path(self.out) / ".beam"
        written = {}
        for split, recs in keep_by_split.items():
            if recs:
                recs.sort(key=lambda r: r["key"])
                written[split] = self._copy_records(self.shard_name(split, shard), [r["loc"] for r in recs],
                                                    scratch)
        part["written"] = written
        # pickled, not JSON: scratch read back by this run's driver only, and 5x cheaper for 20,000 rows
        write_atomic(scratch / "parts" / f"part-{shard:05d}.pkl", lambda f: pickle.dump(part, f, protocol=5),
                     scratch / "tmp")
        yield shard

    @staticmethod
    def _copy_records(path: Path, locs: list, scratch: Path) -> int:
        """The framed records at ``locs`` ((spill file, offset, length), in order) into one
        TFRecord file, atomically; consecutive records of one spill file are copied as one run
        (without duplicates dropped, each spill file is copied whole)."""
        from components.beam_engine import write_atomic

        runs: list[list] = []
        for name, offset, length in locs:
            if runs and runs[-1][0] == name and runs[-1][1] + runs[-1][2] == offset:
                runs[-1][2] += length
            else:
                runs.append([name, offset, length])

        def write(f):
            f.flush()
            out = f.fileno()  # from here on written through the descriptor only
            for name, offset, length in runs:
                with open(scratch / "spill" / name, "rb") as src:
                    while length:
                        try:  # in the kernel, page cache to page cache (Linux)
                            n = os.copy_file_range(src.fileno(), out, length, offset)
                        except (AttributeError, OSError):
                            data = os.pread(src.fileno(), length, offset)
                            n = os.write(out, data) if data else 0
                        if not n:
                            raise ComponentError(f"ExampleGen: spill file {name} is shorter than its records say")
                        offset, length = offset + n, length - n

        write_atomic(path, write, scratch / "tmp")
        return len(locs)


def _collect_parts(scratch: Path, total: int, runner: str) -> dict:
    """The shard writers' report parts merged; fails when they do not account for every record
    (an engine that skipped or lost part of the pipeline must not leave a plausible artifact)."""
    merged: dict = {t: [] for t in _REPORT_TAGS}
    merged["written"] = {}
    for f in sorted((scratch / "parts").glob("part-*.pkl")):
        with open(f, "rb") as fh:
            part = pickle.load(fh)
        for t in _REPORT_TAGS:
            merged[t] += part[t]
        for split, n in part["written"].items():
            merged["written"].setdefault(split, {})[f.stem] = n
    seen = len(merged["bad"]) + len(merged["summary"]) + len(merged["dropped"])
    if seen != total:
        raise ComponentError(f"ExampleGen: the Beam engine ({runner}) finished, but its shard writers account for "
                             f"{seen} of {total} records; nothing was kept (try beam.runner: local)")
    return merged


def _complete_shards(writer: _ShardWriter, parts: dict, splits: list[str]) -> None:
    """Check each split's folder holds exactly the shards the writers reported, with the records
    the summary counts, then add the empty shards (every ``data-SSSSS-of-NNNNN`` exists, as
    WriteToTFRecord leaves them)."""
    for split in splits:
        expected = sum(1 for r in parts["summary"] if r["split"] == split)
        reported = parts["written"].get(split, {})
        named = {writer.shard_name(split, int(stem.split("-")[1])).name for stem in reported}
        folder = Path(writer.out) / split
        on_disk = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
        if on_disk != named or sum(reported.values()) != expected:
            raise ComponentError(f"ExampleGen: split {split!r}: the shard writers reported {sum(reported.values())} "
                                 f"records in {sorted(named)}, the summary counts {expected}, the folder holds "
                                 f"{sorted(on_disk)}; nothing was kept")
        folder.mkdir(exist_ok=True)
        for shard in range(writer.num_shards):
            path = writer.shard_name(split, shard)
            if not path.exists():
                path.write_bytes(b"")


@contextlib.contextmanager
def _gc_paused():
    """The driver's bookkeeping (listing 20,000 refs, merging their report rows) allocates some
    100,000 small objects in a process that already holds TensorFlow's and Beam's million: every
    full collection they trigger walks all of it (~0.1 s each) and frees nothing. So the cyclic
    collector is paused around that bookkeeping only (reference counting still frees everything
    else), and left as it was found."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _removed_meanwhile(folder: Path):
    """Deletes folder (the spill files: ~240 MB for 20,000 images, 0.3 s of unlinking) in a thread
    while the block runs, and waits for it at the end. A failure to delete fails the component
    (a left-over scratch folder must not pass as part of the artifact), unless the block already
    failed: then its error is the one that propagates."""
    import shutil

    failed: list[BaseException] = []

    def remove():
        try:
            shutil.rmtree(folder)
        except BaseException as e:  # raised below, in the driver's thread
            failed.append(e)

    thread = threading.Thread(target=remove, name="example-gen-cleanup", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise ComponentError(f"ExampleGen: could not remove its scratch folder {folder}: {failed[0]}")


def run(ctx, inputs, params: ExampleGenParams):
    import apache_beam as beam

    from components.beam_engine import open_pipeline, tune_worker_process
    from components.sources import open_source

    out = ctx.outputs["examples"]
    try:
        with _gc_paused():
            info = open_source(params.source.format, params.source.path, params.source.options)
    except (FileNotFoundError, ValueError) as e:
        raise ComponentError(f"ExampleGen: {e}") from None
    if not info.refs:
        raise ComponentError(f"ExampleGen: no records found in {params.source.path or params.source.format}")
    if params.face_crop is not None and info.task == "detection":
        raise ComponentError(f"ExampleGen: face_crop would cut away the boxes of {params.source.format} "
                             "(detection) records; use it for face images (identity folders, classification)")
    for w in info.warnings:
        ctx.logger.warning(w)
    splits = params.split_names()
    ctx.logger.info("%d records (%s), %d classes -> splits %s", len(info.refs), params.source.format,
                    len(info.classes), splits)
    scratch = out / ".beam"
    scratch.mkdir()
    num_shards = params.num_shards

    class Load(beam.DoFn):
        """One batch of refs -> (shard, rows): every outcome, records and report rows alike, goes
        to one shard's writer (tags by hand: tagged outputs are not portable, see beam_engine)."""

        def __init__(self, body):
            self.body = body

        def setup(self):
            tune_worker_process()

        def process(self, batch):
            yield from self.body.process_batch(batch, refs_file, spill_dir, num_shards)

    class Write(beam.DoFn):
        def __init__(self, body):
            self.body = body

        def setup(self):
            tune_worker_process()

        def process(self, kv):
            yield from self.body.process(kv)

    spill_dir, refs_file = str(scratch / "spill"), str(scratch / "refs.pkl")

    # in key order: each batch's spill file is then a run of the split's final, key-sorted file
    with _gc_paused():
        (scratch / "refs.pkl").write_bytes(pickle.dumps(sorted(info.refs, key=lambda r: r.key)))
    body = _RecordLoader(info.loader, params.model_dump_json())
    writer = _ShardWriter(str(out), splits, num_shards, params.duplicates)
    with open_pipeline(ctx.beam, ctx.logger, who="ExampleGen") as p:
        # Create reshuffles its elements: that is what spreads Load over the engine's workers
        (p | "Refs" >> beam.Create(ref_batches(len(info.refs)))
         | "Load" >> beam.ParDo(Load(body))
         | "ByShard" >> beam.GroupByKey()
         | "Write" >> beam.ParDo(Write(writer)))
    with _gc_paused():
        parts = _collect_parts(scratch, len(info.refs), ctx.beam.get("runner", "local"))
        _complete_shards(writer, parts, splits)
        with _removed_meanwhile(scratch):
            return _report(ctx, params, info, out, splits, parts)


def _report(ctx, params: ExampleGenParams, info, out: Path, splits: list[str], parts: dict) -> dict:
    """The merged shard reports -> ``schema.json``, ``error_report.json``, ``duplicates.json`` and
    the metrics; fails on too many bad records or dropped boxes (after writing nothing else)."""
    bad, issues, misses, dups, dropped, summary = (parts[t] for t in _REPORT_TAGS)
    # engines deliver rows in any order: sort, so the reports are the same on every engine
    issues.sort(key=lambda r: (r["key"], json.dumps(r, sort_keys=True)))
    misses.sort(key=lambda r: r["key"])
    dups.sort(key=lambda d: d["keys"])
    dropped.sort(key=lambda r: r["key"])
    summary.sort(key=lambda r: r["key"])
    bad.sort(key=lambda r: r["key"])
    bad_fraction = len(bad) / len(info.refs)
    report = {"total_records": len(info.refs), "bad_records": len(bad), "bad_fraction": bad_fraction,
              "max_bad_fraction": params.max_bad_fraction, "bad": bad, "box_issues": issues,
              "warnings": info.warnings}
    if params.face_crop is not None:
        missed = sorted(m["key"] for m in misses)
        report["face_crop"] = {**params.face_crop.model_dump(), "missed": missed, "missed_count": len(missed)}
        if missed:
            ctx.logger.warning("face_crop: no face found in %d of %d images (%s%s): %s", len(missed), len(info.refs),
                               ", ".join(missed[:5]), ", ..." if len(missed) > 5 else "",
                               "whole image kept" if params.face_crop.on_miss == "keep" else "bad records")
    for r in bad[:20]:
        ctx.logger.warning("bad record %s: %s", r["key"], r["reason"])
    _report_box_issues(ctx, issues, params, sum(int(r.get("boxes") or 0) for r in summary))
    if params.split_map:
        present = {r.split for r in info.refs}
        unknown = sorted(k for k in params.split_map if k not in present)
        if unknown:
            ctx.logger.warning("split_map names split(s) %s that the source does not have (it has: %s)", unknown,
                               sorted(str(s) for s in present))
    if bad_fraction > params.max_bad_fraction:
        shown = "\n".join(f"  {r['key']}: {r['reason']}" for r in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ComponentError(f"ExampleGen: {len(bad)} of {len(info.refs)} records are unusable "
                             f"({bad_fraction:.1%} > max_bad_fraction {params.max_bad_fraction:.1%}):\n{shown}{more}")
    leaks = [d for d in dups if d["leak"]]
    counts: dict[str, int] = {s: 0 for s in splits}
    per_class: dict[str, dict[str, int]] = {s: {} for s in splits}
    for r in summary:
        counts[r["split"]] += 1
        if r["label"] is not None:
            name = info.classes[r["label"]] if 0 <= r["label"] < len(info.classes) else str(r["label"])
            per_class[r["split"]][name] = per_class[r["split"]].get(name, 0) + 1
    schema = {"task": info.task, "format": params.source.format, "classes": info.classes,
              "num_classes": len(info.classes), "image_size": list(params.image_size), "splits": counts,
              "per_class": per_class,
              # how images were cropped: the Trainer records it so serving crops new photos the same way
              "face_crop": params.face_crop.model_dump() if params.face_crop is not None else None}
    (out / "schema.json").write_text(json.dumps(schema, indent=2))
    (out / "error_report.json").write_text(json.dumps(report, indent=2))
    (out / "duplicates.json").write_text(json.dumps({"policy": params.duplicates, "groups": dups,
                                                      "leaks": leaks, "dropped": dropped}, indent=2))
    ctx.logger.info("wrote %s; %d duplicate groups (%d across splits), %d dropped, %d bad records",
                    ", ".join(f"{s}={n}" for s, n in counts.items()), len(dups), len(leaks), len(dropped), len(bad))
    empty = [s for s, n in counts.items() if not n]
    if empty:
        ctx.logger.warning("split(s) %s are empty: components reading them will fail (check split_map / "
                           "split_ratios against the source's own splits)", empty)
    ctx.tracker.log_artifact(out / "schema.json")
    ctx.tracker.log_artifact(out / "error_report.json")
    ctx.tracker.log_artifact(out / "duplicates.json")
    return {"records": len(info.refs), "bad_records": len(bad), "duplicate_groups": len(dups),
            "leak_groups": len(leaks), "dropped_duplicates": len(dropped),
            **({"face_crop_missed": len(misses)} if params.face_crop is not None else {}),
            **{f"examples_{s}": n for s, n in counts.items()}}


def _external(params: ExampleGenParams) -> list[str]:
    p = params.source.path
    if p is None or params.source.format.startswith("synthetic_"):
        # a generator's output is a function of its options and code (both in the key); its
        # folder's file stats would change the key once the first run has written it
        return []
    return [p] if isinstance(p, str) else list(p)


SPEC = ComponentSpec(
    type="ExampleGen",
    description="raw images -> sharded TFRecords per split, with duplicate/leak detection and an error report",
    params=ExampleGenParams,
    run=run,
    inputs={},
    outputs=("examples",),
    code_dependencies=lambda p: [__import__("components.sources", fromlist=["FORMATS"]).FORMATS[p.source.format][0]],
    external_files=_external,
)
