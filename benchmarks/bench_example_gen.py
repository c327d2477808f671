"""ExampleGen throughput on a real image folder: the Beam component versus a plain loop.

    python -m benchmarks example_gen                 # ../shared/datasets/sign_language_digits/Dataset
    python -m benchmarks example_gen --repeats 2 --tiny 20

Work per image in both cases: PIL decode (full decode, some files are 3024x3024), convert to RGB
uint8, sha256 of the decoded pixels, bilinear resize to 64x64, PNG-encode into a
``tf.train.Example`` (``data.tfrecord.encode_example``), write TFRecords.

* ``example_gen``: ``pipeline.runner.run_single("ExampleGen", ...)`` in-process with source
  ``image_folder`` (label from the class folder), the default 0.8/0.2 split, Beam FnApiRunner
  (the pipeline's default beam args). It also groups by sha256 for duplicate detection and
  writes its reports, which the loop does not.
* ``loop``: one Python loop, one ``tf.io.TFRecordWriter``.
* Beam start-up: ExampleGen on a tiny copy (``--tiny`` images, symlinks into the same dataset)
  after a warm-up run (so TensorFlow and Beam are already imported); the fixed cost is the
  tiny run's time minus its per-image share, and the steady-state rate is
  (N - n_tiny) / (t_full - t_tiny).

Skips (prints a message, returns {}) when the dataset is absent.
Results go to ``benchmarks/results/example_gen.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATASETS, write_result

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def list_images(root: Path) -> list[tuple[Path, str]]:
    """(path, class folder name) for every image in root/<class>/, sorted."""
    out = []
    for cd in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        out += [(p, cd.name) for p in sorted(cd.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return out


def make_tiny_copy(images: list[tuple[Path, str]], dest: Path, n: int) -> int:
    """Symlink n images (spread over the classes) into dest/<class>/; returns how many."""
    step = max(1, len(images) // n)
    picked = images[::step][:n]
    for p, cls in picked:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        (dest / cls / p.name).symlink_to(p)
    return len(picked)


def single_process_loop(images: list[tuple[Path, str]], out_file: Path, size=(64, 64)) -> dict:
    """The same per-image work as ExampleGen's DoFn in one plain loop."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from data.tfrecord import encode_example

    classes = sorted({c for _, c in images}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    index = {c: i for i, c in enumerate(classes)}
    h, w = size
    ok = bad = 0
    with tf.io.TFRecordWriter(str(out_file)) as wr:
        for p, cls in images:
            try:
                with Image.open(p) as im:
                    im.load()
                    arr = np.asarray(im.convert("RGB"))
            except (OSError, ValueError, SyntaxError):
                bad += 1
                continue
            sha = hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()
            if arr.shape[:2] != (h, w):
                arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR))
            wr.write(encode_example(arr, f"{cls}/{p.name}", sha, label=index[cls], label_name=cls))
            ok += 1
    return {"written": ok, "bad": bad}


def _timed(fn):
    """(wall seconds, CPU seconds of this process (all threads), fn's result). CPU time is the
    steadier figure on a shared machine; Beam's FnApiRunner runs in this process."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _run_example_gen(path: Path, out: Path, max_bad: float):
    from pipeline.runner import run_single

    params = {"source": {"format": "image_folder", "path": str(path), "options": {"label_from": "folder"}},
              "image_size": [64, 64], "max_bad_fraction": max_bad}
    wall, cpu, meta = _timed(lambda: run_single("ExampleGen", {}, params, out,
                                                tracking_uri=f"sqlite:///{out.parent / 'mlflow.db'}"))
    return wall, cpu, meta["metrics"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks example_gen", description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=str(DATASETS / "sign_language_digits" / "Dataset"))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    ap.add_argument("--tiny", type=int, default=20, help="images in the start-up-overhead run")
    ap.add_argument("--max-bad-fraction", type=float, default=0.01)
    args = ap.parse_args(argv)

    root = Path(args.path)
    if not root.is_dir():
        print(f"example_gen benchmark skipped: dataset not found at {root}")
        return {}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    for name in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    images = list_images(root)
    n = len(images)
    load_before = os.getloadavg()
    eg_times, loop_times, tiny_times = [], [], []
    eg_cpu, loop_cpu, tiny_cpu = [], [], []
    metrics = loop_info = None
    for p, _ in images:  # page cache: the first timed run must not pay for cold disk reads
        p.read_bytes()
    with tempfile.TemporaryDirectory(prefix="bench_example_gen_") as tmp:
        work = Path(tmp)
        tiny_dir = work / "tiny_data"
        n_tiny = make_tiny_copy(images, tiny_dir, args.tiny)
        # warm-up: imports TensorFlow, Beam, PIL plugins; not timed
        _run_example_gen(tiny_dir, work / "warmup", args.max_bad_fraction)
        for r in range(args.repeats):  # interleaved so load changes hit both
            t, c, _ = _run_example_gen(tiny_dir, work / f"tiny{r}", args.max_bad_fraction)
            tiny_times.append(t)
            tiny_cpu.append(c)
            t, c, metrics = _run_example_gen(root, work / f"full{r}", args.max_bad_fraction)
            eg_times.append(t)
            eg_cpu.append(c)
            t, c, loop_info = _timed(lambda: single_process_loop(images, work / f"loop{r}.tfrecord"))
            loop_times.append(t)
            loop_cpu.append(c)
            print(f"  round {r + 1}: ExampleGen {eg_times[-1]:.1f}s (cpu {eg_cpu[-1]:.1f}s), loop {loop_times[-1]:.1f}s "
                  f"(cpu {loop_cpu[-1]:.1f}s), ExampleGen on {n_tiny} images {tiny_times[-1]:.2f}s "
                  f"(cpu {tiny_cpu[-1]:.2f}s), load {os.getloadavg()[0]:.1f}")
        tfrecord_bytes = sum(f.stat().st_size for f in (work / "full0" / "examples").rglob("*.tfrecord"))
        loop_bytes = (work / "loop0.tfrecord").stat().st_size
    load_after = os.getloadavg()

    eg, loop, tiny = statistics.median(eg_times), statistics.median(loop_times), statistics.median(tiny_times)
    egc, loopc, tinyc = statistics.median(eg_cpu), statistics.median(loop_cpu), statistics.median(tiny_cpu)
    loop_rate = n / loop
    eg_rate = n / eg
    steady = (n - n_tiny) / (eg - tiny) if eg > tiny else float("nan")
    overhead = tiny - n_tiny / steady if steady == steady else float("nan")
    print(f"\n{'':24s} {'wall s':>8s} {'images/s':>9s} {'cpu s':>7s} {'img/cpu-s':>9s}")
    print(f"{'ExampleGen (Beam)':24s} {eg:8.2f} {eg_rate:9.1f} {egc:7.2f} {n / egc:9.1f}")
    print(f"{'single-process loop':24s} {loop:8.2f} {loop_rate:9.1f} {loopc:7.2f} {n / loopc:9.1f}")
    print(f"{'ExampleGen, ' + str(n_tiny) + ' images':24s} {tiny:8.2f} {'':9s} {tinyc:7.2f}")
    print(f"ratio ExampleGen / loop (images/s, wall) = {eg_rate / loop_rate:.3f}; "
          f"per CPU-second = {loopc / egc:.3f}")
    print(f"Beam start-up + fixed cost ~ {overhead:.2f}s; ExampleGen steady rate ~ {steady:.1f} images/s "
          f"(ratio to loop {steady / loop_rate:.3f})")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min)")
    result = {
        "dataset": str(root), "images": n, "image_size": [64, 64], "repeats": args.repeats,
        "example_gen": {"median_s": eg, "times_s": eg_times, "images_per_s": eg_rate, "metrics": metrics,
                        "cpu_median_s": egc, "cpu_times_s": eg_cpu, "tfrecord_bytes": tfrecord_bytes},
        "loop": {"median_s": loop, "times_s": loop_times, "images_per_s": loop_rate, **(loop_info or {}),
                 "cpu_median_s": loopc, "cpu_times_s": loop_cpu, "tfrecord_bytes": loop_bytes},
        "ratio_example_gen_vs_loop": eg_rate / loop_rate,
        "ratio_example_gen_vs_loop_cpu": loopc / egc,
        "startup": {"tiny_images": n_tiny, "tiny_median_s": tiny, "tiny_times_s": tiny_times,
                    "tiny_cpu_median_s": tinyc,
                    "fixed_overhead_s": overhead, "steady_images_per_s": steady,
                    "steady_ratio_vs_loop": steady / loop_rate},
        "beam_args": ["--runner=FnApiRunner"], "loadavg_before": load_before, "loadavg_after": load_after,
    }
    path = write_result("example_gen", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
