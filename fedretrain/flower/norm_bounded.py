"""FedAvg with every site's update clipped to a norm bound before averaging."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedretrain.aggregation import norm_bounded_mean
from fedretrain.flower.arrays import to_numpy, to_record


class NormBoundedFedAvg(FedAvg):
    """Flower's FedAvg, with each update's L2 distance from the global model clipped.

    Parameters
    ----------
    max_norm : float
        Largest distance one site's model may lie from the global model.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, max_norm: float = 1.0, **kwargs: Any) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}")
        super().__init__(**kwargs)
        self.max_norm = max_norm
        self._reference: dict[str, Any] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._reference = to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        updates = [to_numpy(next(iter(c.array_records.values()))) for c in contents]
        weights = [
            float(cast(float, next(iter(c.metric_records.values()))[self.weighted_by_key]))
            for c in contents
        ]
        mean = norm_bounded_mean(self._reference, updates, weights, self.max_norm)
        arrays = to_record(mean)
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
