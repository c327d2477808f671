"""The embedding task's Evaluator hooks (``EmbeddingTask`` in ``components/tasks/embedding.py``
inherits them): verification of people the model never saw.

Pairs (``EvalParams.pair_mode``), chosen once in ``eval_data`` so the candidate and the baseline
are scored on the same ones: ``all`` (every pair: mostly mismatched, so accuracy is inflated:
"always different" scores ~0.9), ``sampled`` (``num_pairs`` with ``matched_fraction`` matched,
seeded; without ``num_pairs``: every matched pair plus as many mismatched ones, the LFW-style
balanced protocol) or ``pairs_file`` (an LFW ``pairs.txt``; images are matched to records by key
``<name>/<name>_<NNNN>``). With ``sampled`` or ``pairs_file`` the ROC AUC / EER on all pairs are
reported too (``*_all_pairs``).

``score`` embeds with the views the model records (``flip_embeddings``, ``tta_scales``) unless
the EvalParams override them, and reports :func:`components.metrics.verification.verification_report`
(k-fold accuracy, ROC AUC, EER, TAR at FAR, threshold, rank-1; the ROC and distance-histogram
plots when given a plot folder), the accuracy of the model's own threshold and the embedding
speed. An evaluated split with fewer than two people, or without a matched (or mismatched)
pair, scores NaN and is never blessed.
"""
from __future__ import annotations

import time
from pathlib import Path

from components.base import ComponentError
from components.tasks.base import Score, Task


def pairs_from_file(tp, keys: list[str]):
    """(i, j, is_same) index arrays of an LFW pairs file's pairs found among ``keys``, and how
    many pairs were left out (an image not in the split)."""
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
    if not i:
        raise ComponentError(f"no pair of {tp.pairs_file} has both images in the evaluated split")
    return (np.array(i), np.array(j), np.array(same, dtype=bool)), missing


def evaluation_pairs(tp, labels, keys):
    """(pairs or None for every pair, pairs left out of a pairs file) for ``tp.pair_mode``."""
    import numpy as np

    from components.metrics.verification import generate_pairs

    if tp.pair_mode == "pairs_file":
        if not tp.pairs_file:
            raise ComponentError("Evaluator task_params: pair_mode pairs_file needs pairs_file")
        return pairs_from_file(tp, keys)
    if tp.pair_mode == "sampled":
        n_pos = int(sum(c * (c - 1) // 2 for c in np.unique(labels, return_counts=True)[1]))
        num = tp.num_pairs or 2 * n_pos
        if num == 0:  # nobody with two images: nothing to sample (a degenerate split)
            empty = np.zeros(0, np.int64)
            return (empty, empty, np.zeros(0, bool)), 0
        return generate_pairs(labels, "sampled", num_pairs=num, matched_fraction=tp.matched_fraction,
                              seed=tp.seed), 0
    return None, 0


def _pair_counts(labels, pairs) -> tuple[int, int]:
    """(matched, mismatched) pairs that will be scored."""
    import numpy as np

    if pairs is not None:
        same = np.asarray(pairs[2], bool)
        return int(same.sum()), int((~same).sum())
    counts = np.unique(labels, return_counts=True)[1]
    n_pos = int((counts * (counts - 1) // 2).sum())
    return n_pos, len(labels) * (len(labels) - 1) // 2 - n_pos


def flat_metrics(report: dict) -> dict:
    """The numbers thresholds, blessing and tracking use."""
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


def _verification(emb, labels, pairs, tp, plot_dir) -> dict:
    """verification_report on the evaluation pairs (plots into ``plot_dir`` when given), the
    ROC on every pair too when those were a subset."""
    import numpy as np

    from components.metrics.verification import generate_pairs, roc_metrics, verification_report

    try:
        report = verification_report(emb, labels, pairs=pairs, n_folds=tp.n_folds, seed=tp.seed,
                                     fars=tuple(tp.fars), plot_dir=plot_dir)
    except ValueError as e:
        raise ComponentError(f"Evaluator: {e}") from None
    report["pair_mode"] = tp.pair_mode
    if pairs is not None:  # the ROC on every pair too
        i, j, same = generate_pairs(labels, "all")
        if same.any():
            r_all = roc_metrics(np.linalg.norm(emb[i] - emb[j], axis=1), same, fars=tuple(tp.fars))
            report["roc_auc_all_pairs"], report["eer_all_pairs"] = r_all["roc_auc"], r_all["eer"]
    report.pop("fold_thresholds", None)
    report["plots"] = {k: Path(v).name for k, v in report.get("plots", {}).items()}
    return report


class EmbeddingEvaluation(Task):
    """The Evaluator half of :class:`components.tasks.embedding.EmbeddingTask`."""

    def eval_data(self, examples, split, ep, tp) -> dict:
        from components.tasks.embedding_data import load_split

        images, labels, idents, keys = load_split(examples, split)
        pairs, missing = evaluation_pairs(tp, labels, keys)
        notes = []
        if missing:
            notes.append(f"{missing} pairs of {tp.pairs_file} name images not in the evaluated split: left out")
        matched, mismatched = _pair_counts(labels, pairs)
        return {"images": images, "labels": labels, "identities": idents, "keys": keys, "split": split,
                "pairs": pairs, "pairs_missing": missing, "matched": matched, "mismatched": mismatched,
                "notes": notes}

    def problems(self, data) -> list[str]:
        """Why the evaluated split cannot measure verification (empty when it can)."""
        people, split = len(set(data["identities"])), data["split"]
        if people < 2:
            return [f"only {people} identity in the evaluated split {split!r}: verification needs two people"]
        out = []
        if not data["matched"]:
            out.append(f"no matched pair in the evaluated split {split!r} (nobody with two images there)")
        if not data["mismatched"]:
            out.append(f"no mismatched pair in the evaluated split {split!r}")
        return out

    def score(self, model, info, data, ep, tp, plot_dir, logger) -> Score:
        import numpy as np

        from components.metrics.verification import generate_pairs, pair_distances
        from components.tasks.embedding_data import embed, embedding_views

        for note in data.pop("notes", []):  # said once, by the first (the candidate's) score
            logger.warning(note)
        images, labels, idents, pairs = data["images"], data["labels"], data["identities"], data["pairs"]
        seen = sorted(set(idents) & set(info.classes))
        if seen:
            logger.warning("%s: %d of the %d evaluated identities were seen in training (e.g. %s): the numbers "
                           "are not for unseen people", info.model, len(seen), len(set(idents)), seen[:3])
        flip, scales = embedding_views(info, tp.flip, tp.tta_scales)
        t0 = time.perf_counter()
        emb = embed(model, images, tp.batch_size, flip, scales)
        embed_s = max(time.perf_counter() - t0, 1e-9)
        nan = float("nan")
        if self.problems(data):
            report = {"accuracy_mean": nan, "accuracy_std": nan, "roc_auc": nan, "eer": nan, "threshold": nan,
                      "num_pairs": data["matched"] + data["mismatched"], "n_folds": tp.n_folds,
                      "tar_at_far": {}, "pair_mode": tp.pair_mode}
        else:
            report = _verification(emb, labels, pairs, tp, plot_dir)
        if data["pairs_missing"]:
            report["pairs_missing"] = data["pairs_missing"]
        threshold = info.get("threshold")
        report.update({"split": data["split"], "num_images": int(len(images)),
                       "num_identities": int(len(set(idents))), "flip_embeddings": flip, "tta_scales": scales,
                       "model_threshold": threshold, "identities_seen_in_training": len(seen),
                       # views per second: each image is embedded len(scales) x (2 with flip) times
                       "embed_images_per_second": len(images) * len(scales) * (2 if flip else 1) / embed_s,
                       "embed_faces_per_second": len(images) / embed_s})
        if threshold is not None and len(images) > 1:  # how the threshold the model ships with does here
            pi, pj, ps = pairs if pairs is not None else generate_pairs(labels, "all")
            d = pair_distances(emb[pi], emb[pj])
            report["accuracy_at_model_threshold"] = float(np.mean((d < threshold) == ps)) if len(d) else nan
        plots = [Path(plot_dir) / name for name in report.get("plots", {}).values()] if plot_dir else []
        return Score(report=report, flat=flat_metrics(report), plots=plots)

    def degenerate(self, score, data) -> list[str]:
        return [*self.problems(data), *super().degenerate(score, data)]

    def headline(self, info, score) -> str:
        r = score.report
        rank1 = f"{r['rank1_accuracy']:.4f}" if "rank1_accuracy" in r else "n/a"
        return (f"on {r['num_images']} unseen images ({r['num_identities']} people, {r['num_pairs']} {r['pair_mode']} "
                f"pairs): {r['n_folds']}-fold accuracy {r['accuracy_mean']:.4f} +- {r['accuracy_std']:.4f}, "
                f"ROC AUC {r['roc_auc']:.4f}, EER {r['eer']:.4f}, rank-1 {rank1}")
