"""The Evaluator's blessing, shared by every task: thresholds met, and not worse than the
registered baseline on the same data. Metrics in `lower_is_better` (e.g. EER) compare the other way."""
from __future__ import annotations

import json
from pathlib import Path


def bless(metrics: dict, thresholds: dict, metric: str, baseline: dict | None = None, *,
          max_regression: float = 0.0, baseline_name: str = "baseline",
          lower_is_better: frozenset[str] = frozenset()) -> tuple[bool, list[str]]:
    """(blessed, reasons it is not). `metrics` is flat: metric name -> number."""
    reasons = []
    for k, thr in thresholds.items():
        v = metrics.get(k)
        low = k in lower_is_better
        if v is None:
            reasons.append(f"threshold on unknown metric {k!r} (known: {', '.join(sorted(metrics))})")
        elif (v > thr) if low else (v < thr):
            reasons.append(f"{k} {v:.4f} {'>' if low else '<'} threshold {thr}")
    if baseline is not None and metrics.get(metric) is not None and baseline.get(metric) is not None:
        m, bm = metrics[metric], baseline[metric]
        worse = (m > bm + max_regression) if metric in lower_is_better else (m < bm - max_regression)
        if worse:
            reasons.append(f"{metric} {m:.4f} worse than {baseline_name} ({bm:.4f})")
    return not reasons, reasons


def write_blessing(out_dir: Path, blessed: bool, reasons: list[str], metric: str, value, baseline, **extra) -> Path:
    path = Path(out_dir) / "blessing.json"
    path.write_text(json.dumps({"blessed": blessed, "reasons": reasons, "metric": metric, "value": value,
                                "baseline": baseline, **extra}, indent=2, default=float))
    return path
