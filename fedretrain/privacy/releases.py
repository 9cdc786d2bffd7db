"""A site's last released DP-SGD update, so that a round asked for again is answered again.

A server killed after a site trained round ``r`` but before it checkpointed that round asks the
site for round ``r`` again when it resumes, with the same model. Training again would spend ε a
second time for one round: the ledger records every training. The site re-sends the update it
released instead (the same bytes and metrics, no new ledger entry): publishing a released
output again is post-processing and costs no privacy.

The request is known by a key over what decides the training: the run's config, the round, the
period and the incoming model's bytes. Only the latest release is kept (a resume asks again
only for the round it lost). Where the cache cannot answer (lost, damaged, or a crash between
the ledger's entry and the cache's write), the site trains again and its ledger says so in the
entry's tag (:data:`AGAIN`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from fedretrain.atomic import atomic_replace

log = logging.getLogger(__name__)

AGAIN = " (trained again: no cached release)"  # appended to a repeated round's ledger tag
RELEASED_AGAIN = " (released again: no cached release)"  # the same, for a period's statistics


@dataclass(frozen=True)
class Release:
    """What a site sent for one training request: the arrays and the metrics."""

    key: str
    arrays: dict[str, np.ndarray]
    metrics: dict[str, int | float]


def release_key(config_yaml: str, server_round: int, period: int | None, model_id: str) -> str:
    """The key of a training request; ``model_id`` identifies the incoming model's weights
    (:func:`fedretrain.retraining.port.digest`: names, dtypes, shapes and bytes, in any order,
    since a resumed server sends the weights its checkpoint file holds, names sorted).

    >>> a = release_key("seed: 1", 3, None, "abc")
    >>> a == release_key("seed: 1", 3, None, "abc"), a == release_key("seed: 1", 4, None, "abc")
    (True, False)
    """
    h = hashlib.blake2b(digest_size=16)
    for part in (config_yaml, str(server_round), str(period), model_id):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class ReleaseCache:
    """The latest release of one site, in ``site-<id>.<name>.safetensors`` beside its ledger:
    ``release`` for training rounds, ``statistics`` for the monitoring statistics.

    >>> import tempfile
    >>> cache = ReleaseCache(Path(tempfile.mkdtemp()), 0)
    >>> cache.put(Release("k1", {"w": np.ones(2, np.float32)}, {"num-examples": 8}))
    >>> cache.get("k1").metrics, cache.get("k1").arrays["w"].tolist(), cache.get("k2")
    ({'num-examples': 8}, [1.0, 1.0], None)
    """

    def __init__(self, folder: Path, site: int, name: str = "release") -> None:
        self.path = Path(folder) / f"site-{site}.{name}.safetensors"

    def get(self, key: str) -> Release | None:
        """The release made for ``key``, or None. A damaged file is set aside, not used."""
        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="np") as handle:
                meta = handle.metadata() or {}
                if meta.get("key") != key:
                    return None
                arrays = {name: handle.get_tensor(name) for name in json.loads(meta["order"])}
                metrics = json.loads(meta["metrics"])
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            damaged = self.path.with_suffix(".damaged")
            log.warning("%s is unreadable (%s); kept as %s", self.path, err, damaged.name)
            self.path.replace(damaged)
            return None
        return Release(key, arrays, metrics)

    def put(self, release: Release) -> None:
        """Keep ``release`` (atomically), in place of the one before."""
        arrays = {k: np.ascontiguousarray(v) for k, v in release.arrays.items()}
        meta = {
            "key": release.key,
            "order": json.dumps(list(arrays)),  # safetensors sorts names; the record keeps order
            "metrics": json.dumps(release.metrics),
        }
        atomic_replace(self.path, lambda tmp: save_file(arrays, str(tmp), metadata=meta))
