"""data/image_folder.py's listing: which files become records, their keys, labels and splits
(the listing is an os.scandir walk, so these pin what the pathlib version gave)."""
from __future__ import annotations

import os

import pytest

from data.image_folder import list_refs


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_class_folders_give_keys_below_root_labels_and_sources(tmp_path):
    for rel in ("b/2.jpg", "b/1.PNG", "a/9.jpeg", "a/notes.txt", "a/.jpg", "a/nested/5.jpg", "10/x.jpg", "c/.keep"):
        _touch(tmp_path / rel)
    os.symlink(tmp_path / "b" / "2.jpg", tmp_path / "a" / "link.jpg")  # a symlinked file is a file
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "a" / "broken.jpg")  # a broken one is not
    refs, names, warnings = list_refs(str(tmp_path))
    assert names == ["10", "a", "b"]  # digits first, then by name; an empty folder is no class
    assert [(r.key, r.label, r.label_name, r.split) for r in refs] == [  # ".jpg" alone has no suffix
        ("10/x.jpg", 0, "10", None), ("a/9.jpeg", 1, "a", None),
        ("a/link.jpg", 1, "a", None), ("b/1.PNG", 2, "b", None), ("b/2.jpg", 2, "b", None)]
    assert all(r.source == os.path.join(str(tmp_path), r.key) for r in refs)
    assert warnings == [f"{tmp_path / 'c'}: empty class folder (no images)"]


def test_own_splits_with_prefix_labels(tmp_path):
    for rel in ("train/3_a.jpg", "train/1_b.jpg", "test/2_c.png", "test/readme.md"):
        _touch(tmp_path / rel)
    refs, names, _ = list_refs(str(tmp_path), label_from="prefix", splits=["train", "test"], classes=["1", "2", "3"])
    assert [(r.key, r.split, r.label) for r in refs] == [("train/1_b.jpg", "train", 0), ("train/3_a.jpg", "train", 2),
                                                         ("test/2_c.png", "test", 1)]
    assert names == ["1", "2", "3"]


def test_missing_folders_and_wrong_layouts_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_refs(str(tmp_path / "nope"))
    (tmp_path / "flat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="no class sub-folders"):
        list_refs(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="val"):
        list_refs(str(tmp_path), splits=["val"])
