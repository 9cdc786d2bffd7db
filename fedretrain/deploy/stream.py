"""The data source of a deployed federation: each site's own folder of files.

In simulation ``scenario.stream`` draws every site's window from a synthetic concept; in
deployment it names the federation's schema instead, and each site reads the window of a
monitoring period from its folder (:class:`~fedretrain.deploy.folder.SiteFolder`). The server
needs only the shape of the data (feature count, classes); the sites need the schema and the
folder options. ``conf/scenario/deployed.yaml`` is the config that uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedretrain.deploy.folder import PeriodData, SiteFolder
from fedretrain.deploy.schema import FolderSchema
from fedretrain.tasks.dataset import ArrayDataset


class FolderStream:
    """Data from site folders checked against one schema (``scenario.stream`` in deployment).

    Parameters
    ----------
    features, label, labels, timestamp, group, groups
        The federation's :class:`~fedretrain.deploy.schema.FolderSchema`.
    min_age_s : float
        A file is read once it is this old (a file still being written is left for later).
    max_bad_row_fraction : float
        A file with more bad rows than this is quarantined as a whole.

    Examples
    --------
    >>> stream = FolderStream(features=["x0", "x1"], label="y", labels=[0, 1])
    >>> stream.input_shape, stream.num_classes, stream.num_concepts
    ((2,), 2, 1)
    """

    def __init__(
        self,
        features: Sequence[str],
        label: str,
        labels: Sequence[int | str],
        timestamp: str | None = None,
        min_age_s: float = 5.0,
        max_bad_row_fraction: float = 0.5,
        group: str | None = None,
        groups: Sequence[int | str] = (),
    ) -> None:
        self.schema = FolderSchema(
            features=tuple(features),
            label=label,
            labels=tuple(labels),
            timestamp=timestamp,
            group=group,
            groups=tuple(groups),
        )
        if min_age_s < 0:
            raise ValueError(f"min_age_s={min_age_s}: must be >= 0")
        if not 0.0 <= max_bad_row_fraction <= 1.0:
            raise ValueError(f"max_bad_row_fraction={max_bad_row_fraction}: must be in [0, 1]")
        self.min_age_s = float(min_age_s)
        self.max_bad_row_fraction = float(max_bad_row_fraction)

    @property
    def num_concepts(self) -> int:
        return 1  # unknown: whatever the sites' files hold

    @property
    def num_classes(self) -> int:
        return len(self.schema.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (len(self.schema.features),)

    @property
    def num_groups(self) -> int:
        """Groups of users the files name (0 without a group column)."""
        return len(self.schema.groups) if self.schema.group is not None else 0

    def dataset(self, taken: PeriodData) -> ArrayDataset:
        """A period's rows as a dataset, with each row's group when the files have them."""
        if taken.groups is None:
            return ArrayDataset(taken.x, taken.y, self.num_classes)
        return ArrayDataset(taken.x, taken.y, self.num_classes, taken.groups, self.num_groups)

    def folder(self, directory: Path) -> SiteFolder:
        """A site's folder read with this schema and these options."""
        return SiteFolder(
            directory,
            self.schema,
            min_age_s=self.min_age_s,
            max_bad_row_fraction=self.max_bad_row_fraction,
        )

    def sample(self, concept: int, n: int, rng: np.random.Generator) -> ArrayDataset:
        raise NotImplementedError(
            "scenario.stream is a FolderStream: its data lives in the sites' folders, so it "
            "runs on the deployment engine (fedretrain server / fedretrain agent), not in "
            "simulation; pick a simulated scenario (e.g. scenario=sea_thresholds) to simulate"
        )
