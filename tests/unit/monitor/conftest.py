"""Fixtures over the synthetic federation of :mod:`monitor_sim`."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pytest
from monitor_sim import Federation, StreamFactory

from fedretrain.monitor.stats import PeriodStats


@pytest.fixture(scope="session")
def federation() -> Federation:
    return Federation()


@pytest.fixture(scope="session")
def stream(federation: Federation) -> StreamFactory:
    """``stream(seed, periods, change_at=None, errors=None, shifted=())``: a list of periods,
    stationary before ``change_at``, with the given site errors and shifted sites from it on."""
    edges = federation.edges()

    def make(
        seed: int,
        periods: int,
        change_at: int | None = None,
        errors: Mapping[int, float] | None = None,
        shifted: Collection[int] = (),
    ) -> list[PeriodStats]:
        rng = np.random.default_rng(seed)
        out = []
        for t in range(periods):
            on = change_at is not None and t >= change_at
            out.append(
                federation.period(rng, edges, t, errors if on else None, shifted if on else ())
            )
        return out

    return make
