"""ResNet-50 from scratch on the real SIGNS images through the pipeline (configs/resnet_signs.yaml),
and optionally Sign Language Digits with transfer learning (configs/sign_digits.yaml).

    python -m benchmarks resnet            # SIGNS: accuracy (with/without test-time crops), epochs, wall time, curve
    python -m benchmarks resnet --digits   # also Sign Language Digits (fine-tuned from the SIGNS model)

Runs the pipeline CLI in a subprocess on a temporary root and tracking DB, so the numbers are
what a user gets from `python -m pipeline run`. Records the machine's load average, since
training time on a shared 2-core machine depends on it."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import PROJECT_ROOT, RESULTS_DIR, resolve_dataset, write_result

CONFIGS = PROJECT_ROOT / "configs"


def _source_path(config: str) -> Path:
    """The data folder of a config's ExampleGen (its ../datasets/... read from DATASETS when the
    project has no datasets/ folder)."""
    data = yaml.safe_load((CONFIGS / config).read_text())
    src = next(c["params"]["source"] for c in data["components"].values() if c.get("type") == "ExampleGen")
    return resolve_dataset(src["path"], CONFIGS)


def _prepare(config: str, work: Path) -> Path:
    data = yaml.safe_load((CONFIGS / config).read_text())
    data["root"] = str(work / "root")
    data["tracking"]["uri"] = f"sqlite:///{work / 'mlflow.db'}"
    for comp in data["components"].values():
        src = comp.get("params", {}).get("source")
        if src and src.get("path"):
            src["path"] = str(resolve_dataset(src["path"], CONFIGS))
    out = work / config
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _run(config_path: Path, extra: list[str]) -> tuple[float, str]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config_path), "--quiet", *extra],
                       cwd=PROJECT_ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.time() - t0, r.stdout


def _artifact(root: Path, component: str, output: str) -> Path:
    dirs = [d for d in (root / component).iterdir() if not d.name.startswith(".")]
    newest = max(dirs, key=lambda d: json.loads((d / "metadata.json").read_text())["finished"])
    return newest / output


def _report(root: Path, train: str, evaluate: str, name: str) -> dict:
    model = _artifact(root, train, "model")
    info = json.loads((model / "model_info.json").read_text())
    hist = json.loads((model / "history.json").read_text())
    metrics = json.loads((_artifact(root, evaluate, "evaluation") / "metrics.json").read_text())
    curve = RESULTS_DIR / f"{name}_training_curves.png"
    shutil.copy(model / "training_curves.png", curve)
    out = {"test_accuracy": metrics["accuracy"], "test_examples": metrics["num_examples"],
           "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
           "train_seconds": info["train_seconds"], "train_images_per_second": info["images_per_second"],
           "val_accuracy_curve": [round(v, 4) for v in hist.get("val_accuracy", [])],
           "train_accuracy_curve": [round(v, 4) for v in hist.get("accuracy", [])],
           "curve_png": str(curve.relative_to(PROJECT_ROOT))}
    if "test_time_augmentation" in metrics:
        out["test_time_augmentation"] = metrics["test_time_augmentation"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks resnet", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", action="store_true", help="also run configs/sign_digits.yaml")
    ap.add_argument("--epochs", type=int, help="override the SIGNS Trainer's epochs")
    args = ap.parse_args(argv)
    data = _source_path("resnet_signs.yaml")
    if not data.exists():
        print(f"skipped: {data} not found")
        return {}
    work = Path(tempfile.mkdtemp(prefix="bench_resnet_"))
    result: dict = {"load_average_before": os.getloadavg()}
    cfg = _prepare("resnet_signs.yaml", work)
    extra = ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
    wall, _ = _run(cfg, extra)
    result["signs"] = {"pipeline_wall_seconds": wall, **_report(work / "root", "train", "evaluate", "resnet_signs")}
    print(json.dumps(result["signs"], indent=2))
    if args.digits:
        cfg = _prepare("sign_digits.yaml", work)
        # fine-tune from the model just trained (the registry's champion only exists if it was blessed)
        donor = _artifact(work / "root", "train", "model") / "model.keras"
        wall, _ = _run(cfg, ["--set", f"digits_train.init_weights={donor}"])
        result["digits"] = {"pipeline_wall_seconds": wall,
                            **_report(work / "root", "digits_train", "digits_eval", "sign_digits")}
        print(json.dumps(result["digits"], indent=2))
    result["load_average_after"] = os.getloadavg()
    path = write_result("resnet", result)
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
