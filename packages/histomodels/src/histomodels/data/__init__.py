"""Patch datasets: one reader per on-disk format behind one small interface."""

from histomodels.data.base import ArrayDataset, DatasetError, PatchDataset
from histomodels.data.readers import open_dataset

__all__ = ["ArrayDataset", "DatasetError", "PatchDataset", "open_dataset"]
