"""The course's h5 datasets (SIGNS `train_signs.h5`/`test_signs.h5`, Happy House
`train_happy.h5`/`test_happy.h5`): `train_set_x` (N, H, W, 3) uint8, `train_set_y` (N,),
`list_classes` (K,) in the train file; `test_set_x`, `test_set_y` (and `list_classes`) in the
test file. Each row is one record; its split is the file's (`train` or `test`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.records import BadRecord, ImageRecord, Ref

_PREFIX = {"train": "train_set", "test": "test_set"}


def _open(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None


def _split_of(f, path: str) -> str:
    for split, prefix in _PREFIX.items():
        if f"{prefix}_x" in f and f"{prefix}_y" in f:
            return split
    raise ValueError(f"{path}: expected datasets 'train_set_x'/'train_set_y' or 'test_set_x'/'test_set_y', "
                     f"found {sorted(f.keys())}")


def class_names(paths: list[str]) -> list[str]:
    """`list_classes` from the first file that has it, decoded to str."""
    for p in paths:
        with _open(p) as f:
            if "list_classes" in f:
                return [c.decode() if isinstance(c, bytes) else str(c) for c in f["list_classes"][()]]
    raise ValueError(f"{paths}: none of the files has 'list_classes'")


def list_refs(paths: list[str]) -> list[Ref]:
    refs = []
    for path in paths:
        with _open(path) as f:
            split = _split_of(f, path)
            x, y = f[f"{_PREFIX[split]}_x"], f[f"{_PREFIX[split]}_y"]
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{path}: {_PREFIX[split]}_x has {x.shape[0]} rows but "
                                 f"{_PREFIX[split]}_y has {y.shape[0]}")
            name = Path(path).name
            refs += [Ref(key=f"{name}[{i}]", source=str(path), index=i, split=split) for i in range(x.shape[0])]
    return refs


class Reader:
    """Keeps h5 files open per worker (one open per record would dominate the cost)."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self._files = {}

    def load(self, ref: Ref) -> ImageRecord:
        try:
            f = self._files.get(ref.source) or self._files.setdefault(ref.source, _open(ref.source))
            split = _split_of(f, ref.source)
            img = np.asarray(f[f"{_PREFIX[split]}_x"][ref.index])
            label = int(np.asarray(f[f"{_PREFIX[split]}_y"]).reshape(-1)[ref.index])
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise BadRecord(ref.key, f"unreadable h5 row ({type(e).__name__}: {e})") from None
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise BadRecord(ref.key, f"unexpected image shape {img.shape}")
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        elif img.shape[2] == 4:
            img = img[..., :3]
        if img.dtype != np.uint8:
            hi = float(img.max()) if img.size else 0.0
            img = np.clip(img * (255.0 / hi if hi > 255 else (255.0 if hi <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        if not 0 <= label < len(self.classes):
            raise BadRecord(ref.key, f"label {label} outside list_classes (0..{len(self.classes) - 1})")
        return ImageRecord(key=ref.key, image=img, label=label, label_name=self.classes[label], split=ref.split)

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()
