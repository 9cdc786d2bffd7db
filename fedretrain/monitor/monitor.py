"""The global monitor: every configured detector, fed each period's validated site statistics.

The monitor's false-alarm budget is one alarm per ``arl`` stationary periods for the monitor as
a whole: each calibrated detector gets an equal share (Bonferroni), so adding a detector does not
add false alarms. When the sites add noise to their statistics (:mod:`fedretrain.monitor.private`)
every calibrated detector must take that noise into account: it receives ``stats_noise_std``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate

from fedretrain.monitor.base import Detection, Detector, Seed
from fedretrain.monitor.stats import PeriodStats

STATE_VERSION = 1


def _accepts(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def build_detectors(
    nodes: Sequence[Any], arl: float, reference_periods: int, stats_noise_std: float = 0.0
) -> list[Detector]:
    """Build the configured detectors, splitting the false-alarm budget among the calibrated.

    A node is a partial ``_target_``; it receives ``arl``, ``reference_periods`` and
    ``stats_noise_std`` (σ of the sites' noise, 0 for exact statistics) if its signature takes
    them (baselines such as ``Periodic`` take none). With noise, a calibrated detector that
    cannot take it is refused: its false alarms would no longer match ``arl``.
    """
    factories = [instantiate(node) for node in nodes]
    calibrated = sum(_accepts(f, "arl") for f in factories)
    detectors = []
    for node, factory in zip(nodes, factories, strict=True):
        kwargs: dict[str, Any] = {}
        if _accepts(factory, "arl"):
            kwargs["arl"] = arl * calibrated
        if _accepts(factory, "reference_periods"):
            kwargs["reference_periods"] = reference_periods
        if _accepts(factory, "stats_noise_std"):
            kwargs["stats_noise_std"] = stats_noise_std
        elif stats_noise_std > 0 and "arl" in kwargs:
            raise ValueError(
                f"{_target(node)} takes no stats_noise_std: with private statistics "
                "(privacy.stats_noise_multiplier) its false-alarm calibration would ignore the "
                "noise; use a detector that accounts for it or turn the noise off"
            )
        detector = factory(**kwargs)
        if not isinstance(detector, Detector):
            raise TypeError(f"{type(detector).__name__} is not a fedretrain.monitor.base.Detector")
        detectors.append(detector)
    return detectors


def build_detector(
    node: Any, arl: float, reference_periods: int, stats_noise_std: float = 0.0
) -> Detector:
    """One detector, as :func:`build_detectors` would build it alone (config validation)."""
    return build_detectors([node], arl, reference_periods, stats_noise_std)[0]


def _target(node: Any) -> str:
    try:
        return str(node["_target_"])
    except (KeyError, TypeError):
        return repr(node)


class Monitor:
    """Feeds every detector the same periods; reports their latest decisions."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = list(detectors)

    def update(self, stats: PeriodStats) -> list[Detection]:
        """Feed one period; return each detector's decision, in configuration order."""
        detections = []
        for detector in self.detectors:
            detector.update(stats)
            detections.append(detector.last)
        return detections

    @property
    def drift_detected(self) -> bool:
        return any(d.drift_detected for d in self.detectors)

    def reset(self, seed: Seed | None = None) -> None:
        """A new serving model: every detector forgets its reference, and starts a new one
        from ``seed`` where it can."""
        for detector in self.detectors:
            detector.reset()
            if seed is not None:
                detector.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "detectors": [
                {"type": type(d).__name__, "state": d.state_dict()} for d in self.detectors
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"monitor state version {state.get('version')} is not {STATE_VERSION}: "
                "written by another fedretrain version"
            )
        saved = state["detectors"]
        names = [type(d).__name__ for d in self.detectors]
        if [s["type"] for s in saved] != names:
            raise ValueError(
                f"saved monitor holds {[s['type'] for s in saved]}, the config builds {names}"
            )
        for detector, item in zip(self.detectors, saved, strict=True):
            detector.load_state_dict(item["state"])
