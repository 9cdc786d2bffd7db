"""The global monitor: every configured detector, fed each period's validated site statistics.

The monitor's false-alarm budget is one alarm per ``arl`` stationary periods for the monitor as
a whole: each calibrated detector gets an equal share (Bonferroni), so adding a detector does not
add false alarms.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate

from fedretrain.monitor.base import Detection, Detector
from fedretrain.monitor.stats import PeriodStats

STATE_VERSION = 1


def _accepts(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def build_detectors(nodes: Sequence[Any], arl: float, reference_periods: int) -> list[Detector]:
    """Build the configured detectors, splitting the false-alarm budget among the calibrated.

    A node is a partial ``_target_``; it receives ``arl`` and ``reference_periods`` if its
    signature takes them (baselines such as ``Periodic`` take neither).
    """
    factories = [instantiate(node) for node in nodes]
    calibrated = sum(_accepts(f, "arl") for f in factories)
    detectors = []
    for factory in factories:
        kwargs: dict[str, Any] = {}
        if _accepts(factory, "arl"):
            kwargs["arl"] = arl * calibrated
        if _accepts(factory, "reference_periods"):
            kwargs["reference_periods"] = reference_periods
        detector = factory(**kwargs)
        if not isinstance(detector, Detector):
            raise TypeError(f"{type(detector).__name__} is not a fedretrain.monitor.base.Detector")
        detectors.append(detector)
    return detectors


def build_detector(node: Any, arl: float, reference_periods: int) -> Detector:
    """One detector, as :func:`build_detectors` would build it alone (config validation)."""
    return build_detectors([node], arl, reference_periods)[0]


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

    def reset(self) -> None:
        """A new serving model: every detector forgets its reference."""
        for detector in self.detectors:
            detector.reset()

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
