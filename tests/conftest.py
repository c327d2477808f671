"""Shared fixtures. Real datasets live outside the repository in ../shared/datasets
(relative to the project root); tests that need them skip cleanly when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
DATASETS = SHARED / "datasets"
REFERENCE = SHARED / "reference"


def dataset_path(*parts: str) -> Path:
    """Path inside ../shared/datasets, or skip the calling test when it is absent."""
    p = DATASETS.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"dataset not available: {p}")
    return p


@pytest.fixture
def shared_datasets() -> Path:
    return dataset_path()


@pytest.fixture
def reference_dir() -> Path:
    if not REFERENCE.exists():
        pytest.skip(f"reference values not available: {REFERENCE}")
    return REFERENCE
