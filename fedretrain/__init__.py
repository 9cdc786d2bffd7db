"""fedretrain: keep federated models fresh.

The library under this package is plain Python, numpy and torch, testable without a running
federation. Flower is imported only by :mod:`fedretrain.flower` (the adapter), ``server/`` and
``clients/``.
"""

__version__ = "0.1.0"
