"""What keeps ExampleGen fast on every Beam engine (components/example_gen.py): the Load step
works on batches of refs read from a file, writes the encoded records to spill files itself and
sends only small rows through the shuffle, without importing TensorFlow; the shard writer copies
the spilled records in runs. (Same results as before: tests/components/test_beam_runners.py and
test_example_gen.py.)"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.example_gen import BATCH_MAX, _ShardWriter, ref_batches

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 300, 2062, 4096, 20000, 20001])
def test_ref_batches_cover_every_ref_once_in_order(n):
    batches = ref_batches(n)
    assert [i for i, _, _ in batches] == list(range(len(batches)))
    assert [j for _, start, stop in batches for j in range(start, stop)] == list(range(n))
    assert max(stop - start for _, start, stop in batches) <= BATCH_MAX
    assert len(batches) >= min(n, 64)  # enough units of work for every worker


LOAD_SCRIPT = """
import json, pickle, sys
from components.example_gen import ExampleGenParams, _RecordLoader
from components.sources import open_source
root, scratch = sys.argv[1], sys.argv[2]
params = ExampleGenParams.model_validate({"source": {"format": "image_folder", "path": root}, "image_size": [16, 16],
                                          "max_bad_fraction": 0.5, "num_shards": 2})
info = open_source("image_folder", root, {})
refs = sorted(info.refs, key=lambda r: r.key)
open(scratch + "/refs.pkl", "wb").write(pickle.dumps(refs))
body = _RecordLoader(info.loader, params.model_dump_json())
out = list(body.process_batch((7, 0, len(refs)), scratch + "/refs.pkl", scratch + "/spill", 2))
assert "tensorflow" not in sys.modules, "the Load step imported TensorFlow"
print(json.dumps(out))
"""


def test_load_step_spills_records_without_tensorflow_and_sends_only_small_rows(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "b" / "broken.jpg").write_bytes(b"garbage")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    res = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(root), str(scratch)], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    rows = [row for shard, rows in out for row in rows]
    assert sorted(shard for shard, _ in out) == sorted({shard for shard, _ in out})  # one element per shard
    assert [r[1]["key"] for r in rows if r[0] == "bad"] == ["b/broken.jpg"]
    ok = [r[1] for r in rows if r[0] == "ok"]
    assert len(ok) == 12
    assert all(set(rec) == {"split", "key", "label", "size", "boxes", "loc"} for _, rec in ok)  # no image bytes
    assert max(len(json.dumps(r)) for r in rows) < 300
    spilled = sorted(p.name for p in (scratch / "spill").iterdir() if p.is_file())
    assert spilled == sorted({f"b000007-{rec['split']}.tfrecord" for _, rec in ok})
    assert not list((scratch / "spill" / "tmp").iterdir())  # renamed into place

    import tensorflow as tf

    from data.tfrecord import decode_example_py

    for name in spilled:  # each spill file: TFRecords in key order, at the offsets the rows give
        recs = [r.numpy() for r in tf.data.TFRecordDataset(str(scratch / "spill" / name))]
        locs = sorted((rec["loc"][1], rec["key"]) for _, rec in ok if rec["loc"][0] == name)
        assert [decode_example_py(r)["image/key"][0].decode() for r in recs] == [k for _, k in locs]
        assert [k for _, k in locs] == sorted(k for _, k in locs)


def test_shard_writer_copies_spilled_records_in_runs(tmp_path):
    import tensorflow as tf

    from data.tfrecord import frame_record

    spill = tmp_path / ".beam" / "spill"
    spill.mkdir(parents=True)
    records = {name: [f"{name}-{i}".encode() * (i + 1) for i in range(5)] for name in ("x", "y")}
    locs = {}
    for name, recs in records.items():
        data, offset = b"", 0
        for i, r in enumerate(recs):
            framed = frame_record(r)
            locs[(name, i)] = [name, offset, len(framed)]
            data += framed
            offset += len(framed)
        (spill / name).write_bytes(data)
    order = [("x", 0), ("x", 1), ("y", 0), ("x", 3), ("x", 4), ("y", 2), ("y", 3)]  # gaps: dropped records
    target = tmp_path / "train" / "data-00000-of-00001.tfrecord"
    n = _ShardWriter._copy_records(target, [locs[k] for k in order], tmp_path / ".beam")
    assert n == len(order)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(target))] == [records[a][i] for a, i in order]
    assert not list((tmp_path / ".beam" / "tmp").iterdir())
