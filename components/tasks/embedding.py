"""The embedding task (FaceNet): the task plug-in of models whose registry task is ``embedding``
(``facenet_small``, ``facenet_nn4_small``).

Trainer
    Reads the examples' train split (and the eval split, held-out identities, when there is
    one) into memory and trains the served network (the Transform's preprocessing in front, like
    every Trainer model) on P x K batches (P identities, K images each,
    :class:`models.facenet.PKSampler`) with an online-mining triplet loss (semi-hard, batch-hard,
    or soft batch-hard). With held-out identities, verification (ROC AUC, best accuracy on
    balanced pairs, rank-1) is measured every ``validate_every`` epochs (``val_roc_auc``,
    ``val_accuracy``, ``val_rank1_accuracy``) and the Trainer exports the best epoch
    (``best_metric``: ``val_roc_auc`` by default). The decision threshold (distance below it =
    same person) is the one maximising accuracy on pairs of the eval split's images, or of the
    training images when there is no eval split (then it is optimistic: training people sit
    closer together than new ones). It is written to ``model_info.json`` (``Info``) and the
    Pusher copies it into the registered version's tags.

Evaluator (``components/tasks/embedding_eval.py``)
    Embeds the evaluation split (people the model never saw) and runs
    :func:`components.metrics.verification.verification_report`: 10-fold accuracy with the
    threshold chosen on the other 9 folds, ROC AUC, EER, TAR at FAR 1e-2 / 1e-3, rank-1
    identification; ROC and distance-histogram PNGs; the accuracy of the model's own threshold.

Inference
    ``prepare_image`` repeats ExampleGen's face crop (``model_info.face_crop``); the predictor
    gives each image's embedding (and, with ``face_db``, the nearest enrolled person).

The views an embedding averages (the image, its mirror with ``flip_embeddings``, centre crops
of ``tta_scales``) are chosen at training time and recorded, so the threshold, the Evaluator,
``predict``, the BulkInferrer and the ``faces`` commands all embed the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.base import ComponentError, Params
from components.tasks.base import TrainData
from components.tasks.embedding_data import embed, embedding_views, l2_normalise, load_split, raw_outputs
from components.tasks.embedding_eval import EmbeddingEvaluation

# the helpers other code imports from here (the faces commands, benchmarks, tests)
__all__ = ["EmbeddingTask", "TrainParams", "EvalParams", "Info", "embed", "embedding_views", "load_split",
           "quick_verification"]

# a centre crop's side as a fraction of the image side
Scale = Annotated[float, Field(gt=0.0, le=1.0)]

VAL_METRICS = ("val_roc_auc", "val_accuracy", "val_rank1_accuracy")


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


class Info(BaseModel):
    """A face model's own model_info.json fields (beside the common ones)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    threshold: float  # L2 distance below it: the same person
    threshold_source: Literal["eval", "train"]  # the split whose pairs chose it
    threshold_accuracy: float  # on those pairs
    threshold_roc_auc: float
    distance: Literal["L2"] = "L2"
    flip_embeddings: bool = False
    tta_scales: list[float] = Field(default_factory=lambda: [1.0])
    embedding_dim: int


# ---------------------------------------------------------------- verification on one set of pairs

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


def verifiable(labels) -> bool:
    """At least 2 identities and one with 2+ images: matched and mismatched pairs exist."""
    import numpy as np

    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    return len(counts) >= 2 and int(counts.max()) >= 2


# ---------------------------------------------------------------- training pieces

def _loss(tp: TrainParams):
    from models.facenet import TripletHardLoss, TripletSemiHardLoss

    if tp.loss == "semihard":
        return TripletSemiHardLoss(margin=tp.margin, distance_metric=tp.distance_metric)
    return TripletHardLoss(margin=tp.margin, soft=tp.loss == "soft_hard", distance_metric=tp.distance_metric)


def _pk_batches(x, y, tp: TrainParams, epochs: int, seed: int):
    """A tf.data pipeline of P x K (uint8 images, labels) batches: the sampler's index batches
    for every epoch are drawn up front (deterministic for the seed, and no Python generator in
    the training loop); optional extra augmentation; fixed options (no autotune)."""
    import numpy as np
    import tensorflow as tf

    from data.tfrecord import fixed_options
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

    return fixed_options(tf.data.Dataset.from_tensor_slices(idx).repeat().map(gather).prefetch(2)), sampler


def _validation_callback(x_ev, y_ev, tp: TrainParams, seed: int):
    import keras

    class HeldOutVerification(keras.callbacks.Callback):
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
    return HeldOutVerification()


# ---------------------------------------------------------------- the plug-in

class EmbeddingTask(EmbeddingEvaluation):
    name: ClassVar[str] = "embedding"
    examples_task: ClassVar[str] = "embedding"
    TrainParams: ClassVar[type[Params]] = TrainParams
    EvalParams: ClassVar[type[Params]] = EvalParams
    Info: ClassVar[type[BaseModel]] = Info
    blessing_metric: ClassVar[str] = "accuracy"
    default_best_metric: ClassVar[str] = "val_roc_auc"
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss", "val_loss", "eer"})

    # --------------------------------------------------------------- Trainer
    def build_kwargs(self, tc) -> dict:
        return {}  # an embedding network has no class count

    def model_classes(self, tc) -> list[str]:
        """The training identities, naturally sorted (the evaluated people should not be here)."""
        from data.identity_folders import natural_key

        ids = getattr(self, "_train_identities", None)
        if ids is None:
            ids = load_split(tc.examples, tc.params.train_split)[2]
        return sorted(set(ids), key=natural_key)

    def train_data(self, tc, model) -> TrainData:
        import numpy as np

        p, tp, log = tc.params, tc.tp, tc.logger
        x_tr, y_tr, ids_tr, _ = load_split(tc.examples, p.train_split)
        self._train_identities = ids_tr
        x_ev = y_ev = None
        if tc.has_eval:
            x_ev, y_ev, ids_ev, _ = load_split(tc.examples, p.eval_split)
            shared = sorted(set(ids_tr) & set(ids_ev))
            if shared:
                log.warning("%d identities are in both %s and %s (e.g. %s): held-out numbers will be optimistic; "
                            "split by identity (ExampleGen split_by: identity)", len(shared), p.train_split,
                            p.eval_split, shared[:3])
            if not verifiable(y_ev):
                log.warning("eval split has fewer than 2 identities (or none with 2+ images): not used for "
                            "validation")
                x_ev = y_ev = None
        has_eval = x_ev is not None
        log.info("embedding training: %d images of %d identities%s; P=%d x K=%d, %s loss (margin %g)",
                 len(x_tr), len(np.unique(y_tr)),
                 f", eval {len(x_ev)} images of {len(np.unique(y_ev))} identities" if has_eval else "",
                 tp.P, tp.K, tp.loss, tp.margin)
        ds, sampler = _pk_batches(x_tr, y_tr, tp, p.epochs, p.seed)
        if sampler.skipped:
            log.info("%d identities with too few images left out of training", len(sampler.skipped))
        return TrainData(train=ds, validation=None, steps_per_epoch=tp.steps_per_epoch,
                         images_per_epoch=tp.steps_per_epoch * tp.P * tp.K, has_eval=has_eval,
                         state={"x_train": x_tr, "y_train": y_tr, "x_eval": x_ev, "y_eval": y_ev})

    def reported_metrics(self, tc, data) -> set[str]:
        return {"loss", *VAL_METRICS} if data.has_eval else {"loss"}

    def epoch_callbacks(self, tc, data) -> list:
        s = data.state
        return [_validation_callback(s["x_eval"], s["y_eval"], tc.tp, tc.params.seed)] if data.has_eval else []

    def compile_args(self, tc, data) -> dict:
        return {"loss": _loss(tc.tp)}

    def finish(self, tc, data, model) -> dict:
        """The decision threshold, on held-out identities when there are some."""
        tp, s = tc.tp, data.state
        src, xs, ys = ("eval", s["x_eval"], s["y_eval"]) if data.has_eval else ("train", s["x_train"], s["y_train"])
        emb = embed(model, xs, flip=tp.flip_embeddings, scales=tp.tta_scales)
        thr = quick_verification(emb, ys, tp.threshold_pairs, tp.max_threshold_pairs, tc.params.seed)
        tc.logger.info("threshold %.4f chosen on %s (%s pairs, accuracy %.4f, ROC AUC %.4f)", thr["threshold"],
                       src, tp.threshold_pairs, thr["accuracy"], thr["roc_auc"])
        tc.ctx.tracker.log_metrics({"threshold": thr["threshold"], "threshold_accuracy": thr["accuracy"]})
        return {"threshold": thr["threshold"], "threshold_source": src, "threshold_accuracy": thr["accuracy"],
                "threshold_roc_auc": thr["roc_auc"], "distance": "L2", "flip_embeddings": tp.flip_embeddings,
                "tta_scales": list(tp.tta_scales), "embedding_dim": int(model.output_shape[-1])}

    # --------------------------------------------------------------- inference
    def prepare_image(self, image, info):
        """ExampleGen's face crop (``info.face_crop``, when it cropped faces), then the resize."""
        fc = info.face_crop
        if fc:
            from data.face_crop import crop_face

            found = crop_face(image, margin=fc.get("margin", 0.2), min_face=fc.get("min_face", 0.2))
            if not found.found and fc.get("on_miss") == "bad":
                raise ValueError("no face found (the model was trained on detected faces only)")
            image = found.image
        return super().prepare_image(image, info)

    def predictor(self, model, info, face_db=None, model_version: str | None = None, batch_size: int = 64, **_):
        """Rows ``{key, embedding_dim, norm, embedding}`` (``norm``: of the network's raw output on
        the image itself; the embedding is the recorded views' normalised average, rounded to 6
        decimals). With ``face_db`` (a faces database file, ``pipeline faces enroll``) also the
        nearest enrolled ``identity``, its ``distance``, the model's ``threshold`` and ``match``
        (distance under it). ``model_version``, when given, must be the database's."""
        import numpy as np

        flip, scales = embedding_views(info)
        single = not flip and scales == [1.0]
        threshold = info.get("threshold")
        if face_db is not None and not Path(face_db).exists():
            from components.predict import PredictError

            raise PredictError(f"face database {face_db} does not exist: enrol someone first (faces enroll)")

        def predict(images, keys):
            x = np.asarray(images, np.uint8)
            raw = raw_outputs(model, x, batch_size)
            # one view (the image itself): what embed computes, without a second forward pass
            emb = l2_normalise(l2_normalise(raw)) if single else embed(model, x, batch_size, flip, scales)
            rows = [{"key": k, "embedding_dim": int(e.shape[0]), "norm": round(float(np.linalg.norm(r)), 6),
                     "embedding": [round(float(v), 6) for v in e]} for k, r, e in zip(keys, raw, emb)]
            if face_db is not None:
                from data.face_db import FaceDB

                with FaceDB(face_db) as db:
                    for row, e in zip(rows, emb):
                        who, dist = db.nearest(e, model_version=model_version)
                        row.update({"identity": who, "distance": round(dist, 6) if who is not None else None,
                                    "threshold": threshold,
                                    "match": bool(who is not None and threshold is not None and dist < threshold)})
            return rows
        return predict

    def format_row(self, row: dict) -> list[str]:
        if "identity" not in row:
            return [f"embedding of {row['embedding_dim']} numbers, norm {row['norm']:.4f}"]
        who, d, t = row["identity"], row["distance"], row["threshold"]
        if who is None:
            return ["nobody is enrolled in the face database"]
        if t is None:
            return [f"nearest: {who} (distance {d:.4f}; the model has no threshold)"]
        if row["match"]:
            return [f"{who} (distance {d:.4f} < threshold {t:.4f})"]
        return [f"not in the database (nearest: {who}, distance {d:.4f} >= threshold {t:.4f})"]
