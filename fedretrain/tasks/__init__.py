"""Data sources for tasks: bundled digits, synthetic streams and the user's own tables."""

from fedretrain.tasks.dataset import ArrayDataset, as_dataset

__all__ = ["ArrayDataset", "as_dataset"]
