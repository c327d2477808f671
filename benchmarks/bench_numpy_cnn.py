"""Speed of the vectorised numpy CNN layers (models.numpy_cnn) against the course's loops and
against TensorFlow, on the issue's workload: a (10, 64, 64, 8) float64 input, 16 filters of
3x3, stride 1, pad 1.

    python -m benchmarks numpy_cnn [--repeats N] [--naive-repeats N]

Targets: vectorised >= 100x faster than the loops (forward and backward); conv_forward within
3x of tf.nn.conv2d in float64 (same process, same input, explicit zero padding then VALID,
so the two compute the same thing). Writes benchmarks/results/numpy_cnn.json.

BLAS threads: numpy's GEMMs here are thin (40960 x 72 by 72 x 16). On a 2-core machine shared
with other jobs, OpenBLAS's spinning worker threads collapse under oversubscription (measured
at load ~8: backward 420 ms with the default threads, 33 ms with one), so the numpy side runs
with one BLAS thread by default (``--blas-threads 0`` keeps numpy's default). That is also the
conservative comparison: TensorFlow keeps its own intra-op pool. The load average before and
after is recorded with the result, since every figure here moves with it.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.common import median_time, write_result

SHAPE = (10, 64, 64, 8)
FILTERS = 16
F = 3
HPARAMS = {"stride": 1, "pad": 1}


def _limit_blas_threads(n: int) -> str:
    """Cap numpy's BLAS pool for this process (threadpoolctl comes with scikit-learn)."""
    if n <= 0:
        return "not limited"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "threadpoolctl missing: not limited"
    threadpool_limits(limits=n, user_api="blas")  # stays in effect for the rest of the run
    return f"limited to {n}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks numpy_cnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the fast versions")
    parser.add_argument("--naive-repeats", type=int, default=1, help="timed runs of the loop versions (slow)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads for numpy (0: numpy's default); see the module docstring")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    blas_limit = _limit_blas_threads(args.blas_threads)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from rich.console import Console
    from rich.table import Table

    from models import numpy_cnn as N

    rng = np.random.default_rng(0)
    A = rng.standard_normal(SHAPE)
    W = rng.standard_normal((F, F, SHAPE[-1], FILTERS))
    b = rng.standard_normal((1, 1, 1, FILTERS))
    Z, cache = N.conv_forward(A, W, b, HPARAMS)
    dZ = rng.standard_normal(Z.shape)

    A_t, W_t, b_t = tf.constant(A), tf.constant(W), tf.constant(b.reshape(-1))
    pad = HPARAMS["pad"]

    def tf_forward():
        A_pad = tf.pad(A_t, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        return (tf.nn.conv2d(A_pad, W_t, strides=1, padding="VALID") + b_t).numpy()

    # same answer first, so the timings compare like with like
    max_abs_diff_tf = float(np.max(np.abs(tf_forward() - Z)))

    t_fwd, _ = median_time(lambda: N.conv_forward(A, W, b, HPARAMS), repeats=args.repeats)
    t_bwd, _ = median_time(lambda: N.conv_backward(dZ, cache), repeats=args.repeats)
    t_tf, _ = median_time(tf_forward, repeats=args.repeats, warmup=3)
    t_fwd_naive, _ = median_time(lambda: N.conv_forward_naive(A, W, b, HPARAMS), repeats=args.naive_repeats, warmup=0)
    t_bwd_naive, _ = median_time(lambda: N.conv_backward_naive(dZ, cache), repeats=args.naive_repeats, warmup=0)

    result = {
        "workload": {"input": list(SHAPE), "filters": FILTERS, "f": F, **HPARAMS, "dtype": "float64"},
        "repeats": args.repeats,
        "naive_repeats": args.naive_repeats,
        "seconds": {
            "conv_forward": t_fwd, "conv_forward_naive": t_fwd_naive,
            "conv_backward": t_bwd, "conv_backward_naive": t_bwd_naive,
            "tf_nn_conv2d_float64": t_tf,
        },
        "speedup_forward_vs_naive": t_fwd_naive / t_fwd,
        "speedup_backward_vs_naive": t_bwd_naive / t_bwd,
        "forward_time_ratio_vs_tf": t_fwd / t_tf,
        "max_abs_diff_vs_tf": max_abs_diff_tf,
        "targets": {"speedup_vs_naive_min": 100.0, "ratio_vs_tf_max": 3.0},
        "versions": {"numpy": np.__version__, "tensorflow": tf.__version__},
        "blas_threads": args.blas_threads or "numpy default",
        "blas_threads_applied": blas_limit,
        "loadavg_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    result["targets_met"] = bool(
        result["speedup_forward_vs_naive"] >= 100 and result["speedup_backward_vs_naive"] >= 100
        and result["forward_time_ratio_vs_tf"] <= 3.0
    )

    table = Table(title=f"numpy CNN, input {SHAPE}, {FILTERS} filters {F}x{F}, stride 1, pad 1, float64")
    for col in ("operation", "vectorised (ms)", "baseline", "baseline (ms)", "ratio"):
        table.add_column(col, justify="left" if col in ("operation", "baseline") else "right")
    table.add_row("conv_forward", f"{t_fwd * 1e3:.2f}", "course loops", f"{t_fwd_naive * 1e3:.0f}",
                  f"{t_fwd_naive / t_fwd:.0f}x faster")
    table.add_row("conv_backward", f"{t_bwd * 1e3:.2f}", "course loops", f"{t_bwd_naive * 1e3:.0f}",
                  f"{t_bwd_naive / t_bwd:.0f}x faster")
    table.add_row("conv_forward", f"{t_fwd * 1e3:.2f}", "tf.nn.conv2d f64", f"{t_tf * 1e3:.2f}",
                  f"{t_fwd / t_tf:.2f}x TF's time")
    console = Console()
    console.print(table)
    console.print(f"max |numpy - tf| = {max_abs_diff_tf:.2e}; targets met: {result['targets_met']}; "
                  f"BLAS threads {blas_limit}; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    path = write_result("numpy_cnn", result)
    console.print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
