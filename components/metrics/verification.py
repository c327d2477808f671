"""Face-verification and identification metrics for embedding models.

Given embeddings and identity labels of held-out people (or explicit pairs, e.g. from an
LFW ``pairs.txt``), :func:`verification_report` computes

* 10-fold verification accuracy (LFW protocol): for each fold the distance threshold is the
  one maximising accuracy on the other 9 folds; mean and std of the held-out accuracies,
* ROC AUC, EER, TAR at FAR = 1e-2 and 1e-3 (``None`` with a reason when there are fewer
  than 1/FAR mismatched pairs, so the FAR cannot be resolved),
* the threshold chosen on all pairs,
* rank-1 identification accuracy with one enrolled image per person (the rest are probes),
* optional plots: ROC curve and matched/mismatched distance histograms (PNG).

A pair is predicted "same person" when ``distance < threshold``. Distances are L2 between
embeddings (``metric="cosine"`` gives 1 - cosine similarity). The result is a plain,
JSON-serialisable dict. ROC/AUC and the folds come from scikit-learn.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FARS = (1e-2, 1e-3)


# ---------------------------------------------------------------- pairs and distances

def generate_pairs(labels, mode: str = "all", num_pairs: int | None = None,
                   matched_fraction: float = 0.5, seed: int = 0):
    """Index pairs (i, j), i < j, and ``is_same`` flags from identity labels.

    ``mode="all"``: every unordered pair. ``mode="sampled"``: ``num_pairs`` pairs drawn
    without repetition with ``matched_fraction`` of them matched (as many as exist).
    Returns ``(i, j, is_same)`` int64/int64/bool arrays.
    """
    labels = np.asarray(labels).reshape(-1)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    if mode == "all":
        return i.astype(np.int64), j.astype(np.int64), same
    if mode != "sampled":
        raise ValueError(f"mode must be 'all' or 'sampled', got {mode!r}")
    if num_pairs is None or num_pairs <= 0:
        raise ValueError("mode='sampled' needs num_pairs > 0")
    if not 0.0 <= matched_fraction <= 1.0:
        raise ValueError(f"matched_fraction must be in [0, 1], got {matched_fraction}")
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    n_pos = min(len(pos), int(round(num_pairs * matched_fraction)))
    n_neg = min(len(neg), num_pairs - n_pos)
    pick = np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False),
                                   rng.choice(neg, n_neg, replace=False)]))
    return i[pick].astype(np.int64), j[pick].astype(np.int64), same[pick]


def pair_distances(emb_a, emb_b, metric: str = "L2") -> np.ndarray:
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if metric == "L2":
        return np.linalg.norm(a - b, axis=-1)
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        return 1.0 - np.sum(a * b, axis=-1)
    raise ValueError(f"metric must be 'L2' or 'cosine', got {metric!r}")


# ---------------------------------------------------------------- thresholds and accuracy

def best_threshold(distances, is_same) -> tuple[float, float]:
    """The threshold maximising accuracy of ``distance < t`` on these pairs, and that
    accuracy. Candidates are midpoints between consecutive distinct distances (plus one
    below the smallest and one above the largest); O(n log n)."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(is_same, dtype=bool)
    order = np.argsort(d, kind="stable")
    d, y = d[order], y[order]
    n = len(d)
    # accepting the first k pairs: correct = positives among them + negatives after them
    cum_pos = np.concatenate([[0], np.cumsum(y)])
    cum_neg = np.concatenate([[0], np.cumsum(~y)])
    correct = cum_pos + (cum_neg[-1] - cum_neg)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = d[1:] > d[:-1]  # a cut can only fall between distinct distances
    k = int(np.flatnonzero(valid)[np.argmax(correct[valid])])
    if k == 0:
        t = d[0] - 1e-6
    elif k == n:
        t = d[-1] + 1e-6
    else:
        t = 0.5 * (d[k - 1] + d[k])
    return float(t), float(correct[k] / n)


def kfold_accuracy(distances, is_same, n_folds: int = 10, seed: int = 0) -> dict:
    """LFW-style k-fold accuracy: threshold from the k-1 training folds, accuracy on the
    held-out fold (scikit-learn ``KFold``, shuffled with ``seed``)."""
    from sklearn.model_selection import KFold

    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(is_same, dtype=bool)
    if len(d) < n_folds:
        raise ValueError(f"{len(d)} pairs are too few for {n_folds}-fold evaluation")
    accs, thresholds = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(d):
        t, _ = best_threshold(d[train], y[train])
        accs.append(float(np.mean((d[test] < t) == y[test])))
        thresholds.append(t)
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "fold_accuracies": accs, "fold_thresholds": thresholds, "n_folds": n_folds}


# ---------------------------------------------------------------- ROC family

def roc_metrics(distances, is_same, fars=FARS) -> dict:
    """ROC AUC, EER and TAR at the given FARs; scores are negated distances."""
    from sklearn.metrics import roc_auc_score, roc_curve

    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(is_same, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs matched and mismatched pairs (got {n_pos} matched, "
                         f"{n_neg} mismatched)")
    fpr, tpr, thr = roc_curve(y, -d, drop_intermediate=False)
    fnr = 1.0 - tpr
    # EER: where FPR and FNR cross; between ROC points, interpolate linearly.
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    k = int(np.flatnonzero(diff <= 0)[0])
    if k == 0 or diff[k] == 0:
        eer = float(fpr[k])
    else:
        w = diff[k - 1] / (diff[k - 1] - diff[k])
        eer = float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))
    out = {"roc_auc": float(roc_auc_score(y, -d)), "eer": eer,
           "num_matched_pairs": n_pos, "num_mismatched_pairs": n_neg, "tar_at_far": {}}
    for far in fars:
        key = f"{far:g}"
        if n_neg < math.ceil(1.0 / far):
            out["tar_at_far"][key] = {
                "tar": None,
                "reason": f"{n_neg} mismatched pairs < 1/FAR = {math.ceil(1.0 / far)}; "
                          "the FAR cannot be resolved"}
            continue
        ok = np.flatnonzero(fpr <= far)
        best = ok[np.argmax(tpr[ok])]
        thr_d = -thr[best] if np.isfinite(thr[best]) else float(d.min())
        out["tar_at_far"][key] = {"tar": float(tpr[best]), "far": float(fpr[best]),
                                  "threshold": float(thr_d)}
    out["_curve"] = (fpr, tpr)  # removed before returning from verification_report
    return out


# ---------------------------------------------------------------- identification

def rank1_identification(embeddings, labels, metric: str = "L2", seed: int | None = None) -> dict:
    """Rank-1 accuracy with one enrolled image per person (the first one in dataset order,
    or a seeded random one), every other image a probe matched to its nearest enrolled
    image. Identities with one image are enrolled only (gallery distractors)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed) if seed is not None else None
    gallery_idx = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        gallery_idx.append(idx[0] if rng is None else rng.choice(idx))
    gallery_idx = np.array(gallery_idx)
    probe_idx = np.setdiff1d(np.arange(len(labels)), gallery_idx)
    if len(probe_idx) == 0:
        raise ValueError("no probes: every identity has a single image")
    g, p = emb[gallery_idx], emb[probe_idx]
    if metric == "cosine":
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        dist = 1.0 - p @ g.T
    else:
        dist = np.sqrt(np.maximum((p ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None] - 2 * p @ g.T, 0))
    pred = labels[gallery_idx][np.argmin(dist, axis=1)]
    correct = pred == labels[probe_idx]
    return {"rank1_accuracy": float(np.mean(correct)), "num_probes": int(len(probe_idx)),
            "gallery_size": int(len(gallery_idx))}


# ---------------------------------------------------------------- plots

def plot_roc(fpr, tpr, path, auc: float | None = None, title: str = "ROC") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.4f}" if auc is not None else None)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    if auc is not None:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot_distance_histograms(distances, is_same, path, threshold: float | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(is_same, dtype=bool)
    bins = np.linspace(d.min(), d.max() + 1e-9, 50)
    fig, ax = plt.subplots(figsize=(6, 4))
    # densities: mismatched pairs usually outnumber matched ones by far
    ax.hist(d[y], bins=bins, alpha=0.6, density=True, label=f"matched ({y.sum()})")
    ax.hist(d[~y], bins=bins, alpha=0.6, density=True, label=f"mismatched ({(~y).sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------- the report

def verification_report(embeddings=None, labels=None, *, pairs=None, distances=None,
                        is_same=None, pair_mode: str = "all", num_pairs: int | None = None,
                        matched_fraction: float = 0.5, metric: str = "L2", n_folds: int = 10,
                        seed: int = 0, fars=FARS, plot_dir=None) -> dict:
    """All verification/identification metrics as a JSON-serialisable dict.

    Inputs, one of:
    * ``embeddings`` (N, D) + ``labels`` (N,): pairs generated with ``pair_mode``
      ("all" or "sampled" with ``num_pairs``/``matched_fraction``/``seed``); rank-1
      identification is computed too;
    * ``embeddings`` + ``pairs`` = (i, j, is_same) index arrays (e.g. from pairs.txt);
    * ``distances`` + ``is_same`` directly.
    ``plot_dir``: write ``roc.png`` and ``distance_histogram.png`` there.
    """
    out: dict = {"metric": metric, "seed": seed}
    if distances is None:
        if embeddings is None:
            raise ValueError("give embeddings (+ labels or pairs) or distances + is_same")
        emb = np.asarray(embeddings, dtype=np.float64)
        if pairs is None:
            if labels is None:
                raise ValueError("embeddings need labels or explicit pairs")
            i, j, is_same = generate_pairs(labels, pair_mode, num_pairs, matched_fraction, seed)
            out["pair_mode"] = pair_mode
        else:
            i, j, is_same = (np.asarray(p) for p in pairs)
            out["pair_mode"] = "explicit"
        distances = pair_distances(emb[i], emb[j], metric)
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(is_same, dtype=bool)
    out["num_pairs"] = int(len(d))
    out.update(kfold_accuracy(d, y, n_folds=n_folds, seed=seed))
    roc = roc_metrics(d, y, fars=fars)
    fpr, tpr = roc.pop("_curve")
    out.update(roc)
    out["threshold"], out["accuracy_at_threshold"] = best_threshold(d, y)
    out["distance_mean_matched"] = float(d[y].mean())
    out["distance_mean_mismatched"] = float(d[~y].mean())
    if embeddings is not None and labels is not None:
        out.update(rank1_identification(embeddings, labels, metric=metric))
    if plot_dir is not None:
        plot_dir = Path(plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        out["plots"] = {
            "roc": plot_roc(fpr, tpr, plot_dir / "roc.png", auc=out["roc_auc"]),
            "distance_histogram": plot_distance_histograms(
                d, y, plot_dir / "distance_histogram.png", threshold=out["threshold"]),
        }
    return out
