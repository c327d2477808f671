"""Neural style transfer benchmark (models/style_transfer/).

1. Seconds per optimisation step at 400x300 with VGG-19 (weights=None: the speed does not
   depend on the weights' values) -- the same step run eagerly, as a ``tf.function``, and as a
   ``tf.function(jit_compile=True)`` (XLA) -- medians over several steps after a warm-up
   (which holds tracing / XLA compilation, reported separately).
2. The course's run: louvre_small.jpg in the style of monet.jpg
   (``DATASETS/nst_images/classic``), 200 iterations by default, writing the result, the
   content | style | result grid and the cost curve under benchmarks/results/style_transfer/.

Peak memory is the process's peak resident set size (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss``), not tracemalloc: TensorFlow's tensors live outside Python's allocator.

    python -m benchmarks style_transfer [--iterations 200] [--repeats 5] [--no-jit] [--no-full]
"""
from __future__ import annotations

import argparse
import os
import resource
import time

from benchmarks.common import DATASETS, RESULTS_DIR, median_time, write_result


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks style_transfer", description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=200, help="iterations of the full run (course: 200)")
    ap.add_argument("--size", default="400x300", help="WIDTHxHEIGHT (course: 400x300)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per mode (median reported)")
    ap.add_argument("--no-jit", action="store_true", help="skip the XLA (jit_compile=True) timing")
    ap.add_argument("--no-full", action="store_true", help="skip the full louvre/monet run")
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t_import = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    from models import style_transfer as st
    import_s = time.perf_counter() - t_import

    width, height = st.parse_size(args.size)
    images = DATASETS / "nst_images" / "classic"
    content_path, style_path = images / "louvre_small.jpg", images / "monet.jpg"
    if content_path.is_file() and style_path.is_file():
        content = st.load_image(content_path, (width, height))
        style = st.load_image(style_path, (width, height))
        source = "nst_images/classic louvre_small.jpg + monet.jpg"
    else:  # the step's speed does not depend on the pixels
        rng = np.random.default_rng(0)
        content = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        style = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        source = "random pixels (datasets not found)"

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    extractor = st.build_feature_extractor(None, input_shape=(height, width, 3), seed=0)
    build_s = time.perf_counter() - t0
    a_C = [np.asarray(a) for a in extractor(st.preprocess_image(content))]
    a_S = [np.asarray(a) for a in extractor(st.preprocess_image(style))]

    modes = {"eager": dict(compile=False), "tf_function": dict(compile=True)}
    if not args.no_jit:
        modes["tf_function_jit"] = dict(compile=True, jit_compile=True)
    steps: dict[str, dict] = {}
    for name, kw in modes.items():
        g = tf.Variable(st.generate_noise_image(st.preprocess_image(content), seed=0))
        step = st.make_train_step(extractor, g, a_C, a_S, keras.optimizers.Adam(2.0), **kw)
        run = lambda: float(step()["J"])  # noqa: E731  float() waits for the result
        t0 = time.perf_counter()
        run()  # trace / XLA-compile; timed separately
        first = time.perf_counter() - t0
        med, times = median_time(run, repeats=args.repeats, warmup=1)
        steps[name] = {"median_s_per_iteration": med, "times_s": times, "first_step_s": first,
                       "peak_rss_mib_after": _peak_rss_mib()}
        print(f"{name:>16}: {med:.3f} s/iteration (median of {args.repeats}; first step {first:.1f} s)")
    ratio = steps["eager"]["median_s_per_iteration"] / steps["tf_function"]["median_s_per_iteration"]
    result = {
        "size": f"{width}x{height}", "weights": "None (random VGG-19)", "images": source,
        "import_s": import_s, "build_extractor_s": build_s, "load_average_at_start": load_start,
        "step": steps,
        "eager_over_tf_function": ratio,
        "peak_memory": {"method": "resource.getrusage(RUSAGE_SELF).ru_maxrss (process peak RSS)",
                        "after_step_timing_mib": _peak_rss_mib()},
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
    }
    if "tf_function_jit" in steps:
        result["jit_over_tf_function"] = (steps["tf_function_jit"]["median_s_per_iteration"]
                                          / steps["tf_function"]["median_s_per_iteration"])
    print(f"eager / tf.function = {ratio:.2f}"
          + (f"; jit / tf.function = {result['jit_over_tf_function']:.2f}" if "jit_over_tf_function" in result else ""))

    if not args.no_full:
        if not content_path.is_file():
            result["full_run"] = {"skipped": f"{content_path} not found"}
        else:
            out_dir = RESULTS_DIR / "style_transfer"
            res = st.run_style_transfer(content_path, style_path, out_dir / "louvre_monet.png",
                                        size=(width, height), iterations=args.iterations, weights=None,
                                        save_every=0, seed=0, extractor=extractor)
            J = res["history"]["J"]
            result["full_run"] = {
                "command": f"python -m benchmarks style_transfer --iterations {args.iterations}",
                "iterations": args.iterations, "total_s": res["total_seconds"],
                "median_s_per_iteration": res["seconds_per_iteration"], "first_step_s": res["trace_seconds"],
                "J_first": J[0], "J_last": J[-1], "final_costs": res["final_costs"],
                "output": res["output"], "grid": res["grid"], "cost_curve": res["cost_curve"],
                "weights": res["weights"], "peak_rss_mib_after": _peak_rss_mib(),
            }
            print(f"full run: {args.iterations} iterations in {res['total_seconds']:.1f} s "
                  f"({res['seconds_per_iteration']:.3f} s/it); J {J[0]:.4g} -> {J[-1]:.4g}")
            print(f"grid: {res['grid']}\ncost curve: {res['cost_curve']}")
    result["peak_memory"]["end_mib"] = _peak_rss_mib()
    # Other jobs share these cores; the load average says how contended the numbers are.
    result["load_average_at_end"] = os.getloadavg()
    path = write_result("style_transfer", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
