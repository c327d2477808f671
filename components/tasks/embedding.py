"""The embedding task (FaceNet): the Trainer's and the Evaluator's plug-in for models whose
registry task is ``embedding`` (``facenet_small``, ``facenet_nn4_small``).

Trainer (:func:`train`)
    Reads the examples' train split (and the eval split, held-out identities, when there is
    one) into memory, builds the registered network with the Transform's preprocessing in
    front (the served model takes raw uint8 images, like every Trainer model), and trains it
    on P x K batches (P identities, K images each, :class:`models.facenet.PKSampler`) with an
    online-mining triplet loss (semi-hard, batch-hard, or soft batch-hard). Per-epoch metrics
    go to the tracker; ``keras.callbacks.BackupAndRestore`` keeps a checkpoint in the work
    folder so a killed run resumes. With an eval split, held-out verification (ROC AUC, best
    accuracy on balanced pairs, rank-1) is measured every ``validate_every`` epochs and the
    best epoch is exported (``best_metric``: ``val_roc_auc`` by default). The decision
    threshold (distance below it = same person) is the one maximising accuracy on pairs of
    the eval split's images, or of the training images when there is no eval split (then it
    is optimistic: training people sit closer together than new ones). It is written to
    ``model_info.json`` and the Pusher copies it into the registered version's tags.

Evaluator (:func:`evaluate`)
    Embeds the evaluation split (people the model never saw) and runs
    :func:`components.metrics.verification.verification_report`: 10-fold accuracy with the
    threshold chosen on the other 9 folds (mean, std), ROC AUC, EER, TAR at FAR 1e-2 / 1e-3
    (or why not available), the threshold, rank-1 identification with one enrolled image per
    person; ROC and distance-histogram PNGs; a blessing in the Evaluator's format.

Pairs (``EvalParams.pair_mode``): ``all`` (every pair: mostly mismatched, so accuracy is
inflated: "always different" scores ~0.9), ``sampled`` (``num_pairs`` with
``matched_fraction`` matched, seeded; without ``num_pairs``: every matched pair plus as many
mismatched ones, the LFW-style balanced protocol) or ``pairs_file`` (an LFW ``pairs.txt``;
images are matched to records by key ``<name>/<name>_<NNNN>``). With ``sampled`` or
``pairs_file`` the ROC AUC / EER on all pairs are reported too (``*_all_pairs``).
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from components.base import ComponentError, Params

# a centre crop's side as a fraction of the image side
Scale = Annotated[float, Field(gt=0.0, le=1.0)]

VAL_METRICS = ("val_roc_auc", "val_accuracy", "val_rank1_accuracy")
LOWER_IS_BETTER = ("eer",)


class TrainParams(Params):
    P: int = Field(8, ge=2, description="identities per batch")
    K: int = Field(4, ge=2, description="images per identity per batch")
    margin: float = Field(0.5, gt=0)
    loss: Literal["semihard", "hard", "soft_hard"] = "semihard"
    distance_metric: Literal["L2", "squared-L2", "angular"] = "L2"
    steps_per_epoch: int = Field(20, ge=1)
    # identities with fewer than K images: sampled with replacement, or left out
    small_identities: Literal["replace", "skip"] = "replace"
    # Extra augmentation in the input pipeline (models.augmentation keys, on 0-255 pixels), on
    # top of the Transform's (which lives inside the model). None: the Transform's only.
    augmentation: dict[str, Any] | None = None
    # Embed each image and its mirror image and average (threshold choice, validation, and
    # recorded in model_info.json so the Evaluator and `faces` commands do the same).
    flip_embeddings: bool = False
    # Multi-scale views: each image is also embedded after a centre crop of these fractions of
    # its side (resized back), and the views' embeddings are averaged (x2 with flip_embeddings).
    # [1.0, 0.9, 0.8] makes the distance less sensitive to how far the camera was.
    # Recorded in model_info.json like flip_embeddings.
    tta_scales: list[Scale] = Field(default_factory=lambda: [1.0], min_length=1)
    threshold_pairs: Literal["balanced", "all"] = "balanced"
    max_threshold_pairs: int = Field(200_000, ge=10)
    validate_every: int = Field(1, ge=1)  # epochs between held-out checks (with an eval split)


class EvalParams(Params):
    pair_mode: Literal["all", "sampled", "pairs_file"] = "sampled"
    num_pairs: int | None = Field(None, ge=10)  # sampled: default every matched pair x 2 (balanced)
    matched_fraction: float = Field(0.5, ge=0.0, le=1.0)
    pairs_file: str | None = None
    pairs_ext: str = "jpg"
    n_folds: int = Field(10, ge=2)
    seed: int = 0
    fars: list[float] = Field(default_factory=lambda: [1e-2, 1e-3])
    flip: bool | None = None  # None: as the model was trained (model_info.flip_embeddings)
    tta_scales: list[Scale] | None = Field(None, min_length=1)  # None: as the model was trained (model_info.tta_scales)
    batch_size: int = Field(64, ge=1)


# ---------------------------------------------------------------- data

def load_split(examples: Path, split: str, image_size) -> tuple:
    """(uint8 images (N, H, W, 3), int labels (N,), identity names, keys) of one split."""
    import numpy as np
    import tensorflow as tf

    from data.tfrecord import split_files

    files = split_files(examples, split)
    if not files:
        raise ComponentError(f"no TFRecords for split {split!r} in {examples}")
    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            "image/identity": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "image/key": tf.io.FixedLenFeature([], tf.string, default_value="")}
    h, w = image_size

    def parse(x):
        f = tf.io.parse_single_example(x, spec)
        img = tf.ensure_shape(tf.io.decode_png(f["image/encoded"], channels=3), [h, w, 3])
        return img, f["image/class/label"], f["image/identity"], f["image/key"]

    xs, ys, ids, keys = [], [], [], []
    for img, lab, ident, key in tf.data.TFRecordDataset(files).map(parse).batch(256):
        xs.append(img.numpy())
        ys.append(lab.numpy())
        ids += [i.decode() for i in ident.numpy()]
        keys += [k.decode() for k in key.numpy()]
    x, y = np.concatenate(xs), np.concatenate(ys)
    if (y < 0).any():  # records without a label: number the identities
        names = sorted(set(ids))
        y = np.array([names.index(i) for i in ids], dtype=np.int64)
    return x, y.astype(np.int64), ids, keys


def embed(model, images, batch_size: int = 64, flip: bool = False, scales=(1.0,)):
    """L2-normalised embeddings of uint8 images, averaged over views: a centre crop of each
    fraction in ``scales`` (1.0 = the image itself), and with ``flip`` also their mirrors."""
    import numpy as np

    from models.tta import centre_crop

    def run(x):
        out = [np.asarray(model(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        out = np.concatenate(out).astype(np.float64) if out else np.zeros((0, 1))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    e = 0.0
    for s in scales or (1.0,):
        view = images if float(s) == 1.0 else centre_crop(images, s).numpy()
        e = e + run(view)
        if flip:
            e = e + run(np.ascontiguousarray(view[:, :, ::-1]))
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def embedding_views(info: dict, flip: bool | None = None, scales=None) -> tuple[bool, list[float]]:
    """The views a model's embeddings are averaged over, as recorded in its model_info.json
    (``flip_embeddings``, ``tta_scales``), unless overridden."""
    flip = bool(info.get("flip_embeddings")) if flip is None else flip
    scales = list(scales if scales is not None else info.get("tta_scales") or [1.0])
    return flip, scales


def _pairs(labels, mode: str, max_pairs: int, seed: int):
    """Index pairs for threshold choice: balanced (all matched + as many mismatched) or all,
    capped at ``max_pairs``."""
    import numpy as np

    from components.metrics.verification import generate_pairs

    labels = np.asarray(labels)
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1]
    n_pos = int((counts * (counts - 1) // 2).sum())
    n_all = n * (n - 1) // 2
    if mode == "balanced":
        return generate_pairs(labels, "sampled", num_pairs=min(2 * n_pos, max_pairs), seed=seed)
    if n_all > max_pairs:
        return generate_pairs(labels, "sampled", num_pairs=max_pairs,
                              matched_fraction=n_pos / max(n_all, 1), seed=seed)
    return generate_pairs(labels, "all")


def quick_verification(emb, labels, threshold_pairs: str = "balanced", max_pairs: int = 200_000,
                       seed: int = 0) -> dict:
    """ROC AUC, best-threshold accuracy and the threshold on one set of pairs, plus rank-1."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from components.metrics.verification import best_threshold, pair_distances, rank1_identification

    i, j, same = _pairs(labels, threshold_pairs, max_pairs, seed)
    if same.all() or not same.any():
        raise ComponentError("verification needs matched and mismatched pairs: at least 2 identities, "
                             "one of them with 2+ images")
    d = pair_distances(emb[i], emb[j])
    t, acc = best_threshold(d, same)
    out = {"roc_auc": float(roc_auc_score(same, -d)), "accuracy": acc, "threshold": t, "num_pairs": int(len(d))}
    if np.unique(labels).size < len(labels):
        out["rank1_accuracy"] = rank1_identification(emb, labels)["rank1_accuracy"]
    return out


# ---------------------------------------------------------------- training

def _loss(tp: TrainParams):
    from models.facenet import TripletHardLoss, TripletSemiHardLoss

    if tp.loss == "semihard":
        return TripletSemiHardLoss(margin=tp.margin, distance_metric=tp.distance_metric)
    return TripletHardLoss(margin=tp.margin, soft=tp.loss == "soft_hard", distance_metric=tp.distance_metric)


def _pk_batches(x, y, tp: TrainParams, epochs: int, seed: int):
    """A tf.data pipeline of P x K (uint8 images, labels) batches: the sampler's index batches
    for every epoch are drawn up front (deterministic for the seed, and no Python generator in
    the training loop); optional extra augmentation; autotune off (DESIGN.md)."""
    import numpy as np
    import tensorflow as tf

    from models.facenet import PKSampler

    try:
        sampler = PKSampler(y, tp.P, tp.K, seed=seed, small=tp.small_identities)
    except ValueError as e:
        raise ComponentError(f"Trainer (embedding): {e}") from None
    it = iter(sampler)
    idx = np.stack([next(it) for _ in range(tp.steps_per_epoch * epochs)])
    images, labels = tf.constant(x), tf.constant(y.astype(np.int32))
    aug = None
    if tp.augmentation is not None:
        from models.augmentation import build_augmentation

        try:
            aug = build_augmentation(tp.augmentation, x.shape[1:])
        except (TypeError, ValueError) as e:
            raise ComponentError(f"Trainer task_params.augmentation: {e}") from None

    def gather(i):
        xb = tf.gather(images, i)
        if aug is not None:
            xb = tf.cast(tf.clip_by_value(tf.round(aug(tf.cast(xb, tf.float32), training=True)), 0, 255), tf.uint8)
        return xb, tf.gather(labels, i)

    ds = tf.data.Dataset.from_tensor_slices(idx).repeat().map(gather).prefetch(2)
    opts = tf.data.Options()
    opts.autotune.enabled = False
    opts.deterministic = True
    return ds.with_options(opts), sampler


def _validation_callback(ctx, x_ev, y_ev, tp: TrainParams, seed: int):
    import keras

    class CB(keras.callbacks.Callback):
        """Held-out verification at epoch ends, added to the logs (before the tracker and
        best-epoch callbacks read them)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None or (epoch + 1) % tp.validate_every:
                return
            emb = embed(self.model, x_ev, flip=tp.flip_embeddings, scales=tp.tta_scales)
            r = quick_verification(emb, y_ev, "balanced", tp.max_threshold_pairs, seed)
            logs["val_roc_auc"], logs["val_accuracy"] = r["roc_auc"], r["accuracy"]
            if "rank1_accuracy" in r:
                logs["val_rank1_accuracy"] = r["rank1_accuracy"]
    return CB()


def train(ctx, inputs, params, tp: TrainParams) -> dict:
    import keras
    import numpy as np

    from components.trainer import (_KeepBest, _lr_callback, _optimizer, _TrackerCallback, build_full_model,
                                    kill_safe_backup, load_init_weights)

    examples = Path(inputs["examples"])
    schema = json.loads((examples / "schema.json").read_text())
    transform_cfg = json.loads((Path(inputs["transform"]) / "transform.json").read_text())
    image_size = tuple(schema["image_size"])
    keras.utils.set_random_seed(params.seed)
    if not schema["splits"].get(params.train_split):
        raise ComponentError(f"Trainer: split {params.train_split!r} is empty or missing in {examples}")
    x_tr, y_tr, ids_tr, _ = load_split(examples, params.train_split, image_size)
    has_eval = bool(params.eval_split and schema["splits"].get(params.eval_split))
    x_ev = y_ev = None
    if has_eval:
        x_ev, y_ev, ids_ev, _ = load_split(examples, params.eval_split, image_size)
        shared = sorted(set(ids_tr) & set(ids_ev))
        if shared:
            ctx.logger.warning("%d identities are in both %s and %s (e.g. %s): held-out numbers will be optimistic; "
                               "split by identity (ExampleGen split_by: identity)", len(shared), params.train_split,
                               params.eval_split, shared[:3])
        if len(np.unique(y_ev)) < 2:
            ctx.logger.warning("eval split has fewer than 2 identities: not used for validation")
            has_eval = False
    ctx.logger.info("embedding training: %d images of %d identities%s; P=%d x K=%d, %s loss (margin %g)",
                    len(x_tr), len(np.unique(y_tr)),
                    f", eval {len(x_ev)} images of {len(np.unique(y_ev))} identities" if has_eval else "",
                    tp.P, tp.K, tp.loss, tp.margin)

    ds, sampler = _pk_batches(x_tr, y_tr, tp, params.epochs, params.seed)
    if sampler.skipped:
        ctx.logger.info("%d identities with too few images left out of training", len(sampler.skipped))
    model, core = build_full_model(params, transform_cfg, None)
    if "base_model" in inputs:
        load_init_weights(core, str(Path(inputs["base_model"]) / "model.keras"), ctx.logger)
    elif params.init_weights:
        load_init_weights(core, params.init_weights, ctx.logger)
    model.compile(optimizer=_optimizer(params, params.learning_rate), loss=_loss(tp),
                  steps_per_execution=params.steps_per_execution)

    callbacks = [kill_safe_backup(str(ctx.work_dir / "backup-embedding"))]
    keep_best = None
    monitor = "loss"
    if has_eval:
        callbacks.append(_validation_callback(ctx, x_ev, y_ev, tp, params.seed))
        monitor = params.best_metric if params.best_metric in VAL_METRICS else "val_roc_auc"
        keep_best = _KeepBest.make(monitor)
    callbacks.append(_TrackerCallback.make(ctx, "train"))
    if keep_best is not None:
        callbacks.append(keep_best)
    sched = _lr_callback(params, params.learning_rate, params.epochs)
    if sched is not None:
        callbacks.append(sched)
    if params.early_stopping:
        es = params.early_stopping
        es_monitor = es.monitor if es.monitor in VAL_METRICS and has_eval else "loss"
        callbacks.append(keras.callbacks.EarlyStopping(monitor=es_monitor, patience=es.patience,
                                                       min_delta=es.min_delta,
                                                       mode="min" if es_monitor == "loss" else "max"))
    t0 = time.time()
    hist = model.fit(ds, epochs=params.epochs, steps_per_epoch=tp.steps_per_epoch, callbacks=callbacks, shuffle=False,
                     verbose=2 if ctx.show_progress else 0)
    train_seconds = time.time() - t0
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    epochs_run = len(history.get("loss", []))
    best_epoch = (keep_best.best_epoch + 1) if keep_best is not None and keep_best.best_epoch >= 0 else epochs_run

    # The decision threshold, on held-out identities when there are some.
    src, xs, ys = ("eval", x_ev, y_ev) if has_eval else ("train", x_tr, y_tr)
    emb = embed(model, xs, flip=tp.flip_embeddings, scales=tp.tta_scales)
    thr = quick_verification(emb, ys, tp.threshold_pairs, tp.max_threshold_pairs, params.seed)
    ctx.logger.info("threshold %.4f chosen on %s (%s pairs, accuracy %.4f, ROC AUC %.4f)", thr["threshold"],
                    src, tp.threshold_pairs, thr["accuracy"], thr["roc_auc"])

    out = ctx.outputs["model"]
    model.save(out / "model.keras")
    with contextlib.redirect_stdout(io.StringIO()):  # export prints its endpoints
        model.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
    n_seen = epochs_run * tp.steps_per_epoch * tp.P * tp.K
    info = {"model": params.model, "task": "embedding", "classes": sorted(set(ids_tr), key=_natural),
            "image_size": list(image_size), "threshold": thr["threshold"], "threshold_source": src,
            "threshold_accuracy": thr["accuracy"], "threshold_roc_auc": thr["roc_auc"],
            "distance": "L2", "flip_embeddings": tp.flip_embeddings, "tta_scales": tp.tta_scales,
            # ExampleGen's face detection/cropping: serving (faces commands, img_to_encoding) repeats it
            "face_crop": schema.get("face_crop"),
            "embedding_dim": int(model.output_shape[-1]), "task_params": tp.model_dump(mode="json"),
            "hyperparameters": params.hyperparameters, "params": int(model.count_params()),
            "epochs_run": epochs_run, "best_epoch": int(best_epoch), "best_metric": monitor if keep_best else None,
            "best_value": (float(keep_best.mode * keep_best.best) if keep_best and keep_best.best_epoch >= 0 else None),
            "train_seconds": train_seconds, "images_per_second": n_seen / max(train_seconds, 1e-9)}
    (out / "model_info.json").write_text(json.dumps(info, indent=2))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    _plot_history(history, out / "training_curves.png")
    ctx.tracker.log_artifact(out / "training_curves.png", "plots")
    ctx.tracker.log_artifact(out / "model_info.json")
    ctx.tracker.log_metrics({"threshold": thr["threshold"], "threshold_accuracy": thr["accuracy"]})
    ctx.logger.info("trained %s: %d epochs in %.1fs (%.0f images/s), best epoch %d", params.model, epochs_run,
                    train_seconds, info["images_per_second"], best_epoch)
    final = {f"final_{k}": v[-1] for k, v in history.items() if v}
    return {**final, "best_epoch": best_epoch, "threshold": thr["threshold"], "train_seconds": train_seconds,
            "images_per_second": info["images_per_second"]}


def _natural(name: str):
    from data.identity_folders import natural_key

    return natural_key(name)


def _plot_history(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [k for k in VAL_METRICS if history.get(k)]
    fig, axes = plt.subplots(1, 2 if vals else 1, figsize=(10 if vals else 5, 3.5))
    axes = list(axes) if vals else [axes]
    axes[0].plot(range(1, len(history["loss"]) + 1), history["loss"])
    axes[0].set_title("triplet loss (train)")
    axes[0].set_xlabel("epoch")
    if vals:
        for k in vals:
            axes[1].plot(range(1, len(history[k]) + 1), history[k], label=k)
        axes[1].set_title("held-out verification")
        axes[1].set_xlabel("epoch")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- evaluation

def _pairs_from_file(tp: EvalParams, keys: list[str], logger):
    import numpy as np

    from data.lfw_pairs import parse_pairs

    try:
        pf = parse_pairs(tp.pairs_file)
    except (OSError, ValueError) as e:
        raise ComponentError(f"Evaluator task_params.pairs_file: {e}") from None
    index = {k.rsplit(".", 1)[0]: n for n, k in enumerate(keys)}
    i, j, same, missing = [], [], [], 0
    for p in pf.pairs:
        a = index.get(f"{p.name1}/{p.name1}_{p.index1:04d}")
        b = index.get(f"{p.name2}/{p.name2}_{p.index2:04d}")
        if a is None or b is None:
            missing += 1
            continue
        i.append(a)
        j.append(b)
        same.append(p.same)
    if missing:
        logger.warning("%d of %d pairs of %s name images not in the evaluated split: left out", missing,
                       len(pf.pairs), tp.pairs_file)
    if not i:
        raise ComponentError(f"no pair of {tp.pairs_file} has both images in the evaluated split")
    return (np.array(i), np.array(j), np.array(same, dtype=bool)), missing


def _baseline(params, images, labels, tp: EvalParams, pairs, ctx):
    """The registered ``baseline_model@alias``'s report on the same images and pairs, or None."""
    from components.metrics.verification import verification_report
    from components.model_uri import load_baseline

    uri = f"models:/{params.baseline_model}@{params.baseline_alias}"
    baseline = load_baseline(params.baseline_model, params.baseline_alias, ctx.tracking_uri, ctx.logger)
    if baseline is None:
        return None
    model, info, _ = baseline
    if tuple(info.get("image_size", ())) != tuple(images.shape[1:3]):
        ctx.logger.info("baseline %s takes %s images, not %s: not compared", uri, info.get("image_size"),
                        list(images.shape[1:3]))
        return None
    flip, scales = embedding_views(info, tp.flip, tp.tta_scales)
    emb = embed(model, images, tp.batch_size, flip, scales)
    r = verification_report(emb, labels, pairs=pairs, pair_mode="all" if pairs is None else "sampled",
                            n_folds=tp.n_folds, seed=tp.seed, fars=tuple(tp.fars))
    flat = _flat(r)
    return {"model": params.baseline_model, "alias": params.baseline_alias, **flat}


def _flat(report: dict) -> dict:
    flat = {"accuracy": report["accuracy_mean"], "accuracy_std": report["accuracy_std"],
            "roc_auc": report["roc_auc"], "eer": report["eer"], "threshold": report["threshold"],
            "num_pairs": float(report["num_pairs"])}
    if "rank1_accuracy" in report:
        flat["rank1_accuracy"] = report["rank1_accuracy"]
    for far, v in report["tar_at_far"].items():
        if v.get("tar") is not None:
            flat[f"tar_at_far_{far}"] = v["tar"]
    for k in ("roc_auc_all_pairs", "eer_all_pairs"):
        if k in report:
            flat[k] = report[k]
    return flat


def evaluate(ctx, inputs, params, tp: EvalParams) -> dict:
    import numpy as np

    from components.metrics.verification import generate_pairs, roc_metrics, verification_report
    from models.preprocessing import load_model

    model_dir, examples = Path(inputs["model"]), Path(inputs["examples"])
    info = json.loads((model_dir / "model_info.json").read_text())
    schema = json.loads((examples / "schema.json").read_text())
    split = params.split if schema["splits"].get(params.split) else "eval"
    if not schema["splits"].get(split):
        raise ComponentError(f"Evaluator: split {params.split!r} (and 'eval') empty or missing in {examples}")
    if list(schema["image_size"]) != list(info["image_size"]):
        raise ComponentError(f"Evaluator: examples are {schema['image_size']}, the model takes {info['image_size']}")
    images, labels, idents, keys = load_split(examples, split, tuple(schema["image_size"]))
    seen = sorted(set(idents) & set(info.get("classes", [])))
    if seen:
        ctx.logger.warning("%d of the %d evaluated identities were seen in training (e.g. %s): the numbers are "
                           "not for unseen people", len(seen), len(set(idents)), seen[:3])
    model = load_model(model_dir / "model.keras")
    flip, scales = embedding_views(info, tp.flip, tp.tta_scales)
    t0 = time.perf_counter()
    emb = embed(model, images, tp.batch_size, flip, scales)
    embed_s = time.perf_counter() - t0

    missing_pairs = 0
    if tp.pair_mode == "pairs_file":
        if not tp.pairs_file:
            raise ComponentError("Evaluator task_params: pair_mode pairs_file needs pairs_file")
        pairs, missing_pairs = _pairs_from_file(tp, keys, ctx.logger)
    elif tp.pair_mode == "sampled":
        n_pos = int(sum(c * (c - 1) // 2 for c in np.unique(labels, return_counts=True)[1]))
        num = tp.num_pairs or 2 * n_pos
        pairs = generate_pairs(labels, "sampled", num_pairs=num, matched_fraction=tp.matched_fraction, seed=tp.seed)
    else:
        pairs = None
    out_eval, out_bless = ctx.outputs["evaluation"], ctx.outputs["blessing"]
    try:
        report = verification_report(emb, labels, pairs=pairs, n_folds=tp.n_folds, seed=tp.seed,
                                     fars=tuple(tp.fars), plot_dir=out_eval)
    except ValueError as e:
        raise ComponentError(f"Evaluator: {e}") from None
    report["pair_mode"] = tp.pair_mode
    if pairs is not None and len(np.unique(labels)) > 1:  # the ROC on every pair too
        i, j, same = generate_pairs(labels, "all")
        if same.any():
            d = np.linalg.norm(emb[i] - emb[j], axis=1)
            r_all = roc_metrics(d, same, fars=tuple(tp.fars))
            report["roc_auc_all_pairs"], report["eer_all_pairs"] = r_all["roc_auc"], r_all["eer"]
    if missing_pairs:
        report["pairs_missing"] = missing_pairs
    report.pop("fold_thresholds", None)
    report["plots"] = {k: Path(v).name for k, v in report.get("plots", {}).items()}
    report.update({"split": split, "num_images": int(len(images)), "num_identities": int(len(set(idents))),
                   "flip_embeddings": flip, "tta_scales": scales, "model_threshold": info.get("threshold"),
                   "identities_seen_in_training": len(seen),
                   # views per second: each image is embedded len(scales) x (2 with flip) times
                   "embed_images_per_second": len(images) * len(scales) * (2 if flip else 1) / max(embed_s, 1e-9),
                   "embed_faces_per_second": len(images) / max(embed_s, 1e-9)})
    if info.get("threshold") is not None:  # how the threshold the model ships with does here
        from components.metrics.verification import pair_distances

        pi, pj, ps = pairs if pairs is not None else generate_pairs(labels, "all")
        d = pair_distances(emb[pi], emb[pj])
        report["accuracy_at_model_threshold"] = float(np.mean((d < info["threshold"]) == ps))
    flat = _flat(report)

    baseline = None
    if params.baseline_model:
        baseline = _baseline(params, images, labels, tp, pairs, ctx)
        if baseline is not None:
            report["baseline"] = baseline
    from components.blessing import bless, write_blessing

    metric = params.blessing_metric
    blessed, reasons = bless(flat, params.thresholds, metric, baseline, max_regression=params.max_regression,
                             baseline_name=f"baseline {params.baseline_model}@{params.baseline_alias}",
                             lower_is_better=frozenset(LOWER_IS_BETTER))
    (out_eval / "metrics.json").write_text(json.dumps(report, indent=2, default=float))
    write_blessing(out_bless, blessed, reasons, metric, flat.get(metric), baseline)
    ctx.tracker.log_artifact(out_eval / "metrics.json")
    for png in ("roc.png", "distance_histogram.png"):
        ctx.tracker.log_artifact(out_eval / png, "plots")
    ctx.tracker.log_artifact(out_bless / "blessing.json")
    ctx.tracker.set_tags({"blessed": str(blessed).lower()})
    ctx.logger.info("%s on %d unseen images (%d people, %d %s pairs): %d-fold accuracy %.4f +- %.4f, ROC AUC %.4f, "
                    "EER %.4f, rank-1 %s -> %s%s", info["model"], len(images), len(set(idents)), report["num_pairs"],
                    tp.pair_mode, tp.n_folds, report["accuracy_mean"], report["accuracy_std"], report["roc_auc"],
                    report["eer"], f"{report['rank1_accuracy']:.4f}" if "rank1_accuracy" in report else "n/a",
                    "BLESSED" if blessed else "NOT blessed", (": " + "; ".join(reasons)) if reasons else "")
    return {**flat, "blessed": float(blessed)}
