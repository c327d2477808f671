"""`python -m pipeline stylize` end to end in a subprocess: writes the PNG, grid and cost curve;
bad input exits non-zero with a message naming the problem; `--help` lists the command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def test_help_lists_stylize_without_tensorflow():
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from click.testing import CliRunner; from pipeline.cli import main; "
                        "r = CliRunner().invoke(main, ['--help']); print(r.output); "
                        "print('TF' if 'tensorflow' in sys.modules else 'noTF')"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "stylize" in r.stdout and r.stdout.strip().endswith("noTF"), r.stdout + r.stderr
    assert "--weights" in cli("stylize", "--help").stdout


@pytest.mark.slow  # a fresh process: TensorFlow start-up + VGG-19 trace
def test_stylize_writes_png_grid_and_costs(tmp_path):
    rng = np.random.default_rng(0)
    content, style = tmp_path / "c.jpg", tmp_path / "s.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)).save(content)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)).save(style)
    out = tmp_path / "out" / "o.png"
    r = cli("stylize", content, style, "--out", out, "--size", "64x48", "--iterations", 3, "--save-every", 2,
            "--no-progress")
    for p in (out, tmp_path / "out" / "o_grid.png", tmp_path / "out" / "o_costs.png",
              tmp_path / "out" / "o_checkpoints" / "iter_0002.png"):
        assert p.is_file(), p
    with Image.open(out) as im:
        assert im.size == (64, 48)
    assert "s/iteration" in r.stdout and str(out) in r.stdout and "o_grid.png" in r.stdout
    assert "random" in r.stderr  # the note that the weights are random


def test_stylize_bad_input_exits_nonzero(tmp_path):
    r = cli("stylize", tmp_path / "missing.jpg", "builtin:swirls", "--out", tmp_path / "o.png", check=False)
    assert r.returncode != 0 and "missing.jpg" in r.stderr and "not found" in r.stderr
    r = cli("stylize", "builtin:grace_hopper", "builtin:nope", "--out", tmp_path / "o.png", check=False)
    assert r.returncode != 0 and "builtin:nope" in r.stderr
    r = cli("stylize", "builtin:grace_hopper", "builtin:swirls", "--out", tmp_path / "o.png", "--size", "4OOx300",
            check=False)
    assert r.returncode == 2 and "--size" in r.stderr
    r = cli("stylize", "builtin:grace_hopper", "builtin:swirls", "--out", tmp_path / "o.png",
            "--weights", tmp_path / "w.h5", check=False)
    assert r.returncode == 2 and "w.h5" in r.stderr
    assert not (tmp_path / "o.png").exists()
