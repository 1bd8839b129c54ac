"""The data layer: read -> preprocess -> split, plus storage and synthetic data.

Reading is bounded by `Limits` (decompressed bytes, rows, line length, distinct ids;
a `LimitError` past one). Importing this package does not import torch (the API
parses uploads without it);
`leave_one_out`, `Samples` and `Split` load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from td3core.data.limits import LimitError, Limits
from td3core.data.preprocess import PreprocessConfig, build_dataset
from td3core.data.readers import (
    FORMATS,
    ReaderOptions,
    read_interactions,
    read_interactions_bytes,
)
from td3core.data.storage import dataset_from_bytes, dataset_to_bytes
from td3core.data.synthetic import (
    generate_interactions,
    interactions_to_csv_bytes,
    write_interactions_csv,
)
from td3core.data.types import DatasetStats, Interactions, SequenceDataset

if TYPE_CHECKING:
    from td3core.data.samples import Samples, Split
    from td3core.data.split import leave_one_out

_LAZY = {
    "leave_one_out": "td3core.data.split",
    "Samples": "td3core.data.samples",
    "Split": "td3core.data.samples",
}

__all__ = [
    "FORMATS",
    "DatasetStats",
    "Interactions",
    "LimitError",
    "Limits",
    "PreprocessConfig",
    "ReaderOptions",
    "Samples",
    "SequenceDataset",
    "Split",
    "build_dataset",
    "dataset_from_bytes",
    "dataset_to_bytes",
    "generate_interactions",
    "interactions_to_csv_bytes",
    "leave_one_out",
    "read_interactions",
    "read_interactions_bytes",
    "write_interactions_csv",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
