"""A SIGKILL in the middle of a checkpoint write: the process dies while the weights file is half
written (the third save truncates its file to half and kills its own process). The checkpoint
left on disk is the previous, complete one; the rerun resumes from it and finishes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT
from tests.e2e.test_pipeline_e2e import _set, cli, executions, last_run_id, signs_only_yaml

pytestmark = pytest.mark.slow

EPOCHS = 5

# Runs `pipeline run` with keras' save_weights patched: on the checkpoint's 3rd save it writes
# the file, cuts it to half its size and SIGKILLs the process, as a kill during the write would.
KILL_DURING_THIRD_SAVE = r"""
import os, signal, sys
import keras

original = keras.Model.save_weights
calls = {"n": 0}

def save_weights(self, filepath, *a, **k):
    out = original(self, filepath, *a, **k)
    if "backup-" in str(filepath):  # the BackupAndRestore checkpoint (not the best-epoch copy)
        calls["n"] += 1
        if calls["n"] == 3:
            size = os.path.getsize(filepath)
            with open(filepath, "r+b") as f:
                f.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return out

keras.Model.save_weights = save_weights
from pipeline.cli import main
sys.exit(main(sys.argv[1:], standalone_mode=True))
"""


def test_kill_while_the_checkpoint_is_written_resumes_from_the_last_complete_one(tmp_path):
    import h5py

    y = signs_only_yaml(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    small = _set(f"signs_train.epochs={EPOCHS}", "signs_gen.source.options.num_examples=300")
    args = ["run", str(y), "--quiet", "--no-tracking", "--to", "signs_train", *small]
    p = subprocess.run([sys.executable, "-c", KILL_DURING_THIRD_SAVE, *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])

    root = tmp_path / "pipeline_root"
    weights = list(root.glob("signs_train/.work/*/backup-train/*.weights.h5"))
    final = [w for w in weights if ".tmp." not in w.name]
    assert final, f"no completed checkpoint was left: {weights}"
    with h5py.File(final[0], "r") as f:  # the checkpoint in place is whole: it opens and holds layers
        assert len(f.keys()) > 0
    meta = json.loads(next(root.glob("signs_train/.work/*/backup-train/training_metadata.json")).read_text())
    assert meta["epoch"] == 2, meta  # the saves after epochs 1 and 2 completed; the 3rd was cut

    r = cli("run", str(y), "--quiet", "--no-tracking", "--to", "signs_train", *small, cwd=tmp_path)
    rid = last_run_id(r.stdout)
    assert executions(root, rid)["signs_train"]["status"] == "done"
    log = next((root / "logs").glob(f"{rid}/signs_train.log")).read_text()
    assert "resuming" in log and "epoch 3" in log and "epoch 1:" not in log, log[-2000:]
    info = json.loads(next(root.glob("signs_train/*/model/model_info.json")).read_text())
    history = json.loads(next(root.glob("signs_train/*/model/history.json")).read_text())
    assert info["epochs_run"] == EPOCHS and len(history["loss"]) == EPOCHS
