"""P x K batch sampling for online triplet mining.

Semi-hard and batch-hard losses need several images of each identity in every batch, which
random batching from a dataset of many people almost never gives. A P x K batch holds P
identities with K images each (Hermans et al. 2017), so every anchor has K-1 positives and
(P-1)K negatives.

Policy for small identities (documented choice): identities with fewer than 2 images can
never form a positive pair and are always left out. Identities with 2 <= n < K images are
sampled *with replacement* by default (``small="replace"``: a duplicated image is a positive
at distance 0, which the losses handle -- TFA's zeroed diagonal/1e-16 clamp) or left out
(``small="skip"``). Identities with >= K images are sampled without replacement.

Each "epoch" of the sampler visits every eligible identity once (in a seeded random
order, P at a time, the last incomplete group topped up from a fresh permutation), so
``batches_per_epoch = ceil(num_identities / P)``.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np


class PKSampler:
    """Yields int64 index arrays of length P*K: P identities x K images, grouped by identity.

    ``labels``: integer identity label per dataset item. Deterministic for a given ``seed``.
    """

    def __init__(self, labels, P: int, K: int, seed: int = 0, small: str = "replace"):
        labels = np.asarray(labels).reshape(-1)
        if P < 2:
            raise ValueError(f"P must be >= 2 (a batch needs negatives), got {P}")
        if K < 2:
            raise ValueError(f"K must be >= 2 (a batch needs positives), got {K}")
        if small not in ("replace", "skip"):
            raise ValueError(f"small must be 'replace' or 'skip', got {small!r}")
        self.P, self.K, self.seed, self.small = int(P), int(K), int(seed), small
        by_label: dict[int, np.ndarray] = {}
        for lab in np.unique(labels):
            by_label[int(lab)] = np.flatnonzero(labels == lab)
        min_images = K if small == "skip" else 2
        self.index_by_label = {k: v for k, v in by_label.items() if len(v) >= min_images}
        self.identities = np.array(sorted(self.index_by_label), dtype=np.int64)
        self.skipped = sorted(set(by_label) - set(self.index_by_label))
        if len(self.identities) < P:
            raise ValueError(f"only {len(self.identities)} identities have enough images "
                             f"(>= {min_images}) for P={P}; lower P or add data")
        self._rng = np.random.default_rng(self.seed)

    @property
    def batch_size(self) -> int:
        return self.P * self.K

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.identities) / self.P)

    def _images_of(self, lab: int) -> np.ndarray:
        idx = self.index_by_label[lab]
        return self._rng.choice(idx, size=self.K, replace=len(idx) < self.K)

    def epoch(self) -> list[np.ndarray]:
        """One pass over the identities: ``batches_per_epoch`` index batches."""
        order = self._rng.permutation(self.identities)
        short = (-len(order)) % self.P
        if short:  # top up the last group with identities not already in it
            last = set(order[len(order) - (len(order) % self.P):].tolist())
            extra = [i for i in self._rng.permutation(self.identities) if i not in last][:short]
            order = np.concatenate([order, np.array(extra, dtype=np.int64)])
        return [np.concatenate([self._images_of(int(lab)) for lab in order[s:s + self.P]])
                for s in range(0, len(order), self.P)]

    def __iter__(self) -> Iterator[np.ndarray]:
        """Endless stream of batches (epoch after epoch)."""
        while True:
            yield from self.epoch()


def pk_dataset(images, labels, P: int, K: int, seed: int = 0, small: str = "replace",
               augment=None):
    """An endless ``tf.data.Dataset`` of (images[idx], labels[idx]) P x K batches.

    ``images`` is an in-memory array (N, H, W, C); ``augment`` an optional batch function
    (e.g. a Sequential of Keras random layers) applied in the pipeline. Use with
    ``model.fit(ds, steps_per_epoch=...)``. Autotune is disabled: on these CPUs its thread
    stalls ``fit`` for 10-20 s at epoch boundaries.
    """
    import tensorflow as tf

    sampler = PKSampler(labels, P, K, seed=seed, small=small)
    images_t = tf.constant(np.asarray(images))
    labels_t = tf.constant(np.asarray(labels).reshape(-1).astype(np.int32))
    bs = sampler.batch_size
    ds = tf.data.Dataset.from_generator(
        lambda: iter(sampler), output_signature=tf.TensorSpec((bs,), tf.int64))

    def gather(idx):
        x = tf.gather(images_t, idx)
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        if augment is not None:
            x = augment(x)
        return x, tf.gather(labels_t, idx)

    from data.tfrecord import fixed_options

    return fixed_options(ds.map(gather).prefetch(2))
