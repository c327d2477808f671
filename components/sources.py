"""How ExampleGen opens each raw-data format: one adapter per format, mapping the reader in
`data/` to (refs, class names, task, loader). Adding a format = one reader file in `data/` plus
one entry here."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

from data.records import ImageRecord, Ref


@dataclasses.dataclass
class SourceInfo:
    refs: list[Ref]
    classes: list[str]
    task: str  # classification | detection | embedding
    warnings: list[str]
    loader: Callable[[Ref], ImageRecord]  # picklable (Beam ships it to workers)


class _ModuleLoader:
    """Picklable `load(ref)` that imports its module on the worker."""

    def __init__(self, module: str, attr: str = "load", **kwargs):
        self.module, self.attr, self.kwargs = module, attr, kwargs
        self._fn = None

    def __call__(self, ref: Ref) -> ImageRecord:
        if self._fn is None:
            fn = getattr(importlib.import_module(self.module), self.attr)
            self._fn = (lambda r: fn(r, **self.kwargs)) if self.kwargs else fn
        return self._fn(ref)

    def __getstate__(self):
        return {"module": self.module, "attr": self.attr, "kwargs": self.kwargs, "_fn": None}


class _H5Loader:
    def __init__(self, classes):
        self.classes = classes
        self._reader = None

    def __call__(self, ref):
        if self._reader is None:
            from data.course_h5 import Reader

            self._reader = Reader(self.classes)
        return self._reader.load(ref)

    def __getstate__(self):
        return {"classes": self.classes, "_reader": None}


# format -> (module, task, list_refs keyword the source `path` maps to)
FORMATS: dict[str, tuple[str, str, str | None]] = {
    "synthetic_signs": ("data.synthetic_signs", "classification", None),
    "course_h5": ("data.course_h5", "classification", "paths"),
    "image_folder": ("data.image_folder", "classification", "root"),
    "voc": ("data.voc", "detection", "root"),
    "coco": ("data.coco", "detection", "annotation_file"),
    "synthetic_shapes": ("data.synthetic_shapes", "detection", None),
    "identity_folders": ("data.identity_folders", "embedding", "root"),
    # `path`: the folder the identities are generated into (optional: without it, a cache
    # folder keyed by the options, so generated files do not count as changed raw data).
    "synthetic_faces": ("data.synthetic_faces", "embedding", "root"),
}

_IDENTITY_FORMATS = ("identity_folders", "synthetic_faces")


def check_options(fmt: str, options: dict[str, Any]) -> None:
    """Unknown reader options fail at config validation, naming the allowed ones."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r} (known: {', '.join(FORMATS)})")
    module, _, path_kw = FORMATS[fmt]
    try:
        fn = importlib.import_module(module).list_refs
    except ImportError as e:
        raise ValueError(f"source format {fmt!r} is not available: {e}") from None
    allowed = [p for p in inspect.signature(fn).parameters if p != path_kw]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for format {fmt!r} (allowed: {', '.join(allowed)})")


def open_source(fmt: str, path: str | list[str] | None, options: dict[str, Any]) -> SourceInfo:
    module_name, task, path_kw = FORMATS[fmt]
    module = importlib.import_module(module_name)
    kwargs = dict(options)
    if path_kw and not (fmt == "synthetic_faces" and path is None):
        if path is None:
            raise ValueError(f"source format {fmt!r} needs 'path'")
        kwargs[path_kw] = ([path] if isinstance(path, str) else list(path)) if path_kw == "paths" else path
    if fmt in _IDENTITY_FORMATS:
        return _identity_source(fmt, module, task, path, kwargs)
    if fmt == "course_h5":
        from data.course_h5 import class_names

        refs = module.list_refs(**kwargs)
        classes = options.get("classes") or class_names(kwargs["paths"])
        return SourceInfo(refs, classes, task, [], _H5Loader(classes))
    out = module.list_refs(**kwargs)
    # Readers return refs, or (refs, classes), or (refs, classes, warnings).
    refs, classes, warnings = (out, [], []) if isinstance(out, list) else (tuple(out) + ([],))[:3]
    if not classes and refs and fmt in ("voc", "coco", "synthetic_shapes"):  # detection refs carry the class list
        extra = dict(refs[0].extra)
        classes = list(extra.get("class_names", extra.get("classes", ())))
    if not classes:
        classes = getattr(module, "CLASSES", None) or sorted({r.label_name for r in refs if r.label_name})
    loader_kwargs = {}
    if hasattr(module, "loader_kwargs"):
        loader_kwargs = module.loader_kwargs(**kwargs)
    return SourceInfo(list(refs), list(classes), task, list(warnings), _ModuleLoader(module_name, **loader_kwargs))


def _identity_source(fmt: str, module, task: str, path, kwargs: dict) -> SourceInfo:
    """Face identity folders (and the synthetic generator that writes them). Labels number
    every identity folder under the root in natural order (s2 before s10), whatever split it
    is in, so the class list is that full list, not the sorted names of the listed refs."""
    from data import identity_folders

    if fmt == "synthetic_faces" and kwargs.get("root") is None:
        kwargs["root"] = str(module.default_root(**kwargs))
    refs = module.list_refs(**kwargs)
    classes = identity_folders.list_identities(kwargs["root"])
    return SourceInfo(list(refs), classes, task, [], _ModuleLoader(module.__name__))
