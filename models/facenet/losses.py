"""Triplet losses.

* :func:`triplet_loss` -- the course's graded function: ``y_pred = [anchor, positive,
  negative]`` encodings, loss = sum over the batch of max(||a-p||^2 - ||a-n||^2 + alpha, 0).
* :class:`TripletSemiHardLoss`, :class:`TripletHardLoss` -- online-mining losses with exactly
  the semantics of the discontinued tensorflow-addons losses of the same names (TFA 0.23):
  ``y_true`` integer labels (B,) or (B, 1), ``y_pred`` embeddings (B, D). TFA fails to import
  under Keras 3, so they are re-implemented here with ``keras.ops`` (graph-mode safe) and
  checked against values TFA computed (``reference/tfa_triplet_refs.json``).

TFA's semi-hard loss tiles the (B, B) distance matrix to (B*B, B); this version broadcasts a
(B, B, B) [anchor, positive, negative] cube instead -- the same numbers, clearer indexing.
"""
from __future__ import annotations

import keras
from keras import ops

DISTANCE_METRICS = ("L2", "squared-L2", "angular")


def triplet_loss(y_true, y_pred, alpha: float = 0.2):
    """The course's triplet loss. ``y_true`` is unused (Keras' loss signature)."""
    anchor, positive, negative = y_pred[0], y_pred[1], y_pred[2]
    pos_dist = ops.sum(ops.square(anchor - positive), axis=-1)
    neg_dist = ops.sum(ops.square(anchor - negative), axis=-1)
    basic_loss = pos_dist - neg_dist + alpha
    return ops.sum(ops.maximum(basic_loss, 0.0))


def _off_diagonal(n, dtype):
    return ops.ones((n, n), dtype=dtype) - ops.eye(n, dtype=dtype)


def pairwise_distance(embeddings, squared: bool = False):
    """TFA's ``pairwise_distance``: ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j, clamped at 0; the
    sqrt gets 1e-16 added where the squared distance is 0 (a finite gradient) and those
    entries, and the diagonal, are set to exactly 0."""
    sq = ops.sum(ops.square(embeddings), axis=1, keepdims=True)
    d2 = sq + ops.transpose(sq) - 2.0 * ops.matmul(embeddings, ops.transpose(embeddings))
    d2 = ops.maximum(d2, 0.0)
    error_mask = ops.cast(ops.less_equal(d2, 0.0), d2.dtype)
    d = d2 if squared else ops.sqrt(d2 + error_mask * 1e-16)
    d = d * (1.0 - error_mask)
    return d * _off_diagonal(ops.shape(embeddings)[0], d.dtype)


def angular_distance(embeddings):
    """TFA's ``angular_distance``: 1 - cosine similarity of L2-normalised rows, clamped at 0,
    zero diagonal."""
    x = embeddings / ops.sqrt(ops.maximum(ops.sum(ops.square(embeddings), axis=1, keepdims=True),
                                          1e-12))  # tf.math.l2_normalize's epsilon
    d = ops.maximum(1.0 - ops.matmul(x, ops.transpose(x)), 0.0)
    return d * _off_diagonal(ops.shape(embeddings)[0], d.dtype)


def _distance_matrix(embeddings, distance_metric):
    if distance_metric == "L2":
        return pairwise_distance(embeddings, squared=False)
    if distance_metric == "squared-L2":
        return pairwise_distance(embeddings, squared=True)
    if distance_metric == "angular":
        return angular_distance(embeddings)
    if callable(distance_metric):
        return distance_metric(embeddings)
    raise ValueError(f"distance_metric must be one of {DISTANCE_METRICS} or a callable, "
                     f"got {distance_metric!r}")


def _masked_maximum(data, mask, axis=1):
    """Max of ``data`` where ``mask`` is 1; rows with an empty mask give the row minimum."""
    mins = ops.min(data, axis=axis, keepdims=True)
    return ops.max((data - mins) * mask, axis=axis, keepdims=True) + mins


def _masked_minimum(data, mask, axis=1):
    """Min of ``data`` where ``mask`` is 1; rows with an empty mask give the row maximum."""
    maxs = ops.max(data, axis=axis, keepdims=True)
    return ops.min((data - maxs) * mask, axis=axis, keepdims=True) + maxs


def _prepare(y_true, y_pred):
    embeddings = y_pred
    if embeddings.dtype in ("float16", "bfloat16"):  # mine in float32, as TFA does
        embeddings = ops.cast(embeddings, "float32")
    labels = ops.reshape(y_true, (-1, 1))
    return labels, embeddings


def triplet_semihard_loss(y_true, y_pred, margin: float = 1.0, distance_metric="L2"):
    """Semi-hard mining (FaceNet, Schroff et al. 2015) with TFA's exact semantics.

    For every positive pair (a, p), a != p: the negative is the closest n with
    D(a,n) > D(a,p) (semi-hard); if none exists, the farthest negative of a. The loss is the
    mean over positive pairs of max(D(a,p) - D(a,n) + margin, 0).
    """
    labels, embeddings = _prepare(y_true, y_pred)
    dtype = embeddings.dtype
    pdist = _distance_matrix(embeddings, distance_metric)
    n = ops.shape(pdist)[0]
    adjacency = ops.equal(labels, ops.transpose(labels))
    adjacency_not = ops.logical_not(adjacency)

    # mask[a, p, n]: n is a negative of a and farther from a than p is.
    d_ap = ops.expand_dims(pdist, 2)  # (a, p, 1)
    d_an = ops.expand_dims(pdist, 1)  # (a, 1, n)
    mask = ops.logical_and(ops.expand_dims(adjacency_not, 1), ops.greater(d_an, d_ap))
    mask_f = ops.cast(mask, dtype)
    has_semihard = ops.greater(ops.sum(mask_f, axis=2), 0.0)  # (a, p)

    # Smallest such D(a,n) (masked minimum over n, offset by the row max as TFA does).
    row_max = ops.max(pdist, axis=1, keepdims=True)  # (a, 1)
    shifted = (d_an - ops.expand_dims(row_max, 2)) * mask_f  # (a, p, n)
    negatives_outside = ops.min(shifted, axis=2) + row_max  # (a, p)
    # Fallback: the largest D(a,n) over all negatives of a.
    negatives_inside = ops.tile(_masked_maximum(pdist, ops.cast(adjacency_not, dtype)), (1, n))
    semi_hard_negatives = ops.where(has_semihard, negatives_outside, negatives_inside)

    loss_mat = margin + pdist - semi_hard_negatives
    mask_positives = ops.cast(adjacency, dtype) - ops.eye(n, dtype=dtype)
    num_positives = ops.sum(mask_positives)
    loss = ops.sum(ops.maximum(loss_mat * mask_positives, 0.0)) / num_positives
    return ops.cast(loss, y_pred.dtype)


def triplet_hard_loss(y_true, y_pred, margin: float = 1.0, soft: bool = False,
                      distance_metric="L2"):
    """Batch-hard mining (Hermans et al. 2017) with TFA's exact semantics: per anchor the
    farthest positive and the closest negative; max(d_p - d_n + margin, 0), or
    log(1 + exp(d_p - d_n)) when ``soft``; mean over anchors."""
    labels, embeddings = _prepare(y_true, y_pred)
    dtype = embeddings.dtype
    pdist = _distance_matrix(embeddings, distance_metric)
    n = ops.shape(pdist)[0]
    adjacency = ops.equal(labels, ops.transpose(labels))
    hard_negatives = _masked_minimum(pdist, ops.cast(ops.logical_not(adjacency), dtype))
    mask_positives = ops.cast(adjacency, dtype) - ops.eye(n, dtype=dtype)
    hard_positives = _masked_maximum(pdist, mask_positives)
    if soft:
        loss = ops.log1p(ops.exp(hard_positives - hard_negatives))
    else:
        loss = ops.maximum(hard_positives - hard_negatives + margin, 0.0)
    return ops.cast(ops.mean(loss), y_pred.dtype)


def _check_metric(distance_metric):
    if not callable(distance_metric) and distance_metric not in DISTANCE_METRICS:
        raise ValueError(f"distance_metric must be one of {DISTANCE_METRICS} or a callable, "
                         f"got {distance_metric!r}")


@keras.saving.register_keras_serializable(package="facenet")
class TripletSemiHardLoss(keras.losses.Loss):
    """``keras.losses.Loss`` wrapper of :func:`triplet_semihard_loss` (a batch scalar).

    Batches must contain at least two images of some identities (use the P x K sampler)."""

    def __init__(self, margin: float = 1.0, distance_metric="L2", name="triplet_semihard_loss",
                 **kwargs):
        _check_metric(distance_metric)
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.distance_metric = distance_metric

    def call(self, y_true, y_pred):
        return triplet_semihard_loss(y_true, y_pred, self.margin, self.distance_metric)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin,
                "distance_metric": self.distance_metric}


@keras.saving.register_keras_serializable(package="facenet")
class TripletHardLoss(keras.losses.Loss):
    """``keras.losses.Loss`` wrapper of :func:`triplet_hard_loss` (a batch scalar)."""

    def __init__(self, margin: float = 1.0, soft: bool = False, distance_metric="L2",
                 name="triplet_hard_loss", **kwargs):
        _check_metric(distance_metric)
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.soft = bool(soft)
        self.distance_metric = distance_metric

    def call(self, y_true, y_pred):
        return triplet_hard_loss(y_true, y_pred, self.margin, self.soft, self.distance_metric)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "soft": self.soft,
                "distance_metric": self.distance_metric}
