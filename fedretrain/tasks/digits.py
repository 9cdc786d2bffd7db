"""scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes).

Bundled with scikit-learn, so it loads offline. Pixels are scaled from [0, 16] to [0, 1] and
shaped ``(1, 8, 8)`` for a CNN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedretrain.tasks.dataset import ArrayDataset


def load_digits(classes: Sequence[int] | None = None) -> ArrayDataset:
    """The digits as ``(n, 1, 8, 8)`` float32 images in [0, 1]: all 1,797, or only those of
    ``classes`` (labels kept as they are, out of 10: a model for them has the usual head).

    >>> data = load_digits(classes=[5, 6, 7, 8, 9])
    >>> sorted(set(data.y.tolist())), data.num_classes, len(data)
    ([5, 6, 7, 8, 9], 10, 896)
    """
    # scikit-learn (and scipy) cost about a second to import: only in processes that load
    # the digits, not in every ClientApp process (one per message in deployment).
    from sklearn.datasets import load_digits as _load_digits

    bunch = _load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    if classes is not None:
        wanted = [int(c) for c in classes]
        bad = [c for c in wanted if not 0 <= c <= 9]
        if bad or not wanted:
            raise ValueError(f"classes={wanted}: the digits are 0..9; give some of them")
        keep = np.isin(y, wanted)
        x, y = x[keep], y[keep]
    return ArrayDataset(x, y, num_classes=10)
