"""LFW-style ``pairs.txt`` parsing.

Format (Huang et al., LFW technical report): a header line ``<folds> <pairs_per_fold>``
(``pairsDevTrain.txt`` / ``pairsDevTest.txt`` have a single number: one fold), then per fold
``pairs_per_fold`` matched lines ``name i j`` followed by ``pairs_per_fold`` mismatched lines
``name1 i name2 j``. Image numbers are 1-based; the image of ``name`` number ``i`` is
``<root>/<name>/<name>_<i:04d>.jpg``. Fields may be separated by tabs or spaces. Every error
names the line number and its text.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from data.records import Ref


class PairsFormatError(ValueError):
    """A malformed pairs file; the message names the file, line number and line."""


@dataclasses.dataclass(frozen=True)
class Pair:
    name1: str
    index1: int
    name2: str
    index2: int
    same: bool
    fold: int
    line: int  # 1-based line in the file


@dataclasses.dataclass
class PairsFile:
    folds: int
    pairs_per_fold: int
    pairs: list[Pair]

    def fold(self, k: int) -> list[Pair]:
        return [p for p in self.pairs if p.fold == k]


def _int(tok: str, what: str, where: str) -> int:
    try:
        v = int(tok)
    except ValueError:
        raise PairsFormatError(f"{where}: {what} {tok!r} is not an integer") from None
    if v < 1:
        raise PairsFormatError(f"{where}: {what} must be >= 1, got {v}")
    return v


def parse_pairs(source, name: str | None = None) -> PairsFile:
    """Parse a pairs file (a path, or the text itself when it contains a newline)."""
    if isinstance(source, Path) or "\n" not in str(source):
        name = name or str(source)
        if not Path(source).is_file():
            raise FileNotFoundError(f"pairs file not found: {source}")
        text = Path(source).read_text()
    else:
        name = name or "<pairs text>"
        text = str(source)
    lines = text.splitlines()
    # skip leading blank lines, remember real line numbers
    numbered = [(k + 1, ln.strip()) for k, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise PairsFormatError(f"{name}: empty pairs file")
    hline, header = numbered[0]
    htoks = header.split()
    where = f"{name}:{hline}: {header!r}"
    if len(htoks) == 1:
        folds, per_fold = 1, _int(htoks[0], "pairs per fold", where)
    elif len(htoks) == 2:
        folds = _int(htoks[0], "number of folds", where)
        per_fold = _int(htoks[1], "pairs per fold", where)
    else:
        raise PairsFormatError(f"{where}: header must be '<folds> <pairs_per_fold>' "
                               f"(or '<pairs>'), got {len(htoks)} fields")
    body = numbered[1:]
    expected = folds * 2 * per_fold
    if len(body) != expected:
        last = body[-1][0] if body else hline
        raise PairsFormatError(f"{name}:{last}: header promises {folds} folds x 2 x {per_fold} "
                               f"= {expected} pair lines, found {len(body)}")
    pairs = []
    for pos, (lineno, ln) in enumerate(body):
        fold, within = divmod(pos, 2 * per_fold)
        same = within < per_fold
        toks = ln.split()
        where = f"{name}:{lineno}: {ln!r}"
        if same:
            if len(toks) != 3:
                raise PairsFormatError(f"{where}: expected a matched pair 'name i j' "
                                       f"(fold {fold + 1}, pair {within + 1}), got {len(toks)} fields")
            p = Pair(toks[0], _int(toks[1], "image number", where), toks[0],
                     _int(toks[2], "image number", where), True, fold, lineno)
        else:
            if len(toks) != 4:
                raise PairsFormatError(f"{where}: expected a mismatched pair 'name1 i name2 j' "
                                       f"(fold {fold + 1}, pair {within + 1}), got {len(toks)} fields")
            p = Pair(toks[0], _int(toks[1], "image number", where), toks[2],
                     _int(toks[3], "image number", where), False, fold, lineno)
        pairs.append(p)
    return PairsFile(folds, per_fold, pairs)


def image_path(root, name: str, index: int, ext: str = "jpg") -> Path:
    """LFW's file naming: ``<root>/<name>/<name>_<index:04d>.jpg``."""
    return Path(root) / name / f"{name}_{index:04d}.{ext}"


def pairs_to_refs(pairs_file: PairsFile, root, ext: str = "jpg"):
    """Refs for the distinct images the pairs use (load them with ``identity_folders.load``)
    and the pairs as index arrays into that list: ``(refs, i, j, is_same, fold)``, ready for
    ``components.metrics.verification.verification_report(pairs=(i, j, is_same))``."""
    import numpy as np

    index: dict[tuple[str, int], int] = {}
    refs: list[Ref] = []
    names = sorted({p.name1 for p in pairs_file.pairs} | {p.name2 for p in pairs_file.pairs})
    label_of = {n: k for k, n in enumerate(names)}

    def ref_index(name, k):
        if (name, k) not in index:
            index[(name, k)] = len(refs)
            path = image_path(root, name, k, ext)
            refs.append(Ref(key=f"{name}/{path.name}", source=str(path), label=label_of[name],
                            label_name=name))
        return index[(name, k)]

    i = np.array([ref_index(p.name1, p.index1) for p in pairs_file.pairs], dtype=np.int64)
    j = np.array([ref_index(p.name2, p.index2) for p in pairs_file.pairs], dtype=np.int64)
    same = np.array([p.same for p in pairs_file.pairs], dtype=bool)
    fold = np.array([p.fold for p in pairs_file.pairs], dtype=np.int64)
    return refs, i, j, same, fold
