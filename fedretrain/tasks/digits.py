"""scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes).

Bundled with scikit-learn, so it loads offline. Pixels are scaled from [0, 16] to [0, 1] and
shaped ``(1, 8, 8)`` for a CNN.
"""

from __future__ import annotations

import numpy as np

from fedretrain.tasks.dataset import ArrayDataset


def load_digits() -> ArrayDataset:
    """All 1,797 digits as ``(n, 1, 8, 8)`` float32 images in [0, 1]."""
    # scikit-learn (and scipy) cost about a second to import: only in processes that load
    # the digits, not in every ClientApp process (one per message in deployment).
    from sklearn.datasets import load_digits as _load_digits

    bunch = _load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return ArrayDataset(x, bunch.target.astype(np.int64), num_classes=10)
