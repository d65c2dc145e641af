"""Data layer: raw readers, preprocessing (docs/model.md §1), the processed Dataset and its cache."""
from .dataset import CKG, Dataset, build_dataset, load_dataset, split_per_user
from .sources import RawDataset, read_raw

__all__ = ["CKG", "Dataset", "RawDataset", "build_dataset", "load_dataset", "read_raw", "split_per_user"]
